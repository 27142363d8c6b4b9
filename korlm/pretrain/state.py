"""A pretraining run folder and resuming it.

The folder holds ``checkpoints/step-NNNNNN/`` and ``checkpoints.json`` (their layout is
``korlm.modeling.checkpoints``'), ``train_log.jsonl``, ``tensorboard/`` and
``state/step-NNNNNN/``: after every checkpoint the training state (model weights,
optimizer variables including the step counter, the dropout seed states, the step itself,
the data position) is written and the older state deleted. Re-running the same command
continues from the newest complete state (:func:`choose_resume_state`: half-written ones
are skipped, a newer checkpoint without a state is named and re-trained). Log lines
written after the saved step (the work a kill threw away) are dropped, so
``train_log.jsonl`` reads as one run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
import warnings
from typing import Any

from korlm import storage
from korlm.errors import KorlmError
from korlm.modeling.checkpoints import (
    CHECKPOINT_INFO,
    CHECKPOINTS_DIR,
    CHECKPOINTS_JSON,
    STEP_PREFIX,
    checkpoint_name,
    step_of,
)

TRAIN_LOG = "train_log.jsonl"
STATE_DIR = "state"
STATE_JSON = "state.json"
STATE_WEIGHTS = "model.weights.h5"
TENSORBOARD_DIR = "tensorboard"
# What a run folder holds (fnmatch patterns of its top-level names, atomic-write temp
# files included): the rest of a folder is the user's, and an --overwrite keeps clear of it.
RUN_ENTRIES = (CHECKPOINTS_DIR, f"{CHECKPOINTS_JSON}*", f"{TRAIN_LOG}*", STATE_DIR, f".{STATE_DIR}.*",
               TENSORBOARD_DIR)

# Settings a resumed run must share with the run it continues (weights would not fit or
# would mean something else otherwise).
RESUME_KEYS = ("model", "size", "vocab_size", "vocab_hash", "max_seq_length", "grad_accum_steps",
               "nsp")


def _write_text_atomic(path: str, text: str) -> None:
    if storage.is_remote(path):  # an object store write is atomic already
        storage.write_text(path, text)
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    storage.write_text(tmp, text)
    os.replace(tmp, path)


def write_json_atomic(path: str, obj: Any) -> None:
    _write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def read_checkpoints(output_dir: str) -> list[dict]:
    path = storage.join(output_dir, CHECKPOINTS_JSON)
    if not storage.exists(path):
        return []
    try:
        return json.loads(storage.read_text(path))
    except json.JSONDecodeError as exc:
        raise KorlmError(f"{path} is corrupt ({exc}); fix or delete it to resume") from None


def _local_copy(remote_dir: str, names: list[str]) -> str:
    local = tempfile.mkdtemp(prefix="korlm-state-")
    for name in names:
        with storage.open_file(storage.join(remote_dir, name), "rb") as src, \
                open(os.path.join(local, name), "wb") as dst:
            shutil.copyfileobj(src, dst)
    return local


def state_dir(output_dir: str, step: int) -> str:
    """Where the training state of ``step`` lives: ``state/step-NNNNNN/``."""
    return storage.join(output_dir, STATE_DIR, checkpoint_name(step))


def save_state(task, output_dir: str, state: dict[str, Any]) -> None:
    """``state/step-NNNNNN/``: the compiled task's weights file, which holds the optimizer
    variables (step counter, moments, accumulated gradients) and the dropout seed states
    too, plus ``state.json`` (step, data position, settings, the weights file's size).
    Written atomically under its own name; only then are the older states deleted, so a
    save killed at any point leaves the previous state whole."""
    target = state_dir(output_dir, int(state["step"]))
    # inside korlm's own run folder: a half-uploaded state of the same step is replaced
    with storage.atomic_output_dir(target, "pretrain-state", overwrite=True,
                                   replace_any=True) as staging:
        weights = os.path.join(staging, STATE_WEIGHTS)
        task.save_weights(weights)
        seeds = _seed_states(task)
        with open(os.path.join(staging, STATE_JSON), "w", encoding="utf-8") as f:
            json.dump({**state, "seed_states": seeds, "files": {STATE_WEIGHTS: os.path.getsize(weights)}},
                      f, indent=2, sort_keys=True)
    _drop_other_states(output_dir, keep=checkpoint_name(int(state["step"])))


def _is_staging(name: str, stem: str) -> bool:
    # storage.atomic_output_dir's local staging directory: ".<name>.tmp-<hex>"
    return name.startswith(f".{stem}") and ".tmp-" in name


def _drop_other_states(output_dir: str, keep: str) -> None:
    """After a state is saved: every other state korlm wrote in this run dir (older ones,
    half-written newer ones, the single ``state/`` of runs before ``state/step-N/``, and
    staging directories left by killed saves) is deleted."""
    root = storage.join(output_dir, STATE_DIR)
    for name in (STATE_JSON, STATE_WEIGHTS, "_SUCCESS"):  # the old layout; state.json first
        if storage.exists(storage.join(root, name)):
            storage.remove_tree(storage.join(root, name))
    for name in storage.listdir(root):
        if name != keep and (step_of(name) is not None or _is_staging(name, STEP_PREFIX)):
            storage.remove_tree(storage.join(root, name))
    if not storage.is_remote(output_dir):  # the old layout's staging, beside state/
        for name in storage.listdir(output_dir):
            if _is_staging(name, STATE_DIR):
                storage.remove_tree(storage.join(output_dir, name))




def _file_size(path: str) -> int:
    with storage.open_file(path, "rb") as f:
        return f.seek(0, 2)


@dataclasses.dataclass
class SavedState:
    """A training state found in a run dir: ``state`` (``state.json``) and ``path`` when
    it is complete, else ``problem`` says why it cannot be resumed from."""

    path: str
    step: int | None
    state: dict[str, Any] | None = None
    problem: str | None = None


def _inspect_state(path: str, step: int | None) -> SavedState:
    found = SavedState(path, step)
    json_path = storage.join(path, STATE_JSON)
    if not storage.exists(json_path):
        found.problem = f"no {STATE_JSON} (its save did not finish)"
        return found
    try:
        state = json.loads(storage.read_text(json_path))
    except json.JSONDecodeError as exc:
        found.problem = f"{STATE_JSON} is corrupt ({exc})"
        return found
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        found.problem = f"{STATE_JSON} is corrupt (no step)"
        return found
    if step is not None and state["step"] != step:
        found.problem = f"{STATE_JSON} says step {state['step']}"
        return found
    found.step = state["step"]
    weights = storage.join(path, STATE_WEIGHTS)
    if not storage.exists(weights):
        found.problem = f"no {STATE_WEIGHTS} (its save did not finish)"
        return found
    if storage.is_remote(path) and not storage.exists(storage.join(path, "_SUCCESS")):
        found.problem = "no _SUCCESS marker (its upload did not finish)"
        return found
    expected = (state.get("files") or {}).get(STATE_WEIGHTS)
    if expected is not None and _file_size(weights) != int(expected):
        found.problem = (f"{STATE_WEIGHTS} has {_file_size(weights)} bytes, {STATE_JSON} "
                         f"records {expected} (truncated or torn)")
        return found
    found.state = state
    return found


def saved_states(output_dir: str) -> list[SavedState]:
    """Every training state in a run dir, oldest first, complete or not: ``state/step-N/``
    directories, the single ``state/`` of older runs, and the staging directories of
    killed saves (never complete)."""
    root = storage.join(output_dir, STATE_DIR)
    found: list[SavedState] = []
    if not storage.isdir(root):
        return found
    if storage.exists(storage.join(root, STATE_JSON)):  # a run from before state/step-N/
        found.append(_inspect_state(root, None))
    for name in storage.listdir(root):
        step = step_of(name)
        if step is not None:
            found.append(_inspect_state(storage.join(root, name), step))
        elif _is_staging(name, STEP_PREFIX):
            found.append(SavedState(storage.join(root, name), None,
                                    problem="a staging directory left by a killed save"))
    return sorted(found, key=lambda s: -1 if s.step is None else s.step)


def find_state(output_dir: str) -> tuple[SavedState | None, list[SavedState]]:
    """``(newest complete state or None, the states skipped as incomplete)``."""
    found = saved_states(output_dir)
    complete = [s for s in found if s.problem is None]
    return (complete[-1] if complete else None), [s for s in found if s.problem is not None]


def load_state(output_dir: str) -> dict[str, Any] | None:
    """``state.json`` of the newest complete training state, or None."""
    chosen, _ = find_state(output_dir)
    return None if chosen is None else chosen.state


def newer_checkpoints(output_dir: str, step: int) -> list[tuple[str, bool]]:
    """``(name, complete)`` of the checkpoint directories on disk past ``step``, oldest
    first (a checkpoint is published before the state that follows it: a kill or a failed
    state save in between leaves one)."""
    root = storage.join(output_dir, CHECKPOINTS_DIR)
    if not storage.isdir(root):
        return []
    found = []
    for name in storage.listdir(root):
        n = step_of(name)
        if n is not None and n > step:
            path = storage.join(root, name)
            complete = storage.exists(storage.join(path, CHECKPOINT_INFO)) and (
                not storage.is_remote(path) or storage.exists(storage.join(path, "_SUCCESS")))
            found.append((n, name, complete))
    return [(name, complete) for _, name, complete in sorted(found)]


def choose_resume_state(output_dir: str) -> tuple[dict[str, Any] | None, str | None]:
    """The state a (re-)run starts from, with one line printed for each thing skipped and
    for a checkpoint newer than the state: ``(state.json, its directory)``, or
    ``(None, None)`` to start at step 0.

    The newest *complete* state wins; half-written ones (a staging directory, a missing or
    truncated file, no ``_SUCCESS`` on an object store) are skipped. A checkpoint newer
    than that state holds the weights but not the optimizer (moments, step counter,
    accumulated gradients) nor the dropout seed states, so training resumes from the
    state and re-trains the steps up to it, writing that checkpoint again: starting from
    its weights with a fresh optimizer would break the deterministic-resume guarantee (a
    killed and resumed run ends bit-identical to an uninterrupted one) and, with Adam's
    moments reset to zero, take outsized first updates. At most ``checkpoint_every`` steps
    are re-trained. With no complete state left while ``checkpoints.json`` lists
    checkpoints (a damaged run dir, not a kill), starting over would throw their training
    away: that is refused.
    """
    chosen, skipped = find_state(output_dir)
    for s in skipped:
        print(f"skipping training state {s.path}: {s.problem}", flush=True)
    listed = read_checkpoints(output_dir)
    if chosen is None and listed:
        last = max(int(c["step"]) for c in listed)
        why = "; ".join(f"{s.path}: {s.problem}" for s in skipped) or f"no {STATE_DIR}/"
        raise KorlmError(f"cannot resume {output_dir}: checkpoints.json lists checkpoints up to "
                         f"step {last} but no complete training state is left ({why}); restore "
                         "the state or use a new --output")
    step = 0 if chosen is None else int(chosen.step)
    newer = newer_checkpoints(output_dir, step)
    for name, complete in newer:
        if not complete:
            print(f"checkpoint {name} is incomplete (its save did not finish): it is written "
                  "again when training reaches its step", flush=True)
    complete = [name for name, ok in newer if ok]
    if complete:
        last = step_of(complete[-1])
        which = (f"the training state at step {step} ({chosen.path})" if chosen is not None
                 else "step 0 (no training state was saved)")
        print(f"resuming from {which}: checkpoint {complete[-1]} is newer but holds no "
              f"optimizer state, so steps {step + 1}-{last} are retrained and "
              f"{', '.join(complete)} written again", flush=True)
    return (None, None) if chosen is None else (chosen.state, chosen.path)


def _seed_generators(task) -> list:
    """The dropout layers' seed generators, in layer order (their states move every step;
    a deterministic resume restores them)."""
    import keras

    found = []
    for layer in task._flatten_layers():
        for value in vars(layer).values():
            if isinstance(value, keras.random.SeedGenerator) and value not in found:
                found.append(value)
    return found


def _seed_states(task) -> list[list[int]]:
    return [[int(x) for x in g.state.numpy().reshape(-1)] for g in _seed_generators(task)]


def restore_state(task, state_dir: str, step: int, seed_states: list | None = None) -> None:
    """Load a training state directory (:func:`choose_resume_state`) into a compiled task
    whose optimizer is built."""
    if not storage.exists(storage.join(state_dir, STATE_WEIGHTS)):
        raise KorlmError(f"cannot resume: {state_dir} has state.json but no {STATE_WEIGHTS}; "
                         "use a new --output")
    local = _local_copy(state_dir, [STATE_WEIGHTS]) if storage.is_remote(state_dir) else state_dir
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            task.load_weights(os.path.join(local, STATE_WEIGHTS))
        # Keras only warns when it skips a mismatched optimizer; resuming without it
        # would silently restart the schedule and moments.
        skipped = [str(w.message) for w in caught if "Skipping variable loading" in str(w.message)]
        if skipped:
            raise KorlmError(f"cannot resume from {state_dir}: {skipped[0].strip()}")
    except (ValueError, OSError, KeyError, RuntimeError) as exc:  # h5py: RuntimeError too
        raise KorlmError(f"cannot resume from {state_dir} (corrupt or incompatible: "
                         f"{str(exc).splitlines()[0][:200]}); use a new --output") from None
    finally:
        if local != state_dir:
            shutil.rmtree(local, ignore_errors=True)
    restored = int(task.optimizer.iterations.numpy())
    if restored != step:
        raise KorlmError(f"{state_dir} is inconsistent: state.json says step {step}, the "
                         f"optimizer is at step {restored}; use a new --output")
    generators = _seed_generators(task)
    if seed_states and len(seed_states) == len(generators):
        import numpy as np

        for generator, value in zip(generators, seed_states, strict=True):
            generator.state.assign(
                np.asarray(value, dtype=generator.state.dtype).reshape(generator.state.shape))


@contextlib.contextmanager
def optimizer_detached(task):
    # A compiled task's weights file carries the optimizer (2x the model); checkpoints
    # are for evaluation and export, the optimizer lives in state/.
    optimizer = task.optimizer
    task.optimizer = None
    try:
        yield task
    finally:
        task.optimizer = optimizer


class TrainLog:
    """``train_log.jsonl``: appended locally, rewritten whole for object stores."""

    def __init__(self, output_dir: str, keep_until_step: int):
        self.path = storage.join(output_dir, TRAIN_LOG)
        self.records: list[dict] = []
        if storage.exists(self.path):
            for line in storage.read_text(self.path).splitlines():
                if line.strip():
                    record = json.loads(line)
                    if record.get("step", 0) <= keep_until_step:
                        self.records.append(record)
        self.flush()

    def append(self, record: dict) -> None:
        self.records.append(record)
        if not storage.is_remote(self.path):
            with storage.open_file(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def flush(self) -> None:
        text = "".join(json.dumps(r) + "\n" for r in self.records)
        _write_text_atomic(self.path, text)


def final_metrics(output_dir: str) -> dict[str, float]:
    """The run's closing figures from ``train_log.jsonl`` under stable names:
    ``final_loss``, ``final_<accuracy>`` (``mlm_accuracy`` or ``token_accuracy``),
    ``final_tokens_per_second`` (the last logged window) and ``mean_tokens_per_second``
    (all windows but the first, which pays for graph tracing, when there are several),
    ``final_mfu``, ``final_heldout_loss`` and ``final_heldout_accuracy`` where logged, and
    ``steps``; empty when nothing was logged."""
    path = storage.join(output_dir, TRAIN_LOG)
    if not storage.exists(path):
        return {}
    records = [json.loads(line) for line in storage.read_text(path).splitlines() if line.strip()]
    if not records:
        return {}
    last = records[-1]
    out = {"steps": float(last["step"]), "final_loss": float(last["loss"])}
    for key in ("mlm_accuracy", "token_accuracy", "nsp_accuracy", "mfu", "heldout_loss",
                "heldout_accuracy"):
        if key in last:
            out[f"final_{key}"] = float(last[key])
    rates = [float(r["tokens_per_second"]) for r in records if "tokens_per_second" in r]
    if rates:
        out["final_tokens_per_second"] = rates[-1]
        steady = rates[1:] or rates
        out["mean_tokens_per_second"] = round(sum(steady) / len(steady), 1)
    return out


def prune_checkpoints(checkpoints: list[dict], *, keep_last: int | None,
                      keep_every: int | None, final_step: int) -> tuple[list[dict], list[dict]]:
    """(kept, dropped): the last ``keep_last`` checkpoints, every checkpoint whose step is
    a multiple of ``keep_every`` (the ones evaluated) and the final one are kept;
    ``keep_last`` None keeps everything."""
    if keep_last is None:
        return list(checkpoints), []
    ordered = sorted(checkpoints, key=lambda c: c["step"])
    recent = {c["step"] for c in ordered[-keep_last:]} if keep_last > 0 else set()
    kept, dropped = [], []
    for c in ordered:
        keep = (c["step"] in recent or c["step"] == final_step
                or (keep_every and c["step"] % keep_every == 0))
        (kept if keep else dropped).append(c)
    return kept, dropped
