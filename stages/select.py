"""Stage `select`: pick the model to export and gather exactly what export needs.

`export.model` names a model (the study shipped `convnext_full`) or is `best`: the highest
validation macro F1 (test scores stay untouched by the choice). The chosen model's files are
copied into `artifacts/export/` with `choice.json` (the model, the reason, its settings). When
another model changes but the choice does not, that folder comes out byte-identical, so DVC
skips the slow export and benchmark.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from stages.data import load_split
from stages.features import BACKBONE_WEIGHTS
from stages.io import atomic_path, read_json, write_json
from stages.params import Params
from stages.plan import plan

CALIBRATION_IMAGES = 64


def choose(params: Params, train_reports: Path) -> tuple[str, str]:
    """The model to export and why.

    Args:
        params: the settings (`export.model` and the models).
        train_reports: folder of the train stage's `<model>.json` reports.

    Returns:
        (model name, reason).
    """
    wanted = params.export.model
    if wanted != "best":
        return wanted, f"export.model names {wanted}"
    scores = {name: read_json(train_reports / f"{name}.json")["val_macro_f1"]
              for name in params.models}
    best = max(scores, key=scores.get)  # the first listed wins a tie
    ranking = ", ".join(f"{name} {score:.4f}" for name, score in
                        sorted(scores.items(), key=lambda item: -item[1]))
    return best, f"export.model is best: highest validation macro F1 ({ranking})"


def select(params: Params, root: Path, out_dir: Path) -> dict:
    """Copy what export, quantize and the model card need into `out_dir`.

    That is the chosen model, its backbone weights (features models), the test split, a
    spread of training images for INT8 calibration, its per-family table and the labels.

    Args:
        params: the settings.
        root: the project folder holding models/, artifacts/, metrics/ and reports/.
        out_dir: the folder to (re)create.

    Returns:
        The choice (also written to `out_dir/choice.json`).
    """
    model, reason = choose(params, root / "reports/train")
    entry = plan(params)["trained"][model]
    inputs = root / "artifacts/arrays" / entry["backbone"]
    choice = {
        "model": model, "reason": reason, "inputs": entry["inputs"],
        "backbone": params.backbone_of(model).model_dump(mode="json"),
        "settings": params.model(model).model_dump(mode="json"),
        "test_metrics": read_json(root / f"metrics/models/{model}.json"),
    }
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        shutil.copyfile(root / f"models/{model}/model.keras", tmp / "model.keras")
        if entry["inputs"] == "features":
            shutil.copyfile(root / "artifacts/features" / entry["backbone"] / BACKBONE_WEIGHTS,
                            tmp / BACKBONE_WEIGHTS)
        for name in ("test_x.npy", "test_y.npy"):
            shutil.copyfile(inputs / name, tmp / name)
        # Calibration images for static INT8 quantization: a fixed spread of the train split.
        x, y = load_split(inputs, "train")
        spread = np.unique(np.linspace(0, len(x) - 1, CALIBRATION_IMAGES).astype(int))
        np.save(tmp / "calibration_x.npy", np.asarray(x[spread]))
        np.save(tmp / "calibration_y.npy", y[spread])
        shutil.copyfile(root / "artifacts/split/labels.json", tmp / "labels.json")
        shutil.copyfile(root / f"reports/families/{model}.csv", tmp / "per_family.csv")
        write_json(tmp / "choice.json", choice)
    return choice


def main() -> None:
    """Run the stage with `export.model`, `models` and `backbones`."""
    from stages.cli_util import stage_main
    from stages.params import load_params

    def work() -> str:
        choice = select(load_params(), Path("."), Path("artifacts/export"))
        return f"{choice['model']} ({choice['reason']})"

    stage_main("select", work)


if __name__ == "__main__":
    main()
