"""Great Expectations suites over the ingest manifest.

The suites are reviewable files in GX's own format (`rarespecies/data/expectations/*.json`);
their thresholds are suite parameters filled from the `validate` section of params.yaml. The
report and Data Docs are written whether or not the data passes; with `strict` a failed
expectation then raises `ValidationFailed`, one line per failure, so the pipeline never trains
on data that breaks its contract.
"""

from __future__ import annotations

import json
import logging
import re
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from rarespecies.core.files import atomic_path, write_json

SUITE_DIR = Path(__file__).resolve().parent / "expectations"
SUITES = ("manifest", "classes")
# Data Docs are a DVC output: the same data must give the same bytes. GX stamps a run with the
# time, so the run gets a fixed one (the report says nothing of when it ran: DVC knows).
RUN_NAME, RUN_TIME = "validate", datetime(2000, 1, 1, tzinfo=UTC)
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_TIMESTAMP = re.compile(r"\d{8}T\d{6}\.\d+Z")  # GX's run ids, load times, logo cache-buster


class ValidationFailed(RuntimeError):
    """At least one expectation failed; the message lists them."""


class SuiteError(ValueError):
    """A suite file cannot be loaded, or references a parameter the stage does not supply."""


def load_suite(name: str):
    """Read `expectations/<name>.json` into an ExpectationSuite.

    Each expectation is checked on its own first: GX's constructor logs and silently drops an
    expectation it cannot build (e.g. a misspelt type), which would weaken the suite unnoticed.

    Args:
        name: the suite's file name without `.json`.

    Returns:
        The great_expectations ExpectationSuite.

    Raises:
        SuiteError: naming the file and the expectation that cannot be built.
    """
    import great_expectations as gx
    from great_expectations.expectations.expectation_configuration import (
        ExpectationConfiguration,
    )

    path = SUITE_DIR / f"{name}.json"
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise SuiteError(f"{path}: {error}") from None
    expectations = []
    for number, item in enumerate(raw.pop("expectations", []), start=1):
        try:
            expectations.append(ExpectationConfiguration(**item).to_domain_obj())
        except Exception as error:
            raise SuiteError(f"{path}: expectation {number} ({item.get('type')}): "
                             f"{error}") from None
    return gx.ExpectationSuite(**raw, expectations=expectations)


def class_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per label: its number of images and its size relative to the smallest class."""
    labels = manifest["label"] if "label" in manifest else pd.Series(dtype="str")
    images = labels.value_counts().sort_index()
    return pd.DataFrame({"label": images.index, "images": images.to_numpy(),
                         "times_smallest": (images / images.min()).to_numpy()})


def class_statistics(table: pd.DataFrame) -> dict:
    """Class count, smallest and largest class and their ratio (ties broken by label)."""
    if table.empty:
        return {"classes": 0, "smallest_class": None, "largest_class": None,
                "imbalance_ratio": None}
    small = table.sort_values(["images", "label"]).iloc[0]
    large = table.sort_values(["images", "label"], ascending=[False, True]).iloc[0]
    return {"classes": len(table),
            "smallest_class": {"label": small["label"], "images": int(small["images"])},
            "largest_class": {"label": large["label"], "images": int(large["images"])},
            "imbalance_ratio": round(int(large["images"]) / int(small["images"]), 3)}


def _with_taxonomy_label(manifest: pd.DataFrame) -> pd.DataFrame:
    """Add `taxonomy_label`, what the label should be, so a pair expectation can compare."""
    frame = manifest.copy()
    if {"phylum", "family"} <= set(frame.columns):
        parts = [frame[c].astype("str").str.lower() for c in ("phylum", "family")]
        frame["taxonomy_label"] = parts[0] + "_" + parts[1]
    else:  # the schema expectation reports the missing column; this one fails with it
        frame["taxonomy_label"] = pd.Series(pd.NA, index=frame.index, dtype="str")
    return frame


def _context(docs_dir: Path | None):
    """An in-memory GX context, with a Data Docs site in `docs_dir` when given."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    sites = {} if docs_dir is None else {"validation_docs": {
        "class_name": "SiteBuilder", "show_how_to_buttons": False,
        "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                          "base_directory": str(docs_dir.resolve())},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"}}}
    config = DataContextConfig(store_backend_defaults=InMemoryStoreBackendDefaults(),
                               data_docs_sites=sites, analytics_enabled=False,
                               progress_bars=ProgressBarsConfig(globally=False))
    return gx.get_context(mode="ephemeral", project_config=config)


def _summarize(result: dict, suite: str) -> list[dict]:
    rows = []
    for r in result["results"]:
        config = r["expectation_config"]
        details = r.get("result") or {}
        row = {"expectation": config["type"],
               "kwargs": {k: v for k, v in config["kwargs"].items() if k != "batch_id"},
               "success": r["success"], "unexpected_count": details.get("unexpected_count"),
               "examples": (details.get("partial_unexpected_list") or [])[:5],
               "observed": details.get("observed_value"), "suite": suite}
        error = _error(r.get("exception_info") or {})
        if error:  # e.g. a missing column: say so rather than a bare "observed None"
            row["error"] = error.removeprefix("Error: ")
        rows.append(row)
    return rows


def _error(info: dict) -> str | None:
    """The first exception GX recorded: flat, or keyed by the metric that raised it."""
    for item in [info, *info.values()]:
        if isinstance(item, dict) and item.get("raised_exception"):
            return str(item.get("exception_message"))
    return None


def validate_manifest(manifest: pd.DataFrame, *, min_side: int, max_side: int,
                      min_images_per_class: int, max_class_imbalance: float,
                      docs_dir: str | Path | None = None) -> dict:
    """Run the `manifest` suite on the manifest and the `classes` suite on its class table.

    Args:
        manifest: the ingest manifest plus a boolean `image_exists` column (the caller checks
            the files, so this function never touches the image folder).
        min_side: smallest accepted source side, px.
        max_side: largest accepted source side, px.
        min_images_per_class: smallest accepted class.
        max_class_imbalance: largest accepted ratio of the largest to the smallest class.
        docs_dir: where to write Data Docs (replaced atomically), or None for none.

    Returns:
        {"success", "statistics", "expectations": [...]} over both suites.

    Raises:
        SuiteError: a suite file is invalid or references a parameter not supplied here.
    """
    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier

    parameters = {"min_side": min_side, "max_side": max_side,
                  "min_images_per_class": min_images_per_class,
                  "max_class_imbalance": max_class_imbalance}
    classes = class_table(manifest)
    tables = {"manifest": _with_taxonomy_label(manifest), "classes": classes}
    expectations: list[dict] = []
    with ExitStack() as stack:
        site = None if docs_dir is None else stack.enter_context(atomic_path(docs_dir))
        context = _context(site)
        batches = context.data_sources.add_pandas("pipeline")
        for name, frame in tables.items():
            suite = load_suite(name)
            missing = set(suite.suite_parameter_options) - parameters.keys()
            if missing:
                raise SuiteError(f"suite {name} references unknown parameter(s) "
                                 f"{', '.join(sorted(missing))}")
            batch = batches.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
            # A ValidationDefinition (unlike batch.validate) stores its result for Data Docs.
            definition = context.validation_definitions.add(gx.ValidationDefinition(
                name=name, data=batch, suite=context.suites.add(suite)))
            # SUMMARY keeps 20 examples per expectation: enough to act on, and pages stay
            # small however many rows fail.
            result = definition.run(batch_parameters={"dataframe": frame},
                                    expectation_parameters=parameters, result_format="SUMMARY",
                                    run_id=RunIdentifier(run_name=RUN_NAME, run_time=RUN_TIME))
            expectations += _summarize(result.to_json_dict(), name)
        if site is not None:
            context.build_data_docs()
            make_site_reproducible(site)
    failed = [x for x in expectations if not x["success"]]
    return {"success": not failed,
            "statistics": {"evaluated": len(expectations), "failed": len(failed),
                           "rows": len(manifest), **class_statistics(classes)},
            "expectations": expectations}


def make_site_reproducible(site: Path) -> None:
    """Rewrite what GX's Data Docs draw at random or from the clock (collapsible blocks' uuid4
    ids, batch load times, the logo's cache-busting timestamp) so the same validation gives the
    same files."""
    stamp = RUN_TIME.strftime("%Y%m%dT%H%M%S.%fZ")
    for page in sorted(site.rglob("*.html")):
        text = _TIMESTAMP.sub(stamp, page.read_text())
        page.write_text(_UUID.sub(_numbering(), text))


def _numbering():
    """A `re.sub` replacement naming each distinct match `block-<n>` in order of appearance."""
    ids: dict[str, str] = {}
    return lambda match: ids.setdefault(match.group(), f"block-{len(ids) + 1}")


def describe_failures(report: dict) -> str:
    """One line per failed expectation, readable without opening the JSON."""
    lines = []
    for x in report["expectations"]:
        if x["success"]:
            continue
        kwargs = x["kwargs"]
        where = kwargs.get("column") or (
            f"{kwargs['column_A']} == {kwargs['column_B']}" if "column_A" in kwargs
            else f"{x['suite']} table")
        if x.get("error"):
            what = f"error: {x['error']}"
        elif x["unexpected_count"] is not None:
            what = f"{x['unexpected_count']} unexpected, e.g. {x['examples']}"
        else:
            what = f"observed {x['observed']}"
        lines.append(f"  - {x['expectation']} on {where}: {what}")
    return "\n".join(lines)


def validate_files(manifest_csv: Path, report_path: Path, docs_dir: Path, *, min_side: int,
                   max_side: int, min_images_per_class: int, max_class_imbalance: float,
                   strict: bool) -> dict:
    """Validate the ingest manifest and the images it lists; write the report and Data Docs.

    Args:
        manifest_csv: the ingest manifest.
        report_path: the JSON report, written whether or not the data passes.
        docs_dir: the Data Docs site.
        min_side, max_side, min_images_per_class, max_class_imbalance: the suites' thresholds.
        strict: raise `ValidationFailed` when an expectation fails.

    Returns:
        The report (`success`, `strict`, `statistics`, `expectations`).
    """
    # Text by definition: inferred, an all-digit column would lose its leading zeros.
    manifest = pd.read_csv(manifest_csv, dtype={"id": str, "sha256": str})
    images = manifest.get("image_path", pd.Series(index=manifest.index, dtype="str"))
    manifest["image_exists"] = images.map(lambda s: isinstance(s, str) and Path(s).is_file())
    report = validate_manifest(manifest, min_side=min_side, max_side=max_side,
                               min_images_per_class=min_images_per_class,
                               max_class_imbalance=max_class_imbalance, docs_dir=docs_dir)
    report = {"success": report["success"], "strict": strict, **report}
    write_json(report_path, report)
    if strict and not report["success"]:
        stats = report["statistics"]
        raise ValidationFailed(f"{stats['failed']} of {stats['evaluated']} expectations failed "
                               f"({report_path}, {docs_dir}/index.html):\n"
                               f"{describe_failures(report)}")
    return report
