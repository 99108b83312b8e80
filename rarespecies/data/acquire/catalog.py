"""The catalogue of `rarespecies acquire eol`: a CSV of image URLs and md5s, checked row by row.

The catalogue is modelled on the Rare Species dataset's `metadata/licenses.csv`; taxa it lacks
come from a taxonomy file joined on eol_content_id. A malformed row is refused with its reason
(never fetched); a file unusable as a whole raises CatalogError.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["CatalogError", "Item", "is_http", "load"]

URL_COLUMNS = ("eol_full_size_copy_url", "medium_source_url")
ID_COLUMNS = ("rare_species_id", "rarespecies_id")
# Taxa become folder names: "<phylum>_<family>" must split back on "_" and never leave data_dir.
PLAIN = re.compile(r"[a-z][a-z0-9-]*")


class CatalogError(ValueError):
    """The catalogue or taxonomy file is unusable as a whole (unreadable, wrong header)."""


@dataclass
class Item:
    """A catalogue row to download: its line, URL, expected md5 and future metadata.csv row."""

    line: int
    url: str
    md5: str
    row: dict  # its metadata.csv row


def is_http(url: str) -> bool:
    """Whether `url` is http(s) with a host: no file://, ftp:// or bare paths."""
    try:
        parts = urlsplit(url)
        return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
    except ValueError:
        return False


def _read_csv(path: Path, what: str) -> tuple[list[str], list[tuple[int, dict]]]:
    """Header and (line number, stripped row) pairs of a CSV file."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            rows = [(reader.line_num, {k.strip(): (v or "").strip() for k, v in row.items()
                                       if isinstance(k, str)}) for row in reader]
            return [name.strip() for name in reader.fieldnames or []], rows
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise CatalogError(f"{what} {path}: cannot read it as CSV ({error})") from error


def load(catalog: Path, taxonomy: Path | None) -> tuple[list[Item], list[dict], int]:
    """Parse and check the catalogue, joined with the taxonomy file.

    Returns:
        The rows to download, the refused rows' problems and the number of catalogue rows.
    """
    header, rows = _read_csv(catalog, "catalogue")
    missing = [c for c in ("eol_content_id", "eol_page_id", "md5") if c not in header]
    if not set(URL_COLUMNS) & set(header):
        missing.append(" or ".join(URL_COLUMNS))
    no_taxa = [] if taxonomy else [c for c in ("phylum", "family") if c not in header]
    if missing or no_taxa:
        fix = ["use the header of Rare Species metadata/licenses.csv"] if missing else []
        fix += ["pass a taxonomy file (course metadata.csv or rarespecies-catalog.csv)"] * bool(
            no_taxa)
        raise CatalogError(f"catalogue {catalog}: missing column(s) "
                           f"{', '.join(missing + no_taxa)}; fix: {' and '.join(fix)}")
    taxa: dict[str, dict] = {}
    if taxonomy:
        tax_header, tax_rows = _read_csv(taxonomy, "taxonomy")
        if lacking := [c for c in ("eol_content_id", "phylum", "family") if c not in tax_header]:
            raise CatalogError(f"taxonomy {taxonomy}: missing column(s) {', '.join(lacking)}; "
                               "fix: pass a course metadata.csv or rarespecies-catalog.csv")
        taxa = {row["eol_content_id"]: row for _, row in tax_rows}
    items, refused, seen = [], [], set()
    for line, row in rows:
        cid, page, md5 = row.get("eol_content_id", ""), row.get("eol_page_id", ""), row["md5"]
        url = next((row[c] for c in URL_COLUMNS if row.get(c)), "")
        sources = (row, taxa.get(cid, {}))  # the catalogue's own values win over the join

        def pick(*names: str, sources: tuple = sources) -> str:
            return next((s[n] for s in sources for n in names if s.get(n)), "")

        phylum, family = pick("phylum").lower(), pick("family").lower()
        reason = ("eol_content_id or eol_page_id is not a number"
                  if not (re.fullmatch(r"[0-9]+", cid) and re.fullmatch(r"[0-9]+", page))
                  else "duplicate eol_content_id" if cid in seen
                  else "empty md5" if not md5
                  else "md5 is not 32 hex digits" if not re.fullmatch(r"[0-9a-fA-F]{32}", md5)
                  else "no phylum/family for this eol_content_id" if not (phylum and family)
                  else "phylum or family is not a plain name"
                  if not (PLAIN.fullmatch(phylum) and PLAIN.fullmatch(family))
                  else "not an http(s) URL" if not is_http(url) else "")
        seen.add(cid)
        if reason:
            refused.append({"line": line, "eol_content_id": cid, "url": url, "reason": reason,
                            "attempts": 0, "retryable": False})
            continue
        path = f"{phylum}_{family}/{cid}_{page}_eol-full-size-copy.jpg"
        # Rare Species is animals only, so a catalogue without kingdom still gives metadata.csv.
        items.append(Item(line, url, md5.lower(), {
            "rare_species_id": pick(*ID_COLUMNS) or f"eol-{cid}", "eol_content_id": cid,
            "eol_page_id": page, "kingdom": (pick("kingdom") or "animalia").lower(),
            "phylum": phylum, "family": family, "file_path": path}))
    return items, refused, len(rows)
