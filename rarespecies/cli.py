"""`rarespecies`: the commands that are not DVC stages (data acquisition, prediction).

Imports stay inside the commands: `predict` must start quickly and run with the base install
alone (onnxruntime, NumPy, Pillow, typer), without TensorFlow or DVC. The other commands need
the pipeline extra and, without it, say so in one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from rarespecies.core.console import EXIT_FAILED, Failure, one_line_errors

app = typer.Typer(help="Rare-species family classifier: data and model commands.",
                  pretty_exceptions_enable=False, no_args_is_help=True, add_completion=False)
acquire = typer.Typer(help="Fill data/ from a source, then version it with `dvc add`.",
                      no_args_is_help=True)
app.add_typer(acquire, name="acquire")
_state = {"debug": False}
Out = Annotated[Path, typer.Option(help="Data folder to fill (params.yaml data.dir).")]
NoVersion = Annotated[bool, typer.Option("--no-version", help="Skip `dvc add`.")]


@app.callback()
def _main(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False) -> None:
    _state["debug"] = debug


def _errors(command: str):
    return one_line_errors(f"rarespecies {command}", _state["debug"])


def _sample(out: Path, tiny: bool, seed: int) -> None:
    from dataclasses import replace

    from rarespecies.data.acquire.sample import TINY, SampleSpec, generate_sample

    summary = generate_sample(out, replace(TINY if tiny else SampleSpec(), seed=seed),
                              progress=True)
    typer.echo(f"wrote {summary['images']} synthetic images of {summary['families']} families "
               f"({summary['phyla']} phyla) to {out}/")


def _version(out: Path, no_version: bool) -> None:
    if not no_version:
        from rarespecies.data.acquire.versioning import version

        typer.echo(version(out))


@app.command()
def sample(
    out: Annotated[Path, typer.Option(help="Folder to (re)write.")] = Path("data"),
    tiny: Annotated[bool, typer.Option(help="A handful of small images, for tests.")] = False,
    seed: Annotated[int, typer.Option(help="Generator seed (42 is what data.dvc pins).")] = 42,
) -> None:
    """Write the embedded synthetic sample in the course layout (deterministic bytes)."""
    with _errors("sample"):
        _sample(out, tiny, seed)


@acquire.command("sample")
def acquire_sample(out: Out = Path("data"), no_version: NoVersion = False,
                   tiny: Annotated[bool, typer.Option(help="A handful of images.")] = False,
                   seed: Annotated[int, typer.Option(help="Generator seed.")] = 42) -> None:
    """The embedded synthetic sample (what data.dvc pins by default)."""
    with _errors("acquire sample"):
        _sample(out, tiny, seed)
        _version(out, no_version)


@acquire.command("huggingface")
def acquire_huggingface(
    out: Out = Path("data"), no_version: NoVersion = False,
    revision: Annotated[str | None, typer.Option(
        help="Dataset commit to download (default: the pinned one).")] = None,
    force: Annotated[bool, typer.Option(help="Replace a non-empty data folder.")] = False,
) -> None:
    """imageomics/rare-species from the Hugging Face Hub at a pinned revision (HF layout)."""
    with _errors("acquire huggingface"):
        from rarespecies.data.acquire.huggingface import REVISION, download_dataset

        summary = download_dataset(out, revision=revision or REVISION, force=force)
        typer.echo(f"downloaded {summary['images']} images at commit {summary['commit']} "
                   f"to {out}/")
        _version(out, no_version)


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
    max_bytes: Annotated[int, typer.Option(
        min=1, help="Largest image accepted, in bytes (default 64 MiB).")] = 64 << 20,
    deadline: Annotated[float, typer.Option(
        min=0.1, help="Seconds one image may take in all, retries included.")] = 600.0,
) -> None:
    """Download the catalogue's images from EOL into the course layout, verified by md5.

    Resumable: images already present with the right md5 are skipped; an earlier verified
    copy stays until a new one replaces it. Refused and failed rows are listed on stderr and in
    the report. Exit 0 only when every row was fetched or present; 75 when a rerun may fetch
    what failed (network, server errors, deadline), else 1. `dvc add` runs only when some row
    was fetched or present.
    """
    with _errors("acquire eol"):
        from rarespecies.core.files import read_json
        from rarespecies.data.acquire.eol import download_catalog, problem_lines, summarize

        try:
            result = download_catalog(catalog, out, report, taxonomy=taxonomy,
                                      workers=workers, timeout=timeout, retries=retries,
                                      max_bytes=max_bytes, deadline=deadline)
        except KeyboardInterrupt:
            # Verified images are kept and listed in metadata.csv; a rerun resumes from there.
            typer.echo(summarize(read_json(report)), err=True)
            raise
        typer.echo(summarize(result))
        for line in problem_lines(result):
            typer.echo(line, err=True)
        _eol_verdict(result["counts"], result["problems"], catalog, out, report, no_version)


def _eol_verdict(counts: dict, problems: list[dict], catalog: Path, out: Path, report: Path,
                 no_version: bool) -> None:
    """Version what `acquire eol` verified, if anything, and raise unless every row was."""
    if counts["rows"] == 0:
        raise Failure(f"catalogue {catalog} has no rows, nothing to download or version; fix: "
                      "list images under its header")
    usable = counts["downloaded"] + counts["already_present"]
    if usable:
        _version(out, no_version)
    failed, refused = counts["failed"], counts["refused"]
    if failed or refused:
        lasting = failed + refused - sum(problem["retryable"] for problem in problems)
        what = " and ".join(([f"{refused} rows refused"] if refused else [])
                            + ([f"{failed} images failed"] if failed else []))
        advice = (f"{lasting} cannot succeed as listed (see the reasons): fix or remove those "
                  "rows" if lasting else "run the same command again to retry them")
        raise Failure(f"{what}{'' if usable else ', nothing versioned'}: see {report}; "
                      f"{advice}", transient=not lasting)


@app.command("ensure-data")
def ensure_data() -> None:
    """Make data/ match data.dvc: keep it, `dvc pull` it, or regenerate the sample."""
    with _errors("ensure-data"):
        from rarespecies.data.acquire.versioning import ensure_data as ensure

        ensure(lambda: _sample(Path("data"), tiny=False, seed=42), typer.echo)


@app.command()
def predict(
    model: Annotated[Path, typer.Argument(help="An ONNX model exported by the pipeline.")],
    images: Annotated[list[Path], typer.Argument(help="Image files or folders (recursive).")],
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Families per image.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Print the most probable families of each image. Exit 1 if any image failed.

    What is not a regular image file (a FIFO, a device, a symlink loop...) is skipped with its
    reason on stderr and counted as failed. In text output, a name with control characters is
    shown quoted and escaped, so each image is one line.
    """
    with _errors("predict"):
        from rarespecies.runtime.predict import Classifier, image_files, printable
        from rarespecies.runtime.predict import predict as classify

        classifier = Classifier(model)
        seen = failed = 0
        for result in classify(classifier, image_files(images), top_k):
            seen += 1
            failed += result.error is not None
            if as_json:
                typer.echo(json.dumps({"path": str(result.path), "error": result.error, "top": [
                    {"family": label, "probability": round(p, 6)} for label, p in result.top]}))
            elif result.error:
                typer.secho(f"{printable(str(result.path))}: error: {printable(result.error)}",
                            fg="red", err=True)
            else:
                typer.echo(f"{printable(str(result.path))}: " + ", ".join(
                    f"{label} {p:.3f}" for label, p in result.top))
        if seen == 0:
            raise Failure(f"no images found in {', '.join(printable(str(i)) for i in images)}")
        typer.echo(f"classified {seen - failed} of {seen} images"
                   + (f"; {failed} could not be read" if failed else ""), err=True)
    raise typer.Exit(EXIT_FAILED if failed else 0)


if __name__ == "__main__":
    app()
