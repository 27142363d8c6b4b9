"""Publish an exported model directory (``hf/``) to the Hugging Face Hub.

A dry run (the default) only writes ``push_plan.json``: the files that would be uploaded
with their sizes and SHA-256, so a pipeline can be reviewed before anything leaves the
machine. A real push reads the Hub token from an environment variable; the token is
never logged, written to an output or included in an error message.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

from korlm import storage
from korlm.errors import KorlmError

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
    """``[{path, bytes, sha256}]`` of what ``upload_folder`` would send, sorted by path."""
    files = []
    for root, dirs, names in os.walk(folder):
        rel_root = os.path.relpath(root, folder)
        dirs[:] = sorted(d for d in dirs
                         if os.path.normpath(os.path.join(rel_root, d)) not in _SKIPPED_DIRS)
        for name in names:
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


def _fnmatch_literal(path: str) -> str:
    # upload_folder's allow_patterns are fnmatch patterns; bracket the metacharacters.
    return re.sub(r"([\[\]*?])", r"[\1]", path)


def _write_plan(output_dir: str, plan: dict[str, Any]) -> None:
    with storage.atomic_output_dir(output_dir) as staging:
        with open(os.path.join(staging, PLAN_FILE), "w", encoding="utf-8") as f:
            json.dump(plan, f, indent=2, ensure_ascii=False)
            f.write("\n")


def push_model(model_dir: str, repo_id: str, output_dir: str, *, dry_run: bool = True,
               private: bool = True, revision: str | None = None,
               commit_message: str | None = None, token_env: str = "HF_TOKEN") -> dict:
    """Push ``model_dir`` to the Hub repo ``repo_id`` (or only plan it, when ``dry_run``).

    Writes ``output_dir/push_plan.json`` and returns the same dict. ``revision`` names a
    branch to commit to (created from ``main`` when missing); ``None`` commits to ``main``.
    """
    validate_repo_id(repo_id)
    _validate_revision(revision)
    if not storage.is_remote(output_dir) and not storage.is_remote(model_dir):
        out, model = os.path.abspath(output_dir), os.path.abspath(model_dir)
        if os.path.commonpath([out, model]) == out:
            # output_dir is replaced as a whole; it must not hold the model being pushed.
            raise KorlmError(f"output directory {output_dir} must not contain the model directory {model_dir}")

    with _local_model_dir(model_dir) as folder:
        _check_model_dir(folder, model_dir)
        files = list_upload_files(folder)
        total = sum(f["bytes"] for f in files)
        message = commit_message or f"Upload model with korlm ({len(files)} files, {total} bytes)"
        plan: dict[str, Any] = {
            "repo_id": repo_id,
            "repo_type": "model",
            "dry_run": bool(dry_run),
            "private": bool(private),
            "revision": revision,
            "commit_message": message,
            "model_dir": model_dir,
            "total_bytes": total,
            "files": files,
        }
        if not dry_run:
            plan.update(_upload(folder, files, repo_id, message, private, revision, token_env))

    _write_plan(output_dir, plan)
    return plan


def _upload(folder: str, files: list[dict[str, Any]], repo_id: str, message: str,
            private: bool, revision: str | None, token_env: str) -> dict[str, Any]:
    token = os.environ.get(token_env, "").strip()
    if not token:
        raise KorlmError(
            f"no Hugging Face token: set the {token_env} environment variable to a write token "
            "(or push with dry_run=True to only write the plan)"
        )

    from huggingface_hub import HfApi

    def redact(text: str) -> str:
        return text.replace(token, "***")

    api = HfApi(token=token)
    try:
        repo_url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            repo_type="model",
            revision=revision,
            commit_message=message,
            allow_patterns=[_fnmatch_literal(f["path"]) for f in files],
        )
    except Exception as exc:  # any Hub/HTTP failure becomes one line, token removed
        raise KorlmError(f"push to {repo_id} failed: {redact(f'{type(exc).__name__}: {exc}')}") from None
    return {
        "repo_url": str(repo_url),
        "commit_url": commit.commit_url,
        "commit_oid": commit.oid,
    }
