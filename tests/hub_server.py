"""A loopback stand-in for the Hugging Face Hub, for pushing and loading tests.

It speaks the part of the Hub's HTTP API that ``huggingface_hub`` uses to create a repo
and a branch, validate a card, upload a commit and download files: ``/api/repos/create``,
``/api/validate-yaml``, ``/api/models/{repo}[/revision/{rev}]``, ``.../preupload/{rev}``,
``.../commit/{rev}`` (NDJSON), ``.../branch/{name}``, ``.../tree/{rev}``,
``.../paths-info/{rev}``, ``/api/whoami-v2`` and ``/{repo}/resolve/{rev}/{path}`` (HEAD and
GET, with the ``ETag`` and ``X-Repo-Commit`` headers ``hf_hub_download`` needs).

Every file is stored as a regular git blob: ``preupload`` answers ``uploadMode: regular``,
so the client sends the content inline (base64) in the commit and never tries the LFS or
Xet protocols, which need storage services a test cannot offer. A file's ``oid`` is its
git blob SHA-1, as the Hub reports for regular files; this is what lets the client (and
our push code) skip files that did not change.

The server binds 127.0.0.1 on a free port, runs in a daemon thread and keeps everything in
memory. Writes and private reads need ``Authorization: Bearer <token>``; the log records
whether a request carried the right token, never the token itself.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml

__all__ = ["HubServer", "LoggedRequest", "git_blob_sha1", "hub_server_fixture", "serve_hub"]

USER = "loopback-user"
# The Hub puts these rules in every new repo's first commit.
_GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob: SHA-1 of ``b"blob <size>\\0" + data``."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class LoggedRequest:
    """One request as the server saw it (the token is reduced to a yes/no)."""

    method: str
    path: str
    authorized: bool
    body_size: int


@dataclass
class _Commit:
    oid: str
    parent: str | None
    message: str
    files: dict[str, bytes]


@dataclass
class _Repo:
    repo_id: str
    private: bool
    commits: dict[str, _Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> _Commit | None:
        oid = self.branches.get(revision, revision)
        return self.commits.get(oid)


class _HubError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers, self.extra = headers or {}, extra or {}


class HubServer:
    """In-memory Hub on 127.0.0.1; ``url`` goes into ``HF_ENDPOINT``."""

    def __init__(self, token: str = "hf_loopback_test_token") -> None:
        self.token = token
        self.repos: dict[str, _Repo] = {}
        self.log: list[LoggedRequest] = []
        self.unknown: list[str] = []
        self._lock = threading.Lock()
        self._counter = 0
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)

    # ------------------------------------------------------------------ inspection

    def requests(
        self, method: str | None = None, pattern: str | None = None
    ) -> list[LoggedRequest]:
        """Logged requests, filtered by method and a regular expression on the path."""
        with self._lock:
            log = list(self.log)
        return [
            r
            for r in log
            if (method is None or r.method == method)
            and (pattern is None or re.search(pattern, r.path))
        ]

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """The files of ``repo_id`` at ``revision`` (a branch or a commit id)."""
        commit = self.repos[repo_id].resolve(revision)
        if commit is None:
            raise KeyError(f"{repo_id} has no revision {revision!r}")
        return dict(commit.files)

    def head(self, repo_id: str, branch: str = "main") -> str:
        return self.repos[repo_id].branches[branch]

    # ------------------------------------------------------------------ state changes

    def _new_oid(self, *parts: str) -> str:
        self._counter += 1
        return hashlib.sha1("\n".join([*parts, str(self._counter)]).encode()).hexdigest()

    def create_repo(self, repo_id: str, private: bool) -> _Repo:
        with self._lock:
            if repo_id in self.repos:
                # The Hub names the existing repo, which `create_repo(exist_ok=True)` returns.
                url = f"{self.url}/{repo_id}"
                raise _HubError(409, "You already created this model repo", extra={"url": url})
            repo = _Repo(repo_id, private)
            first = _Commit(
                self._new_oid(repo_id, "initial commit"),
                None,
                "initial commit",
                {".gitattributes": _GITATTRIBUTES},
            )
            repo.commits[first.oid] = first
            repo.branches["main"] = first.oid
            self.repos[repo_id] = repo
            return repo

    def commit(self, repo: _Repo, branch: str, lines: list[dict[str, Any]]) -> _Commit:
        with self._lock:
            if branch not in repo.branches:
                raise _HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            head = repo.commits[repo.branches[branch]]
            header = lines[0].get("value", {}) if lines and lines[0].get("key") == "header" else {}
            parent = header.get("parentCommit")
            if parent and not head.oid.startswith(parent):
                raise _HubError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(head.files)
            for line in lines:
                key, value = line.get("key"), line.get("value", {})
                if key == "file":
                    if value.get("encoding") != "base64":
                        raise _HubError(400, "only base64 file content is supported")
                    files[value["path"]] = base64.b64decode(value["content"])
                elif key == "deletedFile":
                    if value["path"] not in files:
                        raise _HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                    del files[value["path"]]
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {p: c for p, c in files.items() if not p.startswith(prefix)}
                elif key in ("lfsFile", "xetFile"):
                    raise _HubError(
                        422, "this loopback Hub stores regular files only (preupload said so)"
                    )
                elif key != "header":
                    raise _HubError(400, f"unknown commit operation {key!r}")
            message = header.get("summary", "")
            new = _Commit(self._new_oid(repo.repo_id, head.oid, message), head.oid, message, files)
            repo.commits[new.oid] = new
            repo.branches[branch] = new.oid
            return new


# ---------------------------------------------------------------------- HTTP layer


def _make_handler(hub: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        server_hub = hub

    return Handler


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 keeps connections alive for httpx's pool; every reply sets Content-Length.
    protocol_version = "HTTP/1.1"
    server_hub: HubServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # keep pytest output clean; the HubServer log has what tests need

    # -- plumbing

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _authorized(self) -> bool:
        return self.headers.get("Authorization", "") == f"Bearer {self.server_hub.token}"

    def _send(
        self,
        status: int,
        body: bytes = b"",
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
        head_only: bool = False,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if not head_only:
            self.wfile.write(body)

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers=headers)

    def _error(self, err: _HubError, head_only: bool = False) -> None:
        headers = {"X-Error-Message": err.message, **err.headers}
        if err.code:
            headers["X-Error-Code"] = err.code
        body = json.dumps({"error": err.message, **err.extra}).encode()
        self._send(err.status, body, headers=headers, head_only=head_only)

    def _dispatch(self, method: str) -> None:
        hub = self.server_hub
        body = self._body() if method in ("POST", "PUT") else b""
        parts = urlsplit(self.path)
        with hub._lock:
            hub.log.append(LoggedRequest(method, parts.path, self._authorized(), len(body)))
        try:
            self._route(method, parts.path, parse_qs(parts.query), body)
        except _HubError as err:
            self._error(err, head_only=method == "HEAD")

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._dispatch("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("HEAD")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    # -- routing

    def _repo(self, namespace: str, name: str, write: bool) -> _Repo:
        repo = self.server_hub.repos.get(f"{namespace}/{name}")
        if repo is None or ((repo.private or write) and not self._authorized()):
            # The Hub hides private repos from strangers behind the same 404.
            raise _HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _route(self, method: str, path: str, query: dict[str, list[str]], body: bytes) -> None:
        hub = self.server_hub
        segments = [unquote(s) for s in path.strip("/").split("/")]
        if path == "/api/whoami-v2" and method == "GET":
            if not self._authorized():
                raise _HubError(401, "Invalid credentials in Authorization header")
            return self._json(200, {"type": "user", "name": USER, "orgs": [], "auth": {}})
        if path == "/api/repos/create" and method == "POST":
            return self._create_repo(json.loads(body or b"{}"))
        if path == "/api/validate-yaml" and method == "POST":
            return self._validate_yaml(json.loads(body or b"{}"))
        if segments[:2] == ["api", "models"] and len(segments) >= 4:
            namespace, name, rest = segments[2], segments[3], segments[4:]
            if method == "GET" and (not rest or rest[0] == "revision"):
                revision = rest[1] if len(rest) > 1 else "main"
                return self._model_info(self._repo(namespace, name, write=False), revision)
            if method == "POST" and len(rest) == 2 and rest[0] == "preupload":
                return self._preupload(self._repo(namespace, name, write=True), rest[1], body)
            if method == "POST" and len(rest) == 2 and rest[0] == "commit":
                return self._commit(self._repo(namespace, name, write=True), rest[1], query, body)
            if method == "POST" and len(rest) == 2 and rest[0] == "branch":
                return self._branch(self._repo(namespace, name, write=True), rest[1], body)
            if method == "GET" and len(rest) >= 2 and rest[0] == "tree":
                prefix = "/".join(rest[2:])
                return self._tree(self._repo(namespace, name, write=False), rest[1], prefix, query)
            if method == "POST" and len(rest) == 2 and rest[0] == "paths-info":
                return self._paths_info(self._repo(namespace, name, write=False), rest[1], body)
        if len(segments) >= 5 and segments[2] == "resolve" and method in ("GET", "HEAD"):
            repo = self._repo(segments[0], segments[1], write=False)
            return self._resolve(repo, segments[3], "/".join(segments[4:]), method == "HEAD")
        hub.unknown.append(f"{method} {path}")
        raise _HubError(404, f"loopback Hub: no route for {method} {path}")

    # -- endpoints

    def _create_repo(self, payload: dict[str, Any]) -> None:
        if not self._authorized():
            raise _HubError(401, "Invalid credentials in Authorization header")
        if payload.get("type", "model") != "model":
            raise _HubError(400, "this loopback Hub holds model repos only")
        namespace = payload.get("organization") or USER
        repo_id = f"{namespace}/{payload['name']}"
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        self.server_hub.create_repo(repo_id, private)
        base = self.server_hub.url
        self._json(200, {"url": f"{base}/{repo_id}", "name": repo_id, "id": repo_id})

    def _validate_yaml(self, payload: dict[str, Any]) -> None:
        content = payload.get("content", "")
        match = re.match(r"^---\n(.*?)\n---\n", content, flags=re.DOTALL)
        if match is None:
            return self._json(200, {"warnings": [{"message": "empty or missing yaml metadata"}]})
        try:
            data = yaml.safe_load(match.group(1))
        except yaml.YAMLError as err:
            return self._json(400, {"errors": [{"message": f"invalid YAML: {err}"}]})
        if not isinstance(data, dict):
            return self._json(400, {"errors": [{"message": "metadata must be a mapping"}]})
        self._json(200, {"warnings": []})

    def _commit_or_404(self, repo: _Repo, revision: str) -> _Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise _HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _model_info(self, repo: _Repo, revision: str) -> None:
        commit = self._commit_or_404(repo, revision)
        card = _front_matter(commit.files.get("README.md", b""))
        siblings = [
            {"rfilename": path, "size": len(data), "blobId": git_blob_sha1(data)}
            for path, data in sorted(commit.files.items())
        ]
        config = json.loads(commit.files["config.json"]) if "config.json" in commit.files else {}
        self._json(
            200,
            {
                "id": repo.repo_id,
                "modelId": repo.repo_id,
                "author": repo.repo_id.split("/")[0],
                "sha": commit.oid,
                "private": repo.private,
                "gated": False,
                "disabled": False,
                "tags": card.get("tags", []),
                "pipeline_tag": card.get("pipeline_tag"),
                "library_name": card.get("library_name"),
                "cardData": card or None,
                "config": {k: config[k] for k in ("architectures", "model_type") if k in config},
                "siblings": siblings,
            },
        )

    def _preupload(self, repo: _Repo, revision: str, body: bytes) -> None:
        commit = self._commit_or_404(repo, revision)
        files = json.loads(body).get("files", [])
        answer = []
        for item in files:
            existing = commit.files.get(item["path"])
            answer.append(
                {
                    "path": item["path"],
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": git_blob_sha1(existing) if existing is not None else None,
                }
            )
        self._json(200, {"files": answer, "commitOid": commit.oid})

    def _commit(self, repo: _Repo, revision: str, query: dict[str, list[str]], body: bytes) -> None:
        if query.get("create_pr"):
            raise _HubError(400, "this loopback Hub does not do pull requests")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        new = self.server_hub.commit(repo, revision, lines)
        url = f"{self.server_hub.url}/{repo.repo_id}/commit/{new.oid}"
        self._json(
            200,
            {"success": True, "commitOid": new.oid, "commitUrl": url, "pullRequestUrl": None},
        )

    def _branch(self, repo: _Repo, branch: str, body: bytes) -> None:
        payload = json.loads(body or b"{}")
        with self.server_hub._lock:
            if branch in repo.branches:
                raise _HubError(409, f"Reference already exists: {branch}")
            start = repo.resolve(payload.get("startingPoint") or "main")
            if start is None:
                raise _HubError(404, "Invalid starting point", "RevisionNotFound")
            repo.branches[branch] = start.oid
        self._json(200, {})

    def _entries(self, commit: _Commit, paths: list[str]) -> list[dict[str, Any]]:
        return [
            {
                "type": "file",
                "path": path,
                "size": len(commit.files[path]),
                "oid": git_blob_sha1(commit.files[path]),
            }
            for path in paths
        ]

    def _tree(self, repo: _Repo, revision: str, prefix: str, query: dict[str, list[str]]) -> None:
        commit = self._commit_or_404(repo, revision)
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        base = prefix.rstrip("/") + "/" if prefix else ""
        paths, folders = [], set()
        for path in sorted(commit.files):
            if not path.startswith(base):
                continue
            rest = path[len(base) :]
            if "/" in rest and not recursive:
                folders.add(base + rest.split("/")[0])
            else:
                paths.append(path)
        if prefix and not paths and not folders:
            raise _HubError(404, f"{prefix} does not exist", "EntryNotFound")
        folder_entries = [
            {"type": "directory", "path": p, "oid": "0" * 40} for p in sorted(folders)
        ]
        self._json(200, folder_entries + self._entries(commit, paths))

    def _paths_info(self, repo: _Repo, revision: str, body: bytes) -> None:
        commit = self._commit_or_404(repo, revision)
        text = body.decode()
        try:
            paths = json.loads(text).get("paths", [])
        except json.JSONDecodeError:
            paths = parse_qs(text).get("paths", [])
        if isinstance(paths, str):
            paths = [paths]
        self._json(200, self._entries(commit, [p for p in paths if p in commit.files]))

    def _resolve(self, repo: _Repo, revision: str, path: str, head_only: bool) -> None:
        commit = self._commit_or_404(repo, revision)
        headers = {"X-Repo-Commit": commit.oid}
        if path not in commit.files:
            # The Hub names the commit even for a missing file, so clients cache the miss.
            raise _HubError(404, "Entry not found", "EntryNotFound", headers)
        data = commit.files[path]
        headers["ETag"] = f'"{git_blob_sha1(data)}"'
        self._send(200, data, "application/octet-stream", headers, head_only=head_only)


def _front_matter(readme: bytes) -> dict[str, Any]:
    match = re.match(r"^---\n(.*?)\n---\n", readme.decode(errors="replace"), flags=re.DOTALL)
    if match is None:
        return {}
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


@contextmanager
def serve_hub(token: str = "hf_loopback_test_token") -> Iterator[HubServer]:
    """Run a :class:`HubServer` for the duration of a ``with`` block."""
    server = HubServer(token).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(name="hub_server")
def hub_server_fixture() -> Iterator[HubServer]:
    """A fresh loopback Hub per test (import this fixture into a test module to use it)."""
    with serve_hub() as server:
        yield server
