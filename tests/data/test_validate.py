"""Validation: the suites load, pass clean manifests, and name what fails."""

import hashlib
import inspect
import json
import shutil
import sys
from pathlib import Path

import great_expectations as gx
import pandas as pd
import pytest
import yaml

from rarespecies.config.params import ValidateParams
from rarespecies.data import validate
from rarespecies.data.ingest import MANIFEST_COLUMNS
from rarespecies.data.validate import (
    SUITES,
    SuiteError,
    describe_failures,
    load_suite,
    validate_manifest,
)

from conftest import ROOT, run

LIMITS = {"min_side": 100, "max_side": 1000, "min_images_per_class": 3, "max_class_imbalance": 3}


def manifest(n_per_class: dict[str, int]) -> pd.DataFrame:
    """A clean manifest in the course layout (class, order, genus and species empty)."""
    rows = []
    for label, n in n_per_class.items():
        phylum, family = label.split("_")
        for _ in range(n):
            k = len(rows)
            rows.append({"id": f"id{k}", "label": label, "kingdom": "animalia", "phylum": phylum,
                         "family": family, "eol_content_id": k, "eol_page_id": 1,
                         "source_path": f"{label}/{k}.jpg",
                         "sha256": hashlib.sha256(str(k).encode()).hexdigest(),
                         "width": 300, "height": 200, "image_path": f"img/{k}.jpg"})
    frame = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    frame["image_exists"] = True
    return frame


def check(frame: pd.DataFrame, **limits) -> dict:
    return validate_manifest(frame, **{**LIMITS, **limits})


def failed(report: dict) -> list[str]:
    return [x["expectation"] for x in report["expectations"] if not x["success"]]


def first(frame: pd.DataFrame, column: str, value) -> pd.DataFrame:
    """`frame` with the first value of `column` replaced."""
    frame = frame.copy()
    frame.loc[0, column] = value
    return frame


@pytest.mark.parametrize("name", SUITES)
def test_suite_files_are_gx_suites_with_a_note_on_every_expectation(name):
    raw = json.loads((validate.SUITE_DIR / f"{name}.json").read_text())
    suite = gx.ExpectationSuite(**raw)
    assert suite.name == name
    assert len(suite.expectations) == len(raw["expectations"]) == len(load_suite(name).expectations)
    assert all(len(x.notes or "") > 10 for x in suite.expectations)


def test_every_suite_parameter_is_supplied_by_params_and_the_stage():
    referenced = {p for name in SUITES for p in load_suite(name).suite_parameter_options}
    thresholds = set(ValidateParams.model_fields) - {"strict"}
    assert referenced == thresholds  # each one in params.yaml, and each threshold used
    assert referenced <= set(inspect.signature(validate_manifest).parameters)


def test_manifest_schema_follows_ingest():
    schema = load_suite("manifest").expectations[0]
    assert schema.column_list == [*MANIFEST_COLUMNS, "image_exists", "taxonomy_label"]


def test_a_broken_suite_file_is_refused(tmp_path, monkeypatch):
    for name in SUITES:
        shutil.copy(validate.SUITE_DIR / f"{name}.json", tmp_path)
    monkeypatch.setattr(validate, "SUITE_DIR", tmp_path)
    raw = json.loads((tmp_path / "classes.json").read_text())
    raw["expectations"][0]["type"] = "expect_table_row_count_to_be_betwen"  # GX would drop it
    (tmp_path / "classes.json").write_text(json.dumps(raw))
    with pytest.raises(SuiteError, match=r"expectation 1 \(expect_table_row_count_to_be_betwen\)"):
        load_suite("classes")
    raw["expectations"][0] = {"type": "expect_table_row_count_to_be_between",
                              "kwargs": {"min_value": {"$PARAMETER": "min_classes"}}}
    (tmp_path / "classes.json").write_text(json.dumps(raw))
    with pytest.raises(SuiteError, match=r"unknown parameter.* min_classes"):
        check(manifest({"chordata_ardeidae": 3, "mollusca_unionidae": 3}))


def test_clean_manifest_passes_and_reports_the_classes():
    frame = manifest({"chordata_ardeidae": 4, "mollusca_unionidae": 3, "cnidaria_acroporidae": 4})
    frame["phylum"] = frame["phylum"].str.upper()  # the label is compared in lower case
    report = check(frame)
    assert report["success"], describe_failures(report)
    assert report["statistics"] == {
        "evaluated": len(load_suite("manifest").expectations)
        + len(load_suite("classes").expectations),
        "failed": 0, "rows": 11, "classes": 3,
        "smallest_class": {"label": "mollusca_unionidae", "images": 3},
        "largest_class": {"label": "chordata_ardeidae", "images": 4}, "imbalance_ratio": 1.333}
    assert describe_failures(report) == ""


CLEAN = {"chordata_ardeidae": 4, "mollusca_unionidae": 4}


@pytest.mark.parametrize(("damage", "expected"), [
    (lambda f: f.drop(columns=["sha256"]),
     "expect_table_columns_to_match_ordered_list on manifest table"),
    (lambda f: f[["label", "id", *f.columns[2:]]],
     "expect_table_columns_to_match_ordered_list on manifest table"),
    (lambda f: f.drop(columns=["phylum"]),
     'expect_column_values_to_not_be_null on phylum: error: The column "phylum" in BatchData'),
    (lambda f: f.iloc[:0], "expect_table_row_count_to_be_between on manifest table"),
    (lambda f: f.assign(id=range(len(f))), "expect_column_values_to_be_of_type on id"),
    (lambda f: f.assign(sha256=range(len(f))), "expect_column_values_to_be_of_type on sha256"),
    (lambda f: f.assign(width=f.width + 0.5), "expect_column_values_to_be_of_type on width"),
    (lambda f: f.assign(height=f.height.astype(str)),
     "expect_column_values_to_be_of_type on height"),
    *[(lambda f, c=c: first(f, c, None), f"expect_column_values_to_not_be_null on {c}")
      for c in ("id", "label", "phylum", "family", "sha256")],
    (lambda f: first(f, "id", "id1"), "expect_column_values_to_be_unique on id: 2 unexpected"),
    (lambda f: first(f, "sha256", f.sha256[1]),
     "expect_column_values_to_be_unique on sha256: 2 unexpected"),
    (lambda f: first(f, "sha256", f.sha256[0].upper()),
     "expect_column_values_to_match_regex on sha256: 1 unexpected"),
    (lambda f: first(f, "image_exists", False),
     "expect_column_values_to_be_in_set on image_exists: 1 unexpected, e.g. [False]"),
    (lambda f: first(f, "width", 50), "expect_column_values_to_be_between on width: 1 unexpected"),
    (lambda f: first(f, "height", 5000),
     "expect_column_values_to_be_between on height: 1 unexpected, e.g. [5000]"),
    (lambda f: f.assign(label="chordata-ardeidae", phylum="chordata", family="-ardeidae"),
     "expect_column_values_to_match_regex on label: 8 unexpected"),
    (lambda f: first(f, "family", "balaenidae"),
     "expect_column_pair_values_to_be_equal on label == taxonomy_label: 1 unexpected"),
    (lambda f: f.iloc[:-2], "expect_column_values_to_be_between on images: 1 unexpected, e.g. [2]"),
    (lambda f: f.iloc[:4], "expect_table_row_count_to_be_between on classes table: observed 1"),
])
def test_broken_manifest_fails_and_is_described(damage, expected):
    report = check(damage(manifest(CLEAN)))
    assert not report["success"]
    assert expected.split(" on ")[0] in failed(report)
    assert expected in describe_failures(report)


def test_imbalance_ratio_is_reported_and_fails_above_the_threshold():
    frame = manifest({"chordata_ardeidae": 15, "mollusca_unionidae": 3, "cnidaria_x": 5})
    stats = {"classes": 3, "imbalance_ratio": 5.0,
             "smallest_class": {"label": "mollusca_unionidae", "images": 3},
             "largest_class": {"label": "chordata_ardeidae", "images": 15}}
    passing = check(frame, max_class_imbalance=5)
    assert passing["success"] and stats.items() <= passing["statistics"].items()
    failing = check(frame, max_class_imbalance=4.9)
    assert failed(failing) == ["expect_column_max_to_be_between"]
    assert stats.items() <= failing["statistics"].items()
    assert ("expect_column_max_to_be_between on times_smallest: observed 5.0"
            in describe_failures(failing))


def test_data_docs_are_built_and_replaced_whole(tmp_path, monkeypatch):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "stale.html").write_text("from an earlier run")
    check(manifest(CLEAN), docs_dir=docs)
    index = (docs / "index.html").read_text()
    assert all(name in index for name in SUITES) and not (docs / "stale.html").exists()
    assert "quarantined everything" in (docs / "expectations/manifest.html").read_text()
    assert len(list(docs.glob("validations/*/*/*/*.html"))) == len(SUITES)

    def broken(name):
        raise SuiteError("broken on purpose")

    monkeypatch.setattr(validate, "load_suite", broken)
    with pytest.raises(SuiteError):
        check(manifest(CLEAN), docs_dir=docs)
    assert (docs / "index.html").read_text() == index  # the old site, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs"]  # no temporary folder left


def test_data_docs_are_byte_for_byte_reproducible(tmp_path):
    """The site is a DVC output: GX's clock and random ids must not change its hash."""
    sites = []
    for name in ("a", "b"):
        check(manifest(CLEAN), docs_dir=tmp_path / name)
        sites.append({p.relative_to(tmp_path / name): p.read_bytes()
                      for p in sorted((tmp_path / name).rglob("*")) if p.is_file()})
    assert sites[0] == sites[1] and len(sites[0]) > 5


def stage(tmp_path: Path, strict: bool):
    """Run `python -m stages.validate` in `tmp_path` on a manifest with 2 failures."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["validate"].update(strict=strict, min_images_per_class=2)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "artifacts/ingest").mkdir(parents=True)
    frame = manifest({"chordata_ardeidae": 4, "mollusca_unionidae": 1}).drop(
        columns="image_exists")
    frame.to_csv(tmp_path / "artifacts/ingest/manifest.csv", index=False)
    return run(sys.executable, "-m", "stages.validate", cwd=tmp_path, check=False)


@pytest.mark.parametrize("strict", [True, False])
def test_stage_writes_both_outputs_and_fails_only_when_strict(tmp_path, strict):
    proc = stage(tmp_path, strict)
    assert "Traceback" not in proc.stderr
    evaluated = sum(len(load_suite(name).expectations) for name in SUITES)
    assert f"2 of {evaluated} expectations failed" in proc.stderr
    assert "expect_column_values_to_be_in_set on image_exists: 5 unexpected" in proc.stderr
    assert "expect_column_values_to_be_between on images: 1 unexpected, e.g. [1]" in proc.stderr
    if strict:
        assert proc.returncode == 1 and "validate: error: " in proc.stderr
    else:
        assert proc.returncode == 0 and "validate: warning: " in proc.stderr
        assert "continuing (validate.strict is false)" in proc.stdout
    report = json.loads((tmp_path / "reports/validation.json").read_text())
    assert report["success"] is False and report["strict"] is strict
    assert report["statistics"]["rows"] == 5 and report["statistics"]["imbalance_ratio"] == 4.0
    index = (tmp_path / "reports/validation_docs/index.html").read_text()
    assert all(name in index for name in SUITES)
