"""A loopback stand-in for the Hugging Face Hub, for tests that run huggingface_hub's real client.

``FakeHub`` serves, on 127.0.0.1 and an ephemeral port, the few endpoints the client uses to download:

* ``GET /api/models/{repo}[/revision/{rev}]``: the model-info API (``sha`` = the repo's commit);
* ``GET /api/models/{repo}/tree/{rev}[/{path}]``: the file listing (``size``, ``oid``, ``lfs.sha256``);
* ``HEAD``/``GET /{repo}/resolve/{rev}/{path}``: the file, with ``X-Repo-Commit``, ``ETag`` (the sha256,
  as the Hub gives for LFS files) and ``Content-Length``.

Unknown repos, revisions and files get the Hub's 404 with its ``X-Error-Code`` header. Every request is
recorded in ``requests`` as ``(method, path)`` so a test can assert that a call made none. Nothing here
leaves the machine.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class _Blob:
    source: Path | bytes

    def read(self) -> bytes:
        return self.source if isinstance(self.source, bytes) else self.source.read_bytes()

    @property
    def size(self) -> int:
        return len(self.source) if isinstance(self.source, bytes) else self.source.stat().st_size


@dataclass
class FakeHub:
    """``repos`` maps a repo id to ``{path in repo: file on disk or bytes}``; every repo has one commit,
    reachable as ``main`` or by its hash."""

    repos: Mapping[str, Mapping[str, Path | bytes]]
    commit: str = COMMIT
    requests: list[tuple[str, str]] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _sha: dict[tuple[str, str], str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the server first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep pytest output clean
                pass

            def do_HEAD(self) -> None:  # http.server's naming
                hub._handle(self, body=False)

            def do_GET(self) -> None:
                hub._handle(self, body=True)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------------------------- helpers
    def sha256(self, repo: str, path: str) -> str:
        key = (repo, path)
        if key not in self._sha:
            self._sha[key] = hashlib.sha256(_Blob(self.repos[repo][path]).read()).hexdigest()
        return self._sha[key]

    def _files(self, repo: str) -> dict[str, _Blob]:
        return {p: _Blob(s) for p, s in self.repos[repo].items()}

    def _repo_and_rest(self, parts: list[str]) -> tuple[str, list[str]] | None:
        if len(parts) >= 2 and f"{parts[0]}/{parts[1]}" in self.repos:
            return f"{parts[0]}/{parts[1]}", parts[2:]
        return None

    def _revision_ok(self, rev: str) -> bool:
        return rev in ("main", self.commit)

    # ----------------------------------------------------------------------------------- routing
    def _handle(self, req: BaseHTTPRequestHandler, *, body: bool) -> None:
        url = urlsplit(req.path)
        path = unquote(url.path)
        self.requests.append((req.command, path))
        parts = [p for p in path.split("/") if p]
        if parts[:2] == ["api", "models"]:
            return self._api(req, parts[2:], body=body)
        found = self._repo_and_rest(parts)
        if found is None:
            return self._error(req, 404, "RepoNotFound", "Repository not found", body=body)
        repo, rest = found
        if len(rest) < 3 or rest[0] != "resolve":
            return self._error(req, 404, "EntryNotFound", "Not found", body=body)
        rev, file_path = rest[1], "/".join(rest[2:])
        if not self._revision_ok(rev):
            return self._error(req, 404, "RevisionNotFound", "Invalid rev id", body=body)
        files = self._files(repo)
        if file_path not in files:
            return self._error(req, 404, "EntryNotFound", "Entry not found", body=body, commit=True)
        blob = files[file_path]
        req.send_response(200)
        req.send_header("X-Repo-Commit", self.commit)
        req.send_header("ETag", f'"{self.sha256(repo, file_path)}"')
        req.send_header("Content-Length", str(blob.size))
        req.send_header("Content-Type", "application/octet-stream")
        req.end_headers()
        if body:
            req.wfile.write(blob.read())

    def _api(self, req: BaseHTTPRequestHandler, parts: list[str], *, body: bool) -> None:
        found = self._repo_and_rest(parts)
        if found is None:
            return self._error(req, 404, "RepoNotFound", "Repository not found", body=body)
        repo, rest = found
        files = self._files(repo)
        if not rest or rest[0] == "revision":
            if len(rest) > 1 and not self._revision_ok("/".join(rest[1:])):
                return self._error(req, 404, "RevisionNotFound", "Invalid rev id", body=body)
            info = {"id": repo, "modelId": repo, "sha": self.commit, "private": False, "disabled": False,
                    "gated": False, "tags": [], "siblings": [{"rfilename": p} for p in sorted(files)]}
            return self._json(req, info, body=body)
        if rest[0] == "tree" and len(rest) >= 2:
            if not self._revision_ok(rest[1]):
                return self._error(req, 404, "RevisionNotFound", "Invalid rev id", body=body)
            prefix = "/".join(rest[2:])
            entries = []
            for p in sorted(files):
                if prefix and not p.startswith(prefix + "/"):
                    continue
                sha = self.sha256(repo, p)
                size = files[p].size
                entries.append({"type": "file", "oid": hashlib.sha1(sha.encode()).hexdigest(), "size": size,
                                "path": p, "lfs": {"oid": sha, "size": size, "pointerSize": 134}})
            return self._json(req, entries, body=body)
        return self._error(req, 404, "EntryNotFound", "Not found", body=body)

    def _json(self, req: BaseHTTPRequestHandler, obj: object, *, body: bool) -> None:
        data = json.dumps(obj).encode()
        req.send_response(200)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        if body:
            req.wfile.write(data)

    def _error(self, req: BaseHTTPRequestHandler, status: int, code: str, message: str, *, body: bool,
               commit: bool = False) -> None:
        data = json.dumps({"error": message}).encode()
        req.send_response(status)
        req.send_header("X-Error-Code", code)
        req.send_header("X-Error-Message", message)
        if commit:
            req.send_header("X-Repo-Commit", self.commit)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        if body:
            req.wfile.write(data)
