"""Read a korlm Hugging Face export back into the KerasHub backbone it came from.

``korlm export`` writes PyTorch-layout safetensors through the weight mappers of
:mod:`korlm.modeling.hf_mapping`. Loading runs the *same* mappers against a freshly built KerasHub
task of the architecture ``config.json`` describes, recording which Keras variable (and
which layout transform) each tensor name stands for, and inverts each transform (a
transpose, a reshape, leading zero rows of a position table). So export and import cannot
drift apart: a mapping added to the export is read back by construction.

The config is checked first: the config the export would write for the freshly built
model must equal the given one on every architecture key, so a model that KerasHub would
compute differently (another activation, LayerNorm epsilon, position offset) is refused
by name instead of loaded wrongly. Only the backbone is loaded (fine-tuning puts its own
head on top); a tensor a backbone variable needs and the file lacks is an error naming it.

Hub checkpoints that are not korlm exports may load too when their config matches what
KerasHub builds; anything else gets the same clear refusal.
"""

from __future__ import annotations

import json
import math
from typing import Any

from korlm import storage
from korlm.errors import KorlmError
from korlm.modeling.build import after_build, backbone_class, import_keras, task_class
from korlm.modeling.hf_mapping import CONFIG_FILE, HF_CONVERTERS, WEIGHTS_FILE

SOURCE = "huggingface-export"
FAMILIES = ("bert", "roberta", "bart", "electra")
# config.json keys that fix the computation (the rest are metadata: architectures,
# dtype, initializer ranges, dropout rates...).
_ARCHITECTURE_KEYS = {
    "bert": ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
             "intermediate_size", "hidden_act", "max_position_embeddings", "type_vocab_size",
             "layer_norm_eps", "position_embedding_type"),
    "roberta": ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size", "hidden_act", "max_position_embeddings",
                "layer_norm_eps", "pad_token_id"),
    "bart": ("vocab_size", "d_model", "encoder_layers", "decoder_layers",
             "encoder_attention_heads", "decoder_attention_heads", "encoder_ffn_dim",
             "decoder_ffn_dim", "activation_function", "max_position_embeddings",
             "scale_embedding", "decoder_start_token_id"),
    "electra": ("vocab_size", "embedding_size", "hidden_size", "num_hidden_layers",
                "num_attention_heads", "intermediate_size", "hidden_act",
                "max_position_embeddings", "type_vocab_size", "layer_norm_eps",
                "position_embedding_type"),
}
# Backbone weights an export does not carry: KerasHub's ElectraBackbone has a pooler that
# Hugging Face ELECTRA lacks (and ELECTRA never trains); it stays freshly initialised.
_NOT_EXPORTED = {"electra": ("pooled_dense",)}


def read_config(directory: str) -> dict[str, Any] | None:
    """``config.json`` of a Hugging Face model directory of a supported family, else None."""
    path = storage.join(directory, CONFIG_FILE)
    if not storage.exists(path):
        return None
    try:
        config = json.loads(storage.read_text(path))
    except json.JSONDecodeError as exc:
        raise KorlmError(f"{path} is corrupt (not JSON: {exc})") from None
    return config if config.get("model_type") in FAMILIES else None


def is_export(directory: str) -> bool:
    return read_config(directory) is not None


def _max_seq_length(config: dict[str, Any]) -> int:
    family = config["model_type"]
    positions = int(config["max_position_embeddings"])
    if family == "roberta":  # positions run from pad + 1 (korlm.modeling.hf_mapping's module docstring)
        return positions - int(config.get("pad_token_id", 1)) - 1
    return positions


def export_info(directory: str) -> dict[str, Any]:
    """What :func:`korlm.modeling.checkpoints.checkpoint_info` gives for a korlm checkpoint."""
    config = read_config(directory)
    if config is None:
        raise KorlmError(f"{directory} is neither a korlm checkpoint nor a Hugging Face "
                         f"BERT/RoBERTa/BART/ELECTRA model (no {CONFIG_FILE} with model_type "
                         f"{'/'.join(FAMILIES)})")
    return {"model": config["model_type"], "size": None,
            "vocab_size": int(config["vocab_size"]),
            "max_seq_length": _max_seq_length(config), "step": None, "vocab_hash": None,
            "source": SOURCE}


def _fresh_task(config: dict[str, Any]):
    """A KerasHub pretraining task with the architecture ``config`` describes."""
    family = config["model_type"]
    _, keras_hub = import_keras()
    if family == "electra":
        # The discriminator with its head; the generator built beside it (one small layer)
        # only completes korlm's ELECTRA model: import reads the backbone.
        from korlm.modeling.electra import build_electra

        backbone = backbone_class(family)(
            vocab_size=int(config["vocab_size"]), num_layers=config["num_hidden_layers"],
            num_heads=config["num_attention_heads"], hidden_dim=config["hidden_size"],
            embedding_dim=config["embedding_size"], intermediate_dim=config["intermediate_size"],
            dropout=float(config.get("hidden_dropout_prob", 0.1)),
            max_sequence_length=_max_seq_length(config),
            num_segments=int(config.get("type_vocab_size", 2)))
        return build_electra(None, int(config["vocab_size"]), _max_seq_length(config),
                             backbone=backbone, generator={"num_layers": 1, "hidden_dim": 64,
                                                           "num_heads": 1, "intermediate_dim": 256})
    if family == "bart":
        if config["encoder_layers"] != config["decoder_layers"]:
            raise KorlmError("KerasHub BART has as many decoder as encoder layers; "
                             f"config.json has {config['encoder_layers']} and "
                             f"{config['decoder_layers']}")
        dims = dict(num_layers=config["encoder_layers"],
                    num_heads=config["encoder_attention_heads"],
                    hidden_dim=config["d_model"], intermediate_dim=config["encoder_ffn_dim"],
                    dropout=float(config.get("dropout", 0.1)))
    else:
        dims = dict(num_layers=config["num_hidden_layers"],
                    num_heads=config["num_attention_heads"], hidden_dim=config["hidden_size"],
                    intermediate_dim=config["intermediate_size"],
                    dropout=float(config.get("hidden_dropout_prob", 0.1)))
    backbone = backbone_class(family)(
        vocabulary_size=int(config["vocab_size"]),
        max_sequence_length=_max_seq_length(config), **dims)
    return after_build(family, task_class(family)(backbone, preprocessor=None))


class _Slot:
    def __init__(self, variable, transform):
        self.variable, self.transform = variable, transform
        # the mappers size filler tensors from an untransformed one (word embeddings)
        self.shape = tuple(int(d) for d in variable.shape) if transform is None else None


class _Plan:
    """Stands in for :class:`korlm.modeling.hf_mapping._Weights`: records, for each tensor name, the
    Keras variable and the export transform instead of reading the value."""

    def __call__(self, variable, transform=None):
        return _Slot(variable, transform)

    def check_all_used(self) -> None:
        pass


def _special_ids(config: dict[str, Any]) -> dict[str, int]:
    pad = int(config.get("pad_token_id", 0))
    return {"pad": pad, "cls": int(config.get("bos_token_id", pad)),
            "sep": int(config.get("eos_token_id", pad))}


def _plan(family: str, task, config: dict[str, Any]) -> dict[str, Any]:
    state_dict, _ = HF_CONVERTERS[family]
    return state_dict(task, config, take=_Plan())


def _check_config(family: str, task, config: dict[str, Any], directory: str) -> None:
    _, hf_config = HF_CONVERTERS[family]
    ours = hf_config(task, _special_ids(config))
    for key in _ARCHITECTURE_KEYS[family]:
        given, built = config.get(key), ours.get(key)
        if isinstance(given, float) or isinstance(built, float):
            same = given is not None and built is not None and math.isclose(
                float(given), float(built), rel_tol=1e-6)
        else:
            same = given == built
        if not same:
            raise KorlmError(f"{directory}/{CONFIG_FILE}: {key} = {given!r}, but the KerasHub "
                             f"{family} korlm builds has {built!r}; this model cannot be "
                             "loaded exactly")


def _inverse(slot: _Slot, tensor, name: str):
    """The Keras variable's value from the exported tensor: the export transform applied
    to the variable's element indices (1-based; 0 = an inserted zero row) tells where
    each element went."""
    import numpy as np

    shape = tuple(int(d) for d in slot.variable.shape)
    tensor = np.asarray(tensor, dtype=np.float32)
    if slot.transform is None:
        if tensor.shape != shape:
            raise KorlmError(f"tensor {name} has shape {tensor.shape}, expected {shape}")
        return tensor
    size = int(np.prod(shape))
    index = np.asarray(slot.transform(np.arange(1, size + 1, dtype=np.int64).reshape(shape)))
    if index.shape != tensor.shape:
        raise KorlmError(f"tensor {name} has shape {tensor.shape}, expected {index.shape}")
    placed = index > 0
    if int(np.count_nonzero(placed)) != size:
        raise KorlmError(f"tensor {name}: cannot invert the export layout")
    value = np.empty(size, dtype=np.float32)
    value[index[placed].astype(np.int64) - 1] = tensor[placed]
    return value.reshape(shape)


def load_backbone(directory: str, load_weights: bool = True):
    """The KerasHub backbone of a Hugging Face BERT/RoBERTa/BART/ELECTRA directory; with
    ``load_weights=False`` the same architecture freshly initialised."""
    config = read_config(directory)
    if config is None:
        export_info(directory)  # raises the explanation
    family = config["model_type"]
    task = _fresh_task(config)
    _check_config(family, task, config, directory)
    if not load_weights:
        return task.backbone
    from safetensors.numpy import load

    path = storage.join(directory, WEIGHTS_FILE)
    if not storage.exists(path):
        raise KorlmError(f"{path} not found (sharded or .bin checkpoints are not read)")
    try:
        with storage.open_file(path, "rb", encoding=None) as f:
            tensors = load(f.read())
    except Exception as exc:  # safetensors raises its own error types
        raise KorlmError(f"{path} cannot be read ({type(exc).__name__}: {exc})") from None
    backbone_paths = {v.path for v in task.backbone.weights}
    loaded = set()
    for name, slot in _plan(family, task, config).items():
        if not isinstance(slot, _Slot) or slot.variable.path not in backbone_paths:
            continue  # LM head tensors and constant filler (zero biases, type rows)
        if name not in tensors:
            raise KorlmError(f"{path} has no tensor {name} (backbone weight "
                             f"{slot.variable.path})")
        slot.variable.assign(_inverse(slot, tensors[name], name))
        loaded.add(slot.variable.path)
    skipped = {v.path for name in _NOT_EXPORTED.get(family, ())
               for v in task.backbone.get_layer(name).weights}
    missing = sorted(backbone_paths - loaded - skipped)
    if missing:
        raise KorlmError(f"{path}: no tensor for backbone weights {', '.join(missing[:5])}")
    return task.backbone
