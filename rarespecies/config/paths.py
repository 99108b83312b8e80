"""Every path the pipeline reads or writes, relative to the project root, defined once.

dvc.yaml spells the same paths (it cannot import them); a stage passes them to the package's
functions, which take plain paths. Per-model and per-backbone paths are functions of the name.
"""

from __future__ import annotations

from pathlib import Path

PARAMS = Path("params.yaml")
DVC_YAML = Path("dvc.yaml")
DATA_DVC = Path("data.dvc")

# ingest, validate, split
INGEST_IMAGES = Path("artifacts/ingest/images")
MANIFEST = Path("artifacts/ingest/manifest.csv")
INGEST_REPORT = Path("reports/ingest.json")
VALIDATION_REPORT = Path("reports/validation.json")
VALIDATION_DOCS = Path("reports/validation_docs")
SPLIT_TABLE = Path("artifacts/split/split.csv")
LABELS = Path("artifacts/split/labels.json")
SPLIT_REPORT = Path("reports/split.json")

# Inside an arrays, features or export folder: `<split>_x.npy` inputs, `<split>_y.npy` classes.
SPLITS = ("train", "val", "test")
BACKBONE_WEIGHTS = "backbone.weights.h5"  # the frozen backbone that made a features folder


def split_file(folder: Path, split: str, part: str) -> Path:
    """`<folder>/<split>_<part>.npy`, part `x` (inputs) or `y` (class indices)."""
    return Path(folder) / f"{split}_{part}.npy"


def arrays_dir(backbone: str) -> Path:
    """Images at a backbone's input size (preprocess@<backbone>)."""
    return Path("artifacts/arrays") / backbone


def features_dir(backbone: str) -> Path:
    """A frozen backbone's features (features@<backbone>)."""
    return Path("artifacts/features") / backbone


def backbone_graph(backbone: str) -> Path:
    """A frozen backbone converted to ONNX once (export_backbone@<backbone>), for grafting."""
    return Path("artifacts/onnx") / backbone / "backbone.onnx"


def backbone_int8(backbone: str) -> Path:
    """That backbone graph's INT8 variant (quantize_backbone@<backbone>), for grafting."""
    return Path("artifacts/onnx") / backbone / "backbone.int8.onnx"


def inputs_dir(inputs: str, backbone: str) -> Path:
    """What a model trains on: `features` or `arrays` of its backbone."""
    return features_dir(backbone) if inputs == "features" else arrays_dir(backbone)


# train, evaluate, leaderboard
def model_file(model: str) -> Path:
    return Path("models") / model / "model.keras"


def train_report(model: str) -> Path:
    """What a training did: its settings' names, epochs, validation figures (a cached report;
    `val_f1` also goes to the model's metrics file)."""
    return Path("reports/train") / f"{model}.json"


def live_dir(model: str) -> Path:
    """dvclive's per-epoch curves."""
    return Path("dvclive") / model


def checkpoint_dir(model: str) -> Path:
    """Per-epoch checkpoints of an unfinished training (outside DVC's outputs)."""
    return Path("checkpoints") / model


def test_metrics(model: str) -> Path:
    """The model's numbers people compare (a DVC metric): `{model: {f1, wf1, acc, top5,
    val_f1}}`, keyed by the model so `dvc exp show` names each column once, briefly."""
    return Path("metrics/models") / f"{model}.json"


def test_report(model: str) -> Path:
    """Every test figure of a model (a cached report), what code reads."""
    return Path("reports/test") / f"{model}.json"


def families_table(model: str) -> Path:
    """Per-family precision, recall and F1 on the test split (a DVC plot)."""
    return Path("reports/families") / f"{model}.csv"


def confusion_pairs(model: str) -> Path:
    return Path("plots") / model / "confusion.csv"


LEADERBOARD = Path("reports/leaderboard.md")

# select, export, quantize, benchmark, model card
EXPORT_DIR = Path("artifacts/export")
CHOICE = EXPORT_DIR / "choice.json"
TIMED_ARCHITECTURE = EXPORT_DIR / "timed.json"  # what TensorFlow's speed depends on
ONNX_FILE = Path("export/model.onnx")  # a stable path for downstream tools
EXPORT_METRICS = Path("metrics/export.json")  # parity figures only (a DVC metric)
EXPORT_REPORT = Path("reports/export.json")  # the choice, parity, thresholds, size
# The exported model's probabilities on the test split (the parity pass), reused by quantize.
TEST_PROBABILITIES = Path("artifacts/parity/test_probabilities.npy")
INT8_DIR = Path("export/int8")
INT8_FILE = INT8_DIR / "model.onnx"
INT8_NOTE = INT8_DIR / "NOT_SHIPPED.txt"
QUANTIZE_METRICS = Path("metrics/quantize.json")  # INT8 drop, agreement, shipped
QUANTIZE_REPORT = Path("reports/quantize.json")  # every figure, the method and the reason
TF_BASELINE = Path("reports/tf_baseline.json")
BENCHMARK_METRICS = Path("metrics/benchmark.json")  # batch-1 p50 per runtime and the goals
BENCHMARK_FIGURES = Path("reports/benchmark.json")  # every figure, with intervals
BENCHMARK_REPORT = Path("reports/benchmark.md")
MODEL_CARD = Path("reports/model_card.md")
