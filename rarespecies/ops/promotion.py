"""Which model downstream tools get: the candidate, the promotion decision, the registry.

The promoted model lives at a stable path, `deploy/model.onnx` (and `deploy/model.int8.onnx`
when the INT8 variant shipped). `deploy/registry.json`, tracked by git, records every
promotion with its metrics, data version and git revision. The pipeline's own `export/`
always holds the latest candidate; only a promotion changes `deploy/`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import yaml

from rarespecies.config import paths
from rarespecies.config.params import PromoteParams
from rarespecies.core.files import read_json, write_json
from rarespecies.runtime.metrics import macro_f1
from rarespecies.runtime.predict import Classifier
from rarespecies.runtime.session import probabilities

DEPLOY_DIR = Path("deploy")
REGISTRY = DEPLOY_DIR / "registry.json"
# stable name in deploy/ -> the pipeline output it is copied from
FILES = {"model.onnx": paths.ONNX_FILE, "model.int8.onnx": paths.INT8_FILE}


class PromotionError(RuntimeError):
    """The candidate's pipeline outputs are missing or inconsistent."""


def md5(path: Path) -> str:
    """MD5 of a file, as DVC computes it (the registry's identity of a model file)."""
    digest = hashlib.md5()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def candidate(root: Path) -> dict:
    """The model the pipeline just produced, with everything a promotion must record.

    Args:
        root: the DVC project after `dvc repro`.

    Returns:
        Model name, test macro F1, parity and latency figures, file hashes, data version and
        git revision.
    """
    try:
        export = read_json(root / paths.EXPORT_METRICS)
        bench = read_json(root / paths.BENCHMARK_METRICS)
        metrics = read_json(root / paths.test_metrics(export["model"]))
        data_md5 = yaml.safe_load((root / paths.DATA_DVC).read_text())["outs"][0]["md5"]
    except (OSError, KeyError, ValueError) as error:
        raise PromotionError(f"the pipeline's outputs are incomplete ({error}): run the "
                             "pipeline flow first") from None
    revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True).stdout.strip()
    int8 = root / FILES["model.int8.onnx"]
    return {"model": export["model"], "macro_f1": metrics["macro_f1"],
            "test_images": metrics["test_images"],
            "parity_max_abs_diff": export["max_abs_diff"],
            "parity_tolerance": export["tolerance"],
            "top1_agreement": export["top1_agreement"],
            "min_top1_agreement": export["min_top1_agreement"],
            "onnx_p50_ms": bench["onnxruntime_fp32"]["p50_ms"],
            "benchmark_input_size": bench["input_size"],
            "onnx_md5": md5(root / FILES["model.onnx"]),
            "int8_md5": md5(int8) if int8.is_file() else None,
            "data_md5": data_md5, "git_revision": revision or None}


def rescore_promoted(root: Path) -> float | None:
    """Test macro F1 of the promoted model on the candidate's test split.

    New data brings a new test split, so the promoted model's recorded F1 was measured on
    other images. Scoring both on the same images compares models, not splits.

    Returns:
        The macro F1, or None when the promoted file is gone or cannot read these images
        (other families or input size): then the recorded figure is all there is.
    """
    if not (root / DEPLOY_DIR / "model.onnx").is_file():
        return None
    promoted = Classifier(root / DEPLOY_DIR / "model.onnx")
    export_dir = root / paths.EXPORT_DIR
    labels = read_json(export_dir / "labels.json")
    images, y_true = (np.load(paths.split_file(export_dir, "test", part), mmap_mode="r")
                      for part in "xy")
    if promoted.labels != labels or promoted.input_size != images.shape[1]:
        return None
    return macro_f1(np.asarray(y_true), probabilities(promoted.session, images).argmax(1))


def decide(new: dict, current: dict | None, params: PromoteParams,
           current_f1: float | None = None) -> tuple[bool, str]:
    """Promote only a better model that passes the parity and latency gates.

    Args:
        new: the candidate (see `candidate`).
        current: the promoted registry entry, or None before the first promotion.
        params: `promote.min_gain` and `promote.max_p50_ms`.
        current_f1: the promoted model's macro F1 on the candidate's test split, when known.

    Returns:
        (promote?, the reason in one sentence).
    """
    if current is not None and new["onnx_md5"] == current["onnx_md5"]:
        return False, f"the candidate is the promoted model v{current['version']} (same file)"
    if new["parity_max_abs_diff"] > new["parity_tolerance"] or \
            new["top1_agreement"] < new["min_top1_agreement"]:
        return False, (f"ONNX parity gate failed: max difference {new['parity_max_abs_diff']:.2e}"
                       f" (limit {new['parity_tolerance']:.0e}), top-1 agreement "
                       f"{new['top1_agreement']:.1%} (limit {new['min_top1_agreement']:.1%})")
    if new["onnx_p50_ms"] > params.max_p50_ms:
        return False, (f"latency gate failed: onnxruntime batch-1 p50 {new['onnx_p50_ms']:.1f} ms"
                       f" > promote.max_p50_ms {params.max_p50_ms:g} ms")
    if current is None:
        return True, f"first promotion: test macro F1 {new['macro_f1']:.4f}"
    baseline = current["macro_f1"] if current_f1 is None else current_f1
    measured = "recorded" if current_f1 is None else "on the same test images"
    gain = new["macro_f1"] - baseline
    verdict = (f"test macro F1 {new['macro_f1']:.4f} vs promoted v{current['version']} "
               f"{baseline:.4f} ({measured}): {gain * 100:+.2f} points")
    if gain < params.min_gain:
        return False, f"{verdict}, below promote.min_gain {params.min_gain * 100:.2f}"
    return True, verdict


def read_registry(root: Path) -> dict:
    """The registry: `current` (the promoted entry or None) and the `history` of promotions."""
    path = root / REGISTRY
    return read_json(path) if path.is_file() else {"current": None, "history": []}


def promote(root: Path, new: dict, reason: str) -> dict:
    """Place the candidate's files at the stable paths and record it; all or nothing.

    Args:
        root: the DVC project.
        new: the candidate.
        reason: why it was promoted.

    Returns:
        The new registry entry.
    """
    registry = read_registry(root)
    entry = {"version": len(registry["history"]) + 1,
             "promoted_at": datetime.now(UTC).isoformat(timespec="seconds"), **new,
             "reason": reason}
    deploy = root / DEPLOY_DIR
    deploy.mkdir(exist_ok=True)
    # Stage every file beside its target first; only renames remain, and those are undone
    # from the backups if anything fails, so downstream tools never see a mixed state.
    staged, backups, placed = {}, {}, []
    try:
        for name, source in FILES.items():
            if (root / source).is_file():
                staged[name] = deploy / f".{name}.incoming"
                shutil.copyfile(root / source, staged[name])
        for name in FILES:  # an INT8 file the candidate lacks must not outlive its fp32 model
            if (deploy / name).is_file():
                backups[name] = deploy / f".{name}.previous"
                os.replace(deploy / name, backups[name])
        for name, path in staged.items():
            os.replace(path, deploy / name)
            placed.append(name)
        write_json(root / REGISTRY, {"current": entry, "history": [*registry["history"], entry]})
    except BaseException:
        for name in placed:
            (deploy / name).unlink()
        for name, path in backups.items():
            os.replace(path, deploy / name)
        raise
    finally:
        for path in (*staged.values(), *backups.values()):
            path.unlink(missing_ok=True)
    return entry
