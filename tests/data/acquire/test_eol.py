"""`stages.download`: real EOL images served by a fake server on 127.0.0.1 that injects faults."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from eol_server import EolServer
from typer.testing import CliRunner

from rarespecies.cli import app
from rarespecies.data.acquire import fetch, versioning
from rarespecies.data.acquire.eol import (
    MAX_BYTES,
    CatalogError,
    download_catalog,
    problem_lines,
    summarize,
)

from conftest import EOL_SAMPLE, HEADER, ROOT, require_shared

# The Rare Species metadata/licenses.csv columns, plus the taxonomy this catalogue carries.
LICENSES = ["rarespecies_id", "eol_content_id", "eol_page_id", "md5", "medium_source_url",
            "eol_full_size_copy_url", "license_name", "copyright_owner"]
TAXA = ["kingdom", "phylum", "family"]
FAST = {"workers": 4, "timeout": 2.0, "retries": 2, "backoff": 0.01, "progress": False}


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _smallest() -> list[dict]:
    """The sample's rows, smallest image first (some are 10+ MB)."""
    if not (EOL_SAMPLE / "metadata.csv").is_file():
        return []
    with (EOL_SAMPLE / "metadata.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return sorted(rows, key=lambda row: (EOL_SAMPLE / row["file_path"]).stat().st_size)[:12]


SMALL = _smallest()


@pytest.fixture(autouse=True)
def _real_sample() -> None:
    require_shared(EOL_SAMPLE / "metadata.csv")


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy configured on the machine must not see the fake server's traffic."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                 "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def server() -> Iterator[EolServer]:
    with EolServer(EOL_SAMPLE) as running:
        yield running


def entry(server: EolServer, row: dict, fault: str = "ok", **overrides: str) -> dict:
    """A catalogue row for a sample image, served with `fault`."""
    return {"rarespecies_id": row["rare_species_id"], "eol_content_id": row["eol_content_id"],
            "eol_page_id": row["eol_page_id"], "md5": md5(EOL_SAMPLE / row["file_path"]),
            "medium_source_url": "", "eol_full_size_copy_url": server.url(fault, row["file_path"]),
            "license_name": "cc-by-2.0", "copyright_owner": "someone",
            "kingdom": "Animalia", "phylum": row["phylum"].title(),
            "family": row["family"].title(), **overrides}


def write_catalog(path: Path, rows: list[dict], header: list[str] = LICENSES + TAXA) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def acquire(tmp_path: Path, rows: list[dict], header: list[str] = LICENSES + TAXA,
            **options: object) -> dict:
    catalog = write_catalog(tmp_path / "catalog.csv", rows, header)
    return download_catalog(catalog, tmp_path / "data", tmp_path / "report.json",
                            **{**FAST, **options})


def files(folder: Path) -> set[str]:
    """Every file under `folder`, relative."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def metadata(data_dir: Path) -> list[dict]:
    with (data_dir / "metadata.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == HEADER
        return list(reader)


def assert_intact(data_dir: Path, rows: list[dict]) -> None:
    """Exactly `rows` (sample rows) are in data_dir, byte-identical, and in metadata.csv."""
    assert files(data_dir) == {r["file_path"] for r in rows} | {"metadata.csv"}
    for row in rows:
        assert md5(data_dir / row["file_path"]) == md5(EOL_SAMPLE / row["file_path"])
    listed = {r["eol_content_id"]: r for r in metadata(data_dir)}
    assert set(listed) == {r["eol_content_id"] for r in rows}
    for row in rows:
        assert listed[row["eol_content_id"]]["file_path"] == row["file_path"]
    assert not (data_dir.parent / f".{data_dir.name}.downloads").exists()


def test_clean_download_gives_course_layout_metadata_and_report(
        tmp_path: Path, server: EolServer) -> None:
    rows = SMALL[:5]
    catalogue = [entry(server, r) for r in rows]
    # The medium URL stands in when the full-size one is empty.
    catalogue[1] |= {"eol_full_size_copy_url": "",
                     "medium_source_url": server.url("ok", rows[1]["file_path"])}
    report = acquire(tmp_path, catalogue)

    assert len({r["family"] for r in rows}) > 1
    assert_intact(tmp_path / "data", rows)
    assert metadata(tmp_path / "data") == [{**{k: r[k] for k in HEADER}} for r in rows]
    assert report["counts"] == {"rows": 5, "downloaded": 5, "already_present": 0, "failed": 0,
                                "refused": 0}
    assert report["problems"] == [] and report["interrupted"] is False
    assert json.loads((tmp_path / "report.json").read_text()) == report
    assert all(server.hits("ok", r["file_path"]) == 1 for r in rows)
    assert summarize(report) == ("5 rows: 5 downloaded, 0 already present, 0 failed, "
                                 "0 refused")


def test_rare_species_id_falls_back_to_eol_content_id(tmp_path: Path, server: EolServer) -> None:
    header = [c for c in LICENSES if c != "rarespecies_id"] + TAXA
    acquire(tmp_path, [entry(server, SMALL[0])], header)
    assert metadata(tmp_path / "data")[0]["rare_species_id"] == f"eol-{SMALL[0]['eol_content_id']}"


@pytest.mark.parametrize("fault", ["fail-once", "unavailable-once", "rate-limited-once",
                                   "stall-once", "truncate-once"])
def test_transient_faults_are_retried(tmp_path: Path, server: EolServer, fault: str) -> None:
    rows = SMALL[:2]
    report = acquire(tmp_path, [entry(server, rows[0], fault), entry(server, rows[1])],
                     timeout=0.3)
    assert report["counts"]["downloaded"] == 2, report["problems"]
    assert server.hits(fault, rows[0]["file_path"]) == 2
    assert_intact(tmp_path / "data", rows)


def test_redirect_to_http_is_followed(tmp_path: Path, server: EolServer) -> None:
    report = acquire(tmp_path, [entry(server, SMALL[0], "redirect")])
    assert report["counts"]["downloaded"] == 1
    assert server.hits("redirect", SMALL[0]["file_path"]) == 1
    assert server.hits("ok", SMALL[0]["file_path"]) == 1
    assert_intact(tmp_path / "data", SMALL[:1])


def test_retry_after_is_honoured(tmp_path: Path) -> None:
    with EolServer(EOL_SAMPLE, retry_after=1) as slow_server:
        start = time.monotonic()
        report = acquire(tmp_path, [entry(slow_server, SMALL[0], "rate-limited-once")],
                         backoff=0.0)
    assert report["counts"]["downloaded"] == 1
    assert time.monotonic() - start >= 1.0


@pytest.mark.parametrize(("fault", "reason", "attempts", "hits", "retryable"), [
    ("missing", "HTTP 404", 1, 1, False),
    ("forbidden", "HTTP 403", 1, 1, False),
    ("fail", "HTTP 500 after 3 attempts", 3, 3, True),
    ("unavailable", "HTTP 503 after 3 attempts", 3, 3, True),
    ("rate-limited", "HTTP 429 after 3 attempts", 3, 3, True),
    ("stall", "timed out after 3 attempts", 3, 3, True),
    ("truncate", "truncated body after 3 attempts", 3, 3, True),
    # A whole image, but not the catalogue's: the next try gets the same bytes.
    ("wrong", "md5 mismatch (the server sends an image of md5 {other})", 1, 1, False),
    ("garbled", "not an image (Pillow does not recognise it)", 1, 1, False),
    ("html", "not an image (Content-Type text/html)", 1, 1, False),
    ("oversize", f"larger than --max-bytes {MAX_BYTES} (Content-Length {1 << 40})", 1, 1, False),
    ("redirect-file", "redirect to a non-http(s) URL", 1, 1, False),
    ("redirect-loop", "more than 5 redirects", 1, 6, False),
])
def test_faults_are_reported_with_whether_a_rerun_may_help(
        tmp_path: Path, server: EolServer, fault: str, reason: str, attempts: int, hits: int,
        retryable: bool) -> None:
    good, bad = SMALL[0], SMALL[1]
    report = acquire(tmp_path, [entry(server, good), entry(server, bad, fault)], timeout=0.3)

    assert report["counts"] == {"rows": 2, "downloaded": 1, "already_present": 0, "failed": 1,
                                "refused": 0}
    [problem] = report["problems"]
    other = md5(server.other(EOL_SAMPLE / bad["file_path"]))
    assert problem == {"line": 3, "eol_content_id": bad["eol_content_id"],
                       "url": server.url(fault, bad["file_path"]), "status": "failed",
                       "reason": reason.format(other=other), "attempts": attempts,
                       "retryable": retryable, "kept": None}
    assert server.hits(fault, bad["file_path"]) == hits
    assert_intact(tmp_path / "data", [good])


def test_connection_errors_are_retried_then_reported(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/ok/{SMALL[0]['file_path']}"
    with EolServer(EOL_SAMPLE) as unused:
        report = acquire(tmp_path, [entry(unused, SMALL[0], eol_full_size_copy_url=url)])
    assert [(p["reason"], p["attempts"]) for p in report["problems"]] == [
        ("connection failed after 3 attempts", 3)]
    assert report["counts"]["failed"] == 1


def test_non_http_urls_are_refused_without_any_request(tmp_path: Path,
                                                       server: EolServer) -> None:
    port = server.server_address[1]
    secret = tmp_path / "secret.jpg"
    secret.write_bytes((EOL_SAMPLE / SMALL[0]["file_path"]).read_bytes())
    urls = [secret.as_uri(), f"ftp://127.0.0.1:{port}/ok/{SMALL[1]['file_path']}", "",
            f"127.0.0.1:{port}/ok/{SMALL[2]['file_path']}", "http://", "javascript:alert(1)"]
    catalogue = [entry(server, row, eol_full_size_copy_url=url)
                 for row, url in zip(SMALL, urls, strict=False)]
    report = acquire(tmp_path, catalogue)

    assert server.total() == 0
    assert report["counts"] == {"rows": 6, "downloaded": 0, "already_present": 0, "failed": 0,
                                "refused": 6}
    assert [(p["line"], p["url"], p["status"], p["reason"], p["attempts"])
            for p in report["problems"]] == [(line, url, "refused", "not an http(s) URL", 0)
                                             for line, url in enumerate(urls, start=2)]
    assert files(tmp_path / "data") == {"metadata.csv"} and metadata(tmp_path / "data") == []


def test_malformed_rows_are_refused_and_counted(tmp_path: Path, server: EolServer) -> None:
    rows = SMALL[:7]
    catalogue = [entry(server, rows[0], md5=""),
                 entry(server, rows[1], md5="abc123"),
                 entry(server, rows[2], eol_content_id="12a"),
                 entry(server, rows[3], family=""),
                 entry(server, rows[4], family="../../escape"),
                 entry(server, rows[5]),
                 entry(server, rows[5], eol_page_id="1")]
    report = acquire(tmp_path, catalogue)

    assert report["counts"] == {"rows": 7, "downloaded": 1, "already_present": 0, "failed": 0,
                                "refused": 6}
    assert [(p["line"], p["reason"]) for p in report["problems"]] == [
        (2, "empty md5"), (3, "md5 is not 32 hex digits"),
        (4, "eol_content_id or eol_page_id is not a number"),
        (5, "no phylum/family for this eol_content_id"),
        (6, "phylum or family is not a plain name"), (8, "duplicate eol_content_id")]
    assert server.total() == 1
    assert_intact(tmp_path / "data", [rows[5]])
    assert not (tmp_path / "escape").exists()


@pytest.mark.parametrize(("drop", "named"), [
    (["md5"], "md5"),
    (["eol_full_size_copy_url", "medium_source_url"],
     "eol_full_size_copy_url or medium_source_url"),
    (["phylum", "family"], "phylum, family"),
])
def test_wrong_header_is_a_catalog_error(tmp_path: Path, server: EolServer, drop: list[str],
                                         named: str) -> None:
    header = [c for c in LICENSES + TAXA if c not in drop]
    with pytest.raises(CatalogError) as error:
        acquire(tmp_path, [entry(server, SMALL[0])], header)
    message = str(error.value)
    assert "\n" not in message and "catalog.csv" in message and named in message
    assert "fix:" in message and ("taxonomy" in message) == ("phylum" in drop)
    assert not (tmp_path / "data").exists() and not (tmp_path / "report.json").exists()
    assert server.total() == 0


def test_unusable_taxonomy_or_missing_catalogue_is_a_catalog_error(tmp_path: Path) -> None:
    taxonomy = tmp_path / "taxa.csv"
    taxonomy.write_text("eol_content_id,phylum\n1,chordata\n")
    catalog = write_catalog(tmp_path / "catalog.csv", [], LICENSES)
    with pytest.raises(CatalogError, match=r"taxa\.csv: missing column\(s\) family"):
        download_catalog(catalog, tmp_path / "data", tmp_path / "r.json", taxonomy=taxonomy)
    with pytest.raises(CatalogError, match=r"nowhere\.csv"):
        download_catalog(tmp_path / "nowhere.csv", tmp_path / "data", tmp_path / "r.json")


def test_a_catalogue_that_is_not_utf8_names_the_byte_and_the_fix(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.csv"
    catalog.write_bytes(b"eol_content_id,eol_page_id,md5,phylum,family\n1,2,x,chordata,ard\xe9\n")
    with pytest.raises(CatalogError) as error:
        download_catalog(catalog, tmp_path / "data", tmp_path / "r.json")
    assert str(error.value).startswith(
        f"catalogue {catalog}:2:19: not UTF-8 (byte 0xe9): re-save it as UTF-8")
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("layout", ["course", "hugging-face"])
def test_taxonomy_is_joined_from_a_separate_file(tmp_path: Path, server: EolServer,
                                                 layout: str) -> None:
    rows = SMALL[:4]
    if layout == "course":
        taxonomy, ids = EOL_SAMPLE / "metadata.csv", {r["eol_content_id"]: r["rare_species_id"]
                                                      for r in rows}
    else:
        taxonomy = write_catalog(tmp_path / "rarespecies-catalog.csv", [
            {"rarespecies_id": f"hf-{i}", "eol_content_id": r["eol_content_id"],
             "eol_page_id": r["eol_page_id"], "kingdom": "Animalia",
             "phylum": r["phylum"].title(), "class": "Aves", "order": "Pelecaniformes",
             "family": r["family"].title(), "genus": "G", "species": "s", "sciName": "G s",
             "common": "bird"} for i, r in enumerate(rows[:3])],
            ["rarespecies_id", "eol_content_id", "eol_page_id", "kingdom", "phylum", "class",
             "order", "family", "genus", "species", "sciName", "common"])
        ids = {r["eol_content_id"]: f"hf-{i}" for i, r in enumerate(rows[:3])}
    header = [c for c in LICENSES if c != "rarespecies_id"]  # no taxa, no ids
    catalog = write_catalog(tmp_path / "catalog.csv", [entry(server, r) for r in rows], header)
    report = download_catalog(catalog, tmp_path / "data", tmp_path / "report.json",
                              taxonomy=taxonomy, **FAST)

    joined = [r for r in rows if r["eol_content_id"] in ids]
    assert report["counts"]["downloaded"] == len(joined)
    assert [(p["line"], p["reason"]) for p in report["problems"]] == (
        [] if layout == "course" else [(5, "no phylum/family for this eol_content_id")])
    assert_intact(tmp_path / "data", joined)
    assert [(m["rare_species_id"], m["kingdom"], m["phylum"], m["family"])
            for m in metadata(tmp_path / "data")] == [
        (ids[r["eol_content_id"]], "animalia", r["phylum"], r["family"]) for r in joined]


def test_resume_skips_verified_files_and_refetches_corrupted_ones(tmp_path: Path,
                                                                   server: EolServer) -> None:
    rows = SMALL[:4]
    catalogue = [entry(server, r) for r in rows]
    acquire(tmp_path, catalogue)
    assert server.total() == 4

    report = acquire(tmp_path, catalogue)
    assert server.total() == 4  # not a single request
    assert report["counts"] == {"rows": 4, "downloaded": 0, "already_present": 4, "failed": 0,
                                "refused": 0}
    assert_intact(tmp_path / "data", rows)

    (tmp_path / "data" / rows[2]["file_path"]).write_bytes(b"not the image")
    report = acquire(tmp_path, catalogue)
    assert report["counts"]["downloaded"] == 1 and report["counts"]["already_present"] == 3
    assert server.hits("ok", rows[2]["file_path"]) == 2 and server.total() == 5
    assert_intact(tmp_path / "data", rows)

    # A listed copy that no longer matches and cannot be fetched again stays listed, named in
    # the report: the catalogue's md5 may be what changed, and DVC can restore a corrupted one.
    (tmp_path / "data" / rows[3]["file_path"]).write_bytes(b"not the image")
    catalogue[3] = entry(server, rows[3], "missing")
    report = acquire(tmp_path, catalogue)
    assert report["counts"]["failed"] == 1
    assert [p["kept"] for p in report["problems"]] == [rows[3]["file_path"]]
    assert (tmp_path / "data" / rows[3]["file_path"]).read_bytes() == b"not the image"
    assert sorted(m["eol_content_id"] for m in metadata(tmp_path / "data")) == sorted(
        r["eol_content_id"] for r in rows)


def test_a_wrong_file_never_listed_is_removed_when_it_cannot_be_fetched(
        tmp_path: Path, server: EolServer) -> None:
    stray = tmp_path / "data" / SMALL[1]["file_path"]
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"not the image")  # e.g. put there by hand: never verified
    report = acquire(tmp_path, [entry(server, SMALL[0]), entry(server, SMALL[1], "missing")])
    assert [(p["reason"], p["kept"]) for p in report["problems"]] == [("HTTP 404", None)]
    assert_intact(tmp_path / "data", SMALL[:1])


def test_acquisitions_accumulate_in_metadata(tmp_path: Path, server: EolServer) -> None:
    first, second = SMALL[:2], SMALL[2:4]
    acquire(tmp_path, [entry(server, r) for r in first])
    acquire(tmp_path, [entry(server, r) for r in second])
    assert_intact(tmp_path / "data", first + second)
    assert [m["eol_content_id"] for m in metadata(tmp_path / "data")] == [
        r["eol_content_id"] for r in first + second]


def test_stale_temp_dir_is_cleaned(tmp_path: Path, server: EolServer) -> None:
    stale = tmp_path / ".data.downloads"
    stale.mkdir()
    (stale / "123.part").write_bytes(b"half")
    acquire(tmp_path, [entry(server, SMALL[0])])
    assert not stale.exists()
    assert_intact(tmp_path / "data", SMALL[:1])


@pytest.mark.parametrize(("workers", "concurrent"), [(1, False), (4, True)])
def test_downloads_run_concurrently(tmp_path: Path, server: EolServer, workers: int,
                                    concurrent: bool) -> None:
    acquire(tmp_path, [entry(server, r, "slow") for r in SMALL[:4]], workers=workers)
    assert (server.max_in_flight > 1) is concurrent
    assert_intact(tmp_path / "data", SMALL[:4])


def test_progress_bar_and_signal_handlers(tmp_path: Path, server: EolServer,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    acquire(tmp_path, [entry(server, SMALL[0])], progress=True)
    assert "acquire eol" in capsys.readouterr().err
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before

    # Off the main thread (a Prefect task, say) no handler can be installed: still works.
    results: list[dict] = []
    worker = threading.Thread(target=lambda: results.append(acquire(
        tmp_path, [entry(server, SMALL[1])])))
    worker.start()
    worker.join(20)
    assert results and results[0]["counts"]["downloaded"] == 1


SCRIPT = """
import sys
from pathlib import Path
from rarespecies.data.acquire.eol import download_catalog
download_catalog(*map(Path, sys.argv[1:4]), workers=8, timeout=60, retries=0, progress=False)
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interruption_keeps_verified_files_and_leaves_no_partial_one(
        tmp_path: Path, server: EolServer, signum: int) -> None:
    done, stalled = SMALL[:3], SMALL[3:5]
    catalogue = [entry(server, r) for r in done] + [entry(server, r, "stall-once")
                                                    for r in stalled]
    catalog = write_catalog(tmp_path / "catalog.csv", catalogue)
    data_dir, report_path = tmp_path / "data", tmp_path / "report.json"
    temp_dir = tmp_path / ".data.downloads"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen([sys.executable, "-c", SCRIPT, catalog, data_dir, report_path],
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not (all((data_dir / r["file_path"]).is_file() for r in done)
                   and len(list(temp_dir.glob("*.part"))) == len(stalled)):
            assert process.poll() is None and time.monotonic() < deadline, "never got going"
            time.sleep(0.05)
        process.send_signal(signum)
        start = time.monotonic()
        _, stderr = process.communicate(timeout=20)
    finally:
        process.kill()
    # The stalled reads are aborted, not waited out (the timeout is 60 s).
    assert time.monotonic() - start < 10
    assert process.returncode != 0 and "KeyboardInterrupt" in stderr

    assert_intact(data_dir, done)  # no partial file, temp dir gone, metadata of the verified
    report = json.loads(report_path.read_text())
    assert report["interrupted"] is True and report["pending"] == len(stalled)
    assert report["counts"]["downloaded"] == len(done)

    report = download_catalog(catalog, data_dir, report_path, **FAST)
    assert report["counts"] == {"rows": 5, "downloaded": 2, "already_present": 3, "failed": 0,
                                "refused": 0}
    assert all(server.hits("ok", r["file_path"]) == 1 for r in done)
    assert_intact(data_dir, done + stalled)


@pytest.fixture
def stream_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Bytes each download left in its part file (the raw body written, or as much as was)."""
    sizes: list[int] = []
    real = fetch._stream

    def recorded(response: object, part: Path, max_bytes: int) -> str:
        try:
            return real(response, part, max_bytes)
        finally:
            sizes.append(part.stat().st_size)

    monkeypatch.setattr(fetch, "_stream", recorded)
    return sizes


@pytest.mark.parametrize(("fault", "reason"), [
    ("flood", "larger than --max-bytes 1048576"),
    # If the 32 MiB of zeros were inflated, the cap would stop them: they are not.
    ("gzip-bomb", "not an image (Pillow does not recognise it; Content-Encoding gzip is not "
                  "decoded)"),
])
def test_bodies_are_bounded_and_never_decoded(tmp_path: Path, server: EolServer,
                                              stream_sizes: list[int], fault: str,
                                              reason: str) -> None:
    good, bad = SMALL[0], SMALL[1]
    report = acquire(tmp_path, [entry(server, good), entry(server, bad, fault)],
                     max_bytes=1 << 20)
    assert [(p["reason"], p["attempts"], p["retryable"]) for p in report["problems"]] == [
        (reason, 1, False)]
    assert server.hits(fault, bad["file_path"]) == 1
    assert max(stream_sizes) <= 1 << 20
    if fault == "flood":  # the client hung up long before the 32 MiB
        assert server.completed(fault, bad["file_path"]) == 0
    else:  # the raw gzip bytes, as sent
        assert len(server.bomb()) in stream_sizes
    assert_intact(tmp_path / "data", [good])


@pytest.mark.parametrize("fault", ["trickle", "trickle-headers"])
def test_a_trickling_server_is_stopped_by_the_deadline(tmp_path: Path, server: EolServer,
                                                       fault: str) -> None:
    """One byte per 0.2 s answers every read long before the 2 s timeout: only the deadline
    ends it, retryable (a rerun may meet a faster server), without a second attempt."""
    good, bad = SMALL[0], SMALL[1]
    report = acquire(tmp_path, [entry(server, good), entry(server, bad, fault)],
                     timeout=2.0, deadline=1.0)
    assert server.hits(fault, bad["file_path"]) == 1
    assert server.completed(fault, bad["file_path"]) == 0
    assert [(p["reason"], p["attempts"], p["retryable"]) for p in report["problems"]] == [
        ("deadline of 1 s exceeded after 1 attempt", 1, True)]
    assert_intact(tmp_path / "data", [good])


def test_ids_too_long_and_control_characters_are_refused_with_a_reason(
        tmp_path: Path, server: EolServer) -> None:
    rows = SMALL[:9]
    url = server.url("ok", rows[5]["file_path"])
    catalogue = [entry(server, rows[0], eol_content_id="1" * 300),
                 entry(server, rows[1], eol_page_id="9" * 30),
                 entry(server, rows[2], rarespecies_id="id\0with-nul"),
                 entry(server, rows[3], kingdom="Anim\x1balia"),
                 entry(server, rows[4], family="a" * 300),
                 entry(server, rows[5], eol_full_size_copy_url=url + "?a\u2028b"),
                 entry(server, rows[6], eol_full_size_copy_url=url + "?" + "x" * 2048),
                 entry(server, rows[7], family="a" * 65),
                 entry(server, rows[8])]
    report = acquire(tmp_path, catalogue)

    assert [(p["line"], p["reason"]) for p in report["problems"]] == [
        (2, "eol_content_id is longer than 128 characters"),
        (3, "eol_content_id or eol_page_id has more than 18 digits"),
        (4, "rare_species_id contains a control or separator character (U+0000)"),
        (5, "kingdom contains a control or separator character (U+001B)"),
        (6, "family is longer than 128 characters"),
        (7, "url contains a control or separator character (U+2028)"),
        (8, "url is longer than 2048 characters"),
        (9, "phylum or family is longer than 64 characters")]
    assert server.total() == 1
    assert_intact(tmp_path / "data", rows[8:])
    assert b"\0" not in (tmp_path / "data/metadata.csv").read_bytes()
    lines = problem_lines(report)
    assert lines[0] == (f"line 2, eol_content_id {'1' * 40}...: refused: eol_content_id is "
                        "longer than 128 characters")


@pytest.mark.parametrize("change", [{"md5": ""}, {"family": "../escape"},
                                    {"eol_full_size_copy_url": "file:///etc/passwd"}])
def test_a_rerun_keeps_the_verified_copy_of_a_row_the_catalogue_now_refuses(
        tmp_path: Path, server: EolServer, change: dict) -> None:
    rows = SMALL[:2]
    acquire(tmp_path, [entry(server, r) for r in rows])
    report = acquire(tmp_path, [entry(server, rows[0], **change), entry(server, rows[1])])

    assert [(p["status"], p["kept"]) for p in report["problems"]] == [
        ("refused", rows[0]["file_path"])]
    assert_intact(tmp_path / "data", rows)
    assert summarize(report).endswith("1 refused; kept 1 earlier verified copy")
    assert problem_lines(report)[0].endswith(
        f"; kept the earlier verified copy {rows[0]['file_path']}")


@pytest.mark.parametrize(("fault", "reason", "retryable"), [
    ("fail", "HTTP 500 after 3 attempts", True),
    ("ok", "md5 mismatch (the server sends an image of md5 {old})", False),
])
def test_a_changed_md5_that_cannot_be_fetched_keeps_the_verified_image(
        tmp_path: Path, server: EolServer, fault: str, reason: str, retryable: bool) -> None:
    rows = SMALL[:2]
    acquire(tmp_path, [entry(server, r) for r in rows])
    old = md5(EOL_SAMPLE / rows[0]["file_path"])
    report = acquire(tmp_path, [entry(server, rows[0], fault, md5="0" * 32),
                                entry(server, rows[1])])

    assert [(p["reason"], p["retryable"], p["kept"]) for p in report["problems"]] == [
        (reason.format(old=old), retryable, rows[0]["file_path"])]
    assert_intact(tmp_path / "data", rows)


def test_a_new_verified_copy_replaces_the_earlier_one_and_its_image(
        tmp_path: Path, server: EolServer) -> None:
    row = SMALL[0]
    moved = {**row, "family": "otheridae",
             "file_path": row["file_path"].replace(row["family"], "otheridae")}
    acquire(tmp_path, [entry(server, row)])
    report = acquire(tmp_path, [entry(server, row, family="Otheridae")])
    assert report["counts"]["downloaded"] == 1
    assert files(tmp_path / "data") == {moved["file_path"], "metadata.csv"}
    assert [m["file_path"] for m in metadata(tmp_path / "data")] == [moved["file_path"]]


@pytest.fixture
def versioned(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The folders `rarespecies acquire eol` would `dvc add` (recorded, DVC not run)."""
    folders: list[Path] = []
    monkeypatch.setattr(versioning, "version",
                        lambda folder: folders.append(folder) or f"versioned {folder}")
    return folders


def acquire_cli(tmp_path: Path, rows: list[dict]) -> tuple[int, str, str]:
    """`rarespecies acquire eol` on a catalogue of `rows`: (exit code, stdout, stderr without
    the progress bar)."""
    catalog = write_catalog(tmp_path / "catalog.csv", rows)
    result = CliRunner().invoke(app, [
        "acquire", "eol", "--catalog", str(catalog), "--out", str(tmp_path / "data"),
        "--report", str(tmp_path / "report.json"), "--retries", "0", "--timeout", "2"])
    lines = result.stderr.replace("\r", "\n").splitlines()
    return result.exit_code, result.stdout, "".join(
        f"{line}\n" for line in lines if line and not line.startswith("acquire eol:"))


@pytest.mark.parametrize("rows", ["none", "all-refused"])
def test_a_catalogue_without_a_usable_row_exits_1_and_versions_nothing(
        tmp_path: Path, server: EolServer, versioned: list[Path], rows: str) -> None:
    catalogue = [] if rows == "none" else [
        entry(server, SMALL[0], md5=""), entry(server, SMALL[1], eol_content_id="12\0003"),
        entry(server, SMALL[2], family="../escape")]
    code, stdout, stderr = acquire_cli(tmp_path, catalogue)

    assert code == 1 and versioned == [] and server.total() == 0
    error = stderr.strip().splitlines()[-1]
    assert error.startswith("rarespecies acquire eol: error: ")
    if rows == "none":
        assert "has no rows" in error and "catalog.csv" in error
        return
    assert "0 downloaded, 0 already present, 0 failed, 3 refused" in stdout
    assert "3 rows refused, nothing versioned" in error and "3 cannot succeed" in error
    assert stderr.splitlines()[:3] == [
        f"line 2, eol_content_id {SMALL[0]['eol_content_id']}: refused: empty md5",
        "line 3, eol_content_id 12\\x003: refused: eol_content_id contains a control or "
        "separator character (U+0000)",
        f"line 4, eol_content_id {SMALL[2]['eol_content_id']}: refused: phylum or family is "
        "not a plain name"]
    report = json.loads((tmp_path / "report.json").read_text())
    assert [(p["line"], p["eol_content_id"], p["status"]) for p in report["problems"]] == [
        (2, SMALL[0]["eol_content_id"], "refused"), (3, "12\x003", "refused"),
        (4, SMALL[2]["eol_content_id"], "refused")]


@pytest.mark.parametrize(("faults", "code"), [
    (["ok", "ok"], 0),
    (["ok", "refused"], 1),
    (["ok", "missing"], 1),
    (["ok", "unavailable"], 75),
    (["unavailable", "html"], 1),
    (["unavailable", "refused"], 1),
])
def test_the_exit_code_is_0_only_when_every_row_is_there_and_75_only_if_a_rerun_may_help(
        tmp_path: Path, server: EolServer, versioned: list[Path], faults: list[str],
        code: int) -> None:
    catalogue = [entry(server, row, md5="") if fault == "refused" else entry(server, row, fault)
                 for row, fault in zip(SMALL, faults, strict=False)]
    exit_code, _, stderr = acquire_cli(tmp_path, catalogue)
    assert exit_code == code, stderr
    assert versioned == ([tmp_path / "data"] if "ok" in faults else [])
    lines = stderr.splitlines()  # a line per row not there, and the error line
    assert [line.split(":")[0] for line in lines] == [
        f"line {n}, eol_content_id {row['eol_content_id']}"
        for n, (row, fault) in enumerate(zip(SMALL, faults, strict=False), start=2)
        if fault != "ok"] + ["rarespecies acquire eol"] * (code != 0)
