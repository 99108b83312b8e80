"""Picking the model to export (the select stage) and gathering exactly what export needs.

`export.model` names a model (the study shipped `convnext_full`) or is `best`: the highest
validation macro F1 (test scores stay untouched by the choice). The chosen model's files are
copied into `artifacts/export/` with `choice.json` (the model, the reason, its settings) and
`timed.json` (the architecture TensorFlow's baseline speed depends on). When
another model changes but the choice does not, that folder comes out byte-identical, so DVC
skips the slow export and benchmark.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from rarespecies.config import paths
from rarespecies.config.params import Params
from rarespecies.config.plan import plan
from rarespecies.core.files import atomic_path, read_json, write_json
from rarespecies.export.calibration import spread
from rarespecies.modeling.datasets import load_split


def choose(params: Params, root: Path) -> tuple[str, str]:
    """The model to export and why.

    Args:
        params: the settings (`export.model` and the models).
        root: the project folder, holding the train stage's reports.

    Returns:
        (model name, reason).
    """
    wanted = params.export.model
    if wanted != "best":
        return wanted, f"export.model names {wanted}"
    scores = {name: read_json(root / paths.train_report(name))["val_macro_f1"]
              for name in params.models}
    best = max(scores, key=scores.get)  # the first listed wins a tie
    ranking = ", ".join(f"{name} {score:.4f}" for name, score in
                        sorted(scores.items(), key=lambda item: -item[1]))
    return best, f"export.model is best: highest validation macro F1 ({ranking})"


def select(params: Params, root: Path, out_dir: Path) -> dict:
    """Copy what export, quantize and the model card need into `out_dir`.

    That is the chosen model, the test split, a spread of training images for INT8
    calibration, its per-family table and the labels. A head's backbone weights stay in its
    features folder, which export reads (a 350 MB copy per head experiment, for DVC to hash
    and cache again, bought nothing).

    Args:
        params: the settings.
        root: the project folder holding models/, artifacts/, metrics/ and reports/.
        out_dir: the folder to (re)create.

    Returns:
        The choice (also written to `out_dir/choice.json`).
    """
    model, reason = choose(params, root)
    entry = plan(params)["trained"][model]
    inputs = root / paths.arrays_dir(entry["backbone"])
    choice = {
        "model": model, "reason": reason, "inputs": entry["inputs"],
        "backbone": params.backbone_of(model).model_dump(mode="json"),
        "settings": params.model(model).model_dump(mode="json"),
        "test_metrics": read_json(root / paths.test_report(model)),
    }
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        shutil.copyfile(root / paths.model_file(model), tmp / "model.keras")
        for part in "xy":
            shutil.copyfile(paths.split_file(inputs, "test", part),
                            paths.split_file(tmp, "test", part))
        # Calibration images for static INT8 quantization: a fixed spread of the train split.
        x, y = load_split(inputs, "train")
        rows = spread(len(x))
        np.save(paths.split_file(tmp, "calibration", "x"), np.asarray(x[rows]))
        np.save(paths.split_file(tmp, "calibration", "y"), y[rows])
        shutil.copyfile(root / paths.LABELS, tmp / "labels.json")
        shutil.copyfile(root / paths.families_table(model), tmp / "per_family.csv")
        write_json(tmp / "choice.json", choice)
        write_json(tmp / paths.TIMED_ARCHITECTURE.name, timed_architecture(
            choice, len(read_json(root / paths.LABELS))))
    return choice


def timed_architecture(choice: dict, classes: int) -> dict:
    """What TensorFlow's inference speed depends on, and nothing else (`timed.json`).

    The benchmark's TensorFlow baseline depends on this file alone, so it is measured once
    per architecture. A head trained on cached features does well under 0.1% of the
    backbone's arithmetic, so its settings are left out and a head-only experiment reuses
    the baseline; a model trained end to end is timed whole.

    Args:
        choice: the select stage's choice.
        classes: number of families.

    Returns:
        {"backbone": its settings, "head": the head's settings or None, "classes": classes}.
    """
    end_to_end = choice["inputs"] != "features"
    return {"backbone": choice["backbone"],
            "head": choice["settings"]["head"] if end_to_end else None, "classes": classes}
