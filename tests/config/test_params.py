"""Settings: the real params.yaml loads; mistakes fail with the key named."""

import shutil

import pytest
import yaml

from rarespecies.config.params import (
    ParamsError,
    load_params,
    parse_params,
    raw_params,
    read_params,
)

from conftest import ROOT, tiny_params


def raw() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_project_params_and_tiny_profile_are_valid():
    params = load_params(ROOT / "params.yaml")
    assert set(params.models) == {"custom_cnn", "inception_resnet_v2", "densenet121",
                                  "convnext_mini", "convnext_full"}
    assert params.backbone_of("convnext_full").architecture == "ConvNeXtBase"
    assert all(b.weights is None for b in params.backbones.values())  # offline by default
    tiny = parse_params(tiny_params())
    assert tiny.backbone_of("convnext_full").input_size == 32
    assert tiny.models.keys() == params.models.keys()


def test_defaults_follow_the_study():
    params = load_params(ROOT / "params.yaml")
    full, mini = params.models["convnext_full"], params.models["convnext_mini"]
    assert (full.training.optimizer, full.training.learning_rate, full.training.weight_decay,
            full.training.batch_size) == ("adamw", 1e-4, 3e-4, 32)
    assert full.head.dense_units == [1024, 512] and mini.head.type == "gap"
    assert mini.training.batch_size == 8 and not mini.end_to_end and not full.end_to_end
    inception = params.models["inception_resnet_v2"]
    assert params.backbone_of("inception_resnet_v2").input_size == 299
    assert inception.head.type == "flatten" and inception.training.optimizer == "rmsprop"
    assert inception.training.augmentation.rotation == 0.2 and inception.end_to_end
    densenet = params.models["densenet121"].training
    assert densenet.fine_tune.layers == 50 and densenet.fine_tune.learning_rate == 1e-5
    assert not any(m.training.class_weights for m in params.models.values())


def test_unknown_key_is_named():
    data = raw()
    data["models"]["convnext_full"]["training"]["lr"] = 0.1
    with pytest.raises(ParamsError, match=r"models\.convnext_full\.training\.lr"):
        parse_params(data)


@pytest.mark.parametrize(("path", "value", "fragment"), [
    (("split", "test_fraction"), 1.5, "split.test_fraction"),
    (("models", "custom_cnn", "training", "optimizer"), "sgd9", "optimizer"),
    (("export", "model"), "nope", "export.model 'nope'"),
    (("backbones", "convnext_base", "architecture"), "ResNet", "convnext_base.architecture"),
    (("models", "convnext_full", "backbone"), "resnet", "models.convnext_full.backbone"),
    (("models", "densenet121", "training", "augmentation", "zoom"), 1.5, "augmentation.zoom"),
    (("models", "densenet121", "training", "fine_tune", "layers"), -1, "fine_tune.layers"),
    (("backbones", "inception_resnet_v2", "input_size"), 64, "input_size >= 75"),
    (("export", "opset"), 13, "export.opset"),
])
def test_impossible_values_are_rejected(path, value, fragment):
    data = raw()
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ParamsError, match=fragment.replace(".", r"\.")):
        parse_params(data)


@pytest.mark.parametrize(("quantize", "fragment"), [
    ({"method": "dynamic", "calibration": "entropy"}, "only apply to method static or mixed"),
    ({"method": "dynamic", "activation_type": "int8"}, "only apply to method static or mixed"),
    ({"method": "mixed", "static_op_types": []}, "method mixed needs static_op_types"),
    ({"method": "static", "static_op_types": ["Conv"]}, "only used by method mixed"),
    ({"method": "dynamic", "static_op_types": ["Conv"]}, "only used by method mixed"),
    ({"method": "mixed", "static_op_types": ["MatMul"], "op_types": ["MatMul"]}, "overlap"),
    ({"method": "mixed", "op_types": []}, "overlap"),
    ({"op_types": ["Matmul"]}, "quantize.op_types"),
    ({"method": "static", "calibration": "kl"}, "quantize.calibration"),
    ({"method": "static", "calibration_images": 0}, "quantize.calibration_images"),
])
def test_inconsistent_quantization_is_rejected(quantize, fragment):
    data = raw()
    data["quantize"] = {"max_f1_drop": 0.01, **quantize}
    with pytest.raises(ParamsError, match=fragment):
        parse_params(data)


def test_each_quantization_method_has_a_valid_form():
    data = raw()
    for quantize in ({"method": "dynamic"},
                     {"method": "static", "op_types": ["Conv", "MatMul"], "calibration": "entropy"},
                     {"method": "mixed", "static_op_types": ["Conv"], "op_types": ["MatMul"]}):
        data["quantize"] = quantize
        assert parse_params(data).quantize.method == quantize["method"]


@pytest.mark.parametrize(("model", "key", "value", "fragment"), [
    ("custom_cnn", "backbone", "convnext_base", "a 'cnn' head goes with a 'rescale' backbone"),
    ("convnext_full", "backbone", "pixels", "a 'cnn' head goes with a 'rescale' backbone"),
    ("convnext_mini", "head", {"type": "flatten"}, "flatten head needs"),
])
def test_heads_must_fit_their_backbone(model, key, value, fragment):
    data = raw()
    data["models"][model][key] = value
    with pytest.raises(ParamsError, match=fragment):
        parse_params(data)


def test_unused_backbone_is_named():
    data = raw()
    data["backbones"]["spare"] = {"architecture": "DenseNet121", "input_size": 64}
    with pytest.raises(ParamsError, match="backbones spare: no model uses it"):
        parse_params(data)


def test_best_is_a_valid_export_choice():
    data = raw()
    data["export"]["model"] = "best"
    assert parse_params(data).export.model == "best"


def test_unknown_model_or_backbone_lookup_names_known_ones():
    params = load_params(ROOT / "params.yaml")
    with pytest.raises(ParamsError, match="custom_cnn"):
        params.model("resnet")
    with pytest.raises(ParamsError, match=r"unknown backbone 'resnet'.*convnext_base"):
        params.backbone("resnet")


def test_architectures_are_the_backbones_the_code_builds():
    from rarespecies.config.params import ARCHITECTURES
    from rarespecies.modeling.backbones import BACKBONES

    assert set(ARCHITECTURES) == {"rescale", *BACKBONES}


DUPLICATED = b"""\
data:
  dir: data
models:
  custom_cnn:
    training:
      epochs: 3
      batch_size: 2
      epochs: 5
"""


@pytest.mark.parametrize(("content", "message"), [
    (DUPLICATED, "8:7: duplicate key 'epochs' (first at line 6)"),
    (DUPLICATED + b"data:\n  dir: other\n", "9:1: duplicate key 'data' (first at line 1)"),
    (b"ingest:\n  max_side: 512\n    workers: 2\n", "3:12: mapping values are not allowed here"),
    (b"ingest:\n  max_side: [1, 2\n", "3:1: expected ',' or ']', but got '<stream end>' (while "
                                      "parsing a flow sequence at line 2)"),
    (b"data:\n  dir: \"d\x00\"\n", "2:10: character U+0000 is not allowed in YAML"),
    (b"data:\n  dir: d\xe9\n", "2:9: not UTF-8 (byte 0xe9): re-save it as UTF-8, e.g. from "
                              "Latin-1: iconv -f latin1 -t utf-8 '{path}' > utf8.tmp && mv "
                              "utf8.tmp '{path}'"),
    (b"- data\n", " the top level is a list, not a mapping of sections (data, ingest, models...)"),
], ids=["duplicate-nested", "duplicate-top-level", "mapping", "unclosed", "nul", "latin-1",
        "list"])
def test_a_bad_params_file_is_one_line_naming_its_place(tmp_path, content, message):
    path = tmp_path / "params.yaml"
    path.write_bytes(content)
    with pytest.raises(ParamsError) as raised:
        read_params(path)
    assert str(raised.value) == f"{path}:{message}".replace("{path}", str(path))


def test_merge_keys_may_override_what_they_merge(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("base: &base {x: 1, y: 2}\nother:\n  <<: *base\n  x: 3\n")
    assert raw_params(path)["other"] == {"x": 3, "y": 2}


def test_values_set_as_dvc_exp_run_sets_them_load(tmp_path):
    from dvc.utils.hydra import apply_overrides  # what `dvc exp run -S` writes params.yaml with

    path = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", path)
    apply_overrides(path, ["models.convnext_full.training.learning_rate=1e-3",
                           "models.convnext_full.head.dense_units=[256]", "split.seed=7"])
    params = read_params(path)
    full = params.models["convnext_full"]
    assert (full.training.learning_rate, full.head.dense_units, params.split.seed) == (
        1e-3, [256], 7)
