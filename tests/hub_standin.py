"""A local HTTP server standing in for the Hugging Face Hub, for testing real uploads.

It speaks the part of the Hub's HTTP API that ``huggingface_hub.HfApi`` uses to create a
repo, a branch and a tag and to commit a folder (pre-upload check, Git LFS batch with
the ``basic`` transfer, then the NDJSON commit), and it keeps what arrives: repos, their
commits and the bytes of every file. Point a client at it with ``HF_ENDPOINT``. Nothing
leaves the machine. It can refuse a token (401), refuse a namespace (403) and fail the
first N commits with 503 to exercise retries.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Commit:
    oid: str
    branch: str
    summary: str
    files: dict[str, bytes]


@dataclass
class Repo:
    repo_id: str
    private: bool
    branches: dict[str, list[Commit]] = field(default_factory=lambda: {"main": []})
    tags: dict[str, str] = field(default_factory=dict)


class HubStandIn:
    """``with HubStandIn(token="hf_x") as hub: ...`` -> ``hub.url`` serves the API."""

    def __init__(self, token: str, writable_namespaces: tuple[str, ...] = ("korlm-test",)):
        self.token = token
        self.writable_namespaces = writable_namespaces
        self.repos: dict[str, Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.requests: list[tuple[str, str, str]] = []  # (method, path, authorization header)
        self.fail_commits = 0  # the next N commit calls answer 503
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> HubStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ------------------------------------------------------------------ handlers

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _send(self, status: int, payload: Any = None, headers: dict[str, str] | None = None):
                data = json.dumps(payload if payload is not None else {}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self) -> bool:
                auth = self.headers.get("Authorization", "")
                hub.requests.append((self.command, self.path, auth))
                if auth != f"Bearer {hub.token}":
                    self._send(401, {"error": "Invalid credentials in Authorization header"})
                    return False
                return True

            def do_GET(self):  # noqa: N802
                if not self._authorized():
                    return
                self._send(404, {"error": f"not served by the stand-in: GET {self.path}"})

            def do_PUT(self):  # noqa: N802
                body = self._body()
                hub.requests.append((self.command, self.path, self.headers.get("Authorization", "")))
                match = re.fullmatch(r"/lfs-upload/([0-9a-f]{64})", self.path)
                if not match or hashlib.sha256(body).hexdigest() != match.group(1):
                    self._send(400, {"error": "bad LFS upload"})
                    return
                with hub._lock:
                    hub.lfs_objects[match.group(1)] = body
                self._send(200, {})

            def do_POST(self):  # noqa: N802
                body = self._body()
                if not self._authorized():
                    return
                path = self.path.split("?", 1)[0]
                if path == "/api/repos/create":
                    return self._create_repo(json.loads(body))
                if path == "/api/validate-yaml":  # model card metadata check before a commit
                    return self._send(200, {"errors": [], "warnings": []})
                match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(preupload|commit|branch|tag)/(.+)", path)
                if match:
                    repo_id, action, rev = match.group(1), match.group(2), _unquote(match.group(3))
                    repo = hub.repos.get(repo_id)
                    if repo is None:
                        return self._send(404, {"error": "Repository not found"},
                                          {"X-Error-Code": "RepoNotFound"})
                    return getattr(self, f"_{action}")(repo, rev, body)
                match = re.fullmatch(r"/([^/]+/[^/]+)\.git/info/lfs/objects/batch", path)
                if match:
                    return self._lfs_batch(json.loads(body))
                self._send(404, {"error": f"not served by the stand-in: POST {path}"})

            def _create_repo(self, request: dict):
                namespace = request.get("organization") or hub.writable_namespaces[0]
                repo_id = f"{namespace}/{request['name']}"
                if namespace not in hub.writable_namespaces:
                    return self._send(403, {"error": f"You don't have the rights to create a model under the namespace \"{namespace}\""})
                with hub._lock:
                    if repo_id in hub.repos:
                        return self._send(409, {"error": "You already created this model repo",
                                                "url": f"{hub.url}/{repo_id}"})
                    hub.repos[repo_id] = Repo(repo_id, bool(request.get("private")) or request.get("visibility") == "private")
                self._send(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id, "id": repo_id})

            def _branch(self, repo: Repo, branch: str, body: bytes):
                with hub._lock:
                    if branch in repo.branches:
                        return self._send(409, {"error": "Reference already exists"})
                    repo.branches[branch] = list(repo.branches["main"])
                self._send(200, {})

            def _tag(self, repo: Repo, revision: str, body: bytes):
                tag = json.loads(body)["tag"]
                with hub._lock:
                    oid = revision if any(c.oid == revision for cs in repo.branches.values() for c in cs) \
                        else (repo.branches.get(revision) or [Commit("", "", "", {})])[-1].oid
                    if tag in repo.tags:
                        return self._send(409, {"error": "Tag already exists"})
                    repo.tags[tag] = oid
                self._send(200, {})

            def _preupload(self, repo: Repo, revision: str, body: bytes):
                files = json.loads(body)["files"]
                # Hub rule of thumb: binary and large files go through LFS.
                modes = [{"path": f["path"], "shouldIgnore": False,
                          "uploadMode": "lfs" if f["path"].endswith((".safetensors", ".model", ".bin"))
                          or f["size"] > 10_000_000 else "regular", "oid": None} for f in files]
                self._send(200, {"files": modes, "commitOid": None})

            def _lfs_batch(self, request: dict):
                objects = [{"oid": o["oid"], "size": o["size"], "authenticated": True,
                            "actions": {"upload": {"href": f"{hub.url}/lfs-upload/{o['oid']}"}}}
                           for o in request["objects"] if o["oid"] not in hub.lfs_objects]
                objects += [{"oid": o["oid"], "size": o["size"]} for o in request["objects"]
                            if o["oid"] in hub.lfs_objects]
                self._send(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

            def _commit(self, repo: Repo, branch: str, body: bytes):
                with hub._lock:
                    if hub.fail_commits > 0:
                        hub.fail_commits -= 1
                        return self._send(503, {"error": "Service temporarily unavailable"})
                lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                header = next(x["value"] for x in lines if x["key"] == "header")
                files: dict[str, bytes] = {}
                for line in lines:
                    value = line["value"]
                    if line["key"] == "file":
                        files[value["path"]] = base64.b64decode(value["content"])
                    elif line["key"] == "lfsFile":
                        if value["oid"] not in hub.lfs_objects:
                            return self._send(422, {"error": f"LFS object {value['oid']} was never uploaded"})
                        files[value["path"]] = hub.lfs_objects[value["oid"]]
                if branch not in repo.branches:
                    return self._send(404, {"error": f"Invalid rev id: {branch}"},
                                      {"X-Error-Code": "RevisionNotFound"})
                oid = hashlib.sha1(json.dumps([header, sorted(files)]).encode()
                                   + str(len(hub.requests)).encode()).hexdigest()
                with hub._lock:
                    repo.branches[branch].append(Commit(oid, branch, header["summary"], files))
                self._send(200, {"commitUrl": f"{hub.url}/{repo.repo_id}/commit/{oid}",
                                 "commitOid": oid, "pullRequestUrl": None})

        return Handler


def _unquote(text: str) -> str:
    from urllib.parse import unquote

    return unquote(text)
