"""Model construction and the checkpoint format, shared by pretrain, evaluate and export.

Three families, each a KerasHub backbone + pretraining task (keras-hub composes them;
korlm writes no layers of its own):

| family  | backbone          | pretraining task   | objective                              |
|---------|-------------------|--------------------|----------------------------------------|
| bert    | ``BertBackbone``    | ``BertMaskedLM``     | masked LM (segment ids, pooler)         |
| roberta | ``RobertaBackbone`` | ``RobertaMaskedLM``  | masked LM (no segment ids, no pooler)   |
| bart    | ``BartBackbone``    | ``BartSeq2SeqLM``    | denoising seq2seq (text infilling)     |

A korlm checkpoint is a KerasHub preset directory written by ``Task.save_to_preset``
(``config.json``, ``model.weights.h5``, ``task.json``, ``task.weights.h5``,
``metadata.json``) plus ``korlm_checkpoint.json`` (step, family, size, vocab size,
sequence length, vocab hash) and ``tokenizer/``, a copy of the tokenizer directory it
was trained with (``korlm_checkpoint.json``: ``tokenizer`` names it, ``tokenizer_vocab_hash``
is its :func:`korlm.vocab.vocab_hash`). A checkpoint is thus self-contained: evaluate,
export, finetune and tune take their tokenizer from it (:func:`resolve_tokenizer`).
Anything KerasHub can load, korlm can evaluate and export.

Heavy imports (keras, keras_hub) happen inside functions so that importing this module
is cheap for the CLI's ``--help`` and for pipeline compilation.
"""

from __future__ import annotations

import json
import os
from typing import Any

from korlm import storage
from korlm.errors import KorlmError
from korlm.presets import MODEL_FAMILIES, model_config
from korlm.tokenizer.files import (
    TOKENIZER_DIR_FILES,
    TOKENIZER_FILE,
    hashes_match,
    short_hash,
    vocab_hash,
)

CHECKPOINT_INFO = "korlm_checkpoint.json"
NSP_HEAD = "nsp_head.npz"
# The checkpoint's copy of its tokenizer directory (a subdirectory: a tokenizer.json at
# the top of a KerasHub preset would be read as a KerasHub tokenizer config).
CHECKPOINT_TOKENIZER = "tokenizer"
BUILT_FAMILIES = ("bert", "roberta", "bart")
MASKED_LM_FAMILIES = ("bert", "roberta")
# KerasHub class names per family: backbone, pretraining task.
_CLASSES = {
    "bert": ("BertBackbone", "BertMaskedLM"),
    "roberta": ("RobertaBackbone", "RobertaMaskedLM"),
    "bart": ("BartBackbone", "BartSeq2SeqLM"),
}


def _keras():
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import keras_hub

    return keras, keras_hub


def check_family(model: str) -> None:
    if model not in MODEL_FAMILIES:
        raise KorlmError(f"unknown model {model!r}; choose one of {', '.join(MODEL_FAMILIES)}")


def objective_of(model: str) -> str:
    """``mlm`` for the encoder families, ``bart`` (denoising seq2seq) for BART."""
    check_family(model)
    return "bart" if model == "bart" else "mlm"


def uses_segment_ids(model: str) -> bool:
    """Only BERT has token-type (segment) embeddings."""
    return model == "bert"


def _backbone_class(model: str):
    check_family(model)
    return getattr(_keras()[1].models, _CLASSES[model][0])


def _task_class(model: str):
    check_family(model)
    return getattr(_keras()[1].models, _CLASSES[model][1])


def _match_hf_bert_head(task) -> None:
    # KerasHub's BERT encoder uses tanh-approximated GELU and LayerNorm epsilon 1e-12,
    # but its MLM head uses exact GELU and epsilon 1e-5; Hugging Face BERT has one
    # `hidden_act` and one `layer_norm_eps` for all layers. Using the encoder's values in
    # the head makes the exported model compute exactly what was trained (max logit
    # difference ~2e-6 instead of ~2e-4). The head is rebuilt from code on load, so
    # this runs on every build and load. (RoBERTa and BART use exact GELU and 1e-5
    # everywhere, as Hugging Face does: nothing to match.)
    from keras_hub.src.models.bert.bert_backbone import gelu_approximate

    head = task.masked_lm_head
    head._intermediate_dense.activation = gelu_approximate
    head.intermediate_activation = gelu_approximate
    head._intermediate_layer_norm.epsilon = task.backbone.embeddings_layer_norm.epsilon


def _after_build(model: str, task):
    if model == "bert":
        _match_hf_bert_head(task)
    return task


def build_backbone(model: str, size: str, vocab_size: int, max_seq_length: int,
                   dropout: float = 0.1):
    """A freshly initialised backbone of ``model`` at ``size`` (``korlm.presets``; BART's
    encoder and decoder each get half the size's layers)."""
    return _backbone_class(model)(
        vocabulary_size=vocab_size,
        max_sequence_length=max_seq_length,
        dropout=dropout,
        **model_config(model, size),
    )


def build_pretraining_task(model: str, size: str, vocab_size: int, max_seq_length: int,
                           dropout: float = 0.1):
    """A freshly initialised pretraining task (backbone + LM head), no preprocessor:
    a masked LM for bert/roberta, ``BartSeq2SeqLM`` for bart."""
    backbone = build_backbone(model, size, vocab_size, max_seq_length, dropout)
    return _after_build(model, _task_class(model)(backbone, preprocessor=None))


def build_masked_lm(model: str, size: str, vocab_size: int, max_seq_length: int,
                    dropout: float = 0.1):
    """A freshly initialised masked-LM task (bert or roberta)."""
    if model not in MASKED_LM_FAMILIES:
        raise KorlmError(f"{model} is not a masked LM; use build_pretraining_task")
    return build_pretraining_task(model, size, vocab_size, max_seq_length, dropout)


def add_next_sentence_head(task):
    """BERT's two pretraining objectives in one model (Hugging Face ``BertForPreTraining``):
    the ``BertMaskedLM`` task's backbone and MLM head, plus a next-sentence classifier
    (dense, 2 logits; 1 = segment B is random) over the pooled [CLS] output. KerasHub has
    no such task; this composes its layers, so the MLM task ``task`` shares every weight
    and is what checkpoints save. Returns ``(model, nsp_layer)``; the model's outputs are
    ``{"mlm": ..., "nsp": ...}``."""
    keras, _ = _keras()
    backbone = task.backbone
    inputs = dict(task.input)
    outputs = backbone({name: inputs[name] for name in backbone.input})
    mlm = task.masked_lm_head(outputs["sequence_output"], inputs["mask_positions"])
    head = keras.layers.Dense(2, kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
                              dtype=backbone.dtype_policy, name="nsp_head")
    nsp = head(outputs["pooled_output"])
    return keras.Model(inputs, {"mlm": mlm, "nsp": nsp}, name="bert_pretraining"), head


def parameter_count(model: str, size: str, vocab_size: int, max_seq_length: int) -> int:
    """Parameters of the pretraining task (built and counted, not estimated)."""
    return int(build_pretraining_task(model, size, vocab_size, max_seq_length).count_params())


def read_tokenizer_files(tokenizer_dir: str) -> dict[str, bytes]:
    """The files of a tokenizer directory that a checkpoint carries (name -> bytes; the
    ones of ``korlm.vocab.TOKENIZER_DIR_FILES`` present, ``tokenizer.json`` required).
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


def checkpoint_info(checkpoint_dir: str) -> dict[str, Any]:
    path = storage.join(checkpoint_dir, CHECKPOINT_INFO)
    if not storage.exists(path):
        from korlm import hf_import

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
    task = _from_preset(_task_class(model), checkpoint_dir, load_weights=True)
    return _after_build(model, task)


def load_masked_lm(checkpoint_dir: str):
    model = checkpoint_info(checkpoint_dir)["model"]
    if model not in MASKED_LM_FAMILIES:
        raise KorlmError(f"{checkpoint_dir} holds a {model} model, not a masked LM")
    return load_pretraining_task(checkpoint_dir)


def load_backbone(checkpoint_dir: str, load_weights: bool = True):
    """The checkpoint's backbone; ``load_weights=False`` gives the same architecture
    freshly initialised (the random-init baseline)."""
    info = checkpoint_info(checkpoint_dir)
    if info.get("source") == "huggingface-export":
        from korlm import hf_import

        return hf_import.load_backbone(checkpoint_dir, load_weights=load_weights)
    return _from_preset(_backbone_class(info["model"]), checkpoint_dir, load_weights=load_weights)
