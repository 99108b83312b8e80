"""Stage `evaluate@<model>`: test-split macro F1 (first), weighted F1, accuracy and top-5 (a
report, and the metrics file with the validation macro F1), the per-family table and the
confusion pairs of a trained model."""

from __future__ import annotations

from typing import Annotated

import typer

from rarespecies.config import paths
from rarespecies.config.plan import check_declared
from rarespecies.core.console import Debug, run_command, run_stage
from rarespecies.core.files import read_json
from rarespecies.modeling.evaluate import evaluate, write_headline


def work(model: str) -> str:
    """Evaluate on the inputs the model's training report names."""
    check_declared("trained", model)
    trained = read_json(paths.train_report(model))
    metrics = evaluate(paths.model_file(model),
                       paths.inputs_dir(trained["inputs"], trained["backbone"]),
                       read_json(paths.LABELS), paths.test_report(model),
                       paths.families_table(model), paths.confusion_pairs(model))
    write_headline(paths.test_metrics(model), model, metrics, trained)
    return (f"test macro F1 {metrics['macro_f1']:.4f}, accuracy {metrics['accuracy']:.4f}, "
            f"top-5 {metrics['top5_accuracy']:.4f} on {metrics['test_images']} images")


def main(model: Annotated[str, typer.Argument(help="A key of `models` in params.yaml.")],
         debug: Debug = False) -> None:
    """Score one trained model on the test split."""
    run_stage(f"evaluate@{model}", lambda: work(model), debug)


if __name__ == "__main__":
    run_command(main)
