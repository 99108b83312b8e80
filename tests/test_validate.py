"""Validation: the Great Expectations suite passes clean manifests and names what fails."""

import json
import shutil
import sys

import pandas as pd
import pytest

from stages.ingest import MANIFEST_COLUMNS
from stages.validate import describe_failures, validate_manifest

from conftest import ROOT, run


def manifest(n_per_class: dict[str, int]) -> pd.DataFrame:
    rows = []
    for label, n in n_per_class.items():
        phylum, family = label.split("_")
        for _ in range(n):
            k = len(rows)
            rows.append({"id": f"id{k}", "label": label, "phylum": phylum, "family": family,
                         "eol_content_id": k, "eol_page_id": 1, "source_path": f"{label}/{k}.jpg",
                         "sha256": f"{k:064x}", "width": 300, "height": 200,
                         "image_path": f"img/{k}.jpg"})
    frame = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    frame["image_exists"] = True
    return frame


def check(frame):
    return validate_manifest(frame, min_side=100, max_side=1000, min_images_per_class=3)


def test_clean_manifest_passes():
    report = check(manifest({"chordata_ardeidae": 4, "mollusca_unionidae": 3}))
    assert report["success"], describe_failures(report)
    assert report["statistics"]["failed"] == 0 and report["statistics"]["evaluated"] >= 10


@pytest.mark.parametrize(("damage", "expectation"), [
    (lambda f: f.assign(id=["same"] * len(f)), "expect_column_values_to_be_unique"),
    (lambda f: f.assign(sha256=[f.sha256[0]] * len(f)), "expect_column_values_to_be_unique"),
    (lambda f: f.assign(width=[50] + [300] * (len(f) - 1)), "expect_column_values_to_be_between"),
    (lambda f: f.assign(label=["Chordata-X"] * len(f)), "expect_column_values_to_match_regex"),
    (lambda f: f.assign(image_exists=[False] + [True] * (len(f) - 1)),
     "expect_column_values_to_be_in_set"),
    (lambda f: f.drop(columns=["sha256"]), "expect_table_columns_to_match_ordered_list"),
    (lambda f: f.iloc[:-2], "expect_column_values_to_be_between"),  # a class of 2 < 3
])
def test_broken_manifest_fails_and_is_described(damage, expectation):
    report = check(damage(manifest({"chordata_ardeidae": 4, "mollusca_unionidae": 4})))
    assert not report["success"]
    failed = [x["expectation"] for x in report["expectations"] if not x["success"]]
    assert expectation in failed
    assert expectation in describe_failures(report)


def test_stage_fails_with_a_readable_summary_and_keeps_the_result(tmp_path):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "artifacts/ingest").mkdir(parents=True)
    frame = manifest({"chordata_ardeidae": 4, "mollusca_unionidae": 2}).drop(
        columns="image_exists")
    frame.to_csv(tmp_path / "artifacts/ingest/manifest.csv", index=False)
    proc = run(sys.executable, "-m", "stages.validate", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "validate: error: " in proc.stderr and "expectations failed" in proc.stderr
    assert "expect_column_values_to_be_in_set on image_exists: 6 unexpected" in proc.stderr
    assert "expect_column_values_to_be_between on images" in proc.stderr  # a class of 2
    report = json.loads((tmp_path / "reports/validation.json").read_text())
    assert report["success"] is False and report["statistics"]["rows"] == 6
