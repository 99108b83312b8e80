"""Stage `export`: the selected model to `export/model.onnx` (uint8 pixels in, probabilities
out, labels and provenance in its metadata), kept only if it matches Keras on the test split."""

from __future__ import annotations

import subprocess

import typer

from rarespecies.config import paths
from rarespecies.config.params import load_params
from rarespecies.core.console import Debug, run_command, run_stage
from rarespecies.export.export import export


def git_revision() -> str:
    """HEAD's commit, marked `-dirty` when tracked files differ from it: for the log only."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def work() -> str:
    """Export with the `export` keys and `ingest.max_side` of params.yaml."""
    params = load_params()
    report = export(paths.EXPORT_DIR, params.export, paths.ONNX_FILE, paths.EXPORT_REPORT,
                    paths.EXPORT_METRICS, params.ingest.max_side,
                    probabilities_out=paths.TEST_PROBABILITIES)
    # Not in the file nor in a metric: neither is the same from one run to the next.
    typer.echo(f"export: made from git {git_revision()}")
    route = "head grafted onto its backbone's graph" if report["grafted"] else "converted whole"
    return (f"{report['model']} ({route}) -> {paths.ONNX_FILE} ({report['onnx_mb']} MB, opset "
            f"{report['opset']}): max |p_onnx - p_keras| {report['max_abs_diff']:.2e} on "
            f"{report['images']} test images, top-1 agreement {report['top1_agreement']:.2%}")


def main(debug: Debug = False) -> None:
    """Convert the selected model to ONNX behind the parity gate."""
    run_stage("export", work, debug)


if __name__ == "__main__":
    run_command(main)
