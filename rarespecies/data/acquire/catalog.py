"""The catalogue of `rarespecies acquire eol`: a CSV of image URLs and md5s, checked row by row.

The catalogue is modelled on the Rare Species dataset's `metadata/licenses.csv`; taxa it lacks
come from a taxonomy file joined on eol_content_id. A malformed row is refused with its reason
(never fetched); a file unusable as a whole raises CatalogError. Every value a row gives
(catalogue or taxonomy) is bounded in length and free of control characters, since ids become
file names and values become metadata.csv cells.
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from rarespecies.core.files import NotUtf8, read_utf8

__all__ = ["CatalogError", "Item", "is_http", "load", "read_csv"]

URL_COLUMNS = ("eol_full_size_copy_url", "medium_source_url")
ID_COLUMNS = ("rare_species_id", "rarespecies_id")
# Taxa become folder names: "<phylum>_<family>" must split back on "_" and never leave data_dir.
PLAIN = re.compile(r"[a-z][a-z0-9-]*")
# Longest value per metadata field, so "<phylum>_<family>/<content>_<page>_eol-...jpg" stays far
# below the 255-byte name limit: EOL ids have at most 10 digits today.
MAX_DIGITS, MAX_NAME, MAX_ID, MAX_URL = 18, 64, 128, 2048


class CatalogError(ValueError):
    """A catalogue, taxonomy or metadata file is unusable as a whole (unreadable, wrong header)."""


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


def read_csv(path: Path, what: str) -> tuple[list[str], list[tuple[int, dict]]]:
    """Header and (line number, stripped row) pairs of a CSV file.

    Raises:
        CatalogError: unreadable, not UTF-8 or not CSV; the message names `what` and `path`.
    """
    try:
        with io.StringIO(read_utf8(path), newline="") as handle:
            reader = csv.DictReader(handle)
            rows = [(reader.line_num, {k.strip(): (v or "").strip() for k, v in row.items()
                                       if isinstance(k, str)}) for row in reader]
            return [name.strip() for name in reader.fieldnames or []], rows
    except NotUtf8 as error:
        raise CatalogError(f"{what} {error}") from None
    except (OSError, csv.Error) as error:
        raise CatalogError(f"{what} {path}: cannot read it as CSV ({error})") from error


def _bad_value(values: dict[str, str]) -> str:
    """Why one of `values` (field name to value) cannot be used, or "" when all can."""
    for name, value in values.items():
        if len(value) > (limit := MAX_URL if name == "url" else MAX_ID):
            return f"{name} is longer than {limit} characters"
        if bad := next((c for c in value if unicodedata.category(c)[0] in "CZ" and c != " "),
                       None):
            return f"{name} contains a control or separator character (U+{ord(bad):04X})"
    return ""


def _refusal(values: dict[str, str], seen: set[str]) -> str:
    """Why a row (its metadata values and URL) cannot be downloaded, or "" when it can."""
    if reason := _bad_value(values):
        return reason
    cid, page, md5 = values["eol_content_id"], values["eol_page_id"], values["md5"]
    phylum, family = values["phylum"], values["family"]
    if not (re.fullmatch(r"[0-9]+", cid) and re.fullmatch(r"[0-9]+", page)):
        return "eol_content_id or eol_page_id is not a number"
    if max(len(cid), len(page)) > MAX_DIGITS:
        return f"eol_content_id or eol_page_id has more than {MAX_DIGITS} digits"
    if cid in seen:
        return "duplicate eol_content_id"
    if not md5:
        return "empty md5"
    if not re.fullmatch(r"[0-9a-fA-F]{32}", md5):
        return "md5 is not 32 hex digits"
    if not (phylum and family):
        return "no phylum/family for this eol_content_id"
    if not (PLAIN.fullmatch(phylum) and PLAIN.fullmatch(family)):
        return "phylum or family is not a plain name"
    if max(len(phylum), len(family)) > MAX_NAME:
        return f"phylum or family is longer than {MAX_NAME} characters"
    return "" if is_http(values["url"]) else "not an http(s) URL"


def load(catalog: Path, taxonomy: Path | None) -> tuple[list[Item], list[dict], int]:
    """Parse and check the catalogue, joined with the taxonomy file.

    Returns:
        The rows to download, the refused rows' problems and the number of catalogue rows.
    """
    header, rows = read_csv(catalog, "catalogue")
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
        tax_header, tax_rows = read_csv(taxonomy, "taxonomy")
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
        rare_id, kingdom = pick(*ID_COLUMNS), (pick("kingdom") or "animalia").lower()
        reason = _refusal({"eol_content_id": cid, "eol_page_id": page, "md5": md5, "url": url,
                           "rare_species_id": rare_id, "kingdom": kingdom, "phylum": phylum,
                           "family": family}, seen)
        seen.add(cid)
        if reason:
            refused.append({"line": line, "eol_content_id": cid, "url": url, "status": "refused",
                            "reason": reason, "attempts": 0, "retryable": False})
            continue
        path = f"{phylum}_{family}/{cid}_{page}_eol-full-size-copy.jpg"
        # Rare Species is animals only, so a catalogue without kingdom still gives metadata.csv.
        items.append(Item(line, url, md5.lower(), {
            "rare_species_id": rare_id or f"eol-{cid}", "eol_content_id": cid,
            "eol_page_id": page, "kingdom": kingdom,
            "phylum": phylum, "family": family, "file_path": path}))
    return items, refused, len(rows)
