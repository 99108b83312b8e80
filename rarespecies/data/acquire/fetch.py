"""One bounded image download: raw bytes, a byte cap, a deadline, an image check, a verdict.

What a hostile or broken server may do and what stops it:

- a huge body: the Content-Length is checked before reading and the bytes while streaming,
  against `max_bytes`; nothing past it is read or written;
- a compressed body (`Content-Encoding: gzip`, a few KB that inflate to GBs): `identity` is
  asked for and the raw bytes are kept as sent, never decoded;
- a trickle (one byte a second never trips the per-read timeout): a `Cut` shuts the socket down
  at the deadline, from a timer thread, also while the headers are still arriving;
- something else than an image (an HTML error page with status 200): the Content-Type, when
  given, must be image/* (or the generic application/octet-stream), and Pillow must recognise
  the header of the bytes (`Image.open`, which reads the header and decodes no pixel).

Each failure says whether a later run may succeed (`FetchError.retry`): network errors, HTTP
5xx/408/429, truncation and the deadline may pass; wrong content, too large, other 4xx, bad
redirects do not.
"""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from urllib.parse import urljoin

import requests
import urllib3
from PIL import Image, UnidentifiedImageError
from requests.adapters import HTTPAdapter

from rarespecies.data.acquire.catalog import is_http

__all__ = ["Cut", "FetchError", "describe", "download", "new_session"]

MAX_REDIRECTS = 5
CHUNK = 1 << 16
USER_AGENT = "rarespecies-acquire/0.1"
# A server that does not label its bytes says application/octet-stream; Pillow then decides.
GENERIC_TYPES = ("", "application/octet-stream", "binary/octet-stream")


class FetchError(Exception):
    """A failed download; `retry` if a later attempt may succeed, after `wait` s (Retry-After)."""

    def __init__(self, reason: str, retry: bool = True, wait: float = 0.0) -> None:
        super().__init__(reason)
        self.retry, self.wait = retry, wait


class Cut:
    """Ends one download from another thread (the deadline's timer, or Ctrl-C).

    The per-read timeout cannot: a server trickling bytes answers every read in time. Shutting
    the socket down makes the blocked read return at once, in the headers or in the body.
    """

    def __init__(self) -> None:
        self.reason = ""  # why it was cut, the failure's reason
        self._lock = threading.Lock()
        self._shutdowns: list[Callable[[], object]] = []

    def watch(self, shutdown: Callable[[], object]) -> None:
        """Register how to unblock the download's socket; called at once if already cut."""
        with self._lock:
            self._shutdowns.append(shutdown)
            if self.reason:
                self._shutdown_all()

    def cut(self, reason: str) -> None:
        """Unblock the download, failing it (retryable) with `reason`; the first one stays."""
        with self._lock:
            self.reason = self.reason or reason
            self._shutdown_all()

    def _shutdown_all(self) -> None:
        for shutdown in self._shutdowns:
            with suppress(Exception):  # already closed: nothing left to unblock
                shutdown()


_current = threading.local()  # the Cut of the download running in this thread


class _Watched:
    """Hands the socket to the thread's Cut before the status line and headers are read."""

    sock: socket.socket | None

    def getresponse(self) -> urllib3.response.HTTPResponse:
        cut, sock = getattr(_current, "cut", None), self.sock
        if cut is not None and sock is not None:
            cut.watch(lambda: sock.shutdown(socket.SHUT_RDWR))
        return super().getresponse()


class _HTTPConnection(_Watched, urllib3.connection.HTTPConnection):
    pass


class _HTTPSConnection(_Watched, urllib3.connection.HTTPSConnection):
    pass


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class _Adapter(HTTPAdapter):
    """requests' adapter whose direct connections report their socket to the thread's Cut.

    Through a proxy only the body can be cut (by the response's own shutdown), not the headers.
    """

    def init_poolmanager(self, *args: object, **kwargs: object) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


def new_session() -> requests.Session:
    """A session for `download` (one per thread: sessions are not thread-safe)."""
    session = requests.Session()
    session.headers.update({"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
    for prefix in ("http://", "https://"):
        session.mount(prefix, _Adapter())
    return session


def describe(error: Exception) -> str:
    """One phrase for a network error of requests or urllib3 (all retryable)."""
    # requests wraps a read timeout in mid-body as a ConnectionError around urllib3's error.
    cause = error.args[0] if error.args else None
    if isinstance(error, requests.Timeout | urllib3.exceptions.TimeoutError) or isinstance(
            cause, urllib3.exceptions.TimeoutError):
        return "timed out"
    if isinstance(error, requests.exceptions.ChunkedEncodingError
                  | urllib3.exceptions.ProtocolError):
        return "truncated body"  # the connection closed before the body was complete
    return "connection failed"


def _is_image(path: Path) -> bool:
    """Whether Pillow recognises the file's header (no pixel is decoded)."""
    try:
        with Image.open(path):
            return True
    except Image.DecompressionBombError:
        return True  # an image, only a big one: ingest applies the project's pixel limit
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return False


def _stream(response: requests.Response, part: Path, max_bytes: int) -> str:
    """Write the raw body to `part`, at most `max_bytes` of it.

    Returns:
        The md5 of the bytes written.
    """
    digest, size = hashlib.md5(), 0
    with part.open("wb") as handle:
        # decode_content=False: the bytes as sent, a gzip body stays gzip (and small).
        for chunk in response.raw.stream(CHUNK, decode_content=False):
            size += len(chunk)
            if size > max_bytes:
                raise FetchError(f"larger than --max-bytes {max_bytes}", retry=False)
            handle.write(chunk)
            digest.update(chunk)
    length = response.headers.get("content-length", "")
    if length.isdigit() and size < int(length):
        raise FetchError("truncated body")
    return digest.hexdigest()


def _check_headers(response: requests.Response, max_bytes: int) -> None:
    """Refuse, before reading the body, a status, size or type that cannot give the image."""
    status = response.status_code
    if status in (408, 429) or status >= 500:
        wait = response.headers.get("retry-after", "")
        raise FetchError(f"HTTP {status}", wait=float(wait) if wait.isdigit() else 0.0)
    if status != 200:
        raise FetchError(f"HTTP {status}", retry=False)
    length = response.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_bytes:
        raise FetchError(f"larger than --max-bytes {max_bytes} (Content-Length {length})",
                         retry=False)
    kind = response.headers.get("content-type", "").partition(";")[0].strip().lower()
    if not (kind.startswith("image/") or kind in GENERIC_TYPES):
        raise FetchError(f"not an image (Content-Type {kind})", retry=False)


def download(session: requests.Session, url: str, part: Path, *, timeout: float,
             max_bytes: int, cut: Cut) -> str:
    """GET `url` (following http(s) redirects) into `part`, bounded, and check it is an image.

    Args:
        session: from `new_session`.
        url: http(s) URL.
        part: file to write the raw body to.
        timeout: connect and per-read timeout in seconds.
        max_bytes: largest body accepted.
        cut: ends the download when cut from another thread; its reason is the error's.

    Returns:
        The md5 of the body, which Pillow recognises as an image.

    Raises:
        FetchError: the server's answer cannot give the image (`retry` says if it may later).
        requests.RequestException, urllib3.exceptions.HTTPError: network errors (`describe`).
    """
    _current.cut = cut
    try:
        md5, encoding = _follow(session, url, part, timeout, max_bytes, cut)
    except Exception:
        if cut.reason:  # the error is only the socket shut down under the read
            raise FetchError(cut.reason) from None
        raise
    finally:
        _current.cut = None
    if cut.reason:  # a shut-down socket may also look like the end of the body
        raise FetchError(cut.reason)
    if not _is_image(part):
        raise FetchError("not an image (Pillow does not recognise it" + (
            f"; Content-Encoding {encoding} is not decoded)" if encoding != "identity" else ")"),
            retry=False)
    return md5


def _follow(session: requests.Session, url: str, part: Path, timeout: float, max_bytes: int,
            cut: Cut) -> tuple[str, str]:
    """GET `url`, following http(s) redirects, and stream the body to `part`.

    Returns:
        The md5 of the body and its Content-Encoding.
    """
    for _ in range(MAX_REDIRECTS + 1):
        with session.get(url, stream=True, allow_redirects=False, timeout=timeout) as response:
            if response.is_redirect:
                url = urljoin(url, response.headers["location"])
                if not is_http(url):
                    raise FetchError("redirect to a non-http(s) URL", retry=False)
                continue
            _check_headers(response, max_bytes)
            cut.watch(response.raw.shutdown)  # the body, also through a proxy
            return (_stream(response, part, max_bytes),
                    response.headers.get("content-encoding", "identity").strip().lower())
    raise FetchError(f"more than {MAX_REDIRECTS} redirects", retry=False)
