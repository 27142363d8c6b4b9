"""The model card (``README.md``) of a Hugging Face export: Hub metadata, usage, training
settings, architecture, corpus statistics and evaluation results."""

from __future__ import annotations

import json
from typing import Any

from korlm.modeling.hf_mapping import FAMILY_EXPORTS


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
            "```python\nfrom korlm.tokenizer.morpheme import segment\n\ntokenizer(segment(text))\n```\n"
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
