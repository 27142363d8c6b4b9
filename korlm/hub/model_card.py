"""The model card (``README.md``) of a Hugging Face export: Hub metadata, usage, training
settings, architecture, corpus statistics and evaluation results.

With a report's ``results.json`` the front matter carries the exported checkpoint's
scores as ``model-index`` (task, dataset, split, metric type and value: what the Hub's
"Evaluation results" panel and leaderboards read) and the Hub ids of the datasets, written
and read back through huggingface_hub's ``ModelCardData``/``ModelCard``; the body prints
the same scores as Korean papers do (x100, two decimals). Report images are linked only
where the export ships them (``images``)."""

from __future__ import annotations

import json
import re
from typing import Any

from korlm.errors import KorlmError
from korlm.modeling.hf_mapping import FAMILY_EXPORTS

# Where each built-in task's data lives on the Hugging Face Hub (model-index
# `dataset.type`, and the card's `datasets`), its config there, and the Hub split each of
# korlm's test files is (korlm.evaluation.tasks names the files). Only ids checked to
# exist: NSMC (github.com/e9t/nsmc) as `e9t/nsmc`, KLUE as `klue/klue` (configs nli, sts),
# KorQuAD 1.0 as `KorQuAD/squad_kor_v1`. KorNLI/KorSTS (github.com/kakaobrain/
# kor-nlu-datasets), the hate-speech, question-pair and chatbot data are not mapped: we
# could not confirm a Hub id from here, so their model-index entries name the korlm task
# as `dataset.type` and they stay out of `datasets`.
HUB_DATASETS: dict[str, dict[str, Any]] = {
    "nsmc": {"id": "e9t/nsmc", "name": "NSMC", "splits": {"ratings_test.txt": "test"}},
    "klue-nli": {"id": "klue/klue", "config": "nli", "name": "KLUE-NLI",
                 "splits": {"klue-nli-v1.1_dev.json": "validation"}},
    "klue-sts": {"id": "klue/klue", "config": "sts", "name": "KLUE-STS",
                 "splits": {"klue-sts-v1.1_dev.json": "validation"}},
    "korquad": {"id": "KorQuAD/squad_kor_v1", "name": "KorQuAD 1.0",
                "splits": {"KorQuAD_v1.0_dev.json": "validation"}},
}
# The task files' own names for the rest (their split as the source names it).
_OTHER_DATASETS: dict[str, dict[str, Any]] = {
    "korsts": {"name": "KorSTS", "splits": {"sts-test.tsv": "test"}},
    "kornli": {"name": "KorNLI", "splits": {"xnli.test.ko.tsv": "test"}},
    "question-pair": {"name": "Korean question pairs", "splits": {"test.txt": "test"}},
    "hate-speech": {"name": "Korean hate speech (hate)", "splits": {"dev.tsv": "dev"}},
    "hate-speech-bias": {"name": "Korean hate speech (bias)", "splits": {"dev.tsv": "dev"}},
    "chatbot": {"name": "Chatbot data"},
}
# korlm metric -> (model-index metric type, as the Hub's metric ids; display name)
_METRIC_TYPES = {
    "accuracy": ("accuracy", "Accuracy (%)"),
    "macro_f1": ("f1", "Macro F1 (x100)"),
    "pearson": ("pearsonr", "Pearson r (x100)"),
    "spearman": ("spearmanr", "Spearman r (x100)"),
    "f1_at_threshold": ("f1", "F1, similarity >= 3.0 (x100)"),
    "exact_match": ("exact_match", "Exact match (%)"),
    "f1": ("f1", "F1 (x100)"),
}
_HUB_TASK_TYPES = {"classification": "text-classification",
                   "pair-classification": "text-classification",
                   "regression": "text-classification",  # as GLUE STS-B: one regression output
                   "extractive-qa": "question-answering"}
# Image links of the report's results.md (``![x.png](x.png)``).
_IMAGE_LINK = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)\n?")


def percent(value: float | None) -> str:
    """A score as Korean papers print it: x100, two decimals (0.89614 -> 89.61)."""
    return "n/a" if value is None else f"{100 * value:.2f}"


def _split_of(task: str, record: dict[str, Any]) -> str:
    """The split the score was measured on: the source's name for the test file, or the
    file and "korlm-derived" when korlm carved the test rows out of it; a score on a
    sample of the split (``max_eval_examples``) says how many rows it used."""
    split = (record.get("splits") or {}).get("test") or {}
    name = _split_name(task, split.get("file") or "", record.get("split_note") or "")
    used, rows = split.get("used"), split.get("rows")
    if used is not None and rows is not None and used < rows:
        name += f" (korlm sample: {used} of {rows} rows)"
    return name


def _split_name(task: str, test: str, split_note: str) -> str:
    base = test.replace("\\", "/").rsplit("/", 1)[-1]
    known = (HUB_DATASETS.get(task) or _OTHER_DATASETS.get(task) or {}).get("splits", {})
    derived = "derived" in split_note or "parts of" in split_note
    if base in known and not derived:
        return known[base]
    return f"{base or 'test'} (korlm-derived part)"


def checkpoint_results(results: dict[str, Any], checkpoint: str) -> dict[str, dict[str, Any]]:
    """``task -> {"type", "split", "split_note", "metrics": {metric: value}}`` of one
    checkpoint's row in a report's ``results.json`` (seed means, as the report's table);
    empty when the report has no row for it."""
    values = (results.get("values") or {}).get(checkpoint)
    if not values:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for record in results.get("records") or []:
        if record.get("checkpoint") != checkpoint or record.get("random_init"):
            continue
        task = record["task"]
        entry = out.setdefault(task, {"type": record.get("task_type"),
                                      "split": _split_of(task, record),
                                      "split_note": record.get("split_note") or "",
                                      "metrics": {}})
        for metric in record.get("metrics") or {}:
            value = values.get(f"{task}/{metric}")
            if value is not None:
                entry["metrics"][metric] = float(value)
    return {t: e for t, e in sorted(out.items()) if e["metrics"]}


def eval_results(scores: dict[str, dict[str, Any]]):
    """huggingface_hub ``EvalResult`` s (the card's ``model-index``) for
    :func:`checkpoint_results`: values x100 rounded to two decimals, as the table."""
    from huggingface_hub import EvalResult

    found = []
    for task, entry in scores.items():
        hub = HUB_DATASETS.get(task)
        other = _OTHER_DATASETS.get(task, {})
        for metric, value in entry["metrics"].items():
            metric_type, metric_name = _METRIC_TYPES.get(metric, (metric, metric))
            found.append(EvalResult(
                task_type=_HUB_TASK_TYPES.get(entry["type"], "text-classification"),
                dataset_type=hub["id"] if hub else task,
                dataset_name=(hub or other).get("name", task),
                dataset_config=(hub or {}).get("config"),
                dataset_split=entry["split"],
                metric_type=metric_type, metric_name=metric_name,
                metric_value=round(100 * value, 2)))
    return found


def papers_table(results: dict[str, Any], checkpoint: str) -> str:
    """The report's columns for this checkpoint, the random-init baseline and the
    published reference rows, printed as Korean papers print them (x100, two decimals)."""
    columns = results.get("columns") or []
    values = results.get("values") or {}
    rows = [r for r in [checkpoint, "random-init", *results.get("external_rows", [])]
            if r in values]
    if checkpoint not in values or not columns:
        return ""
    lines = ["| model | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for row in rows:
        label = f"**{row}** (this model)" if row == checkpoint else row
        cells = [percent(values[row].get(c)) if c in values[row] else "—" for c in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return ("\n".join(lines) + "\n\nScores x100, two decimals (accuracy and exact match in "
            "percent, F1 and correlations x100), as Korean benchmark papers print them; rows "
            "marked (external) are published scores of other models (sources below).\n")


def _front_matter(meta: dict[str, Any], model_name: str, results) -> str:
    """YAML front matter through huggingface_hub's ``ModelCardData`` (which checks the
    ``model-index`` it writes)."""
    from huggingface_hub import ModelCardData

    data = ModelCardData(model_name=model_name if results else None,
                         eval_results=results or None, **meta)
    return "---\n" + data.to_yaml() + "\n---\n"


def validate_card(text: str, expected_results: int) -> None:
    """Parse the card with huggingface_hub's ``ModelCard`` and check its ``model-index``
    reads back as ``expected_results`` results (KorlmError otherwise)."""
    from huggingface_hub import ModelCard

    try:
        card = ModelCard(text, ignore_metadata_errors=False)
    except ValueError as exc:
        raise KorlmError(f"the model card's metadata does not validate: {exc}") from None
    found = len(card.data.eval_results or [])
    if found != expected_results:
        raise KorlmError(f"the model card's model-index reads back {found} results, "
                         f"{expected_results} written")


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
    "electra": ("vocab_size", "embedding_size", "hidden_size", "num_hidden_layers",
                "num_attention_heads", "intermediate_size", "max_position_embeddings", "hidden_act"),
}


def _usage(family: str, mask_token: str | None) -> str:
    example = f"오늘 날씨가 정말 {mask_token or '[MASK]'}."
    if family == "electra":
        return (
            "## Usage\n\nThe discriminator is the model to fine-tune (as KoELECTRA's):\n\n"
            "```python\nfrom transformers import AutoModelForSequenceClassification, AutoTokenizer\n\n"
            "tokenizer = AutoTokenizer.from_pretrained(\"PATH_OR_REPO_ID\")\n"
            "model = AutoModelForSequenceClassification.from_pretrained(\"PATH_OR_REPO_ID\", num_labels=2)\n"
            "```\n\nIts replaced-token logits (`ElectraForPreTraining`) and the generator, a small "
            "masked LM, in the `generator` subfolder:\n\n"
            "```python\nfrom transformers import pipeline\n\n"
            "fill = pipeline(\"fill-mask\", model=\"PATH_OR_REPO_ID\", "
            "model_kwargs={\"subfolder\": \"generator\"})\n"
            f"fill(\"{example}\")\n```\n"
        )
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
               family: str | None = None, results: dict[str, Any] | None = None,
               checkpoint: str | None = None, images: dict[str, str] | None = None) -> str:
    """``results``: a report's ``results.json``; ``checkpoint``: the exported
    checkpoint's row name in it (``step-000100``). ``images``: report image name -> its
    path in the export; image links of ``results_markdown`` to other names are dropped
    (they would not resolve on the Hub)."""
    family = family or config.get("model_type", "bert")
    spec = FAMILY_EXPORTS[family]
    meta = {
        "language": ["ko"],
        "license": license,
        "library_name": "transformers",
        "pipeline_tag": spec["pipeline_tag"],
        "tags": list(spec["tags"]),
    }
    if mask_token and family != "electra":  # the discriminator fills no masks
        meta["widget"] = [{"text": f"오늘 날씨가 정말 {mask_token}."}]

    scores = checkpoint_results(results, checkpoint) if results and checkpoint else {}
    found = eval_results(scores)
    datasets = sorted({HUB_DATASETS[t]["id"] for t in scores if t in HUB_DATASETS})
    if datasets:
        meta["datasets"] = datasets
    parts = [_front_matter(meta, model_name, found), f"# {model_name}\n"]
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
    table = papers_table(results, checkpoint) if scores else ""
    if table:
        notes = "".join(f"- {t}: {e['split']}" + (f"; {e['split_note']}" if e["split_note"] else "")
                        + "\n" for t, e in scores.items())
        parts.append(f"## Evaluation results\n\nFine-tuned from checkpoint `{checkpoint}`; "
                     "the same scores are in the card's `model-index`.\n\n" + table
                     + f"\nScored on:\n{notes}")
    if results_markdown:
        def link(match: re.Match) -> str:
            target = (images or {}).get(match.group(2))
            return f"![{match.group(1)}]({target})\n" if target else ""

        body = _IMAGE_LINK.sub(link, results_markdown).strip()
        body = re.sub(r"^# korlm results\s*", "", body)  # the card has its own heading
        title = "## Full evaluation report" if table else "## Evaluation results"
        parts.append(f"{title}\n\n{body}\n")
    parts.append(
        "## Limitations\n\nThe model reflects its pretraining corpus, including its biases and "
        "its domains; evaluate it on your task before use.\n"
    )
    text = "\n".join(parts)
    validate_card(text, len(found))
    return text
