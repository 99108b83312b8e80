"""Which model downstream tools get: the candidate, the promotion decision, the registry.

The promoted model lives at a stable path, `deploy/model.onnx` (and `deploy/model.int8.onnx`
when the INT8 variant shipped). `deploy/registry.json`, tracked by git, records every
promotion with its metrics, data version, the commit the run started from and, with
`commit: true`, the tag `model-vN` of the commit that records the promotion. The pipeline's
own `export/` always holds the latest candidate; only a promotion changes `deploy/`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import yaml

from rarespecies.config import paths
from rarespecies.config.params import PromoteParams
from rarespecies.core.console import Failure
from rarespecies.core.files import read_json, write_json
from rarespecies.ops.latency import PASS, SLOWER, LatencyVerdict, versus_benchmark
from rarespecies.runtime.metrics import macro_f1
from rarespecies.runtime.predict import Classifier
from rarespecies.runtime.session import probabilities

DEPLOY_DIR = Path("deploy")
REGISTRY = DEPLOY_DIR / "registry.json"
# stable name in deploy/ -> the pipeline output it is copied from
FILES = {"model.onnx": paths.ONNX_FILE, "model.int8.onnx": paths.INT8_FILE}


class PromotionError(RuntimeError):
    """The candidate's pipeline outputs are missing or inconsistent."""


class NotPromoted(Failure):
    """No model could be promoted for a reason other than "not better"; `result` holds the
    retrain flow's result (decision, gates, candidate), as the data of its Failed state."""

    def __init__(self, message: str, result: dict) -> None:
        super().__init__(message)
        self.result = result

    def __reduce__(self) -> tuple:
        # Prefect pickles a state's data: keep both arguments.
        return type(self), (str(self), self.result)


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
        `source_revision`, the commit the run started from (with `commit: true` a clean tree,
        so the params and code are those of that commit).
    """
    try:
        export = read_json(root / paths.EXPORT_REPORT)
        bench = read_json(root / paths.BENCHMARK_FIGURES)
        metrics = read_json(root / paths.test_report(export["model"]))
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
            # The benchmark stage's figures, for the record: the latency gate measures again
            # at decision time (rarespecies.ops.latency); without a promoted model it judges
            # onnxruntime's ratio to TensorFlow as the benchmark reports it.
            "onnx_p50_ms": bench["onnxruntime_fp32"]["p50_ms"],
            "onnx_speedup_vs_best_tf": bench["onnxruntime_fp32"]["speedup_vs_best_tf"],
            "benchmark_input_size": bench["input_size"],
            "onnx_md5": md5(root / FILES["model.onnx"]),
            "int8_md5": md5(int8) if int8.is_file() else None,
            "data_md5": data_md5, "source_revision": revision or None}


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


# The decision's kinds. Only UNJUDGED and FIRST_REFUSED need an operator: the flow run ends
# Failed for them (flows/retrain.py), while a refused candidate is the normal "not better".
PROMOTED, REFUSED, UNJUDGED, FIRST_REFUSED = "promoted", "refused", "unjudged", "first-refused"


@dataclass
class Decision:
    """The promotion decision with every gate's figures.

    Attributes:
        kind: PROMOTED, REFUSED, UNJUDGED or FIRST_REFUSED.
        reason: the deciding gate's figures, one sentence.
        promoted_version: the promoted model's version before this decision, if any.
        gates: one row per gate: name, figures, verdict ("pass", "fail", "could not judge",
            "not measured").
        latency: the latency gate's figures, when measured.
    """

    kind: str
    reason: str
    promoted_version: int | None
    gates: list[dict] = field(default_factory=list)
    latency: dict | None = None

    @property
    def promote(self) -> bool:
        """Whether the candidate goes to deploy/."""
        return self.kind == PROMOTED

    @property
    def needs_attention(self) -> bool:
        """Not promoted for a reason other than "not better": the run ends Failed."""
        return self.kind in (UNJUDGED, FIRST_REFUSED)

    @property
    def headline(self) -> str:
        """The decision in the words the flow logs, the artifact shows and the README quotes."""
        if self.kind == PROMOTED:
            return "promoted the candidate"
        if self.kind == UNJUDGED:
            return "not promoted: the latency gate could not be judged"
        if self.kind == FIRST_REFUSED:
            return "not promoted: no model is promoted yet and the first candidate was refused"
        return f"kept the promoted model v{self.promoted_version}"

    def line(self) -> str:
        """The headline and the reason, one line."""
        return f"{self.headline}: {self.reason}"

    def result(self, new: dict, stages: list) -> dict:
        """The retrain flow's result: the decision, the candidate, the pipeline's stages."""
        return {"promoted": self.promote, "decision": self.kind, "line": self.line(),
                "reason": self.reason, "gates": self.gates, "latency": self.latency,
                "candidate": new, "entry": None, "stages": stages}


def decide(new: dict, current: dict | None, params: PromoteParams,
           current_f1: float | None = None,
           latency: Callable[[], LatencyVerdict] | None = None) -> Decision:
    """Promote only a better model that passes the parity and latency gates.

    The gates run cheapest first; the latency gate, which takes seconds of timing, only for a
    candidate that passed the others.

    Args:
        new: the candidate (see `candidate`).
        current: the promoted registry entry, or None before the first promotion.
        params: `promote.*`.
        current_f1: the promoted model's macro F1 on the candidate's test split, when known.
        latency: measures the latency gate now (see `rarespecies.ops.latency`); None: judged
            on the benchmark stage's ratio to TensorFlow.

    Returns:
        The decision.
    """
    version = current["version"] if current else None
    gates: list[dict] = []

    def done(kind: str, reason: str, verdict: LatencyVerdict | None = None) -> Decision:
        measured = {g["gate"] for g in gates}
        gates.extend({"gate": name, "figures": "", "verdict": "not measured"}
                     for name in ("parity", "macro F1", "latency") if name not in measured)
        if kind == REFUSED and current is None:
            kind = FIRST_REFUSED
        return Decision(kind, reason, version, gates,
                        verdict.as_dict() if verdict else None)

    if current is not None and new["onnx_md5"] == current["onnx_md5"]:
        return done(REFUSED, f"the candidate is the promoted model v{version} (same file)")
    parity = (f"max difference {new['parity_max_abs_diff']:.2e} (limit "
              f"{new['parity_tolerance']:.0e}), top-1 agreement {new['top1_agreement']:.1%} "
              f"(limit {new['min_top1_agreement']:.1%})")
    parity_ok = new["parity_max_abs_diff"] <= new["parity_tolerance"] and \
        new["top1_agreement"] >= new["min_top1_agreement"]
    gates.append({"gate": "parity", "figures": parity, "verdict": "pass" if parity_ok else "fail"})
    if not parity_ok:
        return done(REFUSED, f"ONNX parity gate failed: {parity}")
    if current is None:
        verdict = f"first promotion: test macro F1 {new['macro_f1']:.4f}"
        gates.append({"gate": "macro F1", "figures": f"{new['macro_f1']:.4f} (nothing to "
                      "compare with)", "verdict": "pass"})
    else:
        baseline = current["macro_f1"] if current_f1 is None else current_f1
        measured = "recorded" if current_f1 is None else "on the same test images"
        gain = new["macro_f1"] - baseline
        verdict = (f"test macro F1 {new['macro_f1']:.4f} vs promoted v{version} "
                   f"{baseline:.4f} ({measured}): {gain * 100:+.2f} points")
        better = gain >= params.min_gain
        gates.append({"gate": "macro F1", "figures": f"{verdict} (min_gain "
                      f"{params.min_gain * 100:.2f})", "verdict": "pass" if better else "fail"})
        if not better:
            return done(REFUSED, f"{verdict}, below promote.min_gain {params.min_gain * 100:.2f}")
    timing = latency() if latency is not None else \
        versus_benchmark(new["onnx_speedup_vs_best_tf"], params)
    gates.append({"gate": "latency", "figures": timing.figures(),
                  "verdict": {PASS: "pass", SLOWER: "fail"}.get(timing.outcome,
                                                                  "could not judge")})
    if timing.outcome == SLOWER:
        return done(REFUSED, f"latency gate failed: {timing.figures()}", timing)
    if timing.outcome != PASS:
        return done(UNJUDGED, f"{timing.figures()}: the interval is wider than "
                    f"promote.latency_ci_width {params.latency_ci_width:g} after "
                    f"promote.latency_rounds {params.latency_rounds} (is the machine busy?)",
                    timing)
    return done(PROMOTED, f"{verdict}; {timing.figures()}", timing)


def decision_markdown(decision: Decision, new: dict, current: dict | None) -> str:
    """The decision as the Prefect artifact shows it: candidate, promoted model, gates.

    Args:
        decision: from `decide`.
        new: the candidate.
        current: the promoted entry before the decision, or None.

    Returns:
        Markdown.
    """
    def model(entry: dict) -> str:
        return (f"{entry['model']}, test macro F1 {entry['macro_f1']:.4f}, ONNX md5 "
                f"`{entry['onnx_md5']}`, data md5 `{entry['data_md5']}`")

    promoted = (f"v{current['version']} ({model(current)}, git tag "
                f"`{current.get('git_tag') or 'none'}`)" if current else "none yet")
    rows = "\n".join(f"| {g['gate']} | {g['figures'] or '-'} | {g['verdict']} |"
                     for g in decision.gates)
    return (f"# Retrain decision: {decision.headline}\n\n{decision.reason}\n\n"
            f"- **Candidate**: {model(new)}\n- **Promoted model**: {promoted}\n\n"
            f"| gate | figures | verdict |\n|---|---|---|\n{rows}\n")


def read_registry(root: Path) -> dict:
    """The registry: `current` (the promoted entry or None) and the `history` of promotions."""
    path = root / REGISTRY
    return read_json(path) if path.is_file() else {"current": None, "history": []}


def promote(root: Path, new: dict, reason: str, tagged: bool = False) -> dict:
    """Place the candidate's files at the stable paths and record it; all or nothing.

    Args:
        root: the DVC project.
        new: the candidate.
        reason: why it was promoted.
        tagged: the promotion will be committed and tagged `model-v<version>`: the entry
            records that tag (a commit cannot contain its own hash; the tag names it).

    Returns:
        The new registry entry.
    """
    registry = read_registry(root)
    entry = {"version": len(registry["history"]) + 1,
             "promoted_at": datetime.now(UTC).isoformat(timespec="seconds"), **new,
             "reason": reason}
    entry["git_tag"] = f"model-v{entry['version']}" if tagged else None
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
