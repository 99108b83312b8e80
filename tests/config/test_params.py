"""Settings: the real params.yaml loads; mistakes fail with the key named."""

import pytest
import yaml

from rarespecies.config.params import ParamsError, load_params, parse_params

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
