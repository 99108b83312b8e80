"""A fake Hugging Face Hub on 127.0.0.1, serving one dataset repo from a local folder.

It implements what `huggingface_hub.snapshot_download` (2.4.0) calls for a dataset repo:

- `GET  /api/datasets/{repo}/revision/{rev}`: repo info (`sha`, `siblings`);
- `GET  /api/datasets/{repo}/tree/{rev}?recursive=...`: the file listing, paginated with a
  `Link: <...>; rel="next"` header like the Hub (small pages, so pagination is exercised);
- `HEAD|GET /datasets/{repo}/resolve/{rev}/{path}`: file metadata (`X-Repo-Commit`, `ETag`,
  `Content-Length`) and content. No `X-Xet-Hash` header and no `xetHash` in the listing, so
  the client downloads over plain HTTP and never contacts a Xet server.

Errors use the Hub's `X-Error-Code` header (`RevisionNotFound`, `GatedRepo`, `EntryNotFound`).
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit


class FakeHub:
    """Serve the files under `root` as dataset repo `repo_id` at commit `commit`.

    Knobs for failures: `deny` (an HTTP status for every request, e.g. 401 for a private repo),
    `gated` (403 `GatedRepo` on file downloads only, as the Hub does for gated datasets),
    `missing` (listed paths whose download answers 404) and `plain_errors` (no `X-Error-Code`
    header, like a bare mirror).
    """

    def __init__(self, root: Path, repo_id: str, commit: str, *, refs: dict[str, str] | None = None,
                 page_size: int = 5) -> None:
        self.root, self.repo_id, self.commit, self.page_size = root, repo_id, commit, page_size
        self.refs = {"main": commit, **(refs or {})}
        self.files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        self.deny: int | None = None
        self.gated = False
        self.plain_errors = False
        self.missing: set[str] = set()
        self.requests: list[tuple[str, str, str | None]] = []  # method, path?query, authorization
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def resolve(self, revision: str) -> str | None:
        return revision if revision == self.commit else self.refs.get(revision)

    def tree(self) -> list[dict]:
        folders = sorted({str(Path(f).parents[i]) for f in self.files
                          for i in range(len(Path(f).parts) - 1)})
        entries = [{"type": "directory", "oid": _sha1(d.encode()), "size": 0, "path": d}
                   for d in folders]
        for name in self.files:
            data = (self.root / name).read_bytes()
            entries.append({"type": "file", "oid": _git_oid(data), "size": len(data),
                            "path": name})
        return sorted(entries, key=lambda entry: entry["path"])


def _sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def _git_oid(data: bytes) -> str:
    return _sha1(b"blob %d\0" % len(data) + data)


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    datasets = f"/api/datasets/{hub.repo_id}/"
    resolve = f"/datasets/{hub.repo_id}/resolve/"

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # keep pytest output clean
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _serve(self, body: bool) -> None:
            hub.requests.append((self.command, self.path, self.headers.get("authorization")))
            parts = urlsplit(self.path)
            path = unquote(parts.path)
            if hub.deny is not None:
                return self._error(hub.deny, None)
            if path.startswith(datasets + "revision/"):
                commit = hub.resolve(path.removeprefix(datasets + "revision/"))
                if commit is None:
                    return self._error(404, "RevisionNotFound")
                info = {"id": hub.repo_id, "sha": commit, "private": False, "gated": False,
                        "siblings": [{"rfilename": name} for name in hub.files]}
                return self._send(200, json.dumps(info).encode(), "application/json", body)
            if path.startswith(datasets + "tree/"):
                if hub.resolve(path.removeprefix(datasets + "tree/").split("/")[0]) is None:
                    return self._error(404, "RevisionNotFound")
                return self._tree(parts.query, body)
            if path.startswith(resolve):
                revision, _, name = path.removeprefix(resolve).partition("/")
                commit = hub.resolve(revision)
                if commit is None:
                    return self._error(404, "RevisionNotFound")
                if hub.gated:
                    return self._error(403, "GatedRepo")
                if name in hub.missing or name not in hub.files:
                    return self._error(404, "EntryNotFound")
                data = (hub.root / name).read_bytes()
                return self._send(200, data, "application/octet-stream", body,
                                  {"X-Repo-Commit": commit, "ETag": f'"{_git_oid(data)}"'})
            return self._error(404, "RepoNotFound")

        def _tree(self, query: str, body: bool) -> None:
            params = parse_qs(query)
            start = int(params.get("cursor", ["0"])[0])
            entries = hub.tree()
            page = entries[start:start + hub.page_size]
            headers = {}
            if start + hub.page_size < len(entries):
                params["cursor"] = [str(start + hub.page_size)]
                next_query = "&".join(f"{k}={quote(v[0])}" for k, v in params.items())
                headers["Link"] = f'<{hub.url}{urlsplit(self.path).path}?{next_query}>; rel="next"'
            self._send(200, json.dumps(page).encode(), "application/json", body, headers)

        def _error(self, status: int, code: str | None) -> None:
            headers = {} if code is None or hub.plain_errors else {"X-Error-Code": code}
            message = json.dumps({"error": code or f"HTTP {status}"}).encode()
            self._send(status, message, "application/json", self.command == "GET", headers)

        def _send(self, status: int, data: bytes, kind: str, body: bool,
                  headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if body:
                self.wfile.write(data)

    return Handler
