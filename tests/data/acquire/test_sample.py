"""Tests of the synthetic sample: layout, determinism, long tail, atomicity, learnability."""

from __future__ import annotations

import csv
import itertools
import re
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import rarespecies.data.acquire.sample as sample
from rarespecies.data.acquire.sample import (
    HEADER,
    TINY,
    SampleSpec,
    generate_sample,
    long_tail_counts,
    plan_sample,
)

NAME = re.compile(r"^(\d{8})_(\d+)_eol-full-size-copy\.jpg$")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("tiny") / "data"
    return out, generate_sample(out, TINY)


def _rows(root: Path) -> list[dict[str, str]]:
    with (root / "metadata.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_metadata_header_and_path_layout(tiny: tuple[Path, dict]) -> None:
    root, _ = tiny
    assert (root / "metadata.csv").read_text().splitlines()[0] == ",".join(HEADER)
    rows = _rows(root)
    assert [r["file_path"] for r in rows] == sorted(r["file_path"] for r in rows)
    for r in rows:
        assert all(value == value.lower() for value in r.values())
        assert r["kingdom"] == "animalia"
        uuid.UUID(r["rare_species_id"])
        folder, name = r["file_path"].split("/")
        assert folder == f"{r['phylum']}_{r['family']}"
        match = NAME.match(name)
        assert match, name
        assert match.groups() == (r["eol_content_id"], r["eol_page_id"])
    assert len({r["eol_content_id"] for r in rows}) == len(rows)
    assert len({r["rare_species_id"] for r in rows}) == len(rows)
    on_disk = {p for p in _files(root) if p != "metadata.csv"}
    assert on_disk == {r["file_path"] for r in rows}


def test_species_are_page_ids_within_one_family(tiny: tuple[Path, dict]) -> None:
    rows = _rows(tiny[0])
    pages: dict[str, set[str]] = {}
    for r in rows:
        pages.setdefault(r["family"], set()).add(r["eol_page_id"])
    assert all(1 <= len(p) <= 3 for p in pages.values())
    assert sum(len(p) for p in pages.values()) == len(set().union(*pages.values()))


def test_summary_matches_metadata(tiny: tuple[Path, dict]) -> None:
    root, summary = tiny
    rows = _rows(root)
    assert summary["images"] == len(rows)
    assert summary["families"] == TINY.families
    assert summary["phyla"] == len({r["phylum"] for r in rows}) >= 2
    counts = {f: sum(r["family"] == f for r in rows) for f in summary["per_family"]}
    assert summary["per_family"] == counts
    assert summary["grayscale"] == sum(
        Image.open(root / r["file_path"]).mode == "L" for r in rows)


def test_images_match_plan_and_size_bounds(tiny: tuple[Path, dict]) -> None:
    root, _ = tiny
    for row in plan_sample(TINY):
        with Image.open(root / row.file_path) as image:
            assert image.format == "JPEG"
            assert image.size == (row.width, row.height)
            assert TINY.min_side <= min(image.size) <= max(image.size) <= TINY.max_side
            assert image.mode == ("L" if row.grayscale else "RGB")
            assert "exif" not in image.info


def test_generation_is_byte_for_byte_deterministic(tmp_path: Path) -> None:
    first, second = _files_of(tmp_path / "a", TINY), _files_of(tmp_path / "b", TINY)
    assert first.keys() == second.keys()
    assert all(first[name] == second[name] for name in first)
    other = _files_of(tmp_path / "c", replace(TINY, seed=TINY.seed + 1))
    assert other["metadata.csv"] != first["metadata.csv"]


def _files_of(out: Path, spec: SampleSpec) -> dict[str, bytes]:
    generate_sample(out, spec)
    return _files(out)


def test_an_image_does_not_depend_on_the_others(tmp_path: Path) -> None:
    # Fewer families change every count, yet the images both samples share stay identical.
    full = _files_of(tmp_path / "full", TINY)
    part = _files_of(tmp_path / "part", replace(TINY, families=3))
    shared = (full.keys() & part.keys()) - {"metadata.csv"}
    assert len(shared) >= 10
    assert all(full[name] == part[name] for name in shared)


@pytest.mark.parametrize("spec", [SampleSpec(), TINY, SampleSpec(families=5, max_count=40)])
def test_counts_are_long_tailed_within_bounds(spec: SampleSpec) -> None:
    counts = long_tail_counts(spec)
    assert len(counts) == spec.families
    assert counts[0] == spec.max_count and counts[-1] == spec.min_count
    assert all(a >= b for a, b in itertools.pairwise(counts))
    planned = [row.family for row in plan_sample(spec)]
    assert sorted((planned.count(f) for f in set(planned)), reverse=True) == counts


def test_default_plan_is_a_realistic_small_dataset() -> None:
    spec = SampleSpec()
    rows = plan_sample(spec)
    assert len({r.family for r in rows}) >= 12
    assert len({r.phylum for r in rows}) >= 3
    assert 250 <= len(rows) <= 350
    assert all(spec.min_side <= min(r.width, r.height) for r in rows)
    assert all(max(r.width, r.height) <= spec.max_side for r in rows)
    assert any(r.width > r.height for r in rows) and any(r.width < r.height for r in rows)
    assert len({round(r.width / r.height, 2) for r in rows}) > 50
    assert 1 <= sum(r.grayscale for r in rows) <= 0.1 * len(rows)
    assert all(len(str(r.eol_content_id)) == 8 for r in rows)
    assert rows == plan_sample(spec)


def test_tiny_spec_spans_two_phyla() -> None:
    assert len({row.phylum for row in plan_sample(TINY)}) >= 2


@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_grayscale_fraction_controls_the_mode(tmp_path: Path, fraction: float) -> None:
    spec = replace(TINY, families=2, max_count=3, min_count=2, grayscale_fraction=fraction)
    generate_sample(tmp_path / "data", spec)
    modes = {Image.open(p).mode for p in (tmp_path / "data").rglob("*.jpg")}
    assert modes == ({"L"} if fraction == 1.0 else {"RGB"})


def test_existing_output_is_replaced_as_a_whole(tmp_path: Path) -> None:
    out = tmp_path / "data"
    (out / "chordata_stale").mkdir(parents=True)
    (out / "stray.txt").write_text("old")
    (out / "chordata_stale" / "old.jpg").write_bytes(b"old")
    generate_sample(out, replace(TINY, families=2, max_count=2, min_count=2))
    assert not (out / "stray.txt").exists()
    assert not (out / "chordata_stale").exists()
    assert (out / "metadata.csv").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["data"]  # no temporary folder left


def test_interrupted_run_leaves_the_old_output(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "data"
    out.mkdir()
    (out / "stray.txt").write_text("old")
    calls = []

    def failing(row: sample.SampleRow, seed: int) -> Image.Image:
        calls.append(row)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return Image.new("RGB", (row.width, row.height))

    monkeypatch.setattr(sample, "render_image", failing)
    with pytest.raises(KeyboardInterrupt):
        generate_sample(out, TINY)
    assert [p.name for p in tmp_path.iterdir()] == ["data"]
    assert [p.name for p in out.iterdir()] == ["stray.txt"]


@pytest.mark.parametrize("bad", [
    {"families": 0}, {"families": 99}, {"min_count": 0}, {"min_count": 9, "max_count": 8},
    {"min_side": 100, "max_side": 50}, {"grayscale_fraction": 1.5}, {"seed": -1},
])
def test_impossible_specs_are_rejected(bad: dict) -> None:
    with pytest.raises(ValueError):
        replace(TINY, **bad)


def test_progress_bar_does_not_change_output(tmp_path: Path) -> None:
    pytest.importorskip("tqdm")
    spec = replace(TINY, families=2, max_count=2, min_count=2)
    generate_sample(tmp_path / "bar", spec, progress=True)
    assert _files(tmp_path / "bar") == _files_of(tmp_path / "plain", spec)


def _loo_nearest_centroid(features: np.ndarray, labels: np.ndarray) -> float:
    hits = 0
    for i in range(len(labels)):
        rest = np.arange(len(labels)) != i
        centroids = np.stack([features[rest & (labels == k)].mean(0)
                              for k in range(labels.max() + 1)])
        hits += int(np.argmin(((centroids - features[i]) ** 2).sum(1)) == labels[i])
    return hits / len(labels)


def test_families_are_learnable_but_not_trivial(tmp_path: Path) -> None:
    spec = SampleSpec(families=6, max_count=20, min_count=20, min_side=48, max_side=64, seed=3)
    generate_sample(tmp_path / "data", spec)
    rows = _rows(tmp_path / "data")
    names = sorted({r["family"] for r in rows})
    labels = np.array([names.index(r["family"]) for r in rows])
    thumbs = np.stack([np.asarray(Image.open(tmp_path / "data" / r["file_path"]).convert("RGB")
                                  .resize((16, 16), Image.Resampling.BILINEAR), np.float32) / 255
                       for r in rows])
    # Standardising each thumbnail removes its background tint and exposure, leaving the shape.
    shape = (thumbs - thumbs.mean((1, 2), keepdims=True)) / (thumbs.std((1, 2), keepdims=True)
                                                            + 1e-3)
    chance = 1 / len(names)
    assert _loo_nearest_centroid(shape.reshape(len(rows), -1), labels) >= 1.8 * chance
    # Mean colour alone must not give the family away: backgrounds vary in colour.
    assert _loo_nearest_centroid(thumbs.mean((1, 2)), labels) < 0.5
    for k in range(len(names)):
        family = thumbs[labels == k].reshape(int((labels == k).sum()), -1)
        distances = np.abs(family[:, None] - family[None]).mean(-1)
        assert distances[~np.eye(len(family), dtype=bool)].min() > 0.01
