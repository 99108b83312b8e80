"""Settings: the real params.yaml loads; mistakes fail with the key named."""

import pytest
import yaml

from stages.params import ParamsError, load_params, parse_params

from conftest import ROOT, tiny_params


def raw() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_project_params_and_tiny_profile_are_valid():
    params = load_params(ROOT / "params.yaml")
    assert params.models["convnext_full"].backbone.name == "ConvNeXtBase"
    assert params.models["convnext_full"].backbone.weights is None  # offline by default
    assert parse_params(tiny_params()).models["convnext_full"].input_size == 32


def test_unknown_key_is_named():
    data = raw()
    data["models"]["convnext_full"]["training"]["lr"] = 0.1
    with pytest.raises(ParamsError, match=r"models\.convnext_full\.training\.lr"):
        parse_params(data)


@pytest.mark.parametrize(("path", "value", "fragment"), [
    (("split", "test_fraction"), 1.5, "split.test_fraction"),
    (("models", "custom_cnn", "training", "optimizer"), "sgd9", "optimizer"),
    (("export", "model"), "nope", "export.model 'nope'"),
    (("models", "convnext_full", "backbone", "name"), "ResNet", "backbone.name"),
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


def test_cnn_head_cannot_take_a_backbone():
    data = raw()
    data["models"]["custom_cnn"]["backbone"] = {"name": "ConvNeXtTiny"}
    with pytest.raises(ParamsError, match="cnn"):
        parse_params(data)


def test_unknown_model_lookup_names_known_models():
    with pytest.raises(ParamsError, match="custom_cnn"):
        load_params(ROOT / "params.yaml").model("resnet")
