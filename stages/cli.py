"""`rarespecies`: the commands that are not DVC stages (data acquisition, prediction).

Imports stay inside the commands: `predict` must start quickly and run where only the base
install (onnxruntime, NumPy, Pillow) is present, without TensorFlow or DVC.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Rare-species family classifier: data and model commands.",
                  pretty_exceptions_enable=False, no_args_is_help=True)
acquire = typer.Typer(help="Fill data/ from a source, then version it with `dvc add`.",
                      no_args_is_help=True)
app.add_typer(acquire, name="acquire")
_state = {"debug": False}
Out = Annotated[Path, typer.Option(help="Data folder to fill (params.yaml data.dir).")]
NoVersion = Annotated[bool, typer.Option("--no-version", help="Skip `dvc add`.")]


# sysexits.h "try again later": the failure may not recur (network); flows.retrain retries
# `acquire` on this code only. Exit 1 means retrying the same command fails the same way.
EX_TEMPFAIL = 75


class DataError(RuntimeError):
    """data/ cannot be brought in line with data.dvc."""


@app.callback()
def _main(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False) -> None:
    _state["debug"] = debug


def _fail(error: Exception) -> None:
    if _state["debug"]:
        raise error
    typer.secho(f"error: {error}", fg="red", err=True)
    raise typer.Exit(EX_TEMPFAIL if getattr(error, "transient", False) else 1)


@app.command()
def sample(
    out: Annotated[Path, typer.Option(help="Folder to (re)write.")] = Path("data"),
    tiny: Annotated[bool, typer.Option(help="A handful of small images, for tests.")] = False,
    seed: Annotated[int, typer.Option(help="Generator seed (42 is what data.dvc pins).")] = 42,
) -> None:
    """Write the embedded synthetic sample in the course layout (deterministic bytes)."""
    from dataclasses import replace

    from stages.sample import TINY, SampleSpec, generate_sample

    try:
        summary = generate_sample(out, replace(TINY if tiny else SampleSpec(), seed=seed),
                                  progress=True)
    except (OSError, ValueError) as error:
        _fail(error)
    typer.echo(f"wrote {summary['images']} synthetic images of {summary['families']} families "
               f"({summary['phyla']} phyla) to {out}/")


def _dvc(*args: str) -> subprocess.CompletedProcess:
    dvc = shutil.which("dvc") or str(Path(sys.executable).with_name("dvc"))
    return subprocess.run([dvc, *args], capture_output=True, text=True)


def data_matches(target: str = "data.dvc") -> bool:
    """True when the data folder holds exactly what `target` pins.

    Hashes the workspace with DVC itself; unlike `dvc status`, this also answers on a fresh
    clone whose DVC cache is still empty.
    """
    from dvc.repo import Repo

    with Repo() as repo:
        (stage,) = repo.stage.collect(target)
        return all(out.exists and out.get_hash() == out.hash_info for out in stage.outs)


def _version(out: Path) -> None:
    """`dvc add` the folder, so the pipeline and git see exactly this version of the data."""
    proc = _dvc("add", "--quiet", str(out))
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise DataError(f"`dvc add {out}` failed ({reason}): run this inside the project (a "
                        "DVC repository), or pass --no-version")
    typer.echo(f"versioned {out}/ with DVC: commit {out}.dvc to record this data version")


@acquire.command("sample")
def acquire_sample(out: Out = Path("data"), no_version: NoVersion = False,
                   tiny: Annotated[bool, typer.Option(help="A handful of images.")] = False,
                   seed: Annotated[int, typer.Option(help="Generator seed.")] = 42) -> None:
    """The embedded synthetic sample (what data.dvc pins by default)."""
    sample(out=out, tiny=tiny, seed=seed)
    try:
        if not no_version:
            _version(out)
    except DataError as error:
        _fail(error)


@acquire.command("huggingface")
def acquire_huggingface(
    out: Out = Path("data"), no_version: NoVersion = False,
    revision: Annotated[str | None, typer.Option(
        help="Dataset commit to download (default: the pinned one).")] = None,
    force: Annotated[bool, typer.Option(help="Replace a non-empty data folder.")] = False,
) -> None:
    """imageomics/rare-species from the Hugging Face Hub at a pinned revision (HF layout)."""
    from stages.huggingface import REVISION, AcquireError, download_dataset

    try:
        summary = download_dataset(out, revision=revision or REVISION, force=force)
        typer.echo(f"downloaded {summary['images']} images at commit {summary['commit']} "
                   f"to {out}/")
        if not no_version:
            _version(out)
    except (AcquireError, DataError, OSError) as error:
        _fail(error)


@acquire.command("eol")
def acquire_eol(
    catalog: Annotated[Path, typer.Option(
        help="CSV of images: eol_content_id, eol_page_id, md5 and a source URL column "
             "(as the dataset's metadata/licenses.csv).", exists=True, dir_okay=False)],
    taxonomy: Annotated[Path | None, typer.Option(
        help="metadata.csv or rarespecies-catalog.csv giving phylum and family, when the "
             "catalogue lacks them.", exists=True, dir_okay=False)] = None,
    out: Out = Path("data"), no_version: NoVersion = False,
    report: Annotated[Path, typer.Option(help="Failure report (JSON).")] = Path(
        "reports/acquire_eol.json"),
    workers: Annotated[int, typer.Option(min=1, help="Concurrent downloads.")] = 8,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds without data.")] = 30.0,
    retries: Annotated[int, typer.Option(min=0, help="Retries per image.")] = 4,
) -> None:
    """Download the catalogue's images from EOL into the course layout, verified by md5.

    Resumable: images already present with the right md5 are skipped. If some failed, exit 75
    when a rerun may fetch them all (network errors only), else 1.
    """
    from stages.download import CatalogError, download_catalog, summarize
    from stages.io import read_json

    try:
        result = download_catalog(catalog, out, report, taxonomy=taxonomy, workers=workers,
                                  timeout=timeout, retries=retries)
    except KeyboardInterrupt:
        # Verified images are kept and listed in metadata.csv; a rerun resumes from there.
        typer.echo(summarize(read_json(report)), err=True)
        raise typer.Exit(130) from None
    except (CatalogError, OSError) as error:
        _fail(error)
    typer.echo(summarize(result))
    try:
        if not no_version:
            _version(out)
    except DataError as error:
        _fail(error)
    failed = result["counts"]["failed"]
    if failed:
        lasting = failed - sum(problem["retryable"] for problem in result["problems"])
        advice = (f"{lasting} cannot succeed as listed (see the reasons): fix or remove "
                  "those rows" if lasting else "run the same command again to retry them")
        typer.secho(f"{failed} images failed: see {report}; {advice}", fg="yellow", err=True)
        raise typer.Exit(1 if lasting else EX_TEMPFAIL)


@app.command("ensure-data")
def ensure_data() -> None:
    """Make data/ match data.dvc: keep it, `dvc pull` it, or regenerate the sample."""
    try:
        has_remote = bool(_dvc("remote", "list").stdout.strip())
        if data_matches():
            typer.echo("data/ matches data.dvc")
        elif has_remote and _dvc("pull", "data.dvc").returncode == 0 and data_matches():
            typer.echo("data/ pulled from the DVC remote")
        else:
            if has_remote:
                typer.echo("the DVC remote could not provide data/; regenerating the sample")
            sample(out=Path("data"), tiny=False, seed=42)
            if not data_matches():
                raise DataError("data/ does not match data.dvc after regenerating the sample: "
                                "data.dvc pins other data; `dvc pull` it from its remote or "
                                "`dvc add data` to version what is there")
        # Fill the DVC cache too (a no-op when it holds the data), so `dvc push`, `dvc checkout`
        # and `dvc status` work from here on.
        _dvc("commit", "--force", "--quiet", "data.dvc")
    except (DataError, OSError) as error:
        _fail(error)


@app.command()
def predict(
    model: Annotated[Path, typer.Argument(help="An ONNX model exported by the pipeline.")],
    images: Annotated[list[Path], typer.Argument(help="Image files or folders (recursive).")],
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Families per image.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Print the most probable families of each image. Exit 1 if any image failed."""
    from stages.predict import Classifier, ModelError, image_files
    from stages.predict import predict as classify

    try:
        classifier = Classifier(model)
    except ModelError as error:
        _fail(error)
    seen = failed = 0
    for result in classify(classifier, image_files(images), top_k):
        seen += 1
        failed += result.error is not None
        if as_json:
            typer.echo(json.dumps({"path": str(result.path), "error": result.error, "top": [
                {"family": label, "probability": round(p, 6)} for label, p in result.top]}))
        elif result.error:
            typer.secho(f"{result.path}: error: {result.error}", fg="red", err=True)
        else:
            typer.echo(f"{result.path}: " + ", ".join(f"{label} {p:.3f}"
                                                       for label, p in result.top))
    if seen == 0:
        _fail(ValueError(f"no images found in {', '.join(map(str, images))}"))
    typer.echo(f"classified {seen - failed} of {seen} images"
               + (f"; {failed} could not be read" if failed else ""), err=True)
    raise typer.Exit(1 if failed else 0)


if __name__ == "__main__":
    app()
