"""ONNX export: a valid, dynamic-batch uint8 model with metadata, matching Keras."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from tf2onnx.handler import tf_op

from rarespecies.export.convert import (
    ParityError,
    check_parity,
    convert_to_onnx,
    inference_model,
    parity,
    register_tf2onnx_fixes,
)
from rarespecies.modeling.backbones import build_backbone
from rarespecies.runtime.session import read_metadata

SIZE = 32
CLASSES = 5
METADATA = {"labels": '["Felidae", "Canidae"]', "input_size": str(SIZE), "note": "é ✓"}


def _pixels(n: int) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def classifier() -> keras.Model:
    keras.utils.set_random_seed(3)
    backbone = build_backbone("ConvNeXtTiny", SIZE, None)
    # Exact GELU in the head lowers to the TF op Erfc, which needs register_tf2onnx_fixes.
    head = keras.Sequential(
        [
            keras.Input((768,)),
            keras.layers.Dense(32, activation="gelu"),
            keras.layers.Dense(CLASSES, activation="softmax"),
        ]
    )
    return inference_model(backbone, head, SIZE)


@pytest.fixture(scope="module")
def onnx_file(classifier: keras.Model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("export") / "model.onnx"
    assert convert_to_onnx(classifier, path, 17, METADATA) == path
    return path


@pytest.mark.slow
def test_inference_model_takes_uint8_pixels(classifier: keras.Model) -> None:
    assert classifier.inputs[0].dtype == "uint8"
    assert tuple(classifier.inputs[0].shape) == (None, SIZE, SIZE, 3)
    probabilities = classifier(_pixels(2), training=False).numpy()
    assert probabilities.shape == (2, CLASSES)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.slow
def test_onnx_file_is_valid_with_dynamic_uint8_batch(onnx_file: Path) -> None:
    onnx.checker.check_model(str(onnx_file), full_check=True)
    assert sorted(p.name for p in onnx_file.parent.iterdir()) == ["model.onnx"]  # no temp left
    ops = {node.op_type for node in onnx.load(str(onnx_file)).graph.node}
    assert "Erf" in ops and "Erfc" not in ops

    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type, inp.shape) == ("pixels", "tensor(uint8)", ["batch", SIZE, SIZE, 3])
    assert out.name == "probabilities"
    for n in (1, 3):
        probabilities = session.run(None, {inp.name: _pixels(n)})[0]
        assert probabilities.shape == (n, CLASSES)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.slow
def test_the_same_model_gives_the_same_bytes(classifier, onnx_file, tmp_path) -> None:
    """tf2onnx numbers the names it makes from a process-wide counter: a second conversion in
    this process starts elsewhere, and still the file comes out identical."""
    again = convert_to_onnx(classifier, tmp_path / "again.onnx", 17, METADATA)
    assert again.read_bytes() == onnx_file.read_bytes()


@pytest.mark.slow
def test_metadata_round_trip(onnx_file: Path) -> None:
    assert read_metadata(onnx_file) == METADATA


@pytest.mark.slow
def test_parity_with_keras(classifier: keras.Model, onnx_file: Path) -> None:
    report = parity(classifier, onnx_file, _pixels(5), batch_size=2)  # last batch is partial
    assert report["images"] == 5
    assert report["max_abs_diff"] <= 1e-4
    assert report["top1_agreement"] == 1.0
    check_parity(report, 1e-4)


def test_check_parity_reports_by_how_much_it_failed() -> None:
    report = {"images": 10, "max_abs_diff": 0.0123, "top1_agreement": 0.9}
    check_parity(report, tolerance=0.05, min_agreement=0.9)
    with pytest.raises(ParityError) as caught:
        check_parity(report, tolerance=1e-4, min_agreement=0.9)
    message = str(caught.value)
    assert "0.0123" in message and "0.0001" in message and "\n" not in message
    assert "agreement" not in message
    with pytest.raises(ParityError, match=r"top-1 agreement 90.00% is below 99.90% by 9.90"):
        check_parity(report, tolerance=0.05)  # the default: 99.9% of images agree


def test_erfc_fix_registration_is_idempotent() -> None:
    register_tf2onnx_fixes()
    register_tf2onnx_fixes()
    handlers = [ops["Erfc"] for ops in tf_op.get_opsets()[""] if "Erfc" in ops]
    assert len(handlers) == 1


def test_parity_rejects_non_uint8_images() -> None:
    # Float pixels would be silently wrapped by a cast; the check runs before any model.
    with pytest.raises(ValueError, match="uint8"):
        parity(keras.Sequential(), Path("unused.onnx"), np.zeros((2, SIZE, SIZE, 3), "float32"))


def test_conversion_says_what_it_does_phase_by_phase(tmp_path: Path, capsys) -> None:
    """What `dvc repro export` shows instead of minutes of silence (stderr is not a TTY here)."""
    keras.utils.set_random_seed(0)
    tiny = keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.Conv2D(4, 3),
                             keras.layers.GlobalAveragePooling2D(),
                             keras.layers.Dense(CLASSES, activation="softmax")])
    head = keras.Sequential([keras.Input((CLASSES,)), keras.layers.Identity()])
    model = inference_model(tiny, head, SIZE)
    path = convert_to_onnx(model, tmp_path / "tiny.onnx", 17, METADATA)
    parity(model, path, _pixels(20), batch_size=8)
    lines = capsys.readouterr().err.splitlines()
    phases = ["convert classifier", "optimize classifier's graph", f"write {path}",
              "parity: Keras on 20 test images", "parity: onnxruntime on 20 test images"]
    starts = [next(i for i, line in enumerate(lines) if line.startswith(p)) for p in phases]
    assert starts == sorted(starts)  # in the order they run
    for name in phases[:3]:  # each phase's time when it ends
        assert any(line.startswith(name) and ": done in " in line for line in lines), name
    assert any(line.startswith("parity: onnxruntime on 20 test images: 20/20 img done")
               for line in lines)
    assert "\r" not in "".join(lines)
