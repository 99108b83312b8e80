"""`rarespecies acquire eol`: download a catalogue's images from Encyclopedia of Life.

The catalogue (`catalog.py`) lists URLs and md5s; `fetch.py` downloads one image, bounded in
bytes and time. Images land in the course layout
(`<phylum>_<family>/<content>_<page>_eol-full-size-copy.jpg` plus `metadata.csv`) only once
they are an image with the catalogue's md5, so the data folder never holds a partial or wrong
file, even after Ctrl-C or `kill`. A verified image and its metadata.csv row stay until a new
verified copy replaces them: a failed download, or a row the catalogue now refuses, keeps them.
Every catalogue row ends in the JSON report: downloaded, already present, failed (with reason,
attempts and whether a later run may succeed: `retryable`) or refused (malformed, no I/O at
all); a failed or refused row names the earlier verified copy it kept (`kept`).
"""

from __future__ import annotations

import csv
import hashlib
import os
import random
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests
import urllib3

from rarespecies.core.files import write_json
from rarespecies.data.acquire.catalog import CatalogError, Item, load, read_csv
from rarespecies.data.acquire.fetch import Cut, FetchError, describe, download, new_session
from rarespecies.data.layouts import COURSE_HEADER

__all__ = ["CatalogError", "download_catalog", "problem_lines", "summarize"]

MAX_WAIT = 60.0  # cap of one backoff or Retry-After wait: a hostile header must not park a worker
MAX_BYTES = 64 << 20  # the largest image of the real EOL sample has 2.8 MB
DEADLINE = 600.0  # 64 MiB at 110 KB/s, retries and waits included


@dataclass
class _Run:
    timeout: float
    retries: int
    backoff: float
    max_bytes: int = MAX_BYTES
    deadline: float = DEADLINE
    listed: set = field(default_factory=set)  # file paths metadata.csv listed before this run
    stop: threading.Event = field(default_factory=threading.Event)
    active: set = field(default_factory=set)  # Cuts of the downloads in progress, for abort()
    lock: threading.Lock = field(default_factory=threading.Lock)
    local: threading.local = field(default_factory=threading.local)
    sessions: list = field(default_factory=list)

    def session(self) -> requests.Session:
        """One session per worker thread: requests sessions are not thread-safe."""
        if not hasattr(self.local, "session"):
            self.local.session = new_session()
            self.sessions.append(self.local.session)
        return self.local.session

    def abort(self) -> None:
        """Wake workers blocked on a silent server now rather than after the read timeout."""
        with self.lock:
            for cut in self.active:
                cut.cut("stopped")


def _md5(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "md5").hexdigest()


def _attempt(item: Item, part: Path, target: Path, run: _Run, end: float) -> None:
    """One try: download to `part` within the deadline `end`, verify, move to `target`."""
    cut = Cut()
    with run.lock:
        if run.stop.is_set():  # abort() has run already: do not start a long read
            raise FetchError("stopped")
        run.active.add(cut)
    timer = threading.Timer(max(0.0, end - time.monotonic()), cut.cut,
                            (f"deadline of {run.deadline:g} s exceeded",))
    timer.daemon = True
    timer.start()
    try:
        md5 = download(run.session(), item.url, part, timeout=run.timeout,
                       max_bytes=run.max_bytes, cut=cut)
    finally:
        timer.cancel()
        with run.lock:
            run.active.discard(cut)
    if md5 != item.md5:
        # An image, whole, but another one: the catalogue's md5 is out of date or the server
        # replaced the file. The next try would get the same bytes: permanent.
        raise FetchError(f"md5 mismatch (the server sends an image of md5 {md5})", retry=False)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(part, target)  # atomic: the earlier verified copy stays until this instant


def _fetch(item: Item, data_dir: Path, tmp_dir: Path,
           run: _Run) -> tuple[str, str, int, bool]:
    """Download one row with retries, within the deadline.

    Returns:
        (status, reason, attempts, retryable): `retryable` when it failed only on errors a later
        run may not meet (timeouts, dropped connections, HTTP 5xx/408/429, the deadline).
    """
    target = data_dir / item.row["file_path"]
    if target.is_file() and _md5(target) == item.md5:
        return "already_present", "", 0, False
    part = tmp_dir / f"{item.row['eol_content_id']}.part"
    end = time.monotonic() + run.deadline
    attempt = 0
    while True:
        attempt += 1
        if run.stop.is_set():
            return "stopped", "", attempt - 1, False
        try:
            _attempt(item, part, target, run, end)
            return "downloaded", "", attempt, False
        except FetchError as error:
            reason, wait, retryable = str(error), error.wait, error.retry
        except (requests.RequestException, urllib3.exceptions.HTTPError) as error:
            reason, wait, retryable = describe(error), 0.0, True
        except OSError as error:  # local trouble (disk full...): retrying will not help
            reason, retryable = f"local error: {error.strerror or error}", False
        delay = min(MAX_WAIT, run.backoff * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
        delay = max(delay, min(wait, MAX_WAIT)) if retryable else 0.0
        if not retryable or attempt > run.retries or time.monotonic() + delay >= end:
            break
        run.stop.wait(delay)  # wakes at once on Ctrl-C
    if run.stop.is_set():
        return "stopped", reason, attempt, False
    if retryable:
        reason = f"{reason} after {attempt} attempt{'s' if attempt > 1 else ''}"
    if target.is_file() and item.row["file_path"] not in run.listed:
        target.unlink()  # not a verified copy (metadata.csv never listed it) and not this md5
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
            problems: list[dict]) -> tuple[dict, list[dict]]:
    """Count the finished downloads and add the failed ones to `problems`.

    Returns:
        The counts and the verified rows (rows a stop left undone are neither).
    """
    counts = dict.fromkeys(("downloaded", "already_present", "failed"), 0)
    verified = []
    for item, future in zip(items, futures, strict=False):  # fewer futures if stopped early
        if not future.done() or future.cancelled():
            continue
        error = future.exception()
        status, reason, attempts, retryable = (("failed", f"error: {error!r}", 0, False)
                                               if error else future.result())
        if status == "stopped":
            continue
        counts[status] += 1
        if status == "failed":
            problems.append({"line": item.line, "eol_content_id": item.row["eol_content_id"],
                             "url": item.url, "status": "failed", "reason": reason,
                             "attempts": attempts, "retryable": retryable})
        else:
            verified.append(item.row)
    return counts, verified


def _earlier_rows(data_dir: Path) -> list[dict]:
    """The rows of `data_dir`/metadata.csv, read before any download (a bad file stops early)."""
    path = data_dir / "metadata.csv"
    return [row for _, row in read_csv(path, "metadata")[1]] if path.is_file() else []


def _write_metadata(data_dir: Path, tmp_dir: Path, earlier: list[dict],
                    verified: list[dict]) -> None:
    """Rewrite metadata.csv: the earlier rows no verified copy replaced, then the verified ones.

    A row whose download failed or that the catalogue now refuses keeps its earlier row and
    image. An image a verified copy superseded under another path is removed afterwards.
    """
    path, tmp = data_dir / "metadata.csv", tmp_dir / "metadata.csv"
    replaced = {row["eol_content_id"] for row in verified}
    kept = [row for row in earlier if row.get("eol_content_id") not in replaced]
    with tmp.open("w", newline="") as handle:  # in tmp_dir: even SIGKILL leaves data_dir clean
        writer = csv.DictWriter(handle, fieldnames=COURSE_HEADER, extrasaction="ignore", restval="")
        writer.writeheader()
        writer.writerows(kept + verified)
    os.replace(tmp, path)
    listed = {row.get("file_path") for row in kept + verified}
    for row in earlier:
        if row.get("eol_content_id") in replaced and row.get("file_path") not in listed:
            (data_dir / row["file_path"]).unlink(missing_ok=True)


def _mark_kept(problems: list[dict], earlier: list[dict], data_dir: Path) -> None:
    """Name, in each problem, the earlier verified copy of its row that stays (or None)."""
    paths = {row.get("eol_content_id"): row.get("file_path") for row in earlier}
    for problem in problems:
        path = paths.get(problem["eol_content_id"])
        problem["kept"] = path if path and (data_dir / path).is_file() else None


def download_catalog(catalog: Path, data_dir: Path, report_path: Path, *,
                     taxonomy: Path | None = None, workers: int = 8, timeout: float = 30.0,
                     retries: int = 4, backoff: float = 1.0, max_bytes: int = MAX_BYTES,
                     deadline: float = DEADLINE, progress: bool = True) -> dict:
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
        max_bytes: largest image accepted, in bytes (a larger one fails, permanently).
        deadline: seconds one image may take in all, attempts and waits included.
        progress: show a tqdm progress bar.

    Returns:
        The report: counts, problems (refused and failed rows, each naming the earlier verified
        copy it kept, if any), and `interrupted`/`pending` (rows a stop left undone).

    Raises:
        CatalogError: the catalogue, taxonomy or data_dir/metadata.csv is unreadable, or the
            catalogue or taxonomy lacks columns.
        KeyboardInterrupt: on Ctrl-C or SIGTERM, after metadata.csv and the report are written.
    """
    from tqdm import tqdm  # only the pipeline extra installs it

    from rarespecies.core.progress import bar

    catalog, data_dir, report_path = Path(catalog), Path(data_dir), Path(report_path)
    items, problems, total = load(catalog, Path(taxonomy) if taxonomy else None)
    earlier = _earlier_rows(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    # Beside data_dir, so os.replace stays on one filesystem and data_dir never holds a part.
    tmp_dir = data_dir.parent / f".{data_dir.name}.downloads"
    shutil.rmtree(tmp_dir, ignore_errors=True)  # left by a killed run
    tmp_dir.mkdir()
    run = _Run(timeout, retries, backoff, max_bytes, deadline,
               {row.get("file_path") for row in earlier})
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="download")
    futures: list[Future] = []
    interrupted = False
    with _signals_stop(run):  # covers the clean-up too: a second Ctrl-C must not cut it short
        try:
            for item in items:
                futures.append(pool.submit(_fetch, item, data_dir, tmp_dir, run))
            with bar(tqdm, total=len(items), desc="acquire eol", unit="img",
                     enabled=progress) as shown:
                for _ in as_completed(futures):
                    shown.update()
        except KeyboardInterrupt:
            interrupted = True
            raise
        finally:
            run.stop.set()
            run.abort()
            pool.shutdown(wait=True, cancel_futures=True)
            counts, verified = _settle(items, futures, problems)
            _write_metadata(data_dir, tmp_dir, earlier, verified)
            _mark_kept(problems, earlier, data_dir)
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
    """One line for the CLI: the counts, the earlier copies kept, whether it was interrupted."""
    c = report["counts"]
    kept = sum(bool(problem.get("kept")) for problem in report["problems"])
    line = (f"{c['rows']} rows: {c['downloaded']} downloaded, {c['already_present']} already "
            f"present, {c['failed']} failed, {c['refused']} refused")
    return line + (f"; kept {kept} earlier verified cop{'ies' if kept > 1 else 'y'}"
                   if kept else "") + (f"; interrupted, {report['pending']} left for a rerun"
                                       if report.get("interrupted") else "")


def _shown(value: str, limit: int = 40) -> str:
    """`value` fit for one line of a terminal: control characters escaped, long ones cut."""
    text = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in value)
    return text if len(text) <= limit else text[:limit] + "..."


def problem_lines(report: dict, limit: int = 20) -> list[str]:
    """One line per refused or failed row (the first `limit`), naming line, id and reason."""
    problems = report["problems"]
    lines = [f"line {p['line']}, eol_content_id {_shown(p['eol_content_id']) or '(empty)'}: "
             f"{p['status']}: {p['reason']}"
             + (f"; kept the earlier verified copy {p['kept']}" if p.get("kept") else "")
             for p in problems[:limit]]
    return lines + ([f"... and {len(problems) - limit} more in the report"]
                    if len(problems) > limit else [])
