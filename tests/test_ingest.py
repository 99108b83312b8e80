"""Ingest: every row and file is accounted for; bad input is quarantined with its reason."""

import csv
import json
import os

import pytest
from PIL import Image

from stages.ingest import MANIFEST_COLUMNS, IngestError, ingest

from conftest import write_metadata


def run_ingest(data, tmp_path, **overrides):
    options = {"max_side": 48, "max_pixels": 10**8, "jpeg_quality": 90, "workers": 2,
               "progress": False} | overrides
    report = ingest(data, tmp_path / "out/images", tmp_path / "out/manifest.csv",
                    tmp_path / "out/ingest.json", **options)
    with (tmp_path / "out/manifest.csv").open() as handle:
        manifest = list(csv.DictReader(handle))
    return report, manifest


def test_clean_folder_is_ingested_whole(course_folder, tmp_path):
    data, rows = course_folder
    report, manifest = run_ingest(data, tmp_path)
    assert report["ingested"] == len(rows) == len(manifest) and report["quarantined"] == 0
    assert list(manifest[0]) == MANIFEST_COLUMNS
    assert {m["label"] for m in manifest} == {"chordata_ardeidae", "chordata_balaenidae",
                                              "mollusca_unionidae"}
    for m in manifest:
        with Image.open(m["image_path"]) as img:
            assert img.mode == "RGB" and max(img.size) <= 48
        assert int(m["width"]) >= 64  # source size, not the normalized one
    assert json.loads((tmp_path / "out/ingest.json").read_text()) == report


def test_bad_inputs_are_quarantined_and_counted(course_folder, tmp_path):
    data, rows = course_folder
    label = "chordata_ardeidae"
    (data / rows[0]["file_path"]).write_bytes(b"")                       # zero bytes
    (data / rows[1]["file_path"]).write_bytes(b"<html>not a jpeg</html>")  # not an image
    (data / label / "stray_eol-full-size-copy.jpg").write_bytes(
        (data / rows[2]["file_path"]).read_bytes())                        # no metadata row
    outside = data.parent / "outside.jpg"
    Image.new("RGB", (70, 70)).save(outside)
    os.symlink(outside, data / label / "link.jpg")
    extra = [
        dict(rows[3]),                                                     # duplicate id
        dict(rows[4], rare_species_id="dup-image"),                        # same bytes, new id
        dict(rows[4], rare_species_id="gone", file_path=f"{label}/missing.jpg"),
        dict(rows[4], rare_species_id="escape", file_path="../outside.jpg"),
        dict(rows[4], rare_species_id="absolute", file_path=str(outside)),
        dict(rows[4], rare_species_id="symlink", file_path=f"{label}/link.jpg"),
        dict(rows[4], rare_species_id="nofamily", family=""),
    ]
    write_metadata(data, rows + extra)
    report, manifest = run_ingest(data, tmp_path)
    reasons = {(q["path"], q["reason"]) for q in report["quarantine"]}
    assert report["ingested"] == len(rows) - 2 == len(manifest)
    assert report["metadata_rows"] == len(rows) + len(extra)
    assert report["quarantined"] == 2 + 1 + len(extra)
    assert report["ingested"] + report["quarantined"] == report["metadata_rows"] + 1
    expected = [
        "not a decodable image", "not a decodable image", "image file has no metadata row",
        "duplicate id of line", "same image as id", "file missing",
        "file_path leaves the data folder", "malformed row: empty family"]
    for fragment in expected:
        assert any(fragment in reason for _, reason in reasons), fragment
    escapes = [q for q in report["quarantine"] if q["reason"] == "file_path leaves the data folder"]
    assert len(escapes) == 3


def test_header_without_a_column_is_a_clear_error(course_folder, tmp_path):
    data, rows = course_folder
    write_metadata(data, rows, header=[c for c in rows[0] if c != "family"])
    with pytest.raises(IngestError, match="header lacks family"):
        run_ingest(data, tmp_path)


def test_missing_metadata_names_the_fix(tmp_path):
    with pytest.raises(IngestError, match="rarespecies sample"):
        run_ingest(tmp_path, tmp_path)
