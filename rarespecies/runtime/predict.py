"""Family predictions from the exported ONNX model, with onnxruntime, NumPy and Pillow only.

Everything the model needs is read from its metadata (labels, input size, how training
normalized and resized images), so an image is prepared exactly as in the pipeline:
decoded to at most `normalize_max_side` (ingest), then resized to the input (preprocess).
TensorFlow is never imported.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rarespecies.runtime.images import (
    IMAGE_SUFFIXES,
    MAX_PIXELS,
    ImageError,
    open_rgb,
    resize_for_model,
)
from rarespecies.runtime.session import open_session


class ModelError(ValueError):
    """The file is not an ONNX model exported by this pipeline."""


@dataclass(frozen=True)
class Prediction:
    """The top families of one image, or why it could not be classified."""

    path: Path
    top: list[tuple[str, float]]
    error: str | None = None


class Classifier:
    """An onnxruntime session plus the preprocessing its metadata describes."""

    def __init__(self, model_path: Path, threads: int = 0) -> None:
        if not Path(model_path).is_file():
            raise ModelError(f"{model_path} not found")
        try:
            self.session = open_session(model_path, threads)
        except Exception as error:  # onnxruntime raises its own unexported exception types
            raise ModelError(f"{model_path} is not a loadable ONNX model ({error})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        try:
            self.labels: list[str] = json.loads(meta["labels"])
            self.input_size = int(meta["input_size"])
            self.max_side = int(meta["normalize_max_side"])
        except (KeyError, ValueError) as error:
            raise ModelError(f"{model_path} lacks this pipeline's metadata ({error}); export "
                             "it with `dvc repro export`") from None
        self.input_name = self.session.get_inputs()[0].name

    def pixels(self, path: Path) -> np.ndarray:
        """The uint8 [S, S, 3] input for one image, prepared as the pipeline prepared it."""
        img, _ = open_rgb(path, self.max_side, MAX_PIXELS)
        return resize_for_model(img, self.input_size)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Family probabilities of a uint8 batch [N, S, S, 3]."""
        return self.session.run(None, {self.input_name: batch})[0]


def image_files(targets: Iterable[Path]) -> Iterator[Path]:
    """Expand folders (recursively, sorted) into image files; files are kept as given."""
    for target in targets:
        if target.is_dir():
            yield from sorted(p for p in target.rglob("*")
                              if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            yield target


def predict(classifier: Classifier, paths: Iterable[Path], top_k: int = 3,
            batch_size: int = 8) -> Iterator[Prediction]:
    """Classify images in batches; an unreadable image yields an error and the rest go on.

    Args:
        classifier: the loaded model.
        paths: image files.
        top_k: families reported per image.
        batch_size: images per onnxruntime call.

    Yields:
        One `Prediction` per path, in order.
    """
    pending: list[tuple[Path, np.ndarray]] = []

    def flush() -> Iterator[Prediction]:
        probabilities = classifier.probabilities(np.stack([x for _, x in pending]))
        for (path, _), row in zip(pending, probabilities, strict=True):
            best = np.argsort(-row)[:top_k]
            yield Prediction(path, [(classifier.labels[i], float(row[i])) for i in best])
        pending.clear()

    for path in paths:
        try:
            pending.append((path, classifier.pixels(path)))
        except (ImageError, OSError) as error:
            yield from flush() if pending else ()
            yield Prediction(path, [], f"cannot read image: {error}")
            continue
        if len(pending) == batch_size:
            yield from flush()
    if pending:
        yield from flush()
