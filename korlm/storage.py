"""One file interface for local paths and remote URIs (gs:// through fsspec/gcsfs).

Every step reads and writes through these functions, so a step that works on local
paths works on ``gs://`` artifacts too once a filesystem for the scheme is installed.
Artifact directories are published atomically: a step writes into a staging
directory and renames it into place at the end (see :func:`atomic_output_dir`).

Output safety: korlm never deletes or replaces what it did not write. Every artifact
directory carries ``korlm_artifact.json`` (the step, korlm's version, the run and the
files it wrote) and ``_SUCCESS``. :func:`check_output` refuses an output that is a
regular file, a non-empty folder or prefix without that marker, another step's
artifact, or one that equals, contains or lies inside one of the command's inputs;
``overwrite=True`` replaces only an artifact of the same step whose every file korlm
wrote.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fnmatch
import glob as _glob
import hashlib
import json
import os
import re
import shutil
import socket
import uuid
from collections.abc import Iterable, Iterator
from typing import IO, Any

from korlm.errors import KorlmError


class StorageError(KorlmError, RuntimeError):
    """A path that cannot be read or written, with the reason in the message."""


class OutputRefused(StorageError):
    """An output path korlm will not write to: it holds something korlm did not write,
    another step's artifact, or one of the command's own inputs."""


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



# ------------------------------------------------------------------ output safety

ARTIFACT_MARKER = "korlm_artifact.json"
SUCCESS_MARKER = "_SUCCESS"
MARKER_FILES = (ARTIFACT_MARKER, SUCCESS_MARKER)
ARTIFACT_FORMAT = 1
# `.NAME.tmp-HOST-PID-RAND` (staging) and `.NAME.old-...` (an artifact being replaced);
# the bare `.NAME.tmp-RAND` of earlier versions is korlm's too.
_STAGING_RE = r"\.{name}\.(?:tmp|old)-(?:(?P<host>[0-9a-f]{{6}})-(?P<pid>\d+)-)?[0-9a-f]{{6,8}}"


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]


def _staging_name(name: str, kind: str = "tmp") -> str:
    return f".{name}.{kind}-{_host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _comparable(path: str) -> str:
    """A path in the form containment is decided on: local paths resolved (symlinks,
    ``..``), Vertex's GCS FUSE mount ``/gcs/BUCKET/...`` as ``gs://BUCKET/...``, no
    trailing slash."""
    path = str(path)
    if not is_remote(path):
        path = os.path.realpath(_local(path))
        if path.startswith("/gcs/"):
            path = "gs://" + path[len("/gcs/"):]
    return path.rstrip("/") or "/"


def _inside(inner: str, outer: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")


def _describe_kind(step: str) -> str:
    return f"a korlm {step} output"


def _list_files(path: str) -> list[str]:
    """Every file below ``path``, relative to it with ``/`` separators, sorted."""
    if is_remote(path):
        fs = _fs(path)
        root = path.split("://", 1)[1].rstrip("/")
        found = []
        for key in fs.find(path):
            rel = key[len(root):].lstrip("/")
            if rel and not key.endswith("/"):
                found.append(rel)
        return sorted(found)
    root = _local(path)
    found = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            found.append(os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/"))
    return sorted(found)


def read_marker(path: str) -> dict[str, Any] | None:
    """The ``korlm_artifact.json`` of an artifact directory, or None when it has none
    (or an unreadable one)."""
    marker = join(path, ARTIFACT_MARKER)
    try:
        if not exists(marker):
            return None
        data = json.loads(read_text(marker))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("step"), str) else None


def _foreign_files(path: str, marker: dict[str, Any], files: list[str]) -> list[str]:
    """Files under an artifact that korlm did not write: not in the marker's file list,
    not under one of its ``entries`` (top-level names an incrementally written artifact,
    such as a pretraining run, owns), and not inside a nested korlm artifact."""
    owned = set(marker.get("files") or ())
    entries = marker.get("entries") or ()
    nested = [f[: -len(ARTIFACT_MARKER)] for f in files
              if f.endswith("/" + ARTIFACT_MARKER)]
    foreign = []
    for f in files:
        top = f.split("/", 1)[0]
        if f in MARKER_FILES or f in owned or any(f.startswith(n) for n in nested):
            continue
        if any(fnmatch.fnmatchcase(top, pattern) for pattern in entries):
            continue
        foreign.append(f)
    return foreign


def _sample(names: list[str], n: int = 3) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


def check_output(path: str, step: str, *, inputs: Iterable[str | None] = (),
                 containers: Iterable[str | None] = (), overwrite: bool = False,
                 resume: bool = False) -> str:
    """Decide whether ``step`` may write its artifact at ``path``; raise
    :class:`OutputRefused` (one line, nothing touched) when it may not.

    ``path`` may not equal, contain or lie inside one of ``inputs``; nor equal or contain
    one of ``containers``: folders the step reads only some named parts of, such as an
    evaluation's ``--data-dir`` of task folders, which an output may sit inside.

    Returns ``"new"`` (nothing there), ``"empty"`` (an empty folder, e.g. one KFP
    created), ``"replace"`` (a korlm ``step`` artifact and ``overwrite``) or, with
    ``resume``, ``"resume"`` (a korlm ``step`` artifact to continue).
    """
    shown = str(path)
    target = _comparable(path)
    for given in inputs:
        if not given:
            continue
        source = _comparable(given)
        if target == source:
            raise OutputRefused(f"output {shown} is also an input of {step}; write to another folder")
        if _inside(source, target):
            raise OutputRefused(f"output {shown} contains the input {given}; write to a folder "
                                f"that holds none of {step}'s inputs")
        if _inside(target, source):
            raise OutputRefused(f"output {shown} lies inside the input {given}; write outside it")
    for given in containers:
        if not given:
            continue
        source = _comparable(given)
        if _inside(source, target):
            raise OutputRefused(f"output {shown} {'is' if source == target else 'contains'} the "
                                f"input folder {given}; write to a folder that holds none of "
                                f"{step}'s inputs")
    try:
        if not exists(path):
            return "new"
        if is_remote(path):
            fs = _fs(path)
            if fs.isfile(path) and not fs.isdir(path):
                raise OutputRefused(f"output {shown} is an existing object, not a folder; korlm "
                                    "writes a new prefix (choose another --output)")
        elif not os.path.isdir(_local(path)):
            raise OutputRefused(f"output {shown} is an existing file, not a folder; korlm writes "
                                "a new folder (choose another --output)")
        files = _list_files(path)
        if not files:
            if is_remote(path) or not os.listdir(_local(path)):
                return "empty"
            raise OutputRefused(f"output {shown} holds empty folders korlm did not write; choose "
                                "another --output")
        marker = read_marker(path)
    except OSError as exc:
        raise StorageError(f"cannot read output {shown}: {exc.strerror or exc}") from None
    if marker is None:
        raise OutputRefused(
            f"output {shown} is not empty ({len(files)} files, e.g. {_sample(files)}) and is not "
            f"{_describe_kind(step)}; korlm writes only to a new or empty folder, or over its own "
            f"{step} output with --overwrite")
    if marker["step"] != step:
        raise OutputRefused(f"output {shown} holds {_describe_kind(marker['step'])}, not {step}; "
                            "choose another --output")
    if resume and not overwrite:
        return "resume"
    if not overwrite:
        raise OutputRefused(f"output {shown} already holds {_describe_kind(step)} (written "
                            f"{marker.get('created', 'earlier')}); pass --overwrite to replace it")
    foreign = _foreign_files(path, marker, files)
    if foreign:
        raise OutputRefused(f"output {shown} is {_describe_kind(step)} but also holds files korlm "
                            f"did not write ({_sample(foreign)}); move them out before --overwrite")
    return "replace"


def _marker(step: str, files: list[str] | None, entries: list[str] | None = None) -> dict[str, Any]:
    from korlm import __version__

    data: dict[str, Any] = {
        "korlm_artifact": ARTIFACT_FORMAT, "step": step, "korlm_version": __version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "run_id": os.environ.get("KORLM_RUN_ID") or None,
    }
    if files is not None:
        data["files"] = [f for f in files if f not in MARKER_FILES]
    if entries is not None:
        data["entries"] = list(entries)
    return data


def remove_stale_staging(parent: str, name: str | None = None) -> None:
    """Remove the staging (and half-replaced) folders that killed runs left in ``parent``
    beside output ``name`` (any output, when None); a live process's staging on this
    host is left alone."""
    pattern = re.compile(_STAGING_RE.format(name=re.escape(name) if name else "[^/]+") + r"$")
    try:
        if is_remote(parent):
            fs = _fs(parent)
            entries = [p.rstrip("/").rsplit("/", 1)[-1]
                       for p in fs.glob(f"{parent.rstrip('/')}/.{name or ''}*")]
        elif os.path.isdir(parent):
            entries = os.listdir(parent)
        else:
            return
    except OSError:
        return
    for entry in entries:
        m = pattern.fullmatch(entry)
        if not m:
            continue
        if m.group("host") == _host_tag() and _pid_alive(int(m.group("pid"))) \
                and int(m.group("pid")) != os.getpid():
            continue  # another live run on this machine is writing it
        print(f"korlm: removing {join(parent, entry)}, left by a killed run of this output",
              flush=True)
        remove_tree(join(parent, entry))


def _write_markers_local(staging: str, step: str) -> None:
    files = _list_files(staging)
    with open(os.path.join(staging, ARTIFACT_MARKER), "w", encoding="utf-8") as f:
        json.dump(_marker(step, files), f, indent=2)
        f.write("\n")
    with open(os.path.join(staging, SUCCESS_MARKER), "wb"):
        pass


def _unwritable(path: str, exc: OSError) -> StorageError:
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        reason += " (choose a folder you can write to)"
    return StorageError(f"cannot write output {path}: {reason}")


@contextlib.contextmanager
def atomic_output_dir(path: str, step: str, *, inputs: Iterable[str | None] = (),
                      containers: Iterable[str | None] = (), overwrite: bool = False,
                      stage_remote: bool = False, replace_any: bool = False) -> Iterator[str]:
    """Yield a staging directory that becomes ``path`` only if the block succeeds.

    ``step`` names the artifact kind (``clean``, ``vocab``...): :func:`check_output`
    runs before anything is written and again just before publishing, so an output that
    is not a korlm ``step`` artifact is never touched, and ``overwrite`` replaces only
    one that is. ``inputs`` and ``containers`` are the step's inputs, as
    :func:`check_output` takes them. Staging folders of killed runs of the same output are removed first.
    ``replace_any``: for parts of an artifact korlm already owns (a checkpoint or training
    state inside a run folder claimed with :func:`claim_run_dir`): whatever is at
    ``path``, half-written or from an older korlm, is replaced without the checks.

    Local: a hidden sibling directory renamed into place. Remote (``gs://``): by default
    a local staging directory uploaded at the end, so any single-process writer (Keras,
    tokenizers, matplotlib) can use plain files; with ``stage_remote=True`` a hidden
    sibling prefix on the remote filesystem, for distributed writers such as Beam on
    Dataflow whose workers cannot see this machine's disk. Either way
    ``korlm_artifact.json`` (step, version, run, files) and then ``_SUCCESS`` are
    written last, so a reader can tell a complete artifact from a killed step.
    """
    inputs, containers = list(inputs), list(containers)

    def decide() -> str:
        if replace_any:
            return "replace" if exists(path) else "new"
        return check_output(path, step, inputs=inputs, containers=containers, overwrite=overwrite)

    decide()
    if is_remote(path):
        fs = _fs(path)
        parent, _, name = path.rstrip("/").rpartition("/")
        remove_stale_staging(parent, name)
        if stage_remote:
            staging = f"{parent}/{_staging_name(name)}"
            fs.makedirs(staging, exist_ok=True)
        else:
            import tempfile

            staging = tempfile.mkdtemp(prefix="korlm-stage-")
        try:
            yield staging
            if stage_remote:
                files = _list_files(staging)
                write_text(join(staging, ARTIFACT_MARKER), json.dumps(_marker(step, files), indent=2))
            else:
                files = _list_files(staging)
                with open(os.path.join(staging, ARTIFACT_MARKER), "w", encoding="utf-8") as f:
                    json.dump(_marker(step, files), f, indent=2)
            if decide() == "replace":
                fs.rm(path, recursive=True)
            if stage_remote:
                # Object stores have no directory rename: copy server-side, then drop
                # the staging prefix (in `finally`). _SUCCESS, written last, marks it whole.
                fs.copy(staging.rstrip("/") + "/", path.rstrip("/") + "/", recursive=True)
            else:
                copy_tree(staging, path)
            with fs.open(f"{path.rstrip('/')}/{SUCCESS_MARKER}", "wb"):
                pass
        finally:
            if stage_remote:
                if fs.exists(staging):
                    fs.rm(staging, recursive=True)
            else:
                shutil.rmtree(staging, ignore_errors=True)
        return

    final = os.path.abspath(_local(path))
    parent, name = os.path.dirname(final), os.path.basename(final)
    remove_stale_staging(parent, name)
    staging = os.path.join(parent, _staging_name(name))
    try:
        os.makedirs(staging)
    except OSError as exc:
        raise _unwritable(path, exc) from None
    try:
        yield staging
        _write_markers_local(staging, step)
        state = decide()
        if state == "new":
            os.rename(staging, final)
        elif state == "empty":
            # KFP may create an artifact's folder (even a mount point) before the task
            # runs: fill it in place, markers last.
            names = sorted(os.listdir(staging), key=lambda n: (n in MARKER_FILES, n == SUCCESS_MARKER))
            for entry in names:
                os.rename(os.path.join(staging, entry), os.path.join(final, entry))
        else:
            # korlm's own artifact, checked to hold no file korlm did not write: moved
            # aside, replaced, then deleted.
            old = os.path.join(parent, _staging_name(name, "old"))
            os.rename(final, old)
            os.rename(staging, final)
            remove_tree(old)
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging, ignore_errors=True)


def claim_run_dir(path: str, step: str, entries: Iterable[str], *,
                  inputs: Iterable[str | None] = (), overwrite: bool = False) -> str:
    """Make ``path`` the home of an artifact written bit by bit (a pretraining run:
    checkpoints, state and logs appear over hours), marked with ``korlm_artifact.json``
    naming the top-level ``entries`` (fnmatch patterns) it owns.

    A new or empty folder is marked ``"new"``; korlm's own ``step`` artifact is
    ``"resume"``d, or with ``overwrite`` emptied of korlm's entries and started again
    (``"replace"``). A folder from before markers existed whose every top-level entry
    is one ``step`` writes is adopted and resumed. Anything else is refused.
    """
    entries = list(entries)
    state = check_run_dir(path, step, entries, inputs=inputs, overwrite=overwrite)
    if read_marker(path) is None and state in ("resume", "replace"):
        print(f"korlm: {path} is a {step} folder from before korlm marked its outputs; "
              "adopting it", flush=True)
    if state == "resume" and exists(join(path, SUCCESS_MARKER)):
        remove_tree(join(path, SUCCESS_MARKER))  # written again when the run ends
    if state == "replace":
        for name in listdir(path):
            if name not in MARKER_FILES and any(fnmatch.fnmatchcase(name, p) for p in entries):
                remove_tree(join(path, name))
    if state != "resume" or read_marker(path) is None:
        try:
            makedirs(path)
            write_text(join(path, ARTIFACT_MARKER),
                       json.dumps(_marker(step, None, entries), indent=2) + "\n")
        except OSError as exc:
            raise _unwritable(path, exc) from None
    return state


def check_run_dir(path: str, step: str, entries: Iterable[str], *,
                  inputs: Iterable[str | None] = (), overwrite: bool = False) -> str:
    """What :func:`claim_run_dir` would do (``"new"``, ``"empty"``, ``"resume"``,
    ``"replace"``), or :class:`OutputRefused`; writes nothing, so a command can check
    its run folder before any other work."""
    entries = list(entries)
    try:
        return check_output(path, step, inputs=inputs, overwrite=overwrite, resume=True)
    except OutputRefused:
        if read_marker(path) is not None or not isdir(path):
            raise
        top = {f.split("/", 1)[0] for f in _list_files(path)}
        if not top or any(not any(fnmatch.fnmatchcase(t, p) for p in entries) for t in top):
            raise
        return "resume" if not overwrite else "replace"


def release_run_dir(path: str, *, remove_folder: bool) -> None:
    """Undo :func:`claim_run_dir` for a run that failed before writing anything: the
    marker goes (and the folder, when the claim created it); a folder holding anything
    else is left as it is."""
    try:
        names = listdir(path)
    except OSError:
        return
    if set(names) <= set(MARKER_FILES):
        for name in names:
            remove_tree(join(path, name))
        if remove_folder and not is_remote(path):
            with contextlib.suppress(OSError):
                os.rmdir(_local(path))


def mark_complete(path: str) -> None:
    """Write ``_SUCCESS`` into an artifact claimed with :func:`claim_run_dir` once done."""
    with open_file(join(path, SUCCESS_MARKER), "wb"):
        pass


def check_output_file(path: str, *, signature: str, what: str, inputs: Iterable[str | None] = ()) -> None:
    """An output that is one file (a compiled pipeline): refuse to replace a file whose
    text lacks ``signature`` (so it is not korlm's ``what``), a folder, or an input."""
    target = _comparable(path)
    for given in inputs:
        if given and _comparable(given) == target:
            raise OutputRefused(f"output {path} is also an input; write to another file")
    if not exists(path):
        return
    if isdir(path):
        raise OutputRefused(f"output {path} is a folder; name a file for the {what}")
    try:
        with open_file(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError as exc:
        raise StorageError(f"cannot read output {path}: {exc.strerror or exc}") from None
    if signature.encode() not in head:
        raise OutputRefused(f"output {path} exists and is not a {what} korlm wrote; choose "
                            "another file name")
