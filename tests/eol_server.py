"""A fake Encyclopedia of Life image server on 127.0.0.1 that injects faults chosen by URL.

`/<fault>/<file>` serves `root/<file>` with `fault` applied to every request of that path, and
`/<fault>-once/<file>` only to the first one (the following requests get the file):

- `ok`: the file; `slow`: the file after `slow` seconds (to observe concurrency),
- `fail`: HTTP 500; `rate-limited`: HTTP 429 with `Retry-After: <retry_after>`,
- `missing`: HTTP 404; `forbidden`: HTTP 403,
- `stall`: headers and half the body, then silence for `stall` seconds (or until `release`),
- `truncate`: a Content-Length of the whole file, half the body, then the connection closes,
- `wrong`: other bytes of the same length (md5 mismatch),
- `redirect`: 302 to `/ok/<file>`; `redirect-file`: 302 to a file:// URL;
  `redirect-loop`: 302 to itself.
"""

from __future__ import annotations

import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _Handler(BaseHTTPRequestHandler):
    server: EolServer

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        server = self.server
        mode, _, name = self.path.lstrip("/").partition("/")
        with server.lock:
            server.counts[self.path] += 1
            count = server.counts[self.path]
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
        try:
            fault = mode.removesuffix("-once")
            self._serve("ok" if mode.endswith("-once") and count > 1 else fault, name)
        finally:
            with server.lock:
                server.in_flight -= 1

    def _serve(self, fault: str, name: str) -> None:
        server = self.server
        source = server.root / name
        if fault == "missing" or ".." in name or not source.is_file():
            return self.send_error(404)
        statuses = {"forbidden": 403, "fail": 500, "rate-limited": 429}
        if fault in statuses:
            self.send_response(statuses[fault])
            if fault == "rate-limited":
                self.send_header("Retry-After", str(server.retry_after))
            self.send_header("Content-Length", "0")
            return self.end_headers()
        locations = {"redirect": f"/ok/{name}", "redirect-file": f"file:///{source}",
                     "redirect-loop": self.path}
        if fault in locations:
            self.send_response(302)
            self.send_header("Location", locations[fault])
            self.send_header("Content-Length", "0")
            return self.end_headers()
        body = source.read_bytes()
        if fault == "wrong":
            body = body[::-1]
        if fault == "slow":
            server.release.wait(server.slow)
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if fault in ("stall", "truncate"):
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            if fault == "stall":
                server.release.wait(server.stall)
            return None
        self.wfile.write(body)
        return None


class EolServer(ThreadingHTTPServer):
    """The fake server; use as a context manager (serves in a thread until exit)."""

    daemon_threads = True  # a stalled handler must not block shutdown

    def __init__(self, root: Path, *, stall: float = 30.0, slow: float = 0.15,
                 retry_after: int = 0) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root, self.stall, self.slow, self.retry_after = root, stall, slow, retry_after
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.in_flight = self.max_in_flight = 0

    def url(self, fault: str, name: str) -> str:
        """URL of `name` (relative to root) with `fault` applied."""
        return f"http://127.0.0.1:{self.server_address[1]}/{fault}/{name}"

    def hits(self, fault: str, name: str) -> int:
        """How many requests the server received for that URL."""
        with self.lock:
            return self.counts[f"/{fault}/{name}"]

    def total(self) -> int:
        """How many requests the server received in all."""
        with self.lock:
            return sum(self.counts.values())

    def __enter__(self) -> EolServer:
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.shutdown()
        self.server_close()
