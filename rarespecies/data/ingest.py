"""Ingest: a data folder (course or Hugging Face layout) → normalized RGB images,
manifest and report.

Every metadata row and every file is accounted for in `reports/ingest.json`: a row is either
in the manifest or quarantined with its reason, an image file without a row is quarantined,
and any other file is listed as ignored. A bad file (undecodable, too large, a symlink loop, a
FIFO or device, unreadable) never crashes or blocks the stage: it is quarantined with its reason.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from rarespecies.core.files import (
    UnreadableFile,
    atomic_path,
    file_problem,
    open_regular,
    walk_files,
    write_json,
)
from rarespecies.core.progress import bar
from rarespecies.data.layouts import TAXONOMY, IngestError, Row, read_listing, real_path
from rarespecies.runtime.images import IMAGE_SUFFIXES, ImageError, open_rgb

__all__ = ["MANIFEST_COLUMNS", "TAXONOMY", "IngestError", "ingest"]

MANIFEST_COLUMNS = ["id", "label", *TAXONOMY, "eol_content_id", "eol_page_id", "source_path",
                    "sha256", "width", "height", "image_path"]


def _decode(job: tuple[Row, Path, int, int, int]) -> dict:
    """Decode one source image and write its normalized JPEG (runs in a worker process)."""
    row, out_dir, max_side, max_pixels, quality = job
    try:
        # One opening for the hash and the decode, streamed: the file is never held in memory.
        with open_regular(row.source) as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
            handle.seek(0)
            img, (width, height) = open_rgb(handle, max_side, max_pixels)
    except (ImageError, UnreadableFile) as error:
        return {"row": row, "error": str(error)}
    target = out_dir / f"{digest[:24]}.jpg"
    img.save(target, "JPEG", quality=quality, subsampling=0)
    return {"row": row, "sha256": digest, "width": width, "height": height,
            "image": target.name}


def ingest(data_dir: Path, images_dir: Path, manifest_path: Path, report_path: Path, *,
           max_side: int, max_pixels: int, jpeg_quality: int, workers: int = 0,
           progress: bool = True) -> dict:
    """Normalize every listed image and write the manifest and the ingest report.

    Args:
        data_dir: data folder in the course or the Hugging Face layout.
        images_dir: output folder of normalized JPEGs.
        manifest_path: output CSV, one row per accepted image.
        report_path: output JSON with counts, every quarantined row or file and every ignored
            (non-image) file.
        max_side: longest side of normalized images.
        max_pixels: sources above this pixel count are quarantined.
        jpeg_quality: quality of the normalized JPEGs.
        workers: decode processes (0 = one per core).
        progress: show a progress bar.

    Returns:
        The report dictionary.
    """
    from tqdm import tqdm

    listing = read_listing(data_dir)
    quarantined = list(listing.quarantined)
    metadata_files = {real_path(listing.metadata), real_path(data_dir / "metadata/licenses.csv")}
    listed = {real_path(r.source) for r in listing.rows} | {
        real_path(data_dir / q["path"]) for q in quarantined if q["path"]}
    # Every entry but folders, symlinks included and never followed (a loop cannot recurse).
    files, unlistable = walk_files(data_dir)
    image_files = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    unlisted = [_unlisted(p, data_dir) for p in image_files if real_path(p) not in listed]
    unlisted += [{"line": None, "path": f"{p.relative_to(data_dir).as_posix()}/",
                  "reason": f"folder cannot be listed ({why})"} for p, why in unlistable]
    quarantined += unlisted
    ignored = [p.relative_to(data_dir).as_posix() for p in files
               if p.suffix.lower() not in IMAGE_SUFFIXES and real_path(p) not in metadata_files]

    manifest: list[dict] = []
    by_hash: dict[str, str] = {}
    with atomic_path(images_dir) as tmp_images:
        tmp_images.mkdir()
        jobs = [(r, tmp_images, max_side, max_pixels, jpeg_quality) for r in listing.rows]
        with ProcessPoolExecutor(max_workers=workers or os.cpu_count()) as pool:
            results = bar(tqdm, pool.map(_decode, jobs, chunksize=4), total=len(jobs),
                          desc="ingest", unit="img", enabled=progress)
            for result in results:
                row: Row = result["row"]
                rel = row.path
                if "error" in result:
                    quarantined.append({"line": row.line, "path": rel, "reason": result["error"]})
                elif result["sha256"] in by_hash:
                    quarantined.append({"line": row.line, "path": rel,
                                        "reason": f"same image as id {by_hash[result['sha256']]}"})
                else:
                    by_hash[result["sha256"]] = row.id
                    manifest.append({
                        "id": row.id, "label": row.label, **row.taxonomy,
                        "eol_content_id": row.eol_content_id,
                        "eol_page_id": row.eol_page_id, "source_path": rel,
                        "sha256": result["sha256"], "width": result["width"],
                        "height": result["height"],
                        "image_path": f"{images_dir.as_posix()}/{result['image']}"})
    manifest.sort(key=lambda m: m["id"])
    with atomic_path(manifest_path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(manifest)

    reasons = Counter(q["reason"].split(" (")[0] for q in quarantined)
    report = {
        "layout": listing.layout,
        "metadata_rows": listing.metadata_rows,
        "image_files": len(image_files),
        "ingested": len(manifest),
        "quarantined": len(quarantined),
        "quarantined_rows": len(quarantined) - len(unlisted),
        "unlisted_files": len(unlisted),
        "quarantine_reasons": dict(sorted(reasons.items())),
        "classes": len({m["label"] for m in manifest}),
        "per_class": dict(sorted(Counter(m["label"] for m in manifest).items())),
        "quarantine": sorted(quarantined, key=lambda q: (q["line"] or 0, q["path"])),
        "ignored_files": ignored,
    }
    # Every row is in the manifest or quarantined; every image file is listed or quarantined.
    assert report["ingested"] + report["quarantined_rows"] == report["metadata_rows"]
    write_json(report_path, report)
    return report


def _unlisted(path: Path, data_dir: Path) -> dict:
    """The quarantine entry of an image file no metadata row names."""
    problem = file_problem(path)
    return {"line": None, "path": path.relative_to(data_dir).as_posix(),
            "reason": "image file has no metadata row" + (f" ({problem})" if problem else "")}
