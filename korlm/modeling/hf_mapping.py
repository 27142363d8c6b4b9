"""The Keras <-> Hugging Face weight mapping, per model family:

| family  | KerasHub task     | transformers class             | pipeline tag           |
|---------|-------------------|--------------------------------|------------------------|
| bert    | ``BertMaskedLM``    | ``BertForMaskedLM``              | fill-mask              |
| roberta | ``RobertaMaskedLM`` | ``RobertaForMaskedLM``           | fill-mask              |
| bart    | ``BartSeq2SeqLM``   | ``BartForConditionalGeneration`` | text2text-generation   |
| electra | ``korlm.modeling.electra`` | ``ElectraForPreTraining`` (+ ``ElectraForMaskedLM`` in ``generator/``) | feature-extraction |

``HF_CONVERTERS`` holds each family's pair: the safetensors arrays (PyTorch names and
layouts, so ``transformers`` loads them without conversion code) and the ``config.json``.
The weight mappings are the inverses of KerasHub's HF->Keras converters
(``keras_hub/src/utils/transformers/convert_bert.py``, ``convert_roberta.py``,
``convert_bart.py``). Every Keras variable must be consumed exactly once, and every
setting Hugging Face cannot express (an approximate GELU in a RoBERTa, a LayerNorm epsilon
other than BART's fixed 1e-5, an untied output embedding...) is refused before anything
is written. ``korlm.hub.export`` writes with them; ``korlm.modeling.hf_import`` reads an
export back through the same functions.

Position tables. Keras learns rows ``0..max_seq_length-1`` for positions ``0..``. Hugging
Face RoBERTa numbers the non-pad tokens from ``pad_token_id + 1`` (position ids come from
``input_ids != pad_token_id``), so its table has ``max_seq_length + pad_token_id + 1`` rows:
the Keras rows go to ``pad_token_id + 1 ..`` and rows ``0..pad_token_id`` are zeros (row
``pad_token_id`` is the padding row, zero as ``nn.Embedding(padding_idx=...)`` keeps it;
the rows below it are never indexed). ``config.pad_token_id`` is the vocab's pad id, so
this holds for both special-token families (BERT's ``[PAD]`` = 0: offset 1; BART's
``<pad>`` = 1: offset 2, as in fairseq). BART's learned positions have a fixed offset of
2 whatever the pad id: ``max_position_embeddings = max_seq_length`` and two zero rows first.
"""

from __future__ import annotations

from typing import Any

from korlm.errors import KorlmError

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


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
    # The discriminator (what is fine-tuned); the generator goes to generator/.
    "electra": {"architecture": "ElectraForPreTraining", "name": "ELECTRA discriminator",
                "objective": ("replaced token detection (ELECTRA: a masked-LM generator 1/4-1/3 "
                              "the width, loss = generator MLM + 50 x discriminator)"),
                "pipeline_tag": "feature-extraction",
                "tags": ["electra", "korean", "discriminator", "korlm"]},
}
# Where an ELECTRA export puts its generator (electra_generator_state_dict_and_config).
ELECTRA_GENERATOR_DIR = "generator"


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


def _bert_embeddings(state: dict, take: _Weights, prefix: str, backbone) -> None:
    """Word, position and token-type tables and their LayerNorm (BERT's and ELECTRA's
    ``*.embeddings`` block) from a KerasHub backbone."""
    state[f"{prefix}.word_embeddings.weight"] = take(backbone.token_embedding.embeddings)
    state[f"{prefix}.position_embeddings.weight"] = take(
        backbone.position_embedding.position_embeddings)
    state[f"{prefix}.token_type_embeddings.weight"] = take(backbone.segment_embedding.embeddings)
    _layer_norm(state, take, f"{prefix}.LayerNorm", backbone.embeddings_layer_norm)


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

    _bert_embeddings(state, take, "bert.embeddings", backbone)
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

    korlm's decoder input is ``[</s>, <s>, tokens...]`` (``korlm.pretrain.noising``): the decoder
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


class _Part:
    """The Keras weights one exported model covers, for :class:`_Weights`'s completeness
    check (ELECTRA writes two Hugging Face models from one Keras model)."""

    def __init__(self, weights):
        self.weights = list(weights)


def _electra_layers(task, generator: bool):
    """``(weights the model covers, blocks, embedding projection or None)``."""
    backbone = task.backbone
    embeddings = [backbone.token_embedding, backbone.position_embedding,
                  backbone.segment_embedding, backbone.embeddings_layer_norm]
    if generator:
        projection, blocks = task.generator_projection, task.generator_layers
        heads = [task.generator_head]
        layers = [*embeddings, *([projection] if projection is not None else []), *blocks, *heads]
        weights = [w for layer in layers for w in layer.weights]
    else:
        projection = getattr(backbone, "embeddings_projection", None)
        blocks = backbone.transformer_layers
        weights = [*backbone.weights, *task.discriminator_dense.weights,
                   *task.discriminator_prediction.weights]
    unique = list({id(w): w for w in weights}.values())
    return unique, blocks, projection


def electra_state_dict(task, take: _Weights | None = None, generator: bool = False) -> dict[str, Any]:
    """Map korlm's ELECTRA pretraining model (``korlm.modeling.electra``) to
    ``ElectraForPreTraining`` (the discriminator) or, with ``generator``,
    ``ElectraForMaskedLM`` state-dict arrays. Both carry the shared embedding block; each
    its own ``embeddings_project`` where its hidden size differs from the embeddings'.
    KerasHub's ``ElectraBackbone`` has a pooler that Hugging Face's ELECTRA lacks (and
    ELECTRA never trains): it is not exported. The generator's output layer is tied to the
    word embeddings (``generator_lm_head.weight`` is not stored, its bias is)."""
    weights, blocks, projection = _electra_layers(task, generator)
    take = take or _Weights(_Part(weights), "electra")
    backbone = task.backbone
    state: dict[str, Any] = {}
    _bert_embeddings(state, take, "electra.embeddings", backbone)
    if projection is not None:
        state["electra.embeddings_project.weight"] = take(projection.kernel, _dense_kernel)
        state["electra.embeddings_project.bias"] = take(projection.bias)
    _bert_layout_encoder(state, take, "electra", blocks)
    if generator:
        head = task.generator_head
        state["generator_predictions.dense.weight"] = take(head._intermediate_dense.kernel, _dense_kernel)
        state["generator_predictions.dense.bias"] = take(head._intermediate_dense.bias)
        _layer_norm(state, take, "generator_predictions.LayerNorm", head._intermediate_layer_norm)
        state["generator_lm_head.bias"] = take(head._bias)
    else:
        take(backbone.pooled_dense.kernel)  # not exported: Hugging Face ELECTRA has no pooler
        take(backbone.pooled_dense.bias)
        for name, dense in (("dense", task.discriminator_dense),
                            ("dense_prediction", task.discriminator_prediction)):
            state[f"discriminator_predictions.{name}.weight"] = take(dense.kernel, _dense_kernel)
            state[f"discriminator_predictions.{name}.bias"] = take(dense.bias)
    take.check_all_used()
    return state


def electra_config(task, special_ids: dict[str, int], generator: bool = False) -> dict[str, Any]:
    """``config.json`` for ``ElectraForPreTraining`` (or, with ``generator``,
    ``ElectraForMaskedLM``) describing the Keras model exactly. Hugging Face computes the
    discriminator head with ``hidden_act`` and the generator head with exact GELU."""
    backbone = task.backbone
    _, blocks, _ = _electra_layers(task, generator)
    _check_post_layer_norm(blocks, "ELECTRA")
    acts = {_activation_name(block.activation) for block in blocks}
    if len(acts) != 1:
        raise KorlmError(f"encoder blocks use different activations {sorted(acts)}; ELECTRA has one hidden_act")
    norms = [backbone.embeddings_layer_norm, *(ln for block in blocks for ln in _block_layer_norms(block))]
    if generator:
        head = task.generator_head
        _check_mlm_head(head, backbone.token_embedding, "ELECTRA generator")
        if _activation_name(head.intermediate_activation) != "gelu":
            raise KorlmError("the generator head's activation is not exact GELU; Hugging Face's "
                             "ElectraGeneratorPredictions applies exact GELU")
        norms.append(head._intermediate_layer_norm)
        dims = task.generator_dims
    else:
        head_act = _activation_name(task.discriminator_dense.activation)
        if {head_act} != acts:
            raise KorlmError(f"the discriminator head's activation {head_act!r} differs from the "
                             f"encoder's {sorted(acts)}; Hugging Face ELECTRA has one hidden_act")
        dims = {"num_layers": backbone.num_layers, "hidden_dim": backbone.hidden_dim,
                "num_heads": backbone.num_heads, "intermediate_dim": backbone.intermediate_dim}
    eps = _single_epsilon(norms, "ELECTRA")
    dropout = float(task.dropout if generator else backbone.dropout)
    architecture = "ElectraForMaskedLM" if generator else "ElectraForPreTraining"
    return {
        "architectures": [architecture],
        "model_type": "electra",
        "vocab_size": int(backbone.vocab_size),
        "embedding_size": int(backbone.embedding_dim),
        "hidden_size": int(dims["hidden_dim"]),
        "num_hidden_layers": int(dims["num_layers"]),
        "num_attention_heads": int(dims["num_heads"]),
        "intermediate_size": int(dims["intermediate_dim"]),
        "hidden_act": acts.pop(),
        "hidden_dropout_prob": dropout,
        "attention_probs_dropout_prob": dropout,
        "max_position_embeddings": int(backbone.max_sequence_length),
        "type_vocab_size": int(backbone.num_segments),
        "initializer_range": 0.02,
        "layer_norm_eps": eps,
        "pad_token_id": int(special_ids["pad"]),
        "position_embedding_type": "absolute",
        "tie_word_embeddings": True,
        "dtype": "float32",
    }


def electra_generator_state_dict_and_config(task, special_ids: dict[str, int]) -> tuple[dict, dict]:
    """The generator as ``ElectraForMaskedLM`` (the export's ``generator/``)."""
    return (electra_state_dict(task, generator=True),
            electra_config(task, special_ids, generator=True))


def _electra_tensors(task, hf_config: dict[str, Any], take: _Weights | None = None) -> dict[str, Any]:
    return electra_state_dict(task, take=take)


def _bert_tensors(task, hf_config: dict[str, Any], take: _Weights | None = None) -> dict[str, Any]:
    return bert_state_dict(task, take=take)


def _bert_config(task, special_ids: dict[str, int]) -> dict[str, Any]:
    return bert_config(task, pad_token_id=special_ids["pad"])


def _roberta_tensors(task, hf_config: dict[str, Any], take: _Weights | None = None) -> dict[str, Any]:
    return roberta_state_dict(task, int(hf_config.get("pad_token_id", 1)), take=take)


def _bart_tensors(task, hf_config: dict[str, Any], take: _Weights | None = None) -> dict[str, Any]:
    return bart_state_dict(task, take=take)


# The Hugging Face converters, one pair per family: ``(state_dict(task, hf_config,
# take=None), config(task, special_ids))``. The export writes with both; reading an
# export back (``korlm.modeling.hf_import``) runs the same pair, so the two cannot drift.
HF_CONVERTERS = {
    "bert": (_bert_tensors, _bert_config),
    "roberta": (_roberta_tensors, roberta_config),
    "bart": (_bart_tensors, bart_config),
    "electra": (_electra_tensors, electra_config),  # the discriminator; see ELECTRA_GENERATOR_DIR
}


def state_dict_and_config(family: str, task, special_ids: dict[str, int]) -> tuple[dict, dict]:
    """The safetensors arrays and ``config.json`` of ``task`` (a ``family`` pretraining task)."""
    if family not in HF_CONVERTERS:
        raise KorlmError(f"unknown model family {family!r}")
    state_dict, hf_config = HF_CONVERTERS[family]
    config = hf_config(task, special_ids)
    return state_dict(task, config), config
