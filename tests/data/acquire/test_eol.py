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

from rarespecies.data.acquire.eol import CatalogError, download_catalog, summarize

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


@pytest.mark.parametrize("fault", ["fail-once", "rate-limited-once", "stall-once",
                                   "truncate-once", "wrong-once"])
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
    ("rate-limited", "HTTP 429 after 3 attempts", 3, 3, True),
    ("stall", "timed out after 3 attempts", 3, 3, True),
    ("truncate", "truncated body after 3 attempts", 3, 3, True),
    ("wrong", "md5 mismatch after 3 attempts", 3, 3, True),
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
    assert problem == {"line": 3, "eol_content_id": bad["eol_content_id"],
                       "url": server.url(fault, bad["file_path"]), "reason": reason,
                       "attempts": attempts, "retryable": retryable}
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
    assert [(p["line"], p["url"], p["reason"], p["attempts"]) for p in report["problems"]] == [
        (line, url, "not an http(s) URL", 0) for line, url in enumerate(urls, start=2)]
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

    # A corrupted file that cannot be fetched again is removed, not listed.
    (tmp_path / "data" / rows[3]["file_path"]).write_bytes(b"not the image")
    catalogue[3] = entry(server, rows[3], "missing")
    report = acquire(tmp_path, catalogue)
    assert report["counts"]["failed"] == 1
    assert_intact(tmp_path / "data", rows[:3])


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
