"""What grafting saves: the export of a head on cached features, whole vs grafted, on the sample.

Runs, one at a time in child processes (each conversion of ConvNeXtBase peaks near 10.5 GB),
from the select stage's folder `artifacts/export/` and the features stage's backbone weights:

1. `backbone`: the export_backbone conversion (once per backbone setting);
2. `grafted`: the export stage as it runs now: the head converted alone, grafted on, parity
   on the whole test split;
3. `whole` (skip with `--no-whole`): the export stage as it ran before: the whole model
   converted, same parity gate.

It prints each step's wall time and peak memory, both parity figures, the two graphs' node
counts, the largest probability difference between the grafted and the whole file, and the
quantize stage's INT8 gate (`quantize` in params.yaml) run on each file.

    python benchmarks/graft_export.py [--out /tmp/graft] [--no-whole]
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from rarespecies.config import paths

app = typer.Typer(add_completion=False)


def _step(kind: str, out: Path) -> None:
    """One measured step, in this (child) process; writes `<out>/<kind>.json`."""
    from rarespecies.config.params import BackboneParams, load_params
    from rarespecies.core.files import read_json
    from rarespecies.export.export import export
    from rarespecies.export.graft import export_backbone

    params = load_params()
    choice = read_json(paths.EXPORT_DIR / "choice.json")
    name = choice["settings"]["backbone"]
    start = time.perf_counter()
    report: dict = {}
    if kind == "backbone":
        export_backbone(BackboneParams(**choice["backbone"]),
                        paths.features_dir(name) / paths.BACKBONE_WEIGHTS,
                        out / "backbone.onnx", params.export.opset, params.export.optimize)
    else:
        graphs = (lambda _: out / "backbone.onnx") if kind == "grafted" else None
        report = export(paths.EXPORT_DIR, params.export, out / f"{kind}.onnx",
                        out / f"{kind}_report.json", params.ingest.max_side, graphs)
    seconds = time.perf_counter() - start
    (out / f"{kind}.json").write_text(json.dumps({"seconds": seconds, "report": report}))


def _measure(kind: str, out: Path) -> dict:
    """Run `_step` in a child process; its figures and the child's peak resident memory."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run([sys.executable, __file__, "step", kind, "--out", str(out)], check=True)
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = json.loads((out / f"{kind}.json").read_text())
    # ru_maxrss of children is the largest of any child so far: exact for a new maximum only.
    result["peak_gb"] = peak_kb / 2**20 if peak_kb > before else None
    return result


@app.command()
def step(kind: str, out: Annotated[Path, typer.Option()]) -> None:
    """(internal) one measured step: backbone, grafted or whole."""
    _step(kind, out)


@app.command()
def main(out: Annotated[Path, typer.Option(help="Folder for the files it writes.")] = Path(
             "/tmp/rarespecies-graft"),
         whole: Annotated[bool, typer.Option(help="Also convert the whole model.")] = True
         ) -> None:
    """Measure the backbone conversion, the grafted export and (by default) the whole one."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    from rarespecies.config.params import load_params
    from rarespecies.export.optimize import op_counts
    from rarespecies.export.quantize import quantize
    from rarespecies.modeling.datasets import load_split

    out.mkdir(parents=True, exist_ok=True)
    kinds = ["backbone", "grafted"] + (["whole"] if whole else [])
    for kind in kinds:  # each line as soon as its step is done
        result = _measure(kind, out)
        peak = f"{result['peak_gb']:.1f} GB" if result["peak_gb"] else "below an earlier step"
        line = f"{kind:>8}: {result['seconds']:6.1f} s, peak memory {peak}"
        if result["report"]:
            report = result["report"]
            line += (f"; parity max |p_onnx - p_keras| {report['max_abs_diff']:.2e} on "
                     f"{report['images']} test images, top-1 agreement "
                     f"{report['top1_agreement']:.2%}, {report['onnx_mb']} MB")
        typer.echo(line)
    files = {kind: out / f"{kind}.onnx" for kind in kinds if kind != "backbone"}
    for kind, path in files.items():
        counts = op_counts(onnx.load(str(path), load_external_data=False))
        typer.echo(f"{kind:>8} nodes: {sum(counts.values())} "
                   f"{json.dumps(dict(sorted(counts.items())))}")
    for kind, path in files.items():
        report = quantize(path, paths.EXPORT_DIR, out / f"int8_{kind}", load_params().quantize,
                          out / f"quantize_{kind}.json")
        typer.echo(f"{kind:>8} INT8: shipped {report['shipped']}, {report['int8_mb']} MB, "
                   f"top-1 agreement {report['top1_agreement']:.2%}: {report['reason']}")
    if whole:
        images, _ = load_split(paths.EXPORT_DIR, "test")
        probabilities = [
            np.concatenate([ort.InferenceSession(str(path)).run(
                None, {"pixels": np.asarray(images[i:i + 16])})[0]
                for i in range(0, len(images), 16)]) for path in files.values()]
        typer.echo(f"max |p_grafted - p_whole| on {len(images)} test images: "
                   f"{np.max(np.abs(probabilities[0] - probabilities[1])):.2e}")


if __name__ == "__main__":
    # `python graft_export.py` measures; `python graft_export.py step KIND --out DIR` is a child.
    if len(sys.argv) > 1 and sys.argv[1] == "step":
        app()
    else:
        typer.run(main)
