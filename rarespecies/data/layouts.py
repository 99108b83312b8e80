"""The two layouts the Rare Species data comes in, read into one list of checked rows.

- course: `metadata.csv` + `<phylum>_<family>/<eol_content_id>_<eol_page_id>_eol-full-size-copy.jpg`
- huggingface: `metadata/rarespecies-catalog.csv` +
  `dataset/<Kingdom-Phylum-Class-Order-Family-Genus-species>/<content>_<page>_...jpg`

Rows that cannot be ingested are returned as quarantine entries with their reason, never
dropped (a missing file, a symlink loop, a FIFO or device, an unreadable file); a metadata
file that cannot be read at all (missing, wrong header, not UTF-8) is an `IngestError`.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

from rarespecies.core.files import NotUtf8, file_problem, read_utf8, walk_files
from rarespecies.runtime.images import IMAGE_SUFFIXES

TAXONOMY = ["kingdom", "phylum", "class", "order", "family", "genus", "species"]
COURSE_METADATA = "metadata.csv"
COURSE_HEADER = ["rare_species_id", "eol_content_id", "eol_page_id", "kingdom", "phylum",
                 "family", "file_path"]
HF_CATALOG = "metadata/rarespecies-catalog.csv"
HF_HEADER = ["rarespecies_id", "eol_content_id", "eol_page_id", *TAXONOMY]
FIX = ("run `rarespecies acquire sample|huggingface|eol` to fill the data folder, or point "
       "data.dir in params.yaml at a folder in the course or Hugging Face layout")


class IngestError(ValueError):
    """The data folder cannot be read at all (no metadata, wrong header)."""


@dataclass(frozen=True)
class Row:
    """One metadata row that passed the row-level checks."""

    line: int
    id: str
    eol_content_id: str
    eol_page_id: str
    path: str
    source: Path
    taxonomy: dict[str, str] = field(hash=False)

    @property
    def label(self) -> str:
        return f"{self.taxonomy['phylum']}_{self.taxonomy['family']}".lower()


@dataclass
class Listing:
    """What a data folder's metadata says, after the row-level checks."""

    layout: str
    metadata: Path
    rows: list[Row]
    quarantined: list[dict]
    metadata_rows: int


def detect_layout(data_dir: Path) -> str:
    """`course` or `huggingface`, from the metadata file the folder holds.

    Raises:
        IngestError: neither or both metadata files are there.
    """
    found = [name for name, path in (("course", COURSE_METADATA), ("huggingface", HF_CATALOG))
             if (data_dir / path).is_file()]
    if len(found) == 1:
        return found[0]
    if not found:
        raise IngestError(f"{data_dir} holds neither {COURSE_METADATA} (course layout) nor "
                          f"{HF_CATALOG} (Hugging Face layout): {FIX}")
    raise IngestError(f"{data_dir} holds both {COURSE_METADATA} and {HF_CATALOG}: keep the "
                      "one of the layout the folder is in")


def read_listing(data_dir: Path) -> Listing:
    """Read and check the folder's metadata, whichever layout it is in.

    Args:
        data_dir: the data folder.

    Returns:
        The rows to decode and the rows refused here, with their reasons.
    """
    layout = detect_layout(data_dir)
    if layout == "course":
        metadata, header, id_column = data_dir / COURSE_METADATA, COURSE_HEADER, "rare_species_id"
        locate = _course_path
    else:
        metadata, header, id_column = data_dir / HF_CATALOG, HF_HEADER, "rarespecies_id"
        locate = _hf_locator(data_dir)
    rows: list[Row] = []
    quarantined: list[dict] = []
    seen_ids: dict[str, int] = {}
    try:
        text = read_utf8(metadata)
    except NotUtf8 as error:
        raise IngestError(str(error)) from None
    with io.StringIO(text, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in header if c not in (reader.fieldnames or [])]
        if missing:
            raise IngestError(f"{metadata}: header lacks {', '.join(missing)}; expected "
                              f"{','.join(header)}")
        line = 1  # the header; `line` keeps the last row number after the loop
        for line, record in enumerate(reader, start=2):
            values = {k: (v or "").strip() for k, v in record.items() if k is not None}
            path = locate(values) if values.get("phylum") and values.get("family") else ""
            problem = _row_problem(record, values, id_column, path, seen_ids, data_dir)
            seen_ids.setdefault(values[id_column], line)
            if problem:
                quarantined.append({"line": line, "path": path, "reason": problem})
                continue
            rows.append(Row(line, values[id_column], values["eol_content_id"],
                            values["eol_page_id"], path, data_dir / path,
                            {k: values.get(k, "") for k in TAXONOMY}))
    return Listing(layout, metadata, rows, quarantined, line - 1)


def _course_path(values: dict[str, str]) -> str:
    return values["file_path"]


def _hf_locator(data_dir: Path):
    """Map a catalogue row to its image: the documented path, else the file named by its ids."""
    by_ids: dict[str, str] = {}
    for file in walk_files(data_dir / "dataset")[0]:  # ingest reports unlistable folders
        if file.suffix.lower() in IMAGE_SUFFIXES:
            # File names start with <eol_content_id>_<eol_page_id>_ whatever the suffix spelling.
            by_ids.setdefault("_".join(file.name.split("_")[:2]), file.relative_to(data_dir)
                              .as_posix())

    def locate(values: dict[str, str]) -> str:
        taxa = "-".join(values.get(k, "") for k in TAXONOMY)
        ids = f"{values['eol_content_id']}_{values['eol_page_id']}"
        documented = f"dataset/{taxa}/{ids}_eol-full-size-copy.jpg"
        return documented if (data_dir / documented).exists() else by_ids.get(ids, documented)

    return locate


def _row_problem(record: dict, values: dict[str, str], id_column: str, path: str,
                 seen_ids: dict[str, int], data_dir: Path) -> str | None:
    """Why a metadata row cannot be ingested, or None."""
    empty = [k for k in (id_column, "phylum", "family") if not values.get(k)]
    if not path and not empty:
        empty.append("file_path")
    if empty:
        return f"malformed row: empty {', '.join(empty)}"
    if None in record:
        return "malformed row: more fields than the header"
    if values[id_column] in seen_ids:
        return f"duplicate id of line {seen_ids[values[id_column]]}"
    source = data_dir / path
    # realpath() follows symlinks, so a link pointing outside is caught as well as "../"
    # (and, unlike Path.resolve(), it does not raise on a symlink loop).
    if Path(path).is_absolute() or not real_path(source).is_relative_to(real_path(data_dir)):
        return "file_path leaves the data folder"
    return file_problem(source)


def real_path(path: Path) -> Path:
    """`path` with every symlink followed as far as it goes; a loop is left where it loops."""
    return Path(os.path.realpath(path))
