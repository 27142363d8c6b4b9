"""Export a korlm checkpoint as a Hugging Face model directory, per model family:

| family  | KerasHub task     | transformers class             | pipeline tag           |
|---------|-------------------|--------------------------------|------------------------|
| bert    | ``BertMaskedLM``    | ``BertForMaskedLM``              | fill-mask              |
| roberta | ``RobertaMaskedLM`` | ``RobertaForMaskedLM``           | fill-mask              |
| bart    | ``BartSeq2SeqLM``   | ``BartForConditionalGeneration`` | text2text-generation   |

The output (``hf/``) holds ``config.json``, ``model.safetensors`` (PyTorch names and
layouts, so ``transformers`` loads it without conversion code), ``generation_config.json``
(BART), the tokenizer files and a ``README.md`` model card. The weight mappings are the
inverses of KerasHub's HF->Keras converters (``keras_hub/src/utils/transformers/
convert_bert.py``, ``convert_roberta.py``, ``convert_bart.py``). Every Keras variable
must be consumed exactly once, and every setting Hugging Face cannot express (an
approximate GELU in a RoBERTa, a LayerNorm epsilon other than BART's fixed 1e-5, an untied
output embedding...) is refused before anything is written.

Position tables. Keras learns rows ``0..max_seq_length-1`` for positions ``0..``. Hugging
Face RoBERTa numbers the non-pad tokens from ``pad_token_id + 1`` (position ids come from
``input_ids != pad_token_id``), so its table has ``max_seq_length + pad_token_id + 1`` rows:
the Keras rows go to ``pad_token_id + 1 ..`` and rows ``0..pad_token_id`` are zeros (row
``pad_token_id`` is the padding row, zero as ``nn.Embedding(padding_idx=...)`` keeps it;
the rows below it are never indexed). ``config.pad_token_id`` is the vocab's pad id, so
this holds for both special-token families (BERT's ``[PAD]`` = 0: offset 1; BART's
``<pad>`` = 1: offset 2, as in fairseq). BART's learned positions have a fixed offset of
2 whatever the pad id: ``max_position_embeddings = max_seq_length`` and two zero rows first.

Heavy imports (keras, keras_hub, tokenizers, safetensors) happen inside functions so that
importing this module stays cheap for the CLI and for pipeline compilation.
"""

from __future__ import annotations

import json
import os
from typing import Any

from korlm import models, storage
from korlm.errors import KorlmError
from korlm.presets import MODEL_FAMILIES

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
CARD_FILE = "README.md"
TOKENIZER_FILE = "tokenizer.json"
# tokenizer.json is required; the others are copied when the tokenizer step wrote them.
TOKENIZER_FILES = (TOKENIZER_FILE, "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "spm.model")
SELECTION_STRATEGIES = ("last", "first", "step:N")
# HF BART's BartLearnedPositionalEmbedding adds 2 to every position id.
BART_POSITION_OFFSET = 2
# HF BART builds every LayerNorm as nn.LayerNorm(d_model): epsilon 1e-5, not configurable.
BART_LAYER_NORM_EPS = 1e-5

# Keras activation function name -> transformers ACT2FN name computing the same function.
_HF_ACTIVATIONS = {
    "gelu_approximate": "gelu_pytorch_tanh",
    "gelu": "gelu",
    "relu": "relu",
    "tanh": "tanh",
}

# Per family: transformers architecture, model-card name, objective, pipeline tag, tags.
FAMILY_EXPORTS = {
    "bert": {"architecture": "BertForMaskedLM", "name": "BERT",
             "objective": "masked language modelling", "pipeline_tag": "fill-mask",
             "tags": ["bert", "korean", "fill-mask", "masked-lm", "korlm"]},
    "roberta": {"architecture": "RobertaForMaskedLM", "name": "RoBERTa",
                "objective": "masked language modelling (no next-sentence prediction)",
                "pipeline_tag": "fill-mask",
                "tags": ["roberta", "korean", "fill-mask", "masked-lm", "korlm"]},
    "bart": {"architecture": "BartForConditionalGeneration", "name": "BART",
             "objective": "denoising (text infilling with one mask token per span)",
             "pipeline_tag": "text2text-generation",
             "tags": ["bart", "korean", "text2text-generation", "seq2seq", "korlm"]},
}


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
    path = storage.join(run_dir, "checkpoints.json")
    if not storage.exists(path):
        raise KorlmError(f"{run_dir} is not a pretraining run (no checkpoints.json)")
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
    if storage.exists(storage.join(path, "checkpoints.json")):
        return select_checkpoint(path, strategy)
    return path


def run_checkpoint(run_dir: str, step: int) -> str:
    """Checkpoint ``step`` of the pretraining run ``run_dir``; step 0: its last one."""
    if step <= 0:
        return select_checkpoint(run_dir, "last")
    return storage.join(run_dir, "checkpoints", f"step-{step:06d}")


# --------------------------------------------------------------------------- checks


def _check_exportable_family(info: dict[str, Any], checkpoint_dir: str) -> str:
    family = info.get("model")
    if family not in MODEL_FAMILIES or family not in FAMILY_EXPORTS:
        raise KorlmError(f"{checkpoint_dir}: unknown model family {family!r} in {models.CHECKPOINT_INFO}")
    return family


def _read_tokenizer(tokenizer_dir: str):
    from tokenizers import Tokenizer

    path = storage.join(tokenizer_dir, TOKENIZER_FILE)
    if not storage.exists(path):
        raise KorlmError(f"{tokenizer_dir} is not a tokenizer directory (no {TOKENIZER_FILE})")
    return Tokenizer.from_str(storage.read_text(path))


def _special_tokens(tokenizer, tokenizer_dir: str) -> tuple[str, dict[str, str], dict[str, int]]:
    """The vocab's special-token family (``bert``|``bart``), role -> token and role -> id
    (pad, unk, cls, sep, mask); a KorlmError naming the tokens the vocab lacks."""
    from korlm.tokenizer import tokenization
    from korlm.tokenizer.files import SPECIAL_TOKEN_FAMILIES

    family = tokenization.special_tokens_of(tokenizer_dir) or tokenization.special_tokens_family_of(tokenizer)
    ids = tokenization.KorlmTokenizer(tokenizer, special_tokens=family).special_token_ids()
    return family, dict(SPECIAL_TOKEN_FAMILIES[family]), ids


def _activation_name(fn) -> str:
    name = getattr(fn, "__name__", str(fn))
    if name not in _HF_ACTIVATIONS:
        raise KorlmError(f"activation {name!r} has no Hugging Face equivalent; cannot export")
    return _HF_ACTIVATIONS[name]


def _check_tied_head(embedding, head=None, what: str = "the LM head") -> None:
    if (head is not None and head.token_embedding is not embedding) or not getattr(embedding, "tie_weights", True):
        raise KorlmError(f"{what} is not tied to the word embeddings; the Hugging Face model requires it")


def _check_post_layer_norm(blocks, family: str) -> None:
    if any(block.normalize_first for block in blocks):
        raise KorlmError(f"pre-LayerNorm transformer blocks cannot be exported as {family} (post-LayerNorm)")


def _single_epsilon(layer_norms, what: str) -> float:
    eps = {float(ln.epsilon) for ln in layer_norms}
    if len(eps) != 1:
        raise KorlmError(f"{what} LayerNorms use different epsilons {sorted(eps)}; Hugging Face has one layer_norm_eps")
    return eps.pop()


def _block_layer_norms(block) -> list:
    norms = [block._self_attention_layer_norm, block._feedforward_layer_norm]
    if getattr(block, "_cross_attention_layer_norm", None) is not None:
        norms.append(block._cross_attention_layer_norm)
    return norms


def _check_mlm_head(head, embedding, family: str) -> None:
    _check_tied_head(embedding, head, "the MLM head")
    if head.activation is not None and getattr(head.activation, "__name__", "") != "linear":
        raise KorlmError(f"the MLM head applies an output activation; {family} masked LMs output raw logits")


# --------------------------------------------------------------------------- weights


class _Weights:
    """Takes Keras variables as float32 numpy arrays, remembering which were taken, so
    that a variable the mapping does not cover fails the export instead of vanishing."""

    def __init__(self, task, family: str):
        self.task, self.family = task, family
        self.used: set[str] = set()

    def __call__(self, variable, transform=None):
        import numpy as np

        self.used.add(variable.path)
        array = np.asarray(variable.numpy())
        if array.dtype != np.float32:
            array = array.astype(np.float32)
        if transform is not None:
            array = transform(array)
        return np.ascontiguousarray(array)

    def check_all_used(self) -> None:
        missing = sorted(w.path for w in self.task.weights if w.path not in self.used)
        if missing:
            raise KorlmError(f"checkpoint has weights the {self.family} export does not map: {', '.join(missing)}")


def _dense_kernel(x):  # Keras (in, out) -> torch Linear (out, in)
    return x.T


def _heads_in_kernel(x):  # EinsumDense (hidden, heads, head_dim) -> (heads*head_dim, hidden)
    return x.reshape(x.shape[0], -1).T


def _heads_out_kernel(x):  # EinsumDense (heads, head_dim, hidden) -> (hidden, heads*head_dim)
    return x.reshape(-1, x.shape[-1]).T


def _flatten(x):
    return x.reshape(-1)


def _offset_rows(offset: int):
    """A position table with ``offset`` zero rows first (HF's offset position ids)."""
    def transform(x):
        import numpy as np

        out = np.zeros((x.shape[0] + offset, x.shape[1]), dtype=np.float32)
        out[offset:] = x
        return out
    return transform


def _layer_norm(state: dict, take: _Weights, prefix: str, layer) -> None:
    state[f"{prefix}.weight"] = take(layer.gamma)
    state[f"{prefix}.bias"] = take(layer.beta)


def _attention(state: dict, take: _Weights, attn, qkv_prefixes: list[str], out_prefix: str) -> None:
    """A Keras ``MultiHeadAttention`` layer's Q/K/V and output projections as torch
    Linear weights under the given names (BERT/RoBERTa and BART only name them apart)."""
    for prefix, dense in zip(qkv_prefixes, (attn.query_dense, attn.key_dense, attn.value_dense),
                             strict=True):
        state[f"{prefix}.weight"] = take(dense.kernel, _heads_in_kernel)
        state[f"{prefix}.bias"] = take(dense.bias, _flatten)
    state[f"{out_prefix}.weight"] = take(attn.output_dense.kernel, _heads_out_kernel)
    state[f"{out_prefix}.bias"] = take(attn.output_dense.bias)


def _feedforward(state: dict, take: _Weights, block, in_prefix: str, out_prefix: str) -> None:
    """A KerasHub transformer block's two feed-forward denses as torch Linear weights."""
    for prefix, dense in ((in_prefix, block._feedforward_intermediate_dense),
                          (out_prefix, block._feedforward_output_dense)):
        state[f"{prefix}.weight"] = take(dense.kernel, _dense_kernel)
        state[f"{prefix}.bias"] = take(dense.bias)


def _bert_layout_encoder(state: dict, take: _Weights, prefix: str, blocks) -> None:
    """KerasHub ``TransformerEncoder`` blocks in the BERT/RoBERTa ``encoder.layer.N`` layout."""
    for i, block in enumerate(blocks):
        p = f"{prefix}.encoder.layer.{i}"
        _attention(state, take, block._self_attention_layer,
                   [f"{p}.attention.self.{n}" for n in ("query", "key", "value")],
                   f"{p}.attention.output.dense")
        _layer_norm(state, take, f"{p}.attention.output.LayerNorm", block._self_attention_layer_norm)
        _feedforward(state, take, block, f"{p}.intermediate.dense", f"{p}.output.dense")
        _layer_norm(state, take, f"{p}.output.LayerNorm", block._feedforward_layer_norm)


def bert_state_dict(task, take: _Weights | None = None) -> dict[str, Any]:
    """Map a KerasHub ``BertMaskedLM`` to ``BertForMaskedLM`` state-dict numpy arrays."""
    backbone = task.backbone
    head = task.masked_lm_head
    take = take or _Weights(task, "bert")
    state: dict[str, Any] = {}

    emb = "bert.embeddings"
    state[f"{emb}.word_embeddings.weight"] = take(backbone.token_embedding.embeddings)
    state[f"{emb}.position_embeddings.weight"] = take(backbone.position_embedding.position_embeddings)
    state[f"{emb}.token_type_embeddings.weight"] = take(backbone.segment_embedding.embeddings)
    _layer_norm(state, take, f"{emb}.LayerNorm", backbone.embeddings_layer_norm)
    _bert_layout_encoder(state, take, "bert", backbone.transformer_layers)

    # BertForMaskedLM itself has no pooler (its loader ignores these two tensors), but
    # BertModel / BertForSequenceClassification pick them up, as they do from Google's BERT.
    state["bert.pooler.dense.weight"] = take(backbone.pooled_dense.kernel, _dense_kernel)
    state["bert.pooler.dense.bias"] = take(backbone.pooled_dense.bias)

    state["cls.predictions.transform.dense.weight"] = take(head._intermediate_dense.kernel, _dense_kernel)
    state["cls.predictions.transform.dense.bias"] = take(head._intermediate_dense.bias)
    _layer_norm(state, take, "cls.predictions.transform.LayerNorm", head._intermediate_layer_norm)
    # The decoder is tied to the word embeddings (cls.predictions.decoder.weight is not
    # stored, as save_pretrained does); its bias is cls.predictions.bias.
    state["cls.predictions.bias"] = take(head._bias)
    take.check_all_used()
    return state


def bert_config(task, pad_token_id: int = 0) -> dict[str, Any]:
    """``config.json`` for ``BertForMaskedLM`` describing the Keras task exactly."""
    backbone = task.backbone
    head = task.masked_lm_head
    _check_mlm_head(head, backbone.token_embedding, "BERT")
    blocks = backbone.transformer_layers
    _check_post_layer_norm(blocks, "BERT")

    encoder_act = {_activation_name(block.activation) for block in blocks}
    head_act = _activation_name(head.intermediate_activation)
    if len(encoder_act) != 1 or encoder_act != {head_act}:
        raise KorlmError(
            f"encoder activation {sorted(encoder_act)} differs from MLM head activation {head_act!r}; "
            "Hugging Face BERT has one hidden_act for both"
        )

    return {
        "architectures": ["BertForMaskedLM"],
        "model_type": "bert",
        "vocab_size": int(backbone.vocabulary_size),
        "hidden_size": int(backbone.hidden_dim),
        "num_hidden_layers": int(backbone.num_layers),
        "num_attention_heads": int(backbone.num_heads),
        "intermediate_size": int(backbone.intermediate_dim),
        "hidden_act": head_act,
        "hidden_dropout_prob": float(backbone.dropout),
        "attention_probs_dropout_prob": float(backbone.dropout),
        "max_position_embeddings": int(backbone.max_sequence_length),
        "type_vocab_size": int(backbone.num_segments),
        "initializer_range": 0.02,
        "layer_norm_eps": float(backbone.embeddings_layer_norm.epsilon),
        "pad_token_id": int(pad_token_id),
        "position_embedding_type": "absolute",
        "tie_word_embeddings": True,
        "dtype": "float32",
    }


def roberta_state_dict(task, pad_token_id: int, take: _Weights | None = None) -> dict[str, Any]:
    """Map a KerasHub ``RobertaMaskedLM`` to ``RobertaForMaskedLM`` state-dict arrays.

    The position table gains ``pad_token_id + 1`` zero rows first (see the module
    docstring); the token-type table is one zero row (Keras RoBERTa has no segments, HF
    adds ``token_type_embeddings[0]`` to every token). The decoder is tied to the word
    embeddings and its bias is ``lm_head.bias`` (neither ``lm_head.decoder.*`` is
    stored, as ``save_pretrained`` does).
    """
    import numpy as np

    backbone = task.backbone
    head = task.masked_lm_head
    take = take or _Weights(task, "roberta")
    state: dict[str, Any] = {}

    emb = "roberta.embeddings"
    word = take(backbone.token_embedding.embeddings)
    state[f"{emb}.word_embeddings.weight"] = word
    state[f"{emb}.position_embeddings.weight"] = take(
        backbone.embeddings.position_embedding.position_embeddings, _offset_rows(int(pad_token_id) + 1))
    state[f"{emb}.token_type_embeddings.weight"] = np.zeros((1, word.shape[1]), dtype=np.float32)
    _layer_norm(state, take, f"{emb}.LayerNorm", backbone.embeddings_layer_norm)
    _bert_layout_encoder(state, take, "roberta", backbone.transformer_layers)

    state["lm_head.dense.weight"] = take(head._intermediate_dense.kernel, _dense_kernel)
    state["lm_head.dense.bias"] = take(head._intermediate_dense.bias)
    _layer_norm(state, take, "lm_head.layer_norm", head._intermediate_layer_norm)
    state["lm_head.bias"] = take(head._bias)
    take.check_all_used()
    return state


def roberta_config(task, special_ids: dict[str, int]) -> dict[str, Any]:
    """``config.json`` for ``RobertaForMaskedLM`` describing the Keras task exactly."""
    backbone = task.backbone
    head = task.masked_lm_head
    _check_mlm_head(head, backbone.token_embedding, "RoBERTa")
    blocks = backbone.transformer_layers
    _check_post_layer_norm(blocks, "RoBERTa")
    acts = {_activation_name(block.activation) for block in blocks}
    head_act = _activation_name(head.intermediate_activation)
    # RobertaLMHead hard-codes exact GELU; the encoder's is config.hidden_act.
    if head_act != "gelu":
        raise KorlmError(f"the MLM head uses activation {head_act!r}; RobertaLMHead applies exact GELU")
    if len(acts) != 1:
        raise KorlmError(f"encoder blocks use different activations {sorted(acts)}; RoBERTa has one hidden_act")
    eps = _single_epsilon([backbone.embeddings_layer_norm, head._intermediate_layer_norm,
                           *(ln for block in blocks for ln in _block_layer_norms(block))], "RoBERTa")
    pad = int(special_ids["pad"])
    return {
        "architectures": ["RobertaForMaskedLM"],
        "model_type": "roberta",
        "vocab_size": int(backbone.vocabulary_size),
        "hidden_size": int(backbone.hidden_dim),
        "num_hidden_layers": int(backbone.num_layers),
        "num_attention_heads": int(backbone.num_heads),
        "intermediate_size": int(backbone.intermediate_dim),
        "hidden_act": acts.pop(),
        "hidden_dropout_prob": float(backbone.dropout),
        "attention_probs_dropout_prob": float(backbone.dropout),
        # Positions run from pad + 1 to pad + max_sequence_length.
        "max_position_embeddings": int(backbone.max_sequence_length) + pad + 1,
        "type_vocab_size": 1,
        "initializer_range": 0.02,
        "layer_norm_eps": eps,
        "pad_token_id": pad,
        "bos_token_id": int(special_ids["cls"]),
        "eos_token_id": int(special_ids["sep"]),
        "tie_word_embeddings": True,
        "dtype": "float32",
    }


def _bart_attention(state: dict, take: _Weights, prefix: str, attn) -> None:
    _attention(state, take, attn, [f"{prefix}.{n}" for n in ("q_proj", "k_proj", "v_proj")],
               f"{prefix}.out_proj")


def _bart_feedforward(state: dict, take: _Weights, prefix: str, block) -> None:
    _feedforward(state, take, block, f"{prefix}.fc1", f"{prefix}.fc2")
    _layer_norm(state, take, f"{prefix}.final_layer_norm", block._feedforward_layer_norm)


def bart_state_dict(task, take: _Weights | None = None) -> dict[str, Any]:
    """Map a KerasHub ``BartSeq2SeqLM`` to ``BartForConditionalGeneration`` state-dict arrays.

    One shared embedding (``model.shared``; the encoder's and decoder's ``embed_tokens`` and
    ``lm_head`` are tied to it and not stored), learned positions with 2 zero rows first,
    ``layernorm_embedding`` per stack, and ``final_logits_bias`` zeros (KerasHub's logits
    are the reversed embedding with no bias).
    """
    import numpy as np

    backbone = task.backbone
    take = take or _Weights(task, "bart")
    state: dict[str, Any] = {}
    shared = take(backbone.token_embedding.embeddings)
    state["model.shared.weight"] = shared
    for stack, positions, norm, blocks in (
            ("encoder", backbone.encoder_position_embedding, backbone.encoder_embeddings_layer_norm,
             backbone.encoder_transformer_layers),
            ("decoder", backbone.decoder_position_embedding, backbone.decoder_embeddings_layer_norm,
             backbone.decoder_transformer_layers)):
        p = f"model.{stack}"
        state[f"{p}.embed_positions.weight"] = take(positions.position_embeddings,
                                                    _offset_rows(BART_POSITION_OFFSET))
        _layer_norm(state, take, f"{p}.layernorm_embedding", norm)
        for i, block in enumerate(blocks):
            lp = f"{p}.layers.{i}"
            _bart_attention(state, take, f"{lp}.self_attn", block._self_attention_layer)
            _layer_norm(state, take, f"{lp}.self_attn_layer_norm", block._self_attention_layer_norm)
            if stack == "decoder":
                _bart_attention(state, take, f"{lp}.encoder_attn", block._cross_attention_layer)
                _layer_norm(state, take, f"{lp}.encoder_attn_layer_norm", block._cross_attention_layer_norm)
            _bart_feedforward(state, take, lp, block)
    state["final_logits_bias"] = np.zeros((1, shared.shape[0]), dtype=np.float32)
    take.check_all_used()
    return state


def bart_config(task, special_ids: dict[str, int]) -> dict[str, Any]:
    """``config.json`` for ``BartForConditionalGeneration`` describing the Keras task.

    korlm's decoder input is ``[</s>, <s>, tokens...]`` (``korlm.noising``): the decoder
    starts from the sep/eos id and first predicts the cls/bos id, as fairseq BART does.
    KerasHub does not scale embeddings by sqrt(d_model): ``scale_embedding`` is false.
    """
    backbone = task.backbone
    _check_tied_head(backbone.token_embedding, what="the BART output projection")
    encoder, decoder = backbone.encoder_transformer_layers, backbone.decoder_transformer_layers
    _check_post_layer_norm([*encoder, *decoder], "BART")
    if len(encoder) != len(decoder):  # KerasHub builds both with num_layers; guard anyway
        raise KorlmError(f"encoder has {len(encoder)} layers, decoder {len(decoder)}; cannot describe it")
    acts = {_activation_name(block.activation) for block in (*encoder, *decoder)}
    if len(acts) != 1:
        raise KorlmError(f"BART blocks use different activations {sorted(acts)}; HF BART has one activation_function")
    eps = _single_epsilon([backbone.encoder_embeddings_layer_norm, backbone.decoder_embeddings_layer_norm,
                           *(ln for block in (*encoder, *decoder) for ln in _block_layer_norms(block))], "BART")
    if abs(eps - BART_LAYER_NORM_EPS) > 1e-12:
        raise KorlmError(f"BART LayerNorm epsilon is {eps}; Hugging Face BART fixes it at {BART_LAYER_NORM_EPS}")
    enc_len = int(backbone.encoder_position_embedding.sequence_length)
    dec_len = int(backbone.decoder_position_embedding.sequence_length)
    if enc_len != dec_len:
        raise KorlmError(f"encoder positions ({enc_len}) differ from decoder positions ({dec_len}); "
                         "HF BART has one max_position_embeddings")
    dropout = float(backbone.dropout)
    sep = int(special_ids["sep"])
    return {
        "architectures": ["BartForConditionalGeneration"],
        "model_type": "bart",
        "vocab_size": int(backbone.vocabulary_size),
        "d_model": int(backbone.hidden_dim),
        "encoder_layers": len(encoder),
        "decoder_layers": len(decoder),
        "encoder_attention_heads": int(backbone.num_heads),
        "decoder_attention_heads": int(backbone.num_heads),
        "encoder_ffn_dim": int(backbone.intermediate_dim),
        "decoder_ffn_dim": int(backbone.intermediate_dim),
        "activation_function": acts.pop(),
        # KerasHub applies one rate after attention, on attention weights and after the
        # feed-forward block; nothing after the activation.
        "dropout": dropout,
        "attention_dropout": dropout,
        "activation_dropout": 0.0,
        "encoder_layerdrop": 0.0,
        "decoder_layerdrop": 0.0,
        "max_position_embeddings": enc_len,
        "init_std": 0.02,
        "scale_embedding": False,
        "is_encoder_decoder": True,
        "pad_token_id": int(special_ids["pad"]),
        "bos_token_id": int(special_ids["cls"]),
        "eos_token_id": sep,
        "decoder_start_token_id": sep,
        "forced_eos_token_id": sep,
        "tie_word_embeddings": True,
        "dtype": "float32",
    }


def bart_generation_config(config: dict[str, Any]) -> dict[str, Any]:
    """``generation_config.json``: start from ``</s>``, force ``<s>`` first (korlm's
    decoder was trained to emit it right after the start token), end on ``</s>``."""
    return {
        "bos_token_id": config["bos_token_id"],
        "decoder_start_token_id": config["decoder_start_token_id"],
        "eos_token_id": config["eos_token_id"],
        "forced_bos_token_id": config["bos_token_id"],
        "forced_eos_token_id": config["forced_eos_token_id"],
        "pad_token_id": config["pad_token_id"],
    }


def state_dict_and_config(family: str, task, special_ids: dict[str, int]) -> tuple[dict, dict]:
    """The safetensors arrays and ``config.json`` of ``task`` (a ``family`` pretraining task)."""
    if family == "bert":
        return bert_state_dict(task), bert_config(task, pad_token_id=special_ids["pad"])
    if family == "roberta":
        config = roberta_config(task, special_ids)
        return roberta_state_dict(task, config["pad_token_id"]), config
    if family == "bart":
        return bart_state_dict(task), bart_config(task, special_ids)
    raise KorlmError(f"unknown model family {family!r}")


# --------------------------------------------------------------------------- model card


def _yaml_front_matter(meta: dict[str, Any]) -> str:
    import yaml

    return "---\n" + yaml.safe_dump(meta, allow_unicode=True, sort_keys=False) + "---\n"


def _table(rows: list[tuple[str, Any]]) -> str:
    lines = ["| | |", "|---|---|"]
    for key, value in rows:
        text = json.dumps(value, ensure_ascii=False) if isinstance(value, dict | list) else str(value)
        cell = text.replace("|", r"\|")
        lines.append(f"| {key} | {cell} |")
    return "\n".join(lines)


_ARCH_KEYS = {
    "bert": ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
             "intermediate_size", "max_position_embeddings", "hidden_act"),
    "roberta": ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size", "max_position_embeddings", "hidden_act", "pad_token_id"),
    "bart": ("vocab_size", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
             "encoder_ffn_dim", "max_position_embeddings", "activation_function",
             "decoder_start_token_id"),
}


def _usage(family: str, mask_token: str | None) -> str:
    example = f"오늘 날씨가 정말 {mask_token or '[MASK]'}."
    if family == "bart":
        return (
            "## Usage\n\n```python\nfrom transformers import AutoModelForSeq2SeqLM, AutoTokenizer\n\n"
            "tokenizer = AutoTokenizer.from_pretrained(\"PATH_OR_REPO_ID\")\n"
            "model = AutoModelForSeq2SeqLM.from_pretrained(\"PATH_OR_REPO_ID\")\n"
            f"inputs = tokenizer([\"{example}\"], return_tensors=\"pt\")\n"
            "out = model.generate(**inputs, max_new_tokens=32)\n"
            "print(tokenizer.batch_decode(out, skip_special_tokens=True))\n```\n\n"
            "Pretrained only (denoising): fine-tune it for summarisation, translation or other "
            "sequence-to-sequence tasks. Generation starts from the `</s>` token and emits `<s>` "
            "first, as in pretraining (`generation_config.json`).\n"
        )
    return (
        "## Usage\n\n```python\nfrom transformers import pipeline\n\n"
        "fill = pipeline(\"fill-mask\", model=\"PATH_OR_REPO_ID\")\n"
        f"fill(\"{example}\")\n```\n"
    )


def model_card(*, model_name: str, license: str, config: dict[str, Any], info: dict[str, Any],
               num_parameters: int, mask_token: str | None, results_markdown: str | None,
               corpus_stats: dict | None, pre_tokenizer: str | None = None,
               family: str | None = None) -> str:
    family = family or config.get("model_type", "bert")
    spec = FAMILY_EXPORTS[family]
    meta = {
        "language": ["ko"],
        "license": license,
        "library_name": "transformers",
        "pipeline_tag": spec["pipeline_tag"],
        "tags": list(spec["tags"]),
    }
    if mask_token:
        meta["widget"] = [{"text": f"오늘 날씨가 정말 {mask_token}."}]

    parts = [_yaml_front_matter(meta), f"# {model_name}\n"]
    if family == "bart":
        shape = (f"{config['encoder_layers']} encoder and {config['decoder_layers']} decoder layers, "
                 f"hidden size {config['d_model']}")
    else:
        shape = f"{config['num_hidden_layers']} layers, hidden size {config['hidden_size']}"
    parts.append(
        f"A Korean {spec['name']} ({info.get('size', '?')} size, {shape}, {num_parameters:,} parameters) "
        f"pretrained from scratch with {spec['objective']} by the korlm pipeline "
        f"(KerasHub training, exported to PyTorch `{spec['architecture']}`).\n"
    )
    parts.append(_usage(family, mask_token))
    if pre_tokenizer == "morpheme":
        parts.append(
            "## Morpheme pre-tokenization\n\n"
            "This model's vocabulary was trained over Kiwi (kiwipiepy) morphemes: split text "
            "the same way before tokenizing, or the ids will not match what the model was "
            "trained on (`나는 학교에 갔다.` -> `나 ##는 학교 ##에 갔 ##다 ##.`):\n\n"
            "```python\nfrom korlm.morpheme import segment\n\ntokenizer(segment(text))\n```\n"
        )
    training_rows = [(k, info[k]) for k in sorted(info)]
    parts.append("## Training\n\n" + _table(training_rows) + "\n")
    arch_rows = [(k, config[k]) for k in _ARCH_KEYS[family]]
    parts.append("## Architecture\n\n" + _table(arch_rows) + "\n")
    if corpus_stats:
        parts.append("## Pretraining corpus\n\n" + _table([(k, corpus_stats[k]) for k in corpus_stats]) + "\n")
    if results_markdown:
        parts.append("## Evaluation results\n\n" + results_markdown.strip() + "\n")
    parts.append(
        "## Limitations\n\nThe model reflects its pretraining corpus, including its biases and "
        "its domains; evaluate it on your task before use.\n"
    )
    return "\n".join(parts)


# --------------------------------------------------------------------------- export


def _with_template(tokenizer, vocab_family: str, roles: dict[str, str], ids: dict[str, int]):
    """The tokenizer with its vocab family's template when it has none, as ``korlm vocab``
    writes it: ``[CLS] A [SEP]`` / ``[CLS] A [SEP] B [SEP]`` (B with type id 1), or
    ``<s> A </s>`` / ``<s> A </s></s> B </s>`` (type ids all 0, as RobertaProcessing).

    A WordPiece tokenizer trained with ``tokenizers`` has no post-processor, so users of
    ``tokenizer.json`` outside transformers (tokenizers, TEI, transformers.js) would feed
    the model inputs without the special tokens it was pretrained with.
    """
    from tokenizers import Tokenizer
    from tokenizers.processors import TemplateProcessing

    if tokenizer.post_processor is not None:
        return tokenizer
    cls, sep = roles["cls"], roles["sep"]
    pair = f"{cls} $A {sep} $B:1 {sep}:1" if vocab_family == "bert" else f"{cls} $A {sep} {sep} $B {sep}"
    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.post_processor = TemplateProcessing(single=f"{cls} $A {sep}", pair=pair,
                                             special_tokens=[(cls, ids["cls"]), (sep, ids["sep"])])
    return copy


def _tokenizer_config(tokenizer_dir: str, max_seq_length: int, special: dict[str, str],
                      family: str = "bert", vocab_family: str = "bert") -> dict:
    path = storage.join(tokenizer_dir, "tokenizer_config.json")
    if storage.exists(path):
        config = json.loads(storage.read_text(path))
    else:
        config = {
            "tokenizer_class": "BertTokenizer" if vocab_family == "bert" else "PreTrainedTokenizerFast",
            "do_lower_case": False,
            **special,
        }
    if family != "bert":
        # RoBERTa and BART take no token type ids (BART's forward rejects them), and
        # generation / RoBERTa's tokenizer roles name a bos and an eos token.
        config["model_input_names"] = ["input_ids", "attention_mask"]
        config.setdefault("bos_token", special["cls_token"])
        config.setdefault("eos_token", special["sep_token"])
    # Without a bound, HF tokenizers truncate at a huge default and the model fails on
    # positions past max_position_embeddings.
    current = config.get("model_max_length")
    if not isinstance(current, int) or current > max_seq_length:
        config["model_max_length"] = max_seq_length
    return config


def _write_json(path: str, value: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, sort_keys=True, ensure_ascii=False)
        f.write("\n")


def _next_sentence_head(checkpoint_dir: str):
    """(kernel [hidden, 2], bias [2]) of the NSP head a BERT run with next-sentence labels
    saved beside its checkpoint, or None."""
    path = storage.join(checkpoint_dir, models.NSP_HEAD)
    if not storage.exists(path):
        return None
    import io

    import numpy as np

    with storage.open_file(path, "rb") as f:
        try:
            arrays = np.load(io.BytesIO(f.read()))
            return arrays["kernel"], arrays["bias"]
        except (OSError, ValueError, KeyError) as exc:
            raise KorlmError(f"{path} is corrupt ({exc})") from None


def export_checkpoint(checkpoint_dir: str, tokenizer_dir: str | None, output_dir: str, *,
                      results_markdown: str | None = None, model_name: str | None = None,
                      corpus_stats: dict | None = None, license: str = "apache-2.0",
                      overwrite: bool = False) -> dict:
    """Write ``output_dir`` as a Hugging Face model directory for the checkpoint's family
    (``BertForMaskedLM``, ``RobertaForMaskedLM`` or ``BartForConditionalGeneration``).

    ``tokenizer_dir``: None for the checkpoint's own tokenizer, else an override checked
    against the checkpoint's vocab hash (:func:`korlm.models.resolve_tokenizer`).
    ``model_name`` (the card's title) defaults to ``korlm-<family>``. Returns a summary:
    ``output_dir``, ``files`` (name -> bytes), ``config``, ``step``, ``model``,
    ``architecture`` and ``num_parameters``. Everything is checked before anything is
    written (``output_dir`` too: new, empty or, with ``overwrite``, an earlier export);
    the directory is published atomically.
    """
    info = models.checkpoint_info(checkpoint_dir)
    family = _check_exportable_family(info, checkpoint_dir)
    tokenizer_dir = models.resolve_tokenizer(checkpoint_dir, tokenizer_dir, info)
    tokenizer = _read_tokenizer(tokenizer_dir)
    tok_vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    if tok_vocab != int(info["vocab_size"]):
        raise KorlmError(
            f"tokenizer {tokenizer_dir} has {tok_vocab} tokens but checkpoint {checkpoint_dir} "
            f"was trained with vocab_size {info['vocab_size']}; export it with its own tokenizer"
        )
    vocab_family, roles, special_ids = _special_tokens(tokenizer, tokenizer_dir)
    inputs = [checkpoint_dir, tokenizer_dir]  # the inputs are fine: now the output
    storage.check_output(output_dir, "export", inputs=inputs, overwrite=overwrite)

    task = models.load_pretraining_task(checkpoint_dir)
    if int(task.backbone.vocabulary_size) != tok_vocab:
        raise KorlmError(
            f"checkpoint {checkpoint_dir} weights have vocabulary {task.backbone.vocabulary_size}, "
            f"tokenizer has {tok_vocab}"
        )
    state, config = state_dict_and_config(family, task, special_ids)
    architecture = FAMILY_EXPORTS[family]["architecture"]
    nsp = _next_sentence_head(checkpoint_dir) if family == "bert" else None
    if nsp is not None:  # pretrained with next-sentence labels: BertForPreTraining
        import numpy as np

        kernel, bias = nsp
        hidden = int(task.backbone.hidden_dim)
        if kernel.shape != (hidden, 2) or bias.shape != (2,):
            raise KorlmError(f"{checkpoint_dir}/{models.NSP_HEAD} has shapes {kernel.shape}, "
                             f"{bias.shape}; expected ({hidden}, 2) and (2,)")
        state["cls.seq_relationship.weight"] = np.ascontiguousarray(kernel.T.astype("float32"))
        state["cls.seq_relationship.bias"] = bias.astype("float32")
        architecture = "BertForPreTraining"
        config["architectures"] = [architecture]
    # As transformers counts parameters: final_logits_bias is a buffer.
    num_parameters = int(sum(a.size for name, a in state.items() if name != "final_logits_bias"))

    special = {f"{role}_token": roles[role] for role in ("unk", "sep", "pad", "cls", "mask")}
    max_seq_length = int(task.backbone.max_sequence_length)
    tok_config = _tokenizer_config(tokenizer_dir, max_seq_length, special, family, vocab_family)
    card = model_card(
        model_name=model_name or f"korlm-{family}", license=license, config=config, info=info,
        num_parameters=num_parameters, mask_token=tok_config.get("mask_token", special["mask_token"]),
        results_markdown=results_markdown, corpus_stats=corpus_stats,
        pre_tokenizer=tok_config.get("korlm_pre_tokenizer"), family=family,
    )

    from safetensors.numpy import save_file

    with storage.atomic_output_dir(output_dir, "export", inputs=inputs, overwrite=overwrite) as staging:
        save_file(state, os.path.join(staging, WEIGHTS_FILE), metadata={"format": "pt"})
        _write_json(os.path.join(staging, CONFIG_FILE), config)
        if family == "bart":
            _write_json(os.path.join(staging, GENERATION_CONFIG_FILE), bart_generation_config(config))
        for name in TOKENIZER_FILES:
            src = storage.join(tokenizer_dir, name)
            if name == "tokenizer_config.json":
                with open(os.path.join(staging, name), "w", encoding="utf-8") as f:
                    json.dump(tok_config, f, indent=2, ensure_ascii=False)
                    f.write("\n")
            elif name == TOKENIZER_FILE:
                with open(os.path.join(staging, name), "w", encoding="utf-8") as f:
                    f.write(_with_template(tokenizer, vocab_family, roles, special_ids).to_str(pretty=True))
            elif storage.exists(src):
                with storage.open_file(src, "rb") as fin, open(os.path.join(staging, name), "wb") as fout:
                    fout.write(fin.read())
        with open(os.path.join(staging, CARD_FILE), "w", encoding="utf-8") as f:
            f.write(card)
        files = {name: os.path.getsize(os.path.join(staging, name)) for name in sorted(os.listdir(staging))}

    return {
        "output_dir": output_dir,
        "files": files,
        "config": config,
        "step": info.get("step"),
        "model": family,
        "architecture": architecture,
        "num_parameters": num_parameters,
    }
