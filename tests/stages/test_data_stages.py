"""The data stages together (ingest → validate → split), as DVC runs them: on the real EOL
photos, and at the real dataset's scale (11,983 rows, 202 families) with tiny stand-in images.
"""

import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from conftest import EOL_SAMPLE, ROOT, SHARED_DATA, deep_merge, require_shared, run

pytestmark = pytest.mark.slow


def run_data_stages(project: Path, data: Path, overrides: dict) -> dict[str, float]:
    """Run ingest, validate and split in `project` on `data`; returns seconds per stage."""
    params = deep_merge(yaml.safe_load((ROOT / "params.yaml").read_text()),
                        deep_merge({"data": {"dir": str(data)}}, overrides))
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    seconds = {}
    for stage in ("ingest", "validate", "split"):
        start = time.perf_counter()
        run(sys.executable, "-m", f"stages.{stage}", cwd=project)
        seconds[stage] = time.perf_counter() - start
    return seconds


def reports(project: Path) -> tuple[dict, dict, dict]:
    return tuple(json.loads((project / f"reports/{name}.json").read_text())
                 for name in ("ingest", "validation", "split"))


def test_real_eol_photos_go_through_the_data_stages(tmp_path):
    run_data_stages(tmp_path, require_shared(EOL_SAMPLE), {"validate": {"strict": False}})
    ingest, validation, split = reports(tmp_path)
    assert ingest["metadata_rows"] == 128 and ingest["ingested"] == 128
    assert ingest["ignored_files"] == ["PROVENANCE.csv"]
    # nesospingidae has one photo: the suite flags it, and not strict lets the run go on.
    failed = [x for x in validation["expectations"] if not x["success"]]
    assert validation["success"] is False and failed
    assert split["small_classes"]["classes"] == {"chordata_goodeidae": 7,
                                                 "chordata_nesospingidae": 1}
    table = pd.read_csv(tmp_path / "artifacts/split/split.csv")
    assert len(table) == 128
    small = table[table["label"].isin(["chordata_goodeidae", "chordata_nesospingidae"])]
    assert (small["split"] == "train").all()
    assert set(table[table["label"] == "chordata_ardeidae"]["split"]) == {"train", "val", "test"}


def write_stand_ins(root: Path, extra: float = 0.0) -> int:
    """The full dataset's metadata with a tiny distinct JPEG per row (plus `extra` new rows)."""
    meta = pd.read_csv(require_shared(SHARED_DATA / "rare-species-metadata.csv"), dtype=str)
    if extra:
        new = meta.sample(frac=extra, random_state=1).copy()
        new["rare_species_id"] = "new-" + new["rare_species_id"]
        new["eol_content_id"] = "9" + new["eol_content_id"]
        new["file_path"] = new["file_path"].str.replace("_eol", "_new_eol")
        meta = pd.concat([meta, new])
    rng = np.random.default_rng(0)
    for path in meta["file_path"]:
        target = root / path
        pixels = rng.integers(0, 255, (12, 16, 3), np.uint8)  # distinct bytes for every row
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(target, quality=80)
    meta.to_csv(root / "metadata.csv", index=False, quoting=csv.QUOTE_MINIMAL)
    return len(meta)


def test_full_scale_data_stages_are_stable_as_data_grows(tmp_path, capsys):
    data = tmp_path / "data"
    rows = write_stand_ins(data)
    overrides = {"validate": {"min_side": 8}, "ingest": {"max_side": 32}}
    seconds = run_data_stages(tmp_path, data, overrides)
    ingest, validation, split = reports(tmp_path)
    assert rows == ingest["metadata_rows"] == ingest["ingested"] == 11_983
    assert validation["success"] is True and split["classes"] == 202
    for name, share in {"test": 0.15, "val": 0.085}.items():
        assert split["fractions"][name] == pytest.approx(share, abs=0.01)
    before = pd.read_csv(tmp_path / "artifacts/split/split.csv")

    more = write_stand_ins(data, extra=0.1)
    run_data_stages(tmp_path, data, overrides)
    after = pd.read_csv(tmp_path / "artifacts/split/split.csv")
    assert len(after) == more > len(before) + 1000
    moved = before.merge(after, on="id", suffixes=("_before", "_after"))
    assert len(moved) == len(before)
    assert (moved["split_before"] == moved["split_after"]).all()
    with capsys.disabled():
        print("\nfull-scale data stages (s): "
              + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
