"""One file interface for local paths and remote URIs (gs:// through fsspec/gcsfs).

Every step reads and writes through these functions, so a step that works on local
paths works on ``gs://`` artifacts too once a filesystem for the scheme is installed.
Artifact directories are published atomically: a step writes into a staging
directory and renames it into place at the end (see :func:`atomic_output_dir`).
"""

from __future__ import annotations

import contextlib
import glob as _glob
import os
import shutil
import uuid
from collections.abc import Iterator
from typing import IO


class StorageError(RuntimeError):
    """A path that cannot be read or written, with the reason in the message."""


def is_remote(path: str) -> bool:
    return "://" in str(path) and not str(path).startswith("file://")


def _local(path: str) -> str:
    path = str(path)
    return path[len("file://") :] if path.startswith("file://") else path


def _fs(path: str):
    """fsspec filesystem for a remote URI (imported lazily: local runs do not need it).

    With ``STORAGE_EMULATOR_HOST`` set (a GCS emulator, as in the tests), ``gs://`` uses
    gcsfs's core filesystem: its default one first asks the Storage Control gRPC API
    for the bucket's layout, which emulators do not serve (a 60 s timeout per bucket).
    """
    try:
        if str(path).startswith("gs://") and os.environ.get("STORAGE_EMULATOR_HOST"):
            from gcsfs.core import GCSFileSystem

            return GCSFileSystem(token="anon")
        import fsspec

        return fsspec.core.url_to_fs(path)[0]
    except (ImportError, ValueError) as exc:  # unknown protocol, missing gcsfs
        raise StorageError(f"cannot open {path}: {exc}") from exc


def beam_artifact_path(path: str, uri: str | None, beam_options: list[str] | None) -> str:
    """Where a Beam step should read or write a KFP artifact.

    In a Vertex AI task an artifact's ``path`` is a GCS FUSE mount (``/gcs/bucket/...``)
    that only the task's own machine sees; Dataflow (or Flink/Spark) workers need its
    ``gs://`` URI instead. With the in-process DirectRunner, or off GCS, the path is right.
    """
    runner = next((o.split("=", 1)[1] for o in (beam_options or []) if o.startswith("--runner=")), "")
    if uri and uri.startswith("gs://") and runner and runner not in ("DirectRunner", "direct"):
        return uri
    return path


def join(base: str, *parts: str) -> str:
    if is_remote(base):
        return "/".join([str(base).rstrip("/"), *[p.strip("/") for p in parts]])
    return os.path.join(_local(base), *parts)


def exists(path: str) -> bool:
    if is_remote(path):
        return _fs(path).exists(path)
    return os.path.exists(_local(path))


def isdir(path: str) -> bool:
    if is_remote(path):
        return _fs(path).isdir(path)
    return os.path.isdir(_local(path))


def makedirs(path: str) -> None:
    if is_remote(path):
        _fs(path).makedirs(path, exist_ok=True)
    else:
        os.makedirs(_local(path), exist_ok=True)


def open_file(path: str, mode: str = "r", encoding: str | None = "utf-8") -> IO:
    """Open a local or remote file; text modes default to UTF-8."""
    if "b" in mode:
        encoding = None
    if is_remote(path):
        return _fs(path).open(path, mode, encoding=encoding)
    if "w" in mode or "a" in mode:
        parent = os.path.dirname(_local(path))
        if parent:
            os.makedirs(parent, exist_ok=True)
    return open(_local(path), mode, encoding=encoding)


def read_text(path: str) -> str:
    with open_file(path, "r") as f:
        return f.read()


def write_text(path: str, text: str) -> None:
    with open_file(path, "w") as f:
        f.write(text)


def glob(pattern: str) -> list[str]:
    if is_remote(pattern):
        fs = _fs(pattern)
        scheme = pattern.split("://", 1)[0]
        return sorted(f"{scheme}://{p}" for p in fs.glob(pattern))
    return sorted(_glob.glob(_local(pattern)))


def listdir(path: str) -> list[str]:
    """Names (not paths) of the entries of a directory, sorted."""
    if is_remote(path):
        fs = _fs(path)
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))
    return sorted(os.listdir(_local(path)))


def remove_tree(path: str) -> None:
    if is_remote(path):
        fs = _fs(path)
        if fs.exists(path):
            fs.rm(path, recursive=True)
    elif os.path.isdir(_local(path)):
        shutil.rmtree(_local(path))
    elif os.path.exists(_local(path)):
        os.remove(_local(path))


def copy_tree(src: str, dst: str) -> None:
    """Copy a local directory to a local or remote destination."""
    if is_remote(dst):
        _fs(dst).put(_local(src).rstrip("/") + "/", dst.rstrip("/") + "/", recursive=True)
    else:
        shutil.copytree(_local(src), _local(dst), dirs_exist_ok=True)


@contextlib.contextmanager
def atomic_output_dir(path: str, overwrite: bool = True, stage_remote: bool = False) -> Iterator[str]:
    """Yield a staging directory that becomes ``path`` only if the block succeeds.

    Local: a hidden sibling directory renamed into place. Remote (``gs://``): by default
    a local staging directory uploaded at the end, so any single-process writer (Keras,
    tokenizers, matplotlib) can use plain files; with ``stage_remote=True`` a hidden
    sibling prefix on the remote filesystem, for distributed writers such as Beam on
    Dataflow whose workers cannot see this machine's disk. Either way a ``_SUCCESS``
    marker is written last, so a reader can tell a complete artifact from a killed step.
    """
    if is_remote(path):
        fs = _fs(path)
        if stage_remote:
            parent, _, name = path.rstrip("/").rpartition("/")
            staging = f"{parent}/.{name}.tmp-{uuid.uuid4().hex[:8]}"
            fs.makedirs(staging, exist_ok=True)
        else:
            import tempfile

            staging = tempfile.mkdtemp(prefix="korlm-stage-")
        try:
            yield staging
            if fs.exists(path):
                if not overwrite:
                    raise StorageError(f"{path} already exists")
                fs.rm(path, recursive=True)
            if stage_remote:
                # Object stores have no directory rename: copy server-side, then drop
                # the staging prefix (in `finally`). _SUCCESS, written last, marks it whole.
                fs.copy(staging.rstrip("/") + "/", path.rstrip("/") + "/", recursive=True)
            else:
                copy_tree(staging, path)
            with fs.open(f"{path.rstrip('/')}/_SUCCESS", "wb"):
                pass
        finally:
            if stage_remote:
                if fs.exists(staging):
                    fs.rm(staging, recursive=True)
            else:
                shutil.rmtree(staging, ignore_errors=True)
        return

    final = os.path.abspath(_local(path))
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    staging = os.path.join(parent, f".{os.path.basename(final)}.tmp-{uuid.uuid4().hex[:8]}")
    os.makedirs(staging)
    try:
        yield staging
        if os.path.exists(final):
            if not overwrite:
                raise StorageError(f"{final} already exists")
            # An existing (possibly empty, pre-created by KFP) artifact dir is replaced.
            shutil.rmtree(final) if os.path.isdir(final) else os.remove(final)
        os.rename(staging, final)
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging, ignore_errors=True)
