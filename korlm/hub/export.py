"""Export a korlm checkpoint as a Hugging Face model directory.

The output (``hf/``) holds ``config.json``, ``model.safetensors`` (through the family's
converters in ``korlm.modeling.hf_mapping``), ``generation_config.json`` (BART), the
tokenizer files and a ``README.md`` model card (``korlm.hub.model_card``); an ELECTRA
export adds ``generator/`` (the generator as ``ElectraForMaskedLM``, with the tokenizer).

Heavy imports (keras, keras_hub, tokenizers, safetensors) happen inside functions so that
importing this module stays cheap for the CLI and for pipeline compilation.
"""

from __future__ import annotations

import json
import os
from typing import Any

from korlm import storage
from korlm.errors import KorlmError
from korlm.hub.model_card import model_card
from korlm.modeling import checkpoints
from korlm.modeling.hf_mapping import (
    CONFIG_FILE,
    ELECTRA_GENERATOR_DIR,
    FAMILY_EXPORTS,
    WEIGHTS_FILE,
    bart_generation_config,
    electra_generator_state_dict_and_config,
    state_dict_and_config,
)
from korlm.modeling.presets import MODEL_FAMILIES

GENERATION_CONFIG_FILE = "generation_config.json"
CARD_FILE = "README.md"
REPORT_IMAGES_DIR = "report"  # the report's PNGs in the export (the card links them)
TOKENIZER_FILE = "tokenizer.json"
# tokenizer.json is required; the others are copied when the tokenizer step wrote them.
TOKENIZER_FILES = (TOKENIZER_FILE, "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "spm.model")


# --------------------------------------------------------------------------- checks


def _check_exportable_family(info: dict[str, Any], checkpoint_dir: str) -> str:
    family = info.get("model")
    if family not in MODEL_FAMILIES or family not in FAMILY_EXPORTS:
        raise KorlmError(f"{checkpoint_dir}: unknown model family {family!r} in {checkpoints.CHECKPOINT_INFO}")
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


# --------------------------------------------------------------------------- model card


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
    if family not in ("bert", "electra"):
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
    path = storage.join(checkpoint_dir, checkpoints.NSP_HEAD)
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


def read_report(report_dir: str) -> tuple[str | None, dict | None, list[str]]:
    """``(results.md text, results.json, PNG names)`` of a ``korlm report`` folder (None
    / [] for what it lacks)."""
    md, js = storage.join(report_dir, "results.md"), storage.join(report_dir, "results.json")
    markdown = storage.read_text(md) if storage.exists(md) else None
    results = None
    if storage.exists(js):
        try:
            results = json.loads(storage.read_text(js))
        except json.JSONDecodeError as exc:
            raise KorlmError(f"{js} is not valid JSON ({exc.msg})") from None
    images = sorted(p.rstrip("/").rsplit("/", 1)[-1]
                    for p in storage.glob(storage.join(report_dir, "*.png")))
    return markdown, results, images


def export_checkpoint(checkpoint_dir: str, tokenizer_dir: str | None, output_dir: str, *,
                      results_markdown: str | None = None, model_name: str | None = None,
                      corpus_stats: dict | None = None, license: str = "apache-2.0",
                      overwrite: bool = False, report_dir: str | None = None) -> dict:
    """Write ``output_dir`` as a Hugging Face model directory for the checkpoint's family
    (``BertForMaskedLM``, ``RobertaForMaskedLM``, ``BartForConditionalGeneration``, or for
    ELECTRA the discriminator as ``ElectraForPreTraining`` and the generator as
    ``ElectraForMaskedLM`` in ``generator/``, with its own copy of the tokenizer files).

    ``tokenizer_dir``: None for the checkpoint's own tokenizer, else an override checked
    against the checkpoint's vocab hash (:func:`korlm.modeling.checkpoints.resolve_tokenizer`).
    ``model_name`` (the card's title) defaults to ``korlm-<family>``. Returns a summary:
    ``output_dir``, ``files`` (name -> bytes), ``config``, ``step``, ``model``,
    ``architecture`` and ``num_parameters``. ``report_dir``: a ``korlm report`` folder:
    its ``results.md`` is the card's results (unless ``results_markdown`` is given), its
    ``results.json`` gives the exported checkpoint's ``model-index``, and its PNGs are
    copied to ``report/`` in the export so the card's image links resolve on the Hub.
    Everything is checked before anything is
    written (``output_dir`` too: new, empty or, with ``overwrite``, an earlier export);
    the directory is published atomically.
    """
    info = checkpoints.checkpoint_info(checkpoint_dir)
    family = _check_exportable_family(info, checkpoint_dir)
    tokenizer_dir = checkpoints.resolve_tokenizer(checkpoint_dir, tokenizer_dir, info)
    tokenizer = _read_tokenizer(tokenizer_dir)
    tok_vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    if tok_vocab != int(info["vocab_size"]):
        raise KorlmError(
            f"tokenizer {tokenizer_dir} has {tok_vocab} tokens but checkpoint {checkpoint_dir} "
            f"was trained with vocab_size {info['vocab_size']}; export it with its own tokenizer"
        )
    vocab_family, roles, special_ids = _special_tokens(tokenizer, tokenizer_dir)
    results, images = None, []
    if report_dir is not None:
        if not storage.exists(report_dir):
            raise KorlmError(f"report folder {report_dir} does not exist")
        report_markdown, results, images = read_report(report_dir)
        results_markdown = results_markdown if results_markdown is not None else report_markdown
    inputs = [checkpoint_dir, tokenizer_dir]  # the inputs are fine: now the output
    # the report folder is read for three named parts: the export may sit inside it
    storage.check_output(output_dir, "export", inputs=inputs, containers=[report_dir],
                         overwrite=overwrite)

    task = checkpoints.load_pretraining_task(checkpoint_dir)
    # (KerasHub's ElectraBackbone names it vocab_size)
    weights_vocab = int(getattr(task.backbone, "vocabulary_size", None) or task.backbone.vocab_size)
    if weights_vocab != tok_vocab:
        raise KorlmError(
            f"checkpoint {checkpoint_dir} weights have vocabulary {weights_vocab}, "
            f"tokenizer has {tok_vocab}"
        )
    state, config = state_dict_and_config(family, task, special_ids)
    # ELECTRA: the discriminator above; the generator as ElectraForMaskedLM in generator/
    generator = (electra_generator_state_dict_and_config(task, special_ids)
                 if family == "electra" else None)
    architecture = FAMILY_EXPORTS[family]["architecture"]
    nsp = _next_sentence_head(checkpoint_dir) if family == "bert" else None
    if nsp is not None:  # pretrained with next-sentence labels: BertForPreTraining
        import numpy as np

        kernel, bias = nsp
        hidden = int(task.backbone.hidden_dim)
        if kernel.shape != (hidden, 2) or bias.shape != (2,):
            raise KorlmError(f"{checkpoint_dir}/{checkpoints.NSP_HEAD} has shapes {kernel.shape}, "
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
        results=results, checkpoint=checkpoint_dir.rstrip("/").rsplit("/", 1)[-1],  # evaluate's row name
        images={name: f"{REPORT_IMAGES_DIR}/{name}" for name in images},
    )

    from safetensors.numpy import save_file

    with storage.atomic_output_dir(output_dir, "export", inputs=inputs, containers=[report_dir],
                                   overwrite=overwrite) as staging:
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
        if generator is not None:  # a model directory of its own, tokenizer included
            folder = os.path.join(staging, ELECTRA_GENERATOR_DIR)
            os.makedirs(folder)
            save_file(generator[0], os.path.join(folder, WEIGHTS_FILE), metadata={"format": "pt"})
            _write_json(os.path.join(folder, CONFIG_FILE), generator[1])
            for name in TOKENIZER_FILES:
                if os.path.exists(os.path.join(staging, name)):
                    with open(os.path.join(staging, name), "rb") as fin, \
                            open(os.path.join(folder, name), "wb") as fout:
                        fout.write(fin.read())
        if images:  # the card links them as report/<name>.png
            os.makedirs(os.path.join(staging, REPORT_IMAGES_DIR))
            for name in images:
                with storage.open_file(storage.join(report_dir, name), "rb") as fin, \
                        open(os.path.join(staging, REPORT_IMAGES_DIR, name), "wb") as fout:
                    fout.write(fin.read())
        files = {os.path.relpath(os.path.join(root, name), staging):
                 os.path.getsize(os.path.join(root, name))
                 for root, _, names in os.walk(staging) for name in names}
        files = dict(sorted(files.items()))

    return {
        "output_dir": output_dir,
        "files": files,
        "config": config,
        "step": info.get("step"),
        "model": family,
        "architecture": architecture,
        "num_parameters": num_parameters,
        **({"generator": {"dir": ELECTRA_GENERATOR_DIR, "config": generator[1],
                          "architecture": "ElectraForMaskedLM"}} if generator is not None else {}),
    }
