"""A fake Encyclopedia of Life image server on 127.0.0.1 that injects faults chosen by URL.

`/<fault>/<file>` serves `root/<file>` with `fault` applied to every request of that path, and
`/<fault>-once/<file>` only to the first one (the following requests get the file):

- `ok`: the file; `slow`: the file after `slow` seconds (to observe concurrency: `max_in_flight`
  counts the slow requests held back at once),
- `fail`: HTTP 500; `unavailable`: HTTP 503; `rate-limited`: HTTP 429 with
  `Retry-After: <retry_after>`,
- `missing`: HTTP 404; `forbidden`: HTTP 403,
- `stall`: headers and half the body, then silence for `stall` seconds (or until `release`),
- `truncate`: a Content-Length of the whole file, half the body, then the connection closes,
- `wrong`: another image of `root` (a whole image, md5 mismatch),
- `garbled`: the file's bytes reversed (not an image), `html`: an HTML page (text/html),
- `oversize`: announces a Content-Length of 1 TiB, then sends the file,
- `flood`: a chunked body without length: the file, then zeros up to `flood` bytes,
- `gzip-bomb`: `Content-Encoding: gzip` of `flood` zero bytes (a few KB on the wire),
- `trickle`: the headers, then the body one byte per `drip` seconds;
  `trickle-headers`: the headers too,
- `redirect`: 302 to `/ok/<file>`; `redirect-file`: 302 to a file:// URL;
  `redirect-loop`: 302 to itself.

`completed(fault, file)` counts the bodies sent to the end (a client that hangs up early does
not complete one).
"""

from __future__ import annotations

import gzip
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
        fault = mode.removesuffix("-once")
        self._serve("ok" if mode.endswith("-once") and count > 1 else fault, name)

    def _serve(self, fault: str, name: str) -> None:
        server = self.server
        source = server.root / name
        if fault == "missing" or ".." in name or not source.is_file():
            return self.send_error(404)
        statuses = {"forbidden": 403, "fail": 500, "unavailable": 503, "rate-limited": 429}
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
            body = server.other(source).read_bytes()
        if fault == "garbled":
            body = body[::-1]
        if fault == "slow":
            # Counted while held back, before any byte of the answer: a client with one
            # worker cannot send its next request before this one's answer, so only
            # concurrent downloads overlap here (a count until the handler returns would
            # also catch the next request on a busy machine).
            with server.lock:
                server.in_flight += 1
                server.max_in_flight = max(server.max_in_flight, server.in_flight)
            server.release.wait(server.slow)
            with server.lock:
                server.in_flight -= 1
        try:
            self._send(fault, body)
        except OSError:  # the client hung up: expected of a bounded download
            return None
        with server.lock:
            server.completions[self.path] += 1
        return None

    def _send(self, fault: str, body: bytes) -> None:
        server = self.server
        if fault in ("flood", "gzip-bomb", "trickle", "trickle-headers"):
            return self._send_unusual(fault, body)
        kind = "text/html; charset=utf-8" if fault == "html" else "image/jpeg"
        if fault == "html":
            body = b"<!DOCTYPE html><html><body><h1>Image not found</h1></body></html>"
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(1 << 40 if fault == "oversize" else len(body)))
        self.end_headers()
        if fault in ("stall", "truncate"):
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            if fault == "stall":
                server.release.wait(server.stall)
            raise ConnectionAbortedError  # not complete
        self.wfile.write(body)
        return None

    def _send_unusual(self, fault: str, body: bytes) -> None:
        server = self.server
        if fault == "flood":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            zeros = bytes(1 << 16)
            chunks = [body] + [zeros] * ((server.flood - len(body)) // len(zeros))
            for chunk in chunks:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
            return None
        if fault == "gzip-bomb":
            packed = server.bomb()
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(packed)))
            self.end_headers()
            self.wfile.write(packed)
            return None
        head = (f"{self.protocol_version} 200 OK\r\nContent-Type: image/jpeg\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        if fault == "trickle":
            self.wfile.write(head)
            head = b""
        for byte in (head + body):
            self.wfile.write(bytes([byte]))
            self.wfile.flush()
            if server.release.wait(server.drip):
                raise ConnectionAbortedError  # the server is closing
        return None


class EolServer(ThreadingHTTPServer):
    """The fake server; use as a context manager (serves in a thread until exit)."""

    daemon_threads = True  # a stalled handler must not block shutdown

    def __init__(self, root: Path, *, stall: float = 30.0, slow: float = 0.15,
                 retry_after: int = 0, flood: int = 32 << 20, drip: float = 0.2) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root, self.stall, self.slow, self.retry_after = root, stall, slow, retry_after
        self.flood, self.drip = flood, drip
        self.counts: Counter[str] = Counter()
        self.completions: Counter[str] = Counter()
        self._bomb = b""
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.in_flight = self.max_in_flight = 0

    def other(self, source: Path) -> Path:
        """The image `wrong` serves instead of `source`."""
        return next(p for p in sorted(self.root.rglob("*.jpg")) if p != source)

    def bomb(self) -> bytes:
        """`flood` zero bytes, gzip-compressed (made once)."""
        with self.lock:
            self._bomb = self._bomb or gzip.compress(bytes(self.flood), compresslevel=9)
            return self._bomb

    def url(self, fault: str, name: str) -> str:
        """URL of `name` (relative to root) with `fault` applied."""
        return f"http://127.0.0.1:{self.server_address[1]}/{fault}/{name}"

    def hits(self, fault: str, name: str) -> int:
        """How many requests the server received for that URL."""
        with self.lock:
            return self.counts[f"/{fault}/{name}"]

    def completed(self, fault: str, name: str) -> int:
        """How many bodies of that URL the server sent to the end."""
        with self.lock:
            return self.completions[f"/{fault}/{name}"]

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
