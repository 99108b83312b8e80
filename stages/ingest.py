"""Stage `ingest`: course-layout data folder → normalized RGB images, manifest and report.

Every metadata row and every image file is accounted for in `reports/ingest.json`: it is
either in the manifest or quarantined with its reason. A bad file never crashes the stage.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from stages.imaging import IMAGE_SUFFIXES, ImageError, open_rgb
from stages.io import atomic_path, write_json

COURSE_HEADER = ["rare_species_id", "eol_content_id", "eol_page_id", "kingdom", "phylum",
                 "family", "file_path"]
MANIFEST_COLUMNS = ["id", "label", "phylum", "family", "eol_content_id", "eol_page_id",
                    "source_path", "sha256", "width", "height", "image_path"]


class IngestError(ValueError):
    """The data folder cannot be read at all (missing metadata, wrong header)."""


@dataclass(frozen=True)
class Row:
    """One metadata row that passed the row-level checks."""

    line: int
    id: str
    phylum: str
    family: str
    eol_content_id: str
    eol_page_id: str
    source: Path

    @property
    def label(self) -> str:
        return f"{self.phylum}_{self.family}"


def read_metadata(data_dir: Path) -> tuple[list[Row], list[dict], int]:
    """Read `metadata.csv`, checking each row.

    Args:
        data_dir: the course-layout data folder.

    Returns:
        Rows to decode, quarantine entries for rows refused here, and the number of rows.

    Raises:
        IngestError: metadata.csv is missing or its header lacks a column.
    """
    metadata = data_dir / "metadata.csv"
    if not metadata.is_file():
        raise IngestError(f"{metadata} not found: the data folder must hold metadata.csv "
                          "(run `rarespecies sample` for the embedded sample)")
    rows: list[Row] = []
    quarantined: list[dict] = []
    seen_ids: dict[str, int] = {}
    with metadata.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in COURSE_HEADER if c not in (reader.fieldnames or [])]
        if missing:
            raise IngestError(f"{metadata}: header lacks {', '.join(missing)}; expected "
                              f"{','.join(COURSE_HEADER)}")
        line = 1  # the header; `line` keeps the last row number after the loop
        for line, record in enumerate(reader, start=2):
            values = {k: (record.get(k) or "").strip() for k in COURSE_HEADER}
            problem = _row_problem(record, values, seen_ids, data_dir)
            seen_ids.setdefault(values["rare_species_id"], line)
            if problem:
                quarantined.append({"line": line, "path": values["file_path"], "reason": problem})
                continue
            rows.append(Row(line, values["rare_species_id"], values["phylum"].lower(),
                            values["family"].lower(), values["eol_content_id"],
                            values["eol_page_id"], data_dir / values["file_path"]))
    return rows, quarantined, line - 1


def _row_problem(record: dict, values: dict[str, str], seen_ids: dict[str, int],
                 data_dir: Path) -> str | None:
    """Why a metadata row cannot be ingested, or None."""
    empty = [k for k in ("rare_species_id", "phylum", "family", "file_path") if not values[k]]
    if empty:
        return f"malformed row: empty {', '.join(empty)}"
    if None in record:
        return "malformed row: more fields than the header"
    if values["rare_species_id"] in seen_ids:
        return f"duplicate id of line {seen_ids[values['rare_species_id']]}"
    source = data_dir / values["file_path"]
    # resolve() follows symlinks, so a link pointing outside is caught as well as "../".
    if Path(values["file_path"]).is_absolute() or \
            not source.resolve().is_relative_to(data_dir.resolve()):
        return "file_path leaves the data folder"
    if not source.is_file():
        return "file missing"
    return None


def _decode(job: tuple[Row, Path, int, int, int]) -> dict:
    """Decode one source image and write its normalized JPEG (runs in a worker process)."""
    row, out_dir, max_side, max_pixels, quality = job
    data = row.source.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    try:
        img, (width, height) = open_rgb(row.source, max_side, max_pixels)
    except ImageError as error:
        return {"row": row, "sha256": digest, "error": str(error)}
    target = out_dir / f"{digest[:24]}.jpg"
    img.save(target, "JPEG", quality=quality, subsampling=0)
    return {"row": row, "sha256": digest, "width": width, "height": height,
            "image": target.name}


def ingest(data_dir: Path, images_dir: Path, manifest_path: Path, report_path: Path, *,
           max_side: int, max_pixels: int, jpeg_quality: int, workers: int = 0,
           progress: bool = True) -> dict:
    """Normalize every listed image and write the manifest and the ingest report.

    Args:
        data_dir: course-layout data folder (metadata.csv + <phylum>_<family>/ images).
        images_dir: output folder of normalized JPEGs.
        manifest_path: output CSV, one row per accepted image.
        report_path: output JSON with counts and every quarantined row or file.
        max_side: longest side of normalized images.
        max_pixels: sources above this pixel count are quarantined.
        jpeg_quality: quality of the normalized JPEGs.
        workers: decode processes (0 = one per core).
        progress: show a progress bar.

    Returns:
        The report dictionary.
    """
    from tqdm import tqdm

    rows, quarantined, metadata_rows = read_metadata(data_dir)
    listed = {r.source.resolve() for r in rows} | {
        (data_dir / q["path"]).resolve() for q in quarantined if q["path"]}
    image_files = sorted(p for p in data_dir.rglob("*")
                         if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    unlisted = [p for p in image_files if p.resolve() not in listed]
    quarantined += [{"line": None, "path": str(p.relative_to(data_dir)),
                     "reason": "image file has no metadata row"} for p in unlisted]

    manifest: list[dict] = []
    by_hash: dict[str, str] = {}
    with atomic_path(images_dir) as tmp_images:
        tmp_images.mkdir()
        jobs = [(r, tmp_images, max_side, max_pixels, jpeg_quality) for r in rows]
        with ProcessPoolExecutor(max_workers=workers or os.cpu_count()) as pool:
            results = tqdm(pool.map(_decode, jobs, chunksize=4), total=len(jobs),
                           desc="ingest", unit="img", disable=not progress)
            for result in results:
                row: Row = result["row"]
                rel = str(row.source.relative_to(data_dir))
                if "error" in result:
                    quarantined.append({"line": row.line, "path": rel, "reason": result["error"]})
                elif result["sha256"] in by_hash:
                    quarantined.append({"line": row.line, "path": rel,
                                        "reason": f"same image as id {by_hash[result['sha256']]}"})
                else:
                    by_hash[result["sha256"]] = row.id
                    manifest.append({
                        "id": row.id, "label": row.label, "phylum": row.phylum,
                        "family": row.family, "eol_content_id": row.eol_content_id,
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
        "metadata_rows": metadata_rows,
        "image_files": len(image_files),
        "ingested": len(manifest),
        "quarantined": len(quarantined),
        "quarantine_reasons": dict(sorted(reasons.items())),
        "classes": len({m["label"] for m in manifest}),
        "per_class": dict(sorted(Counter(m["label"] for m in manifest).items())),
        "quarantine": sorted(quarantined, key=lambda q: (q["line"] or 0, q["path"])),
    }
    write_json(report_path, report)
    return report


def main() -> None:
    """Run the stage with the `data` and `ingest` keys of params.yaml."""
    from stages.cli_util import stage_main
    from stages.params import load_params

    def work() -> str:
        params = load_params()
        p = params.ingest
        report = ingest(Path(params.data.dir), Path("artifacts/ingest/images"),
                        Path("artifacts/ingest/manifest.csv"), Path("reports/ingest.json"),
                        max_side=p.max_side, max_pixels=p.max_pixels,
                        jpeg_quality=p.jpeg_quality, workers=p.workers)
        return (f"ingested {report['ingested']} images in {report['classes']} classes, "
                f"quarantined {report['quarantined']} (see reports/ingest.json)")

    stage_main("ingest", work)


if __name__ == "__main__":
    main()
