"""Family predictions from the exported ONNX model, with onnxruntime, NumPy and Pillow only.

Everything the model needs is read from its metadata (labels, input size, how training
normalized and resized images), so an image is prepared exactly as in the pipeline:
decoded to at most `normalize_max_side` (ingest), then resized to the input (preprocess).
TensorFlow is never imported.

Nothing given is dropped silently: a path that is not a regular file (a FIFO, a device, a
socket), a symlink loop, a dangling symlink or a folder that cannot be listed becomes a
`Prediction` with its reason, and is never opened.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rarespecies.core.files import file_problem
from rarespecies.runtime.images import (
    IMAGE_SUFFIXES,
    MAX_PIXELS,
    ImageError,
    open_rgb,
    resize_for_model,
)
from rarespecies.runtime.session import IMAGES_PER_RUN, open_session


class ModelError(ValueError):
    """The file is not an ONNX model exported by this pipeline."""


REEXPORT = "export it again with `dvc repro export`"


@dataclass(frozen=True)
class Prediction:
    """The top families of one image, or why it could not be classified."""

    path: Path
    top: list[tuple[str, float]]
    error: str | None = None


class Classifier:
    """An onnxruntime session plus the preprocessing its metadata describes."""

    def __init__(self, model_path: Path, threads: int = 0) -> None:
        self.name = name = printable(str(model_path))
        if problem := file_problem(model_path):
            raise ModelError(f"{name}: {problem}")
        try:
            self.session = open_session(model_path, threads)
        except Exception as error:  # onnxruntime raises its own unexported exception types
            raise ModelError(f"{name} is not a loadable ONNX model "
                             f"({printable(str(error))})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        try:
            self.labels: list[str] = json.loads(meta["labels"])
            self.input_size = int(meta["input_size"])
            self.max_side = int(meta["normalize_max_side"])
            if not (isinstance(self.labels, list) and self.labels
                    and all(isinstance(label, str) for label in self.labels)):
                raise ValueError("labels is not a list of family names")
            if min(self.input_size, self.max_side) < 1:
                raise ValueError("input_size and normalize_max_side must be positive")
        except (KeyError, ValueError) as error:
            raise ModelError(f"{name} lacks this pipeline's metadata ({error}); "
                             f"{REEXPORT}") from None
        self._check_graph()
        self.input_name = self.session.get_inputs()[0].name

    def pixels(self, path: Path) -> np.ndarray:
        """The uint8 [S, S, 3] input for one image, prepared as the pipeline prepared it."""
        img, _ = open_rgb(path, self.max_side, MAX_PIXELS)
        return resize_for_model(img, self.input_size)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Family probabilities of a uint8 batch [N, S, S, 3].

        Raises:
            ModelError: onnxruntime fails, or the graph's output disagrees with the labels (a
                dynamic output dimension can only be checked here).
        """
        try:
            result = self.session.run(None, {self.input_name: batch})[0]
        except Exception as error:  # onnxruntime's own types; its messages span lines
            raise ModelError(f"{self.name}: onnxruntime cannot run it on {_shape(batch.shape)}: "
                             f"{' '.join(str(error).split())}") from None
        if result.shape != (len(batch), len(self.labels)):
            raise ModelError(f"{self.name}: its metadata lists {len(self.labels)} labels but "
                             f"the graph's output is {_shape(result.shape)} when run on "
                             f"{_shape(batch.shape)}; {REEXPORT}")
        return result

    def _check_graph(self) -> None:
        """Fail unless the graph takes uint8 [N, S, S, 3] and returns a probability per label.

        Dimensions the graph leaves symbolic are not checked here (the output's is checked
        when the model runs).

        Raises:
            ModelError: naming the first mismatch.
        """
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        name, labels, size = self.name, len(self.labels), self.input_size
        if len(inputs) != 1 or not outputs:
            raise ModelError(f"{name}: the graph has {len(inputs)} inputs and {len(outputs)} "
                             "outputs, not one image input and a probabilities output; "
                             f"{REEXPORT}")
        pixels, out = inputs[0], outputs[0].shape
        channels = pixels.shape[3] if len(pixels.shape) == 4 else 0
        rgb = channels == 3 or not isinstance(channels, int)  # symbolic: takes the 3 given
        if pixels.type != "tensor(uint8)" or not rgb:
            raise ModelError(f"{name}: the graph's input {pixels.name} is {pixels.type} "
                             f"{_shape(pixels.shape)}, not uint8 [N, S, S, 3]; {REEXPORT}")
        if any(isinstance(dim, int) and dim != size for dim in pixels.shape[1:3]):
            raise ModelError(f"{name}: its metadata says input_size {size} but the graph's input "
                             f"is {_shape(pixels.shape)}; {REEXPORT}")
        if out and isinstance(out[-1], int) and out[-1] != labels:
            raise ModelError(f"{name}: its metadata lists {labels} labels but the graph's output "
                             f"is {_shape(out)}; {REEXPORT}")


def _shape(dims: Sequence[object]) -> str:
    """`[N, 224, 224, 3]`: symbolic dimensions by name, unknown ones as `?`."""
    return "[" + ", ".join("?" if dim is None else str(dim) for dim in dims) + "]"


def printable(text: str) -> str:
    """`text` as it is, or quoted with its control characters escaped (repr) if it has any, so
    a file name never splits or garbles a line of output."""
    return text if text.isprintable() else repr(text)


def image_files(targets: Iterable[Path]) -> Iterator[Path | Prediction]:
    """Expand folders (recursively, sorted) into image files; files are kept as given.

    In a folder, names with an image suffix are kept (whatever they are: `predict` reports
    those that are no regular file). Symlinked folders are followed, except one leading back
    to a folder above it (a loop); that one, and a folder that cannot be listed, come as a
    `Prediction` with the reason.

    Args:
        targets: files and folders.

    Yields:
        Paths to classify, and the problems met on the way.
    """
    for target in targets:
        if target.is_dir():
            yield from _walk(target, ())
        else:
            yield target


def _walk(folder: Path, above: tuple[tuple[int, int], ...]) -> Iterator[Path | Prediction]:
    """The image files under `folder`, whose ancestors are `above` (device, inode)."""
    try:
        info = folder.stat()
        here = (info.st_dev, info.st_ino)
        if here in above:
            yield Prediction(folder, [], "skipped: symlink loop (leads back to a folder above)")
            return
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda entry: entry.name)
    except OSError as error:
        yield Prediction(folder, [], f"skipped: cannot list the folder: {error.strerror}")
        return
    for entry in entries:
        try:
            is_dir = entry.is_dir()
        except OSError:  # a symlink loop or an unreachable target: `predict` says which
            is_dir = False
        if is_dir:
            yield from _walk(Path(entry.path), (*above, here))
        elif Path(entry.name).suffix.lower() in IMAGE_SUFFIXES:
            yield Path(entry.path)


def predict(classifier: Classifier, paths: Iterable[Path | Prediction], top_k: int = 3,
            batch_size: int = IMAGES_PER_RUN) -> Iterator[Prediction]:
    """Classify images in batches; an unreadable image yields an error and the rest go on.

    A path that is not a regular file is never opened: it yields its reason.

    Args:
        classifier: the loaded model.
        paths: image files, and problems already found (passed through, in order).
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
        problem = None
        if isinstance(path, Prediction):
            problem = path
        elif reason := file_problem(path):  # checked without blocking on a FIFO
            problem = Prediction(path, [], f"skipped: {reason}")
        else:
            try:
                pending.append((path, classifier.pixels(path)))
            except (ImageError, OSError) as error:
                problem = Prediction(path, [], f"cannot read image: {error}")
        if problem is not None:
            yield from flush() if pending else ()
            yield problem
        elif len(pending) == batch_size:
            yield from flush()
    if pending:
        yield from flush()
