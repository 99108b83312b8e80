"""Stage `validate`: a Great Expectations suite over the ingest manifest.

The result is written to `reports/validation.json` whether or not it passes; on failure the
stage stops with one line per failed expectation, so the pipeline never trains on data that
breaks its contract.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from stages.ingest import MANIFEST_COLUMNS
from stages.io import write_json


class ValidationFailed(RuntimeError):
    """At least one expectation failed; the message lists them."""


def _context():
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(store_backend_defaults=InMemoryStoreBackendDefaults(),
                               progress_bars=ProgressBarsConfig(globally=False))
    return gx.get_context(mode="ephemeral", project_config=config)


def manifest_suite(min_side: int, max_side: int):
    """Expectations on the manifest: schema, identity, labels, image sizes."""
    import great_expectations as gx

    e = gx.expectations
    suite = gx.ExpectationSuite(name="manifest")
    for expectation in [
        e.ExpectTableColumnsToMatchOrderedList(column_list=[*MANIFEST_COLUMNS, "image_exists"]),
        e.ExpectTableRowCountToBeBetween(min_value=1),
        *[e.ExpectColumnValuesToNotBeNull(column=c) for c in ("id", "label", "sha256")],
        e.ExpectColumnValuesToBeUnique(column="id"),
        e.ExpectColumnValuesToBeUnique(column="sha256"),
        e.ExpectColumnValuesToMatchRegex(column="label", regex=r"^[a-z]+_[a-z]+$"),
        e.ExpectColumnValuesToMatchRegex(column="sha256", regex=r"^[0-9a-f]{64}$"),
        e.ExpectColumnValuesToBeBetween(column="width", min_value=min_side, max_value=max_side),
        e.ExpectColumnValuesToBeBetween(column="height", min_value=min_side, max_value=max_side),
        e.ExpectColumnValuesToBeInSet(column="image_exists", value_set=[True]),
    ]:
        suite.add_expectation(expectation)
    return suite


def class_suite(min_images_per_class: int):
    """Every class must be large enough to appear in train, validation and test."""
    import great_expectations as gx

    suite = gx.ExpectationSuite(name="classes")
    suite.add_expectation(gx.expectations.ExpectColumnValuesToBeBetween(
        column="images", min_value=min_images_per_class))
    return suite


def _summarize(result: dict) -> list[dict]:
    rows = []
    for r in result["results"]:
        config = r["expectation_config"]
        kwargs = {k: v for k, v in config["kwargs"].items() if k != "batch_id"}
        details = r.get("result", {})
        rows.append({
            "expectation": config["type"], "kwargs": kwargs, "success": r["success"],
            "unexpected_count": details.get("unexpected_count"),
            "examples": details.get("partial_unexpected_list", [])[:5],
            "observed": details.get("observed_value")})
    return rows


def validate_manifest(manifest: pd.DataFrame, *, min_side: int, max_side: int,
                      min_images_per_class: int) -> dict:
    """Run both suites in an ephemeral GX context.

    Args:
        manifest: the ingest manifest, plus a boolean `image_exists` column.
        min_side: smallest accepted source side.
        max_side: largest accepted source side.
        min_images_per_class: smallest accepted class.

    Returns:
        {"success": bool, "statistics": ..., "expectations": [...]} for both suites.
    """
    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    context = _context()
    asset = context.data_sources.add_pandas("pipeline").add_dataframe_asset("tables")
    batches = asset.add_batch_definition_whole_dataframe("whole")
    counts = manifest.groupby("label").size().rename("images").reset_index()
    checks = [(manifest, manifest_suite(min_side, max_side)),
              (counts, class_suite(min_images_per_class))]
    expectations = []
    for frame, suite in checks:
        result = batches.get_batch(batch_parameters={"dataframe": frame}).validate(suite)
        expectations += [dict(item, suite=suite.name) for item in _summarize(result.to_json_dict())]
    failed = [x for x in expectations if not x["success"]]
    return {"success": not failed,
            "statistics": {"evaluated": len(expectations), "failed": len(failed),
                           "rows": len(manifest), "classes": len(counts)},
            "expectations": expectations}


def describe_failures(report: dict) -> str:
    """One line per failed expectation, readable without opening the JSON."""
    lines = []
    for x in report["expectations"]:
        if x["success"]:
            continue
        column = x["kwargs"].get("column", "table")
        what = (f"{x['unexpected_count']} unexpected, e.g. {x['examples']}"
                if x["unexpected_count"] is not None else f"observed {x['observed']}")
        lines.append(f"  - {x['expectation']} on {column}: {what}")
    return "\n".join(lines)


def main() -> None:
    """Run the stage with the `validate` keys of params.yaml."""
    from stages.cli_util import stage_main
    from stages.params import load_params

    def work() -> str:
        p = load_params().validate_
        manifest = pd.read_csv("artifacts/ingest/manifest.csv", dtype={"id": str})
        manifest["image_exists"] = manifest["image_path"].map(lambda s: Path(s).is_file())
        report = validate_manifest(manifest, min_side=p.min_side, max_side=p.max_side,
                                   min_images_per_class=p.min_images_per_class)
        write_json("reports/validation.json", report)
        stats = report["statistics"]
        if not report["success"]:
            raise ValidationFailed(f"{stats['failed']} of {stats['evaluated']} expectations "
                                   f"failed (reports/validation.json):\n"
                                   + describe_failures(report))
        return f"all {stats['evaluated']} expectations passed on {stats['rows']} images"

    stage_main("validate", work)


if __name__ == "__main__":
    main()
