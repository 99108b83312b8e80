"""The exported model run by runtimes other than Python's onnxruntime, as a downstream user would.

Each runtime gets the very pixels Python's onnxruntime gets (uint8 `[N, S, S, 3]`) and its
probabilities are compared with Python's. Two outside runtimes are tried:

- Node.js with onnxruntime-node (`consumers/node/predict.js`, its own pinned package-lock);
- OpenCV's DNN module (`cv2.dnn.readNetFromONNX`), in a child process because OpenCV's older
  ONNX engine crashes (SIGSEGV) on some graphs instead of raising.

A runtime that cannot run the graph is reported with its own one-line refusal, never skipped.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from rarespecies.export.portable import make_portable
from rarespecies.runtime.session import open_session, probabilities

NODE_DIR = Path(__file__).resolve().parents[2] / "consumers" / "node"
NODE_INSTALL = "npm ci --ignore-scripts --prefix consumers/node (make install runs it)"
OPENCV_ENGINES = ("auto", "new", "classic")

# Runs in a child process: OpenCV may kill its process (SIGSEGV) rather than raise.
_OPENCV_WORKER = """
import json, sys
import cv2, numpy as np
model, pixels, out, engine, batch = sys.argv[1:6]
engines = {"auto": cv2.dnn.ENGINE_AUTO, "new": cv2.dnn.ENGINE_NEW,
           "classic": cv2.dnn.ENGINE_CLASSIC}
x = np.load(pixels)
try:
    net = cv2.dnn.readNetFromONNX(model, engines[engine])
    if net.empty():
        raise cv2.error("readNetFromONNX returned an empty network")
    chunks = []
    for i in range(0, len(x), int(batch)):
        net.setInput(np.ascontiguousarray(x[i:i + int(batch)]))
        chunks.append(np.array(net.forward(), dtype=np.float32))
except cv2.error as error:
    print(json.dumps({"error": str(error)}))
    sys.exit(0)
np.save(out, np.concatenate(chunks))
print(json.dumps({"error": None}))
"""


class ConsumerSetupError(RuntimeError):
    """An outside runtime is not installed here; the message says how to install it."""


@dataclass(frozen=True)
class ConsumerResult:
    """What one outside runtime made of one model.

    Attributes:
        runtime: e.g. "onnxruntime-node 1.30.0" or "opencv 5.0.0 (auto engine)".
        model: the ONNX file.
        error: the runtime's own refusal (one line), None when it ran the graph.
        max_abs_diff: max |p_runtime - p_python_onnxruntime| over every image and class.
        top1_agreement: share of images whose top class agrees with Python's onnxruntime.
    """

    runtime: str
    model: str
    error: str | None
    max_abs_diff: float | None = None
    top1_agreement: float | None = None

    def to_dict(self) -> dict:
        """The result as JSON-ready values."""
        return asdict(self)


def reference(model: Path, pixels: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """Python onnxruntime's probabilities, with the settings `rarespecies predict` uses.

    Args:
        model: an ONNX file.
        pixels: uint8 `[N, S, S, 3]`.
        batch_size: images per run.

    Returns:
        float32 `[N, classes]`.
    """
    return probabilities(open_session(model), pixels, batch_size)


def _compare(runtime: str, model: Path, got: np.ndarray, expected: np.ndarray) -> ConsumerResult:
    if got.shape != expected.shape:
        return ConsumerResult(runtime, str(model),
                              f"output shape {got.shape}, expected {expected.shape}")
    return ConsumerResult(runtime, str(model), None,
                          float(np.abs(got.astype(np.float64) - expected).max()),
                          float(np.mean(got.argmax(axis=1) == expected.argmax(axis=1))))


def first_line(message: str) -> str:
    """The informative line of a runtime's error: OpenCV's `error: (-215:...)` line if any."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    for line in lines:
        if "error:" in line:
            return line
    return lines[-1] if lines else "no message"


def node_version(node_dir: Path = NODE_DIR) -> str:
    """The installed onnxruntime-node's version.

    Raises:
        ConsumerSetupError: node or the package is missing, with the command that installs it.
    """
    if shutil.which("node") is None:
        raise ConsumerSetupError("node not found on PATH: install Node.js 20 or later")
    package = node_dir / "node_modules" / "onnxruntime-node" / "package.json"
    if not package.is_file():
        raise ConsumerSetupError(f"{package} is missing: run {NODE_INSTALL}")
    return json.loads(package.read_text(encoding="utf-8"))["version"]


def run_node(model: Path, pixels: np.ndarray, expected: np.ndarray, batch_size: int = 8,
             node_dir: Path = NODE_DIR, timeout: float = 1800) -> ConsumerResult:
    """Run `model` in Node.js (onnxruntime-node) on `pixels` and compare with `expected`.

    Args:
        model: an ONNX file.
        pixels: uint8 `[N, S, S, 3]`, the pixels `expected` was computed from.
        expected: Python onnxruntime's probabilities (`reference`).
        batch_size: images per run.
        node_dir: the folder of predict.js and its node_modules.
        timeout: seconds before the Node process is stopped.

    Returns:
        The comparison, or the runtime's refusal.
    """
    runtime = f"onnxruntime-node {node_version(node_dir)}"
    with tempfile.TemporaryDirectory(prefix="rarespecies-node-") as tmp:
        inputs, outputs = Path(tmp) / "pixels.npy", Path(tmp) / "probabilities.npy"
        np.save(inputs, np.ascontiguousarray(pixels, dtype=np.uint8))
        done = subprocess.run(["node", str(node_dir / "predict.js"), str(model), str(inputs),
                               str(outputs), "--batch", str(batch_size)],
                              capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            return ConsumerResult(runtime, str(model), first_line(done.stderr or done.stdout))
        return _compare(runtime, model, np.load(outputs), expected)


def opencv_version() -> str:
    """The installed OpenCV's version (opencv-python-headless).

    Raises:
        ConsumerSetupError: OpenCV is not installed.
    """
    try:
        import cv2
    except ModuleNotFoundError as error:
        raise ConsumerSetupError(
            f"{error}: install the dev extra, pip install -c constraints.txt -e '.[dev]'"
        ) from error
    return cv2.__version__


def run_opencv(model: Path, pixels: np.ndarray, expected: np.ndarray, batch_size: int = 8,
               engine: str = "auto", timeout: float = 1800) -> ConsumerResult:
    """Run `model` in OpenCV's DNN module on `pixels` and compare with `expected`.

    Args:
        model: an ONNX file.
        pixels: uint8 `[N, S, S, 3]`, the pixels `expected` was computed from.
        expected: Python onnxruntime's probabilities (`reference`).
        batch_size: images per `forward()`.
        engine: OpenCV's ONNX engine: "auto" (its default: the new engine, the older one
            when the new parser refuses the graph), "new" or "classic".
        timeout: seconds before the child process is stopped.

    Returns:
        The comparison, or OpenCV's refusal (a crash is reported with its signal).
    """
    if engine not in OPENCV_ENGINES:
        raise ValueError(f"unknown OpenCV engine {engine!r}: use one of {OPENCV_ENGINES}")
    runtime = f"opencv {opencv_version()} ({engine} engine)"
    with tempfile.TemporaryDirectory(prefix="rarespecies-opencv-") as tmp:
        inputs, outputs = Path(tmp) / "pixels.npy", Path(tmp) / "probabilities.npy"
        np.save(inputs, np.ascontiguousarray(pixels, dtype=np.uint8))
        done = subprocess.run([sys.executable, "-c", _OPENCV_WORKER, str(model), str(inputs),
                               str(outputs), engine, str(batch_size)],
                              capture_output=True, text=True, timeout=timeout, check=False)
        refused = unsupported_operations(done.stderr)
        because = f" after its new engine refused {', '.join(refused)}" if refused else ""
        if done.returncode < 0:
            name = signal.Signals(-done.returncode).name
            return ConsumerResult(runtime, str(model), f"the process died of {name}{because}")
        if done.returncode != 0:
            return ConsumerResult(runtime, str(model), first_line(done.stderr))
        error = json.loads(done.stdout.strip().splitlines()[-1])["error"]
        if error:
            return ConsumerResult(runtime, str(model), first_line(error) + because)
        return _compare(runtime, model, np.load(outputs), expected)


def unsupported_operations(log: str) -> list[str]:
    """The operators OpenCV's new ONNX parser listed as unsupported in its warning, if any.

    Args:
        log: OpenCV's stderr, where the parser writes `Unsupported operations:` and then one
            operator per tab-indented line.

    Returns:
        The operator names, in the order OpenCV listed them.
    """
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if "Unsupported operations:" in line:
            names = []
            for following in lines[i + 1:]:
                if not following.startswith("\t"):
                    break
                names.append(following.strip())
            return names
    return []


def check_model(model: Path, pixels: np.ndarray, batch_size: int = 8,
                workdir: Path | None = None) -> list[ConsumerResult]:
    """Every outside runtime on one model, and OpenCV on its `portable` rewrite too.

    Both sides run the same batches: a dynamically quantized model's probabilities for an
    image depend on the other images of its batch (DynamicQuantizeLinear takes one scale per
    batch), so different batches would compare batching, not runtimes.

    Args:
        model: an ONNX file.
        pixels: uint8 `[N, S, S, 3]`.
        batch_size: images per run, the same in every runtime.
        workdir: where to write the rewritten copy (a temporary folder when None).

    Returns:
        onnxruntime-node's result, OpenCV's, and OpenCV's on the rewritten copy when
        `fold_reduce_unsqueeze` changed anything.
    """
    expected = reference(model, pixels, batch_size)
    results = [run_node(model, pixels, expected, batch_size),
               run_opencv(model, pixels, expected, batch_size)]
    with tempfile.TemporaryDirectory(prefix="rarespecies-portable-", dir=workdir) as tmp:
        rewritten = Path(tmp) / model.name
        if make_portable(model, rewritten):
            result = run_opencv(rewritten, pixels, expected, batch_size)
            results.append(ConsumerResult(f"{result.runtime}, portable rewrite", str(model),
                                          result.error, result.max_abs_diff,
                                          result.top1_agreement))
    return results


def markdown_table(results: list[ConsumerResult], tolerance: float = 1e-4) -> str:
    """The results as a Markdown table, one row per model and runtime.

    Args:
        results: from `check_model`.
        tolerance: the largest |Δp| that counts as the same probabilities.

    Returns:
        The table, with a header.
    """
    rows = ["| model | runtime | outcome | max abs Δp vs Python onnxruntime | top-1 agreement |",
            "| --- | --- | --- | --- | --- |"]
    for r in results:
        if r.error is not None:
            outcome, diff, agree = f"refused: `{r.error}`", "-", "-"
        else:
            same = r.max_abs_diff is not None and r.max_abs_diff <= tolerance
            outcome = (f"runs, same probabilities (≤ {tolerance:g})" if same else
                       f"runs, DIFFERENT probabilities (> {tolerance:g})")
            diff, agree = f"{r.max_abs_diff:.2e}", f"{r.top1_agreement:.1%}"
        rows.append(f"| {r.model} | {r.runtime} | {outcome} | {diff} | {agree} |")
    return "\n".join(rows)
