"""Export a korlm checkpoint as a Hugging Face ``BertForMaskedLM`` model directory.

The output (``hf/``) holds ``config.json``, ``model.safetensors`` (PyTorch names and
layouts, so ``transformers`` loads it without conversion code), the tokenizer files and a
``README.md`` model card. The weight mapping is the inverse of KerasHub's HF->Keras BERT
converter (``keras_hub/src/utils/transformers/convert_bert.py``).

Heavy imports (keras, keras_hub, tokenizers, safetensors) happen inside functions so that
importing this module stays cheap for the CLI and for pipeline compilation.
"""

from __future__ import annotations

import json
import os
from typing import Any

from korlm import models, storage
from korlm.errors import KorlmError, NotBuiltError
from korlm.presets import MODEL_FAMILIES

EXPORT_ISSUE = 8
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
TOKENIZER_FILE = "tokenizer.json"
# tokenizer.json is required; the others are copied when the tokenizer step wrote them.
TOKENIZER_FILES = (TOKENIZER_FILE, "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "spm.model")
SELECTION_STRATEGIES = ("last", "first", "step:N")

# Keras activation function name -> transformers ACT2FN name computing the same function.
_HF_ACTIVATIONS = {
    "gelu_approximate": "gelu_pytorch_tanh",
    "gelu": "gelu",
    "relu": "relu",
    "tanh": "tanh",
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


# --------------------------------------------------------------------------- checks


def _check_exportable_family(info: dict[str, Any], checkpoint_dir: str) -> None:
    family = info.get("model")
    if family not in MODEL_FAMILIES:
        raise KorlmError(f"{checkpoint_dir}: unknown model family {family!r} in {models.CHECKPOINT_INFO}")
    if family != "bert":
        raise NotBuiltError(f"export of model family {family!r}", EXPORT_ISSUE)


def _read_tokenizer(tokenizer_dir: str):
    from tokenizers import Tokenizer

    path = storage.join(tokenizer_dir, TOKENIZER_FILE)
    if not storage.exists(path):
        raise KorlmError(f"{tokenizer_dir} is not a tokenizer directory (no {TOKENIZER_FILE})")
    return Tokenizer.from_str(storage.read_text(path))


def _activation_name(fn) -> str:
    name = getattr(fn, "__name__", str(fn))
    if name not in _HF_ACTIVATIONS:
        raise KorlmError(f"activation {name!r} has no Hugging Face equivalent; cannot export")
    return _HF_ACTIVATIONS[name]


# --------------------------------------------------------------------------- weights


def bert_state_dict(task) -> dict[str, Any]:
    """Map a KerasHub ``BertMaskedLM`` to ``BertForMaskedLM`` state-dict numpy arrays.

    Every Keras variable must be consumed exactly once, so an architecture change that
    adds weights fails loudly here instead of exporting a silently different model.
    """
    import numpy as np

    backbone = task.backbone
    head = task.masked_lm_head
    used: set[str] = set()
    state: dict[str, Any] = {}

    def take(variable, transform=None):
        used.add(variable.path)
        array = np.asarray(variable.numpy())
        if array.dtype != np.float32:
            array = array.astype(np.float32)
        if transform is not None:
            array = transform(array)
        return np.ascontiguousarray(array)

    def dense_kernel(x):  # Keras (in, out) -> torch Linear (out, in)
        return x.T

    def heads_in_kernel(x):  # EinsumDense (hidden, heads, head_dim) -> (heads*head_dim, hidden)
        return x.reshape(x.shape[0], -1).T

    def heads_out_kernel(x):  # EinsumDense (heads, head_dim, hidden) -> (hidden, heads*head_dim)
        return x.reshape(-1, x.shape[-1]).T

    def flatten(x):
        return x.reshape(-1)

    def layer_norm(prefix, layer):
        state[f"{prefix}.weight"] = take(layer.gamma)
        state[f"{prefix}.bias"] = take(layer.beta)

    emb = "bert.embeddings"
    state[f"{emb}.word_embeddings.weight"] = take(backbone.token_embedding.embeddings)
    state[f"{emb}.position_embeddings.weight"] = take(backbone.position_embedding.position_embeddings)
    state[f"{emb}.token_type_embeddings.weight"] = take(backbone.segment_embedding.embeddings)
    layer_norm(f"{emb}.LayerNorm", backbone.embeddings_layer_norm)

    for i, block in enumerate(backbone.transformer_layers):
        p = f"bert.encoder.layer.{i}"
        attn = block._self_attention_layer
        for hf_name, dense in (("query", attn.query_dense), ("key", attn.key_dense),
                               ("value", attn.value_dense)):
            state[f"{p}.attention.self.{hf_name}.weight"] = take(dense.kernel, heads_in_kernel)
            state[f"{p}.attention.self.{hf_name}.bias"] = take(dense.bias, flatten)
        state[f"{p}.attention.output.dense.weight"] = take(attn.output_dense.kernel, heads_out_kernel)
        state[f"{p}.attention.output.dense.bias"] = take(attn.output_dense.bias)
        layer_norm(f"{p}.attention.output.LayerNorm", block._self_attention_layer_norm)
        state[f"{p}.intermediate.dense.weight"] = take(block._feedforward_intermediate_dense.kernel, dense_kernel)
        state[f"{p}.intermediate.dense.bias"] = take(block._feedforward_intermediate_dense.bias)
        state[f"{p}.output.dense.weight"] = take(block._feedforward_output_dense.kernel, dense_kernel)
        state[f"{p}.output.dense.bias"] = take(block._feedforward_output_dense.bias)
        layer_norm(f"{p}.output.LayerNorm", block._feedforward_layer_norm)

    # BertForMaskedLM itself has no pooler (its loader ignores these two tensors), but
    # BertModel / BertForSequenceClassification pick them up, as they do from Google's BERT.
    state["bert.pooler.dense.weight"] = take(backbone.pooled_dense.kernel, dense_kernel)
    state["bert.pooler.dense.bias"] = take(backbone.pooled_dense.bias)

    state["cls.predictions.transform.dense.weight"] = take(head._intermediate_dense.kernel, dense_kernel)
    state["cls.predictions.transform.dense.bias"] = take(head._intermediate_dense.bias)
    layer_norm("cls.predictions.transform.LayerNorm", head._intermediate_layer_norm)
    # The decoder is tied to the word embeddings (cls.predictions.decoder.weight is not
    # stored, as save_pretrained does); its bias is cls.predictions.bias.
    state["cls.predictions.bias"] = take(head._bias)

    missing = sorted(w.path for w in task.weights if w.path not in used)
    if missing:
        raise KorlmError(f"checkpoint has weights the BERT export does not map: {', '.join(missing)}")
    return state


def bert_config(task, pad_token_id: int = 0) -> dict[str, Any]:
    """``config.json`` for ``BertForMaskedLM`` describing the Keras task exactly."""
    backbone = task.backbone
    head = task.masked_lm_head
    embedding = backbone.token_embedding
    if head.token_embedding is not embedding or not getattr(embedding, "tie_weights", True):
        raise KorlmError("the MLM head is not tied to the word embeddings; BertForMaskedLM requires it")
    if head.activation is not None and getattr(head.activation, "__name__", "") != "linear":
        raise KorlmError("the MLM head applies an output activation; BertForMaskedLM outputs raw logits")
    blocks = backbone.transformer_layers
    if any(block.normalize_first for block in blocks):
        raise KorlmError("pre-LayerNorm encoder blocks cannot be exported as BERT (post-LayerNorm)")

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


def model_card(*, model_name: str, license: str, config: dict[str, Any], info: dict[str, Any],
               num_parameters: int, mask_token: str | None, results_markdown: str | None,
               corpus_stats: dict | None, pre_tokenizer: str | None = None) -> str:
    meta = {
        "language": ["ko"],
        "license": license,
        "library_name": "transformers",
        "pipeline_tag": "fill-mask",
        "tags": ["bert", "korean", "fill-mask", "masked-lm", "korlm"],
    }
    if mask_token:
        meta["widget"] = [{"text": f"오늘 날씨가 정말 {mask_token}."}]

    parts = [_yaml_front_matter(meta), f"# {model_name}\n"]
    parts.append(
        f"A Korean BERT ({info.get('size', '?')} size, {config['num_hidden_layers']} layers, "
        f"hidden size {config['hidden_size']}, {num_parameters:,} parameters) pretrained "
        "from scratch with masked language modelling by the korlm pipeline "
        "(KerasHub training, exported to PyTorch `BertForMaskedLM`).\n"
    )
    parts.append(
        "## Usage\n\n```python\nfrom transformers import pipeline\n\n"
        "fill = pipeline(\"fill-mask\", model=\"PATH_OR_REPO_ID\")\n"
        f"fill(\"오늘 날씨가 정말 {mask_token or '[MASK]'}.\")\n```\n"
    )
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
    arch_rows = [(k, config[k]) for k in (
        "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
        "intermediate_size", "max_position_embeddings", "hidden_act")]
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


def _with_bert_template(tokenizer):
    """The tokenizer with BERT's ``[CLS] A [SEP] B [SEP]`` template when it has none.

    A WordPiece tokenizer trained with ``tokenizers`` has no post-processor, so users of
    ``tokenizer.json`` outside transformers (tokenizers, TEI, transformers.js) would feed
    the model inputs without the [CLS]/[SEP] it was pretrained with.
    """
    from tokenizers import Tokenizer
    from tokenizers.processors import TemplateProcessing

    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    if tokenizer.post_processor is not None or cls_id is None or sep_id is None:
        return tokenizer
    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return copy


def _tokenizer_config(tokenizer_dir: str, max_seq_length: int, special: dict[str, str]) -> dict:
    path = storage.join(tokenizer_dir, "tokenizer_config.json")
    config = json.loads(storage.read_text(path)) if storage.exists(path) else {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": False,
        **special,
    }
    # Without a bound, HF tokenizers truncate at a huge default and the model fails on
    # positions past max_position_embeddings.
    current = config.get("model_max_length")
    if not isinstance(current, int) or current > max_seq_length:
        config["model_max_length"] = max_seq_length
    return config


def export_checkpoint(checkpoint_dir: str, tokenizer_dir: str, output_dir: str, *,
                      results_markdown: str | None = None, model_name: str = "korlm-bert",
                      corpus_stats: dict | None = None, license: str = "apache-2.0") -> dict:
    """Write ``output_dir`` as a Hugging Face ``BertForMaskedLM`` model directory.

    Returns a summary: ``output_dir``, ``files`` (name -> bytes), ``config``, ``step`` and
    ``num_parameters``. Everything is checked before anything is written; the directory
    is published atomically.
    """
    info = models.checkpoint_info(checkpoint_dir)
    _check_exportable_family(info, checkpoint_dir)
    tokenizer = _read_tokenizer(tokenizer_dir)
    tok_vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    if tok_vocab != int(info["vocab_size"]):
        raise KorlmError(
            f"tokenizer {tokenizer_dir} has {tok_vocab} tokens but checkpoint {checkpoint_dir} "
            f"was trained with vocab_size {info['vocab_size']}; export it with its own tokenizer"
        )

    task = models.load_masked_lm(checkpoint_dir)
    if int(task.backbone.vocabulary_size) != tok_vocab:
        raise KorlmError(
            f"checkpoint {checkpoint_dir} weights have vocabulary {task.backbone.vocabulary_size}, "
            f"tokenizer has {tok_vocab}"
        )
    pad_id = tokenizer.token_to_id("[PAD]")
    if pad_id is None:  # a BART/RoBERTa-family vocab (korlm vocab --special-tokens bart)
        pad_id = tokenizer.token_to_id("<pad>")
    config = bert_config(task, pad_token_id=0 if pad_id is None else pad_id)
    state = bert_state_dict(task)
    num_parameters = int(sum(a.size for a in state.values()))

    special = {name: tok for name, tok in (
        ("unk_token", "[UNK]"), ("sep_token", "[SEP]"), ("pad_token", "[PAD]"),
        ("cls_token", "[CLS]"), ("mask_token", "[MASK]")) if tokenizer.token_to_id(tok) is not None}
    tok_config = _tokenizer_config(tokenizer_dir, config["max_position_embeddings"], special)
    card = model_card(
        model_name=model_name, license=license, config=config, info=info,
        num_parameters=num_parameters, mask_token=tok_config.get("mask_token", special.get("mask_token")),
        results_markdown=results_markdown, corpus_stats=corpus_stats,
        pre_tokenizer=tok_config.get("korlm_pre_tokenizer"),
    )

    from safetensors.numpy import save_file

    with storage.atomic_output_dir(output_dir) as staging:
        save_file(state, os.path.join(staging, WEIGHTS_FILE), metadata={"format": "pt"})
        with open(os.path.join(staging, CONFIG_FILE), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, sort_keys=True)
            f.write("\n")
        for name in TOKENIZER_FILES:
            src = storage.join(tokenizer_dir, name)
            if name == "tokenizer_config.json":
                with open(os.path.join(staging, name), "w", encoding="utf-8") as f:
                    json.dump(tok_config, f, indent=2, ensure_ascii=False)
                    f.write("\n")
            elif name == TOKENIZER_FILE:
                with open(os.path.join(staging, name), "w", encoding="utf-8") as f:
                    f.write(_with_bert_template(tokenizer).to_str(pretty=True))
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
        "num_parameters": num_parameters,
    }
