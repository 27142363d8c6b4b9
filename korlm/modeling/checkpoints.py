"""The checkpoint format and the run layout, in one place: shared by pretrain (writes),
evaluate, finetune, tune and export (read).

A pretraining run folder holds ``checkpoints/step-NNNNNN/`` (:func:`checkpoint_path`,
:func:`checkpoint_name`) and ``checkpoints.json``, a list of ``{"step": N, "uri": ...}``
(:func:`select_checkpoint` picks one). A korlm checkpoint is a KerasHub preset directory
written by ``Task.save_to_preset`` (``config.json``, ``model.weights.h5``, ``task.json``,
``task.weights.h5``, ``metadata.json``; ELECTRA, which KerasHub has no task for: the
discriminator backbone's preset plus ``electra.json`` and ``electra_heads.npz``, see
``korlm.modeling.electra``) plus ``korlm_checkpoint.json`` (step, family,
size, vocab size, sequence length, vocab hash) and ``tokenizer/``, a copy of the tokenizer
directory it was trained with (``korlm_checkpoint.json``: ``tokenizer`` names it,
``tokenizer_vocab_hash`` is its :func:`korlm.tokenizer.files.vocab_hash`). A checkpoint
is thus self-contained: evaluate, export, finetune and tune take their tokenizer from it
(:func:`resolve_tokenizer`). Anything KerasHub can load, korlm can evaluate and export; a
korlm Hugging Face export reads back through ``korlm.modeling.hf_import``.

Heavy imports (keras, keras_hub) happen inside functions so that importing this module
is cheap for the CLI's ``--help`` and for pipeline compilation.
"""

from __future__ import annotations

import json
import os
from typing import Any

from korlm import storage
from korlm.errors import KorlmError
from korlm.modeling.build import (
    MASKED_LM_FAMILIES,
    after_build,
    backbone_class,
    check_family,
    task_class,
)
from korlm.tokenizer.files import (
    TOKENIZER_DIR_FILES,
    TOKENIZER_FILE,
    hashes_match,
    short_hash,
    vocab_hash,
)

CHECKPOINTS_DIR = "checkpoints"
CHECKPOINTS_JSON = "checkpoints.json"
CHECKPOINT_INFO = "korlm_checkpoint.json"
NSP_HEAD = "nsp_head.npz"
# The checkpoint's copy of its tokenizer directory (a subdirectory: a tokenizer.json at
# the top of a KerasHub preset would be read as a KerasHub tokenizer config).
CHECKPOINT_TOKENIZER = "tokenizer"
STEP_PREFIX = "step-"


def checkpoint_name(step: int) -> str:
    """``step-NNNNNN``: the folder name of a step's checkpoint (and of its training state)."""
    return f"{STEP_PREFIX}{step:06d}"


def step_of(name: str) -> int | None:
    """The step a ``step-NNNNNN`` folder name stands for, or None for any other name."""
    if name.startswith(STEP_PREFIX) and name[len(STEP_PREFIX):].isdigit():
        return int(name[len(STEP_PREFIX):])
    return None


def checkpoint_path(run_dir: str, step: int) -> str:
    """``RUN/checkpoints/step-NNNNNN``: where a pretraining run writes step ``step``."""
    return storage.join(run_dir, CHECKPOINTS_DIR, checkpoint_name(step))


def read_tokenizer_files(tokenizer_dir: str) -> dict[str, bytes]:
    """The files of a tokenizer directory that a checkpoint carries (name -> bytes; the
    ones of ``korlm.tokenizer.files.TOKENIZER_DIR_FILES`` present, ``tokenizer.json`` required).
    Read once per run, written into every checkpoint."""
    files = {}
    for name in TOKENIZER_DIR_FILES:
        path = storage.join(tokenizer_dir, name)
        if storage.exists(path):
            with storage.open_file(path, "rb") as f:
                files[name] = f.read()
    if TOKENIZER_FILE not in files:
        raise KorlmError(f"{tokenizer_dir} is not a tokenizer directory (no {TOKENIZER_FILE}); "
                         "pass the output directory of `korlm vocab`")
    return files


def save_checkpoint(task, checkpoint_dir: str, info: dict[str, Any], nsp_head=None,
                    tokenizer_files: dict[str, bytes] | None = None) -> None:
    """Write a checkpoint directory atomically (a killed save leaves no half checkpoint).
    ``nsp_head``: the next-sentence layer, saved beside the preset as ``nsp_head.npz``
    (``kernel`` [hidden, 2], ``bias`` [2]) for a ``BertForPreTraining`` export.
    ``tokenizer_files`` (:func:`read_tokenizer_files`): written to ``tokenizer/`` inside
    the same staging directory, so no checkpoint is published without its tokenizer;
    ``korlm_checkpoint.json`` records the copy's vocab hash."""
    info = dict(info)
    # inside korlm's own run folder: a resume from an older state rewrites a checkpoint
    with storage.atomic_output_dir(checkpoint_dir, "checkpoint", overwrite=True,
                                   replace_any=True) as staging:
        task.save_to_preset(staging)
        _variable_dtype_configs(staging)
        if nsp_head is not None:
            import numpy as np

            np.savez(os.path.join(staging, NSP_HEAD), kernel=np.asarray(nsp_head.kernel.numpy()),
                     bias=np.asarray(nsp_head.bias.numpy()))
        if tokenizer_files:
            tokenizer_dir = os.path.join(staging, CHECKPOINT_TOKENIZER)
            os.makedirs(tokenizer_dir)
            for name, data in tokenizer_files.items():
                with open(os.path.join(tokenizer_dir, name), "wb") as f:
                    f.write(data)
            # Hashed from the copy as written: what a reader will find.
            info.update(tokenizer=CHECKPOINT_TOKENIZER, tokenizer_vocab_hash=vocab_hash(tokenizer_dir))
        with open(os.path.join(staging, CHECKPOINT_INFO), "w", encoding="utf-8") as f:
            json.dump(info, f, indent=2, sort_keys=True)


def _variable_dtype_configs(preset_dir: str) -> None:
    """A model trained under a mixed precision policy (``mixed_bfloat16`` on a TPU) keeps
    float32 variables, and its checkpoint is written as float32: KerasHub 0.32's
    ``from_preset`` fails on a saved ``mixed_*`` policy ("Invalid dtype: mixed_bfloat16"),
    and the reader's own policy decides how it computes."""
    def walk(node):
        if isinstance(node, dict):
            name = node.get("config", {}).get("name") if node.get("class_name") == "DTypePolicy" else None
            if isinstance(name, str) and name.startswith("mixed_"):
                node["config"]["name"] = "float32"
                return True
            return any([walk(v) for v in node.values()])
        if isinstance(node, list):
            return any([walk(v) for v in node])
        return False

    for name in sorted(os.listdir(preset_dir)):
        if name.endswith(".json"):
            path = os.path.join(preset_dir, name)
            with open(path, encoding="utf-8") as f:
                config = json.load(f)
            if walk(config):
                with open(path, "w", encoding="utf-8") as f:
                    json.dump(config, f, indent=4)


def checkpoint_info(checkpoint_dir: str) -> dict[str, Any]:
    path = storage.join(checkpoint_dir, CHECKPOINT_INFO)
    if not storage.exists(path):
        from korlm.modeling import hf_import

        if hf_import.is_export(checkpoint_dir):  # a korlm (or compatible) Hugging Face export
            return hf_import.export_info(checkpoint_dir)
        raise KorlmError(f"{checkpoint_dir} is not a korlm checkpoint (no {CHECKPOINT_INFO})")
    try:
        info = json.loads(storage.read_text(path))
    except json.JSONDecodeError as exc:
        raise KorlmError(f"{path} is corrupt (not JSON: {exc})") from None
    check_family(info.get("model"))
    return info


def checkpoint_tokenizer(checkpoint_dir: str, info: dict[str, Any] | None = None) -> str | None:
    """The tokenizer directory a checkpoint carries, or None (a checkpoint written before
    checkpoints held one). A Hugging Face export holds its tokenizer files itself."""
    info = checkpoint_info(checkpoint_dir) if info is None else info
    if info.get("source") == "huggingface-export":
        own = checkpoint_dir
    else:
        own = storage.join(checkpoint_dir, info.get("tokenizer") or CHECKPOINT_TOKENIZER)
    return own if storage.exists(storage.join(own, TOKENIZER_FILE)) else None


def resolve_tokenizer(checkpoint_dir: str, tokenizer_dir: str | None = None,
                      info: dict[str, Any] | None = None) -> str:
    """The tokenizer directory to use with a checkpoint: the one for every command and
    component that reads a checkpoint with a tokenizer (evaluate, export, finetune, tune).

    ``tokenizer_dir`` given (``--tokenizer``, or a pipeline's vocab artifact): it is an
    override, used when its vocab hash is the one the checkpoint records (refused in one
    line naming both hashes otherwise; a checkpoint that records none is accepted with a
    warning). Not given: the checkpoint's own copy (``tokenizer/``; an HF export's own
    files); a checkpoint without one (written before checkpoints carried their
    tokenizer) is a one-line error asking for ``--tokenizer``."""
    info = checkpoint_info(checkpoint_dir) if info is None else info
    own = checkpoint_tokenizer(checkpoint_dir, info)
    if not tokenizer_dir:
        if own is None:
            raise KorlmError(f"checkpoint {checkpoint_dir} carries no tokenizer (written before "
                             "checkpoints held theirs); pass --tokenizer DIR, the tokenizer it "
                             "was trained with (the vocab step's output)")
        return own
    if not storage.exists(storage.join(tokenizer_dir, TOKENIZER_FILE)):
        raise KorlmError(f"tokenizer {tokenizer_dir} is not a tokenizer directory (no "
                         f"{TOKENIZER_FILE}); pass the output directory of `korlm vocab`"
                         + (" or leave out --tokenizer to use the checkpoint's own" if own else ""))
    recorded = info.get("tokenizer_vocab_hash") or info.get("vocab_hash")
    if not recorded and own is not None:
        recorded = vocab_hash(own)
    if not recorded:
        print(f"WARNING: checkpoint {checkpoint_dir} records no vocab hash: cannot check that "
              f"tokenizer {tokenizer_dir} is the one it was trained with", flush=True)
        return tokenizer_dir
    given = vocab_hash(tokenizer_dir)
    if not hashes_match(recorded, given):
        hint = ("leave out --tokenizer to use the checkpoint's own" if own
                else "pass the tokenizer it was trained with")
        raise KorlmError(f"tokenizer {tokenizer_dir} is not the vocabulary checkpoint "
                         f"{checkpoint_dir} was trained with (vocab hash {short_hash(given)}, "
                         f"checkpoint {short_hash(recorded)}); {hint}")
    return tokenizer_dir


def _from_preset(cls, checkpoint_dir: str, **kwargs):
    try:
        return cls.from_preset(checkpoint_dir, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        # A truncated weights file or a missing config: name the checkpoint, not h5py.
        raise KorlmError(f"checkpoint {checkpoint_dir} cannot be loaded "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None


def load_pretraining_task(checkpoint_dir: str):
    """The checkpoint's pretraining task with its trained weights."""
    info = checkpoint_info(checkpoint_dir)
    if info.get("source") == "huggingface-export":
        raise KorlmError(f"{checkpoint_dir} is a Hugging Face export (its backbone can be "
                         "fine-tuned or evaluated); pretraining heads are read from korlm "
                         "checkpoints only")
    model = info["model"]
    if model == "electra":  # KerasHub has no ELECTRA task: the discriminator + korlm's heads
        from korlm.modeling.electra import load_electra

        return load_electra(checkpoint_dir, load_backbone(checkpoint_dir))
    task = _from_preset(task_class(model), checkpoint_dir, load_weights=True)
    return after_build(model, task)


def load_masked_lm(checkpoint_dir: str):
    model = checkpoint_info(checkpoint_dir)["model"]
    if model not in MASKED_LM_FAMILIES:
        raise KorlmError(f"{checkpoint_dir} holds a {model} model, not a masked LM")
    return load_pretraining_task(checkpoint_dir)


def load_backbone(checkpoint_dir: str, load_weights: bool = True, dropout: float | None = None):
    """The checkpoint's backbone; ``load_weights=False`` gives the same architecture
    freshly initialised (the random-init baseline). ``dropout``: the backbone's dropout
    for what follows (fine-tuning: ``evaluate.dropout``) instead of the one its config
    records (the pretraining value); None keeps the recorded one."""
    info = checkpoint_info(checkpoint_dir)
    if info.get("source") == "huggingface-export":
        from korlm.modeling import hf_import

        backbone = hf_import.load_backbone(checkpoint_dir, load_weights=load_weights)
    else:
        backbone = _from_preset(backbone_class(info["model"]), checkpoint_dir,
                                load_weights=load_weights)
    return backbone if dropout is None else with_dropout(backbone, dropout)


def with_dropout(backbone, dropout: float):
    """``backbone`` with every dropout rate set to ``dropout``: the same architecture
    rebuilt from its config with the new rate, holding the same weights (KerasHub fixes
    the rates of its layers when it builds them). The backbone itself when its rate is
    already ``dropout``."""
    if not 0 <= dropout < 1:
        raise KorlmError(f"dropout must be in [0, 1), got {dropout}")
    config = backbone.get_config()
    if "dropout" not in config:
        raise KorlmError(f"{type(backbone).__name__} has no dropout setting to change")
    if float(config["dropout"]) == float(dropout):
        return backbone
    rebuilt = type(backbone).from_config({**config, "dropout": float(dropout)})
    rebuilt.set_weights(backbone.get_weights())
    return rebuilt


SELECTION_STRATEGIES = ("last", "first", "step:N")


# --------------------------------------------------------------------------- selection


def _checkpoint_uri(run_dir: str, uri: str) -> str:
    if storage.is_remote(uri) or os.path.isabs(uri):
        return uri
    return storage.join(run_dir, uri)


def select_checkpoint(run_dir: str, strategy: str = "last") -> str:
    """The checkpoint directory of a pretraining run chosen by ``strategy``.

    ``run_dir/checkpoints.json`` lists ``{"step": N, "uri": ...}``. Strategies: ``last``
    (highest step), ``first`` (lowest step), ``step:N`` (exactly step N). A relative
    ``uri`` is resolved against ``run_dir``.
    """
    path = storage.join(run_dir, CHECKPOINTS_JSON)
    if not storage.exists(path):
        raise KorlmError(f"{run_dir} is not a pretraining run (no {CHECKPOINTS_JSON})")
    try:
        entries = json.loads(storage.read_text(path))
    except json.JSONDecodeError as exc:
        raise KorlmError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(entries, list) or not entries:
        raise KorlmError(f"{path} lists no checkpoints")
    for entry in entries:
        if not isinstance(entry, dict) or "step" not in entry or "uri" not in entry:
            raise KorlmError(f"{path}: every entry needs 'step' and 'uri', got {entry!r}")

    if strategy == "last":
        chosen = max(entries, key=lambda e: int(e["step"]))
    elif strategy == "first":
        chosen = min(entries, key=lambda e: int(e["step"]))
    elif strategy.startswith("step:"):
        try:
            step = int(strategy.split(":", 1)[1])
        except ValueError:
            raise KorlmError(f"bad checkpoint strategy {strategy!r}; use step:N with an integer N") from None
        matches = [e for e in entries if int(e["step"]) == step]
        if not matches:
            steps = ", ".join(str(e["step"]) for e in sorted(entries, key=lambda e: int(e["step"])))
            raise KorlmError(f"no checkpoint at step {step} in {path}; steps: {steps}")
        chosen = matches[-1]
    else:
        raise KorlmError(
            f"unknown checkpoint strategy {strategy!r}; choose one of {', '.join(SELECTION_STRATEGIES)}"
        )
    return _checkpoint_uri(run_dir, str(chosen["uri"]))


def resolve_checkpoint(path: str, strategy: str = "last") -> str:
    """The checkpoint ``strategy`` selects when ``path`` is a pretraining run (it has
    ``checkpoints.json``); otherwise ``path`` itself (a checkpoint or an HF export)."""
    if storage.exists(storage.join(path, CHECKPOINTS_JSON)):
        return select_checkpoint(path, strategy)
    return path


def run_checkpoint(run_dir: str, step: int) -> str:
    """Checkpoint ``step`` of the pretraining run ``run_dir``; step 0: its last one."""
    if step <= 0:
        return select_checkpoint(run_dir, "last")
    return checkpoint_path(run_dir, step)
