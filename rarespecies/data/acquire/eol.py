"""`rarespecies acquire eol`: download a catalogue's images from Encyclopedia of Life.

The catalogue (`catalog.py`) lists URLs and md5s. Images land in the course layout
(`<phylum>_<family>/<content>_<page>_eol-full-size-copy.jpg` plus `metadata.csv`) only once
their md5 matches, so the data folder never holds a partial or wrong file, even after Ctrl-C or
`kill`. Every catalogue row ends in the JSON report: downloaded, already present, failed (with
reason, attempts and whether a later run may succeed: `retryable`) or refused (malformed, no
I/O at all).
"""

from __future__ import annotations

import csv
import hashlib
import os
import random
import shutil
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin

import requests
import urllib3

from rarespecies.core.files import write_json
from rarespecies.data.acquire.catalog import CatalogError, Item, is_http, load
from rarespecies.data.layouts import COURSE_HEADER

__all__ = ["CatalogError", "download_catalog", "summarize"]

MAX_REDIRECTS = 5
MAX_WAIT = 60.0  # cap of one backoff or Retry-After wait: a hostile header must not park a worker
CHUNK = 1 << 16
USER_AGENT = "rarespecies-acquire/0.1"


class _Failed(Exception):
    """A failed attempt; `retry` if another may succeed, after `wait` s (Retry-After)."""

    def __init__(self, reason: str, retry: bool = True, wait: float = 0.0) -> None:
        super().__init__(reason)
        self.retry, self.wait = retry, wait


@dataclass
class _Run:
    timeout: float
    retries: int
    backoff: float
    stop: threading.Event = field(default_factory=threading.Event)
    active: set = field(default_factory=set)  # responses being streamed, to abort on stop
    lock: threading.Lock = field(default_factory=threading.Lock)
    local: threading.local = field(default_factory=threading.local)
    sessions: list = field(default_factory=list)

    def session(self) -> requests.Session:
        """One session per worker thread: requests sessions are not thread-safe."""
        if not hasattr(self.local, "session"):
            self.local.session = requests.Session()
            self.local.session.headers["User-Agent"] = USER_AGENT
            self.sessions.append(self.local.session)
        return self.local.session

    def abort(self) -> None:
        """Wake workers blocked on a silent server now rather than after the read timeout."""
        with self.lock:
            for response in self.active:
                with suppress(Exception):
                    response.raw.shutdown()  # urllib3 >= 2.3: unblocks a read


def _md5(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "md5").hexdigest()


def _describe(error: requests.RequestException) -> str:
    """One phrase for a network error."""
    # requests wraps a read timeout in mid-body as a ConnectionError around urllib3's error.
    cause = error.args[0] if error.args else None
    if isinstance(error, requests.Timeout) or isinstance(cause, urllib3.exceptions.TimeoutError):
        return "timed out"
    if isinstance(error, requests.exceptions.ChunkedEncodingError):
        return "truncated body"  # the connection closed before the announced length
    return "connection failed"


def _attempt(item: Item, part: Path, target: Path, run: _Run) -> None:
    """One try: GET (following http(s) redirects), stream to `part`, verify, move to `target`."""
    url = item.url
    for _ in range(MAX_REDIRECTS + 1):
        with run.session().get(url, stream=True, allow_redirects=False,
                               timeout=run.timeout) as response:
            if response.is_redirect:
                url = urljoin(url, response.headers["location"])
                if not is_http(url):
                    raise _Failed("redirect to a non-http(s) URL", retry=False)
                continue
            status = response.status_code
            if status in (408, 429) or status >= 500:
                wait = response.headers.get("retry-after", "")
                raise _Failed(f"HTTP {status}", wait=float(wait) if wait.isdigit() else 0.0)
            if status != 200:
                raise _Failed(f"HTTP {status}", retry=False)
            with run.lock:
                if run.stop.is_set():  # abort() has run already: do not start a long read
                    raise _Failed("stopped")
                run.active.add(response)
            try:
                digest, size = hashlib.md5(), 0
                with part.open("wb") as handle:
                    for chunk in response.iter_content(CHUNK):
                        handle.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
            finally:
                with run.lock:
                    run.active.discard(response)
            length = response.headers.get("content-length", "")
            if length.isdigit() and size < int(length) and not response.headers.get(
                    "content-encoding"):
                raise _Failed("truncated body")
            if digest.hexdigest() != item.md5:
                raise _Failed("md5 mismatch")
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(part, target)
            return
    raise _Failed(f"more than {MAX_REDIRECTS} redirects", retry=False)


def _fetch(item: Item, data_dir: Path, tmp_dir: Path,
           run: _Run) -> tuple[str, str, int, bool]:
    """Download one row with retries.

    Returns:
        (status, reason, attempts, retryable): `retryable` when it failed only on errors a later
        run may not meet (timeouts, dropped connections, HTTP 5xx/429, a bad body).
    """
    target = data_dir / item.row["file_path"]
    if target.is_file() and _md5(target) == item.md5:
        return "already_present", "", 0, False
    part = tmp_dir / f"{item.row['eol_content_id']}.part"
    retryable = False
    for attempt in range(1, run.retries + 2):
        if run.stop.is_set():
            return "stopped", "", attempt - 1, False
        try:
            _attempt(item, part, target, run)
            return "downloaded", "", attempt, False
        except _Failed as error:
            reason, wait = str(error), error.wait
            if not error.retry:
                break
        except requests.RequestException as error:
            reason, wait = _describe(error), 0.0
        except OSError as error:  # local trouble (disk full...): retrying will not help
            reason = f"local error: {error.strerror or error}"
            break
        if attempt <= run.retries and not run.stop.is_set():
            delay = min(MAX_WAIT, run.backoff * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            run.stop.wait(max(delay, min(wait, MAX_WAIT)))  # wakes at once on Ctrl-C
    else:
        reason = f"{reason} after {attempt} attempt{'s' if attempt > 1 else ''}"
        retryable = True
    if run.stop.is_set():
        return "stopped", reason, attempt, False
    target.unlink(missing_ok=True)  # known wrong (bad md5): keep it out of the data folder
    return "failed", reason, attempt, retryable


@contextmanager
def _signals_stop(run: _Run) -> Iterator[None]:
    """Turn SIGINT and SIGTERM into KeyboardInterrupt once; ignore repeats during clean-up."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        if not run.stop.is_set():
            run.stop.set()
            raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)


def _settle(items: list[Item], futures: list[Future],
            problems: list[dict]) -> tuple[dict, list[dict], set[str]]:
    """Count the finished downloads and add the failed ones to `problems`.

    Returns:
        The counts, the verified rows and the content ids this run settled (rows a stop left
        undone are neither: their earlier metadata rows stay).
    """
    counts = dict.fromkeys(("downloaded", "already_present", "failed"), 0)
    verified, settled = [], {problem["eol_content_id"] for problem in problems}
    for item, future in zip(items, futures, strict=False):  # fewer futures if stopped early
        if not future.done() or future.cancelled():
            continue
        error = future.exception()
        status, reason, attempts, retryable = (("failed", f"error: {error!r}", 0, False)
                                               if error else future.result())
        if status == "stopped":
            continue
        counts[status] += 1
        settled.add(item.row["eol_content_id"])
        if status == "failed":
            problems.append({"line": item.line, "eol_content_id": item.row["eol_content_id"],
                             "url": item.url, "reason": reason, "attempts": attempts,
                             "retryable": retryable})
        else:
            verified.append(item.row)
    return counts, verified, settled


def _write_metadata(data_dir: Path, tmp_dir: Path, verified: list[dict],
                    replaced: set[str]) -> None:
    """Rewrite metadata.csv: earlier rows this run did not settle, then the verified ones."""
    path, tmp = data_dir / "metadata.csv", tmp_dir / "metadata.csv"
    kept = []
    if path.is_file():
        with path.open(newline="", encoding="utf-8-sig") as handle:
            kept = [row for row in csv.DictReader(handle) if row.get("eol_content_id")
                    not in replaced]
    with tmp.open("w", newline="") as handle:  # in tmp_dir: even SIGKILL leaves data_dir clean
        writer = csv.DictWriter(handle, fieldnames=COURSE_HEADER, extrasaction="ignore", restval="")
        writer.writeheader()
        writer.writerows(kept + verified)
    os.replace(tmp, path)


def download_catalog(catalog: Path, data_dir: Path, report_path: Path, *,
                     taxonomy: Path | None = None, workers: int = 8, timeout: float = 30.0,
                     retries: int = 4, backoff: float = 1.0, progress: bool = True) -> dict:
    """Download a catalogue's images into `data_dir` (course layout) and write the report.

    Args:
        catalog: catalogue CSV (eol_content_id, eol_page_id, md5, eol_full_size_copy_url or
            medium_source_url; optional rare_species_id/rarespecies_id, kingdom, phylum, family).
        data_dir: course-layout data folder; created if needed, its metadata.csv is merged.
        report_path: output JSON report.
        taxonomy: course metadata.csv or rarespecies-catalog.csv joined on eol_content_id for
            taxa the catalogue lacks.
        workers: concurrent downloads.
        timeout: connect and read timeout in seconds (a server silent that long fails the try).
        retries: further attempts after a transient failure (so up to retries + 1 attempts).
        backoff: first retry wait in seconds, doubled each retry, with jitter.
        progress: show a tqdm progress bar.

    Returns:
        The report: counts, problems, and `interrupted`/`pending` (rows a stop left undone).

    Raises:
        CatalogError: the catalogue or taxonomy file is unreadable or lacks columns.
        KeyboardInterrupt: on Ctrl-C or SIGTERM, after metadata.csv and the report are written.
    """
    from tqdm import tqdm  # only the pipeline extra installs it

    catalog, data_dir, report_path = Path(catalog), Path(data_dir), Path(report_path)
    items, problems, total = load(catalog, Path(taxonomy) if taxonomy else None)
    data_dir.mkdir(parents=True, exist_ok=True)
    # Beside data_dir, so os.replace stays on one filesystem and data_dir never holds a part.
    tmp_dir = data_dir.parent / f".{data_dir.name}.downloads"
    shutil.rmtree(tmp_dir, ignore_errors=True)  # left by a killed run
    tmp_dir.mkdir()
    run = _Run(timeout, retries, backoff)
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="download")
    futures: list[Future] = []
    interrupted = False
    with _signals_stop(run):  # covers the clean-up too: a second Ctrl-C must not cut it short
        try:
            for item in items:
                futures.append(pool.submit(_fetch, item, data_dir, tmp_dir, run))
            with tqdm(total=len(items), desc="acquire eol", unit="img",
                      disable=not progress) as bar:
                for _ in as_completed(futures):
                    bar.update()
        except KeyboardInterrupt:
            interrupted = True
            raise
        finally:
            run.stop.set()
            run.abort()
            pool.shutdown(wait=True, cancel_futures=True)
            counts, verified, settled = _settle(items, futures, problems)
            _write_metadata(data_dir, tmp_dir, verified, settled)
            report = {"catalog": str(catalog), "data_dir": str(data_dir),
                      "interrupted": interrupted,
                      "counts": {"rows": total, **counts, "refused": total - len(items)},
                      "pending": len(items) - sum(counts.values()),
                      "problems": sorted(problems, key=lambda p: p["line"])}
            write_json(report_path, report)
            shutil.rmtree(tmp_dir, ignore_errors=True)
            for session in run.sessions:
                session.close()
    return report


def summarize(report: dict) -> str:
    """One line for the CLI: the counts, and whether the run was interrupted."""
    c = report["counts"]
    line = (f"{c['rows']} rows: {c['downloaded']} downloaded, {c['already_present']} already "
            f"present, {c['failed']} failed, {c['refused']} refused")
    return line + (f"; interrupted, {report['pending']} left for a rerun"
                   if report.get("interrupted") else "")
