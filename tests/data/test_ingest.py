"""Ingest: both layouts; every row and file is accounted for; bad input is quarantined with
its reason."""

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from rarespecies.data.ingest import MANIFEST_COLUMNS, IngestError, ingest

from conftest import (
    EOL_SAMPLE,
    HF_CATALOG,
    hf_image_path,
    killed_writer,
    require_shared,
    taxonomy_rows,
    write_hf_folder,
    write_metadata,
)


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


def test_what_cannot_be_read_is_quarantined_and_the_stage_goes_on(course_folder, tmp_path,
                                                                 deny_reading):
    data, rows = course_folder
    label = data / "chordata_ardeidae"
    os.symlink("loop.jpg", label / "loop.jpg")            # a file loop, listed
    os.symlink("loop2.jpg", label / "loop2.jpg")          # a file loop, not listed
    os.symlink("..", label / "up")                        # a folder loop
    os.mkfifo(label / "pipe.jpg")                         # a FIFO, listed
    os.mkfifo(label / "pipe2.jpg")                        # a FIFO, not listed
    os.symlink("gone.jpg", label / "dangling.jpg")        # a dangling link, listed
    deny_reading(data / rows[0]["file_path"])             # permission denied, listed
    (data / "locked").mkdir()
    deny_reading(data / "locked")                         # a folder that cannot be listed
    extra = [dict(rows[1], rare_species_id=name, file_path=f"chordata_ardeidae/{name}.jpg")
             for name in ("loop", "pipe", "dangling")]
    write_metadata(data, rows + extra)
    report, manifest = run_ingest(data, tmp_path)
    assert report["ingested"] == len(rows) - 1 == len(manifest)
    assert report["ingested"] + report["quarantined_rows"] == report["metadata_rows"]
    assert {(q["path"], q["reason"]) for q in report["quarantine"]} == {
        (rows[0]["file_path"], "permission denied"),
        ("chordata_ardeidae/loop.jpg", "symlink loop"),
        ("chordata_ardeidae/pipe.jpg", "FIFO, not a regular file"),
        ("chordata_ardeidae/dangling.jpg", "dangling symlink"),
        ("chordata_ardeidae/loop2.jpg", "image file has no metadata row (symlink loop)"),
        ("chordata_ardeidae/pipe2.jpg",
         "image file has no metadata row (FIFO, not a regular file)"),
        ("locked/", "folder cannot be listed (permission denied)")}
    assert report["ignored_files"] == ["chordata_ardeidae/up"]  # listed, never followed


def test_a_killed_runs_temporary_images_are_removed_by_the_next_run(course_folder, tmp_path):
    data, rows = course_folder
    leftover = killed_writer(tmp_path / "out/images")  # what a killed ingest leaves
    report, _ = run_ingest(data, tmp_path)
    assert report["ingested"] == len(rows) and not leftover.exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "images", "ingest.json", "manifest.csv"]


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"])
def test_metadata_that_is_not_utf8_names_the_byte_and_the_fix(course_folder, tmp_path, bom):
    data, rows = course_folder
    write_metadata(data, [*rows[:2], dict(rows[2], family="ardéidae")])
    metadata = data / "metadata.csv"
    # As a Latin-1 editor saves it (with a UTF-8 byte order mark left in front, or not).
    metadata.write_bytes(bom + metadata.read_text().encode("latin-1"))
    column = metadata.read_bytes().split(b"\n")[3].index(b"\xe9") + 1
    with pytest.raises(IngestError) as error:
        run_ingest(data, tmp_path)
    assert str(error.value) == (
        f"{metadata}:4:{column}: not UTF-8 (byte 0xe9): re-save it as UTF-8, e.g. from "
        f"Latin-1: iconv -f latin1 -t utf-8 '{metadata}' > utf8.tmp && mv utf8.tmp "
        f"'{metadata}'")


def test_metadata_with_a_byte_order_mark_is_read(course_folder, tmp_path):
    data, rows = course_folder
    metadata = data / "metadata.csv"
    metadata.write_bytes(b"\xef\xbb\xbf" + metadata.read_bytes())  # as Excel saves UTF-8
    report, _ = run_ingest(data, tmp_path)
    assert report["ingested"] == len(rows)


def test_header_without_a_column_is_a_clear_error(course_folder, tmp_path):
    data, rows = course_folder
    write_metadata(data, rows, header=[c for c in rows[0] if c != "family"])
    with pytest.raises(IngestError, match="header lacks family"):
        run_ingest(data, tmp_path)


def test_missing_metadata_names_the_fix(tmp_path):
    with pytest.raises(IngestError, match=r"neither metadata\.csv .*rarespecies acquire sample"):
        run_ingest(tmp_path, tmp_path)


@pytest.mark.parametrize("mode", ["PNG RGBA", "PNG P", "PNG I;16", "JPEG CMYK", "JPEG L"])
def test_other_formats_and_modes_are_converted_not_refused(course_folder, tmp_path, mode):
    data, rows = course_folder
    fmt, image_mode = mode.split()
    pixels = Image.fromarray(np.random.default_rng(2).integers(0, 255, (70, 90, 3), np.uint8))
    image = pixels.convert("I;16") if image_mode == "I;16" else pixels.convert(image_mode)
    image.save(data / rows[0]["file_path"], fmt)  # a PNG named .jpg is still an image
    report, manifest = run_ingest(data, tmp_path)
    assert report["quarantined"] == 0 and report["ingested"] == len(rows)
    converted = next(m for m in manifest if m["id"] == rows[0]["rare_species_id"])
    assert (converted["width"], converted["height"]) == ("90", "70")
    with Image.open(converted["image_path"]) as img:
        assert img.mode == "RGB"


@pytest.mark.parametrize(("damage", "reason"), [
    (lambda b: b[:len(b) // 3], "not a decodable image"),  # truncated JPEG
    (lambda b: b[:200] + bytes(len(b) - 200), "not a decodable image"),  # corrupt body
])
def test_corrupt_jpeg_is_quarantined(course_folder, tmp_path, damage, reason):
    data, rows = course_folder
    path = data / rows[0]["file_path"]
    noise = np.random.default_rng(3).integers(0, 255, (200, 200, 3), np.uint8)
    Image.fromarray(noise).save(path, quality=95)
    path.write_bytes(damage(path.read_bytes()))
    report, _ = run_ingest(data, tmp_path)
    assert [q["path"] for q in report["quarantine"]] == [rows[0]["file_path"]]
    assert reason in report["quarantine"][0]["reason"]


def test_decompression_bomb_is_quarantined(course_folder, tmp_path):
    data, rows = course_folder
    Image.new("L", (4000, 3000)).save(data / rows[0]["file_path"], "PNG")
    report, _ = run_ingest(data, tmp_path, max_pixels=10_000_000)
    assert report["quarantine"][0]["reason"] == "4000x3000 exceeds max_pixels 10000000"
    assert report["quarantine_reasons"] == {"4000x3000 exceeds max_pixels 10000000": 1}


def test_duplicate_rows_and_extra_fields_are_quarantined(course_folder, tmp_path):
    data, rows = course_folder
    write_metadata(data, [*rows, rows[0], rows[1]])
    with (data / "metadata.csv").open("a") as handle:
        handle.write("id-x,1,2,animalia,chordata,ardeidae,"
                     f"{rows[2]['file_path']},unexpected\n")
    report, manifest = run_ingest(data, tmp_path)
    reasons = [q["reason"] for q in report["quarantine"]]
    assert reasons == ["duplicate id of line 2", "duplicate id of line 3",
                       "malformed row: more fields than the header"]
    assert len(manifest) == len(rows) and report["metadata_rows"] == len(rows) + 3


def test_other_files_are_listed_as_ignored(course_folder, tmp_path):
    data, _ = course_folder
    (data / "chordata_ardeidae/notes.txt").write_text("field notes")
    report, _ = run_ingest(data, tmp_path)
    assert report["ignored_files"] == ["chordata_ardeidae/notes.txt"]


@pytest.fixture
def hf_folder(tmp_path):
    root = tmp_path / "hf"
    rows = taxonomy_rows(families=3, per_family=4)
    write_hf_folder(root, rows)
    return root, rows


def test_hugging_face_layout_is_detected_and_keeps_the_taxonomy(hf_folder, tmp_path):
    data, rows = hf_folder
    (data / "metadata/licenses.csv").write_text("eol_content_id,md5\n")
    (data / "README.md").write_text("dataset card")
    report, manifest = run_ingest(data, tmp_path)
    assert report["layout"] == "huggingface" and report["quarantined"] == 0
    assert report["ingested"] == len(rows) == len(manifest) and report["classes"] == 3
    assert report["ignored_files"] == ["README.md"]
    first = next(m for m in manifest if m["id"] == rows[0]["rarespecies_id"])
    assert first["label"] == f"{rows[0]['phylum']}_{rows[0]['family']}".lower()
    assert first["class"] == rows[0]["class"] and first["genus"] == rows[0]["genus"]
    assert first["source_path"] == hf_image_path(rows[0])


def test_hugging_face_file_found_by_its_ids_when_named_otherwise(hf_folder, tmp_path):
    data, rows = hf_folder
    documented = data / hf_image_path(rows[0])
    # The dataset card spells the suffix "eol_full-size-copy"; the ids are what matter.
    documented.rename(documented.with_name(documented.name.replace("eol-full", "eol_full")))
    report, manifest = run_ingest(data, tmp_path)
    assert report["quarantined"] == 0 and len(manifest) == len(rows)


def test_hugging_face_bad_rows_and_files(hf_folder, tmp_path):
    data, rows = hf_folder
    (data / hf_image_path(rows[0])).unlink()
    stray = data / hf_image_path(rows[1]).replace(rows[1]["eol_content_id"], "999")
    stray.write_bytes((data / hf_image_path(rows[1])).read_bytes())
    rows = [*rows, dict(rows[2], family=""), dict(rows[3])]
    with (data / "metadata/rarespecies-catalog.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=HF_CATALOG)
        writer.writeheader()
        writer.writerows(rows)
    report, _ = run_ingest(data, tmp_path)
    reasons = sorted(q["reason"].split(" of line")[0] for q in report["quarantine"])
    assert reasons == ["duplicate id", "file missing", "image file has no metadata row",
                       "malformed row: empty family"]


def test_hugging_face_catalogue_without_a_column_is_a_clear_error(hf_folder, tmp_path):
    data, rows = hf_folder
    with (data / "metadata/rarespecies-catalog.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[c for c in HF_CATALOG if c != "family"],
                                extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(IngestError, match=r"rarespecies-catalog\.csv: header lacks family"):
        run_ingest(data, tmp_path)


def test_both_layouts_in_one_folder_is_ambiguous(hf_folder, tmp_path):
    data, _rows = hf_folder
    write_metadata(data, [])
    with pytest.raises(IngestError, match="holds both"):
        run_ingest(data, tmp_path)


def test_real_eol_sample_is_ingested_whole(tmp_path):
    report, manifest = run_ingest(require_shared(EOL_SAMPLE), tmp_path, max_side=128)
    assert report["metadata_rows"] == report["image_files"] == 128
    assert report["ingested"] + report["quarantined"] == 128
    assert report["ignored_files"] == ["PROVENANCE.csv"]  # listed, not silently skipped
    widths = sorted(int(m["width"]) * int(m["height"]) for m in manifest)
    assert widths[-1] == 5792 * 8688  # the 50-megapixel photo, decoded downscaled
    for m in manifest[:5]:
        with Image.open(m["image_path"]) as img:
            assert max(img.size) <= 128
