"""Publish an exported model directory (``hf/``) to the Hugging Face Hub.

A dry run (the default) only writes ``push_plan.json``: the files that would be uploaded
with their sizes and SHA-256, so a pipeline can be reviewed before anything leaves the
machine. A real push creates the repo (private by default), commits exactly the planned
files in one commit whose message names the run and the config hash, and tags the
commit ``run-<run id>``; each Hub call is retried with exponential backoff on transient
failures (HTTP 429/5xx, connection errors).

The token comes from, in order: an environment variable (``HF_TOKEN``), a token file (a
mounted Kubernetes secret), or Google Secret Manager (on Vertex AI). It is never logged,
written to an output, put in an error message or compiled into a pipeline.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

from korlm import storage
from korlm.errors import KorlmError

_LOG = logging.getLogger(__name__)

PLAN_FILE = "push_plan.json"
REQUIRED_FILES = ("config.json", "model.safetensors")
# Same rules as the Hub: letters, digits, '-', '_', '.'; no leading/trailing '-' or '.',
# no '--' or '..'; at most 96 characters per part.
_REPO_PART = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?")
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,127}")
# Folders huggingface_hub.upload_folder never uploads.
_SKIPPED_DIRS = (".git", os.path.join(".cache", "huggingface"))


def validate_repo_id(repo_id: str) -> None:
    parts = repo_id.split("/") if isinstance(repo_id, str) else []
    if len(parts) != 2 or not all(_REPO_PART.fullmatch(p) and "--" not in p and ".." not in p
                                   for p in parts):
        raise KorlmError(
            f"bad repo id {repo_id!r}; use 'namespace/name' (letters, digits, '-', '_', '.', "
            "not starting or ending with '-' or '.', at most 96 characters each)"
        )


def _validate_revision(revision: str | None) -> None:
    if revision is None:
        return
    if not _REVISION.fullmatch(revision) or ".." in revision or revision.endswith(("/", ".lock")):
        raise KorlmError(f"bad revision {revision!r}; use a branch name like 'step-100000'")


@contextlib.contextmanager
def _local_model_dir(model_dir: str) -> Iterator[str]:
    """``model_dir`` itself when local; a temporary download of it when remote."""
    if not storage.is_remote(model_dir):
        yield model_dir[len("file://"):] if model_dir.startswith("file://") else model_dir
        return
    staging = tempfile.mkdtemp(prefix="korlm-push-")
    try:
        def download(src: str, dst: str) -> None:
            os.makedirs(dst, exist_ok=True)
            for name in storage.listdir(src):
                child = storage.join(src, name)
                if storage.isdir(child):
                    download(child, os.path.join(dst, name))
                else:
                    with storage.open_file(child, "rb") as fin, open(os.path.join(dst, name), "wb") as fout:
                        shutil.copyfileobj(fin, fout)

        download(model_dir, staging)
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def list_upload_files(folder: str) -> list[dict[str, Any]]:
    """``[{path, bytes, sha256}]`` of what ``upload_folder`` would send, sorted by path
    (without korlm's artifact markers)."""
    files = []
    for root, dirs, names in os.walk(folder):
        rel_root = os.path.relpath(root, folder)
        dirs[:] = sorted(d for d in dirs
                         if os.path.normpath(os.path.join(rel_root, d)) not in _SKIPPED_DIRS)
        for name in names:
            if root == folder and name in storage.MARKER_FILES:
                continue  # korlm's own bookkeeping of the export folder, not part of the model
            path = os.path.join(root, name)
            rel = os.path.normpath(os.path.join(rel_root, name)).replace(os.sep, "/")
            files.append({"path": rel, "bytes": os.path.getsize(path), "sha256": _sha256(path)})
    return sorted(files, key=lambda f: f["path"])


def _check_model_dir(folder: str, model_dir: str) -> None:
    if not os.path.isdir(folder):
        raise KorlmError(f"model directory {model_dir} does not exist")
    missing = [n for n in REQUIRED_FILES if not os.path.isfile(os.path.join(folder, n))]
    if missing:
        raise KorlmError(
            f"{model_dir} is not an exported model (missing {', '.join(missing)}); run `korlm export` first"
        )


def _write_plan(output_dir: str, plan: dict[str, Any], inputs: list[str], overwrite: bool) -> None:
    with storage.atomic_output_dir(output_dir, "push", inputs=inputs, overwrite=overwrite) as staging:
        with open(os.path.join(staging, PLAN_FILE), "w", encoding="utf-8") as f:
            json.dump(plan, f, indent=2, ensure_ascii=False)
            f.write("\n")


def resolve_token(token_env: str = "HF_TOKEN", token_file: str | None = None,
                  token_secret: str | None = None) -> tuple[str, str]:
    """The Hub token and where it came from (a description without the token).

    Order: the environment variable ``token_env``; ``token_file`` (a mounted Kubernetes
    secret, e.g. ``/var/secrets/huggingface/token``); ``token_secret``, a Secret Manager
    version name (``projects/P/secrets/S/versions/latest``) read with the task's
    service account. Raises KorlmError naming what was tried when none gives a token.
    """
    token = os.environ.get(token_env, "").strip()
    if token:
        return token, f"environment variable {token_env}"
    tried = [f"the environment variable {token_env}"]
    if token_file:
        if os.path.isfile(token_file):
            with open(token_file, encoding="utf-8") as f:
                token = f.read().strip()
            if token:
                return token, f"token file {token_file}"
            tried.append(f"the token file {token_file} (empty)")
        else:
            tried.append(f"the token file {token_file} (missing)")
    if token_secret:
        try:
            from google.cloud import secretmanager

            response = secretmanager.SecretManagerServiceClient().access_secret_version(name=token_secret)
            token = response.payload.data.decode("utf-8").strip()
        except Exception as exc:  # auth, permission, not found: one line, no payload
            raise KorlmError(f"cannot read the Hub token from Secret Manager {token_secret}: "
                             f"{type(exc).__name__}") from None
        if token:
            return token, f"Secret Manager {token_secret}"
        tried.append(f"Secret Manager {token_secret} (empty)")
    raise KorlmError(f"no Hugging Face token: tried {', '.join(tried)}; set {token_env} to a write token, "
                     "mount it as a file (push.token_file) or name a Secret Manager secret "
                     "(push.token_secret), or push with dry_run=True to only write the plan")


def _commit_message(files: list[dict[str, Any]], run_id: str | None, config_hash: str | None) -> str:
    total = sum(f["bytes"] for f in files)
    parts = ["Upload model with korlm"]
    if run_id:
        parts.append(f"run {run_id}")
    if config_hash:
        parts.append(f"config {config_hash[:12]}")
    return f"{', '.join(parts)} ({len(files)} files, {total} bytes)"


def run_tag(run_id: str | None) -> str | None:
    """The tag a run's commit gets (``run-<id>``, Hub-safe), or None without a run id."""
    if not run_id:
        return None
    tag = "run-" + re.sub(r"[^A-Za-z0-9._-]+", "-", run_id).strip("-.")
    return tag[:128]


def push_model(model_dir: str, repo_id: str, output_dir: str, *, dry_run: bool = True,
               private: bool = True, revision: str | None = None,
               commit_message: str | None = None, token_env: str = "HF_TOKEN",
               token_file: str | None = None, token_secret: str | None = None,
               run_id: str | None = None, config_hash: str | None = None, tag: bool = True,
               retries: int = 4, retry_delay: float = 2.0, overwrite: bool = False) -> dict:
    """Push ``model_dir`` to the Hub repo ``repo_id`` (or only plan it, when ``dry_run``).

    Writes ``output_dir/push_plan.json`` and returns the same dict. ``revision`` names a
    branch to commit to (created from ``main`` when missing); ``None`` commits to ``main``.
    ``run_id`` and ``config_hash`` go into the commit message, and with ``tag`` the
    commit is tagged ``run-<run_id>``. Each Hub call is tried ``retries + 1`` times,
    waiting ``retry_delay * 2**attempt`` seconds between tries of a transient failure.
    ``output_dir`` is checked before anything is uploaded: new, empty or (``overwrite``)
    an earlier push plan, and not the model folder or around it.
    """
    validate_repo_id(repo_id)
    _validate_revision(revision)
    storage.check_output(output_dir, "push", inputs=[model_dir], overwrite=overwrite)

    with _local_model_dir(model_dir) as folder:
        _check_model_dir(folder, model_dir)
        files = list_upload_files(folder)
        total = sum(f["bytes"] for f in files)
        message = commit_message or _commit_message(files, run_id, config_hash)
        plan: dict[str, Any] = {
            "repo_id": repo_id,
            "repo_type": "model",
            "dry_run": bool(dry_run),
            "private": bool(private),
            "revision": revision,
            "commit_message": message,
            "run_id": run_id,
            "config_hash": config_hash,
            "tag": run_tag(run_id) if tag else None,
            "model_dir": model_dir,
            "total_bytes": total,
            "files": files,
        }
        if not dry_run:
            token, source = resolve_token(token_env, token_file, token_secret)
            plan["token_source"] = source
            plan.update(_upload(folder, files, repo_id, message, private, revision, plan["tag"],
                                token, source, retries, retry_delay))

    _write_plan(output_dir, plan, [model_dir], overwrite)
    return plan


_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def _status_of(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection-level errors of the HTTP client huggingface_hub uses (httpx2 in
    huggingface_hub 2.x, httpx before), plus the standard library's."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(module).TransportError)
        except ImportError:
            pass
    return tuple(errors)


def _is_transient(exc: BaseException) -> bool:
    status = _status_of(exc)
    if status is not None:
        return status in _TRANSIENT_STATUS
    return isinstance(exc, _transport_errors())


def _upload(folder: str, files: list[dict[str, Any]], repo_id: str, message: str,
            private: bool, revision: str | None, tag: str | None, token: str, source: str,
            retries: int, retry_delay: float) -> dict[str, Any]:
    from huggingface_hub import CommitOperationAdd, HfApi

    def redact(text: str) -> str:
        return text.replace(token, "***")

    def call(what: str, fn: Callable[[], Any]) -> Any:
        for attempt in range(retries + 1):
            try:
                return fn()
            except Exception as exc:
                status = _status_of(exc)
                detail = redact(" ".join(f"{type(exc).__name__}: {exc}".split()))[:300]
                if status == 401:
                    raise KorlmError(f"push to {repo_id}: the Hub rejected the token from {source} "
                                     "(401 unauthorized); check it is a valid write token") from None
                if status == 403:
                    raise KorlmError(f"push to {repo_id}: {what} was refused (403 forbidden): the token from "
                                     f"{source} cannot write to this repo; the name may belong to another user "
                                     "or organization, or the token is read-only") from None
                if status == 409 and what != "create the repo":
                    raise KorlmError(f"push to {repo_id}: {what} clashes with what is already there "
                                     f"(409 conflict): {detail}") from None
                if not _is_transient(exc) or attempt == retries:
                    tries = f" after {attempt + 1} tries" if attempt else ""
                    raise KorlmError(f"push to {repo_id}: {what} failed{tries}: {detail}") from None
                delay = retry_delay * 2 ** attempt
                _LOG.warning("push: %s failed (%s); retrying in %.1f s (%d/%d)",
                             what, status or type(exc).__name__, delay, attempt + 1, retries)
                time.sleep(delay)

    endpoint = os.environ.get("HF_ENDPOINT") or None
    api = HfApi(token=token, endpoint=endpoint)
    repo_url = call("create the repo", lambda: api.create_repo(
        repo_id, repo_type="model", private=private, exist_ok=True))
    if revision and revision != "main":
        call(f"create branch {revision}", lambda: api.create_branch(
            repo_id, branch=revision, repo_type="model", exist_ok=True))
    operations = [CommitOperationAdd(path_in_repo=f["path"], path_or_fileobj=os.path.join(folder, f["path"]))
                  for f in files]
    commit = call("the commit", lambda: api.create_commit(
        repo_id, operations, commit_message=message, repo_type="model", revision=revision))
    result = {"repo_url": str(repo_url), "commit_url": commit.commit_url, "commit_oid": commit.oid}
    if tag:
        call(f"tag {tag}", lambda: api.create_tag(repo_id, tag=tag, revision=commit.oid, repo_type="model",
                                                  tag_message=message, exist_ok=True))
        result["tag"] = tag
    return result
