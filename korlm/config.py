"""The run configuration: one YAML file, validated, read by the CLI and the pipeline.

Unknown or mistyped keys, wrong types and impossible values are errors that name the
key (``pretrain.steps: must be greater than 0``), raised as :class:`ConfigError`.
"""

from __future__ import annotations

import os
import re
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from korlm.clean.filters import compile_patterns
from korlm.errors import KorlmError


class ConfigError(KorlmError):
    """A config file that cannot be used; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunSection(_Section):
    id: str | None = Field(None, description="run id; default: a UTC timestamp")
    output_root: str = Field("runs", description="where runs/<run-id>/ folders are written")
    overwrite: bool = Field(False, description="step commands (korlm clean, vocab, ...) replace an "
                            "earlier korlm output of the same step at --output (as --overwrite); "
                            "a folder holding anything korlm did not write is refused regardless")

    @model_validator(mode="after")
    def _id_is_a_folder_name(self):
        if self.id is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", self.id):
            raise ValueError(f"run.id {self.id!r} must be letters, digits, '.', '_' or '-'")
        return self


class CleanInput(_Section):
    path: str = Field(description="file, glob or gs:// URI")
    format: Literal["txt", "paragraphs", "jsonl", "csv", "tsv", "xml", "modu"] | None = Field(
        None, description="inferred from the file name when absent (.txt .jsonl .csv .tsv .xml, "
                          ".json = modu); paragraphs = documents separated by blank lines")
    field: str | None = Field(None, description="JSON field, CSV/TSV column, XML element path "
                                                "or Modu unit list (paragraph/utterance) holding the text")


def clean_input(data: Any, source: str = "input") -> CleanInput:
    """One ``clean.inputs`` entry from plain data (``{"path": ..., "format": ..., "field":
    ...}``), with a one-line ConfigError naming the key for a bad one."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: an input is a mapping like {{path: FILE, format: tsv, field: review}}")
    try:
        return CleanInput.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: " + "; ".join(describe_error(e) for e in exc.errors())) from None


class CleanSection(_Section):
    inputs: list[CleanInput] = Field(default_factory=list)
    normalization: Literal["NFC", "NFKC"] = Field("NFC", description="Unicode normalization form")
    sentence_splitter: Literal["kiwi", "regex", "line"] = Field(
        "kiwi", description="kiwi (kiwipiepy, batched), regex (terminal punctuation, no model) "
                            "or line (each line of a document is one sentence)")
    max_repeat: int = Field(2, ge=0, description="cap runs of one repeated character (ㅋㅋㅋㅋ -> ㅋㅋ); 0 = off")
    remove_emoji: bool = Field(True, description="drop emoji (♡ ★ ♪ and other plain symbols stay)")
    remove_hanja: bool = Field(False, description="drop hanja (CJK ideographs)")
    remove_foreign_scripts: bool = Field(
        False, description="drop letters of scripts other than Hangul and Latin (kana, Cyrillic, ...)")
    pii: Literal["replace", "drop_sentence", "off"] = Field(
        "replace", description="e-mail, URL, phone, resident/card number, IP: replace with the "
                               "placeholder, drop the sentence holding it, or leave it (off)")
    pii_placeholder: str = Field("<{kind}>", description="replacement; {kind} becomes EMAIL, PHONE, ...")
    min_document_chars: int = Field(10, ge=0, description="shorter documents: too_short_document")
    max_document_chars: int = Field(1_000_000, ge=1, description="longer documents: too_long_document "
                                                                 "(checked before the costly steps)")
    min_hangul_ratio: float = Field(0.5, ge=0, le=1, description="Hangul share of letters; 0 = off")
    max_symbol_ratio: float = Field(0.5, ge=0, le=1, description="symbol share of non-space chars; 1 = off")
    max_digit_ratio: float = Field(0.5, ge=0, le=1, description="digit share of non-space chars; 1 = off")
    repetition_filter: bool = Field(True, description="Gopher duplicate-line and duplicate-n-gram rules")
    max_duplicate_line_fraction: float = Field(0.3, ge=0, le=1)
    max_duplicate_line_char_fraction: float = Field(0.2, ge=0, le=1)
    repetition_min_words: int = Field(50, ge=1, description="n-gram rules only judge documents this long")
    boilerplate_patterns: list[str] | None = Field(
        None, description="regexes; a matching sentence is dropped. Default: Korean news/web "
                          "boilerplate (무단전재 및 재배포 금지, bylines, copyright, ads); [] = off")
    min_sentence_chars: int = Field(2, ge=1)
    max_sentence_chars: int = Field(1000, ge=1)
    min_sentence_eojeol: int = Field(1, ge=0)
    max_sentence_eojeol: int = Field(300, ge=1)
    dedup_documents: bool = Field(True, description="exact duplicate documents (normalized text)")
    dedup_sentences: bool = Field(True, description="exact duplicate sentences across the corpus")
    dedup_sentence_min_chars: int = Field(15, ge=1, description="shorter sentences are never deduplicated")
    near_dedup: bool = Field(True, description="MinHash LSH near-duplicate documents")
    near_dedup_threshold: float = Field(0.8, gt=0, lt=1, description="Jaccard similarity of shingle sets")
    near_dedup_num_perm: int = Field(128, ge=8)
    near_dedup_shingle_size: int = Field(3, ge=1, description="eojeol n-gram shingles")
    near_dedup_min_words: int = Field(20, ge=1, description="shorter documents skip near-dedup")
    dedup_shards: int = Field(16, ge=1, description="parallelism of the dedup shuffle (raise on Dataflow)")
    rejected_sample_rate: float = Field(1.0, ge=0, le=1,
                                        description="share of rejections written to rejected/*.jsonl "
                                                    "(stats count all)")
    beam_options: list[str] = Field(default_factory=list,
                                    description="Beam pipeline args, e.g. --runner=DataflowRunner")

    @model_validator(mode="after")
    def _limits_ordered(self):
        if self.min_sentence_chars > self.max_sentence_chars:
            raise ValueError("min_sentence_chars must not exceed max_sentence_chars")
        if self.min_sentence_eojeol > self.max_sentence_eojeol:
            raise ValueError("min_sentence_eojeol must not exceed max_sentence_eojeol")
        if self.max_document_chars < self.min_document_chars:
            raise ValueError("max_document_chars must not be less than min_document_chars")
        try:
            self.pii_placeholder.format(kind="EMAIL")
        except (KeyError, IndexError, ValueError):
            raise ValueError("pii_placeholder may only use the field {kind}") from None
        try:
            compile_patterns(self.boilerplate_patterns or [])
        except re.error as exc:
            raise ValueError(f"boilerplate_patterns: not a valid regular expression list ({exc})") from None
        return self


class VocabSection(_Section):
    algorithm: Literal["wordpiece", "sentencepiece-unigram", "sentencepiece-bpe"] = "wordpiece"
    pre_tokenizer: Literal["none", "morpheme"] = "none"
    vocab_size: int = Field(8000, ge=16, le=1_000_000)
    min_frequency: int = Field(2, ge=1)
    # Deterministic hash sample of the training sentences (count and/or UTF-8 bytes).
    max_sentences: int | None = Field(None, ge=1)
    max_bytes: int | None = Field(None, ge=1)
    heldout_every: int = Field(20, ge=0)
    # full: every Hangul syllable, jamo and printable ASCII encode without [UNK].
    coverage: Literal["full", "corpus"] = "full"
    # Special tokens at ids 0-4: bert [PAD] [UNK] [CLS] [SEP] [MASK]; bart (BART/RoBERTa,
    # fairseq order) <s> <pad> </s> <unk> <mask>.
    special_tokens: Literal["bert", "bart"] = "bert"


class PretrainDataSection(_Section):
    objective: Literal["mlm", "bart"] = "mlm"
    max_seq_length: int = Field(128, ge=8, le=4096)
    num_shards: int = Field(2, ge=1)
    seed: int = 0
    packing: Literal["full-sentences", "doc-sentences", "segment-pair", "span"] | None = Field(
        None, description="full-sentences (RoBERTa, may cross documents), doc-sentences (never crosses), "
                          "segment-pair (BERT A/B), span (BART); default: full-sentences for mlm, span for bart")
    nsp: bool = Field(False, description="next-sentence labels (50% random B); segment-pair only")
    short_seq_prob: float | None = Field(None, ge=0, le=1,
                                         description="segment-pair: share of shorter targets (default 0.1)")
    masking: Literal["dynamic", "static"] = Field(
        "dynamic", description="dynamic: masked at training time; static: BERT create_pretraining_data")
    dupe_factor: int | None = Field(None, ge=1, description="static: packings with different masks (default 10)")
    mask_rate: float | None = Field(None, gt=0, lt=1, description="static: share of tokens masked (default 0.15)")
    whole_word: Literal["none", "eojeol", "morpheme"] | None = Field(
        None, description="static: mask whole eojeol/morphemes (default none)")
    extra_seq_lengths: list[int] = Field(
        default_factory=list, description="also pack at these lengths into seq<N>/ (for "
                                          "pretrain.phases); default: every phase length")
    heldout_fraction: float = Field(
        0.02, ge=0, lt=0.5, description="share of documents (of examples for full-sentences packing) "
                                        "written to heldout/ instead of the training shards, for "
                                        "pretrain's held-out MLM loss; 0 = none")
    beam_options: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _settings_combine(self):
        from korlm.pretrain_data.packing import resolve_settings

        try:
            resolve_settings(**self.model_dump(exclude={"num_shards", "seed", "beam_options",
                                                        "extra_seq_lengths", "heldout_fraction"}))
        except KorlmError as exc:
            raise ValueError(str(exc)) from None
        return self


class PretrainPhase(_Section):
    """One phase of a multi-phase schedule (BERT: 90% of the steps at 128 tokens, then 10%
    at 512); the learning-rate schedule runs across all phases."""

    steps: int = Field(gt=0)
    max_seq_length: int = Field(ge=8, description="this phase's sequence length; its data is "
                                                  "DATA/seq<N> when pretrain-data made one")
    batch_size: int | None = Field(None, gt=0, description="default: pretrain.batch_size")


class PretrainSection(_Section):
    model: Literal["bert", "roberta", "bart", "electra"] = Field(
        "bert", description="electra: generator + discriminator (replaced token detection)")
    size: Literal["tiny", "mini", "small", "base", "large"] = "tiny"
    steps: int = Field(300, gt=0)
    checkpoint_every: int = Field(100, gt=0)
    batch_size: int = Field(32, gt=0)
    learning_rate: float = Field(5e-4, gt=0, lt=1)
    warmup_steps: int = Field(30, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    mask_rate: float = Field(0.15, gt=0, lt=1, description="MLM: share of maskable tokens predicted")
    mask_token_rate: float = Field(0.8, ge=0, le=1, description="MLM: predicted tokens shown as [MASK]")
    random_token_rate: float = Field(0.1, ge=0, le=1,
                                     description="MLM: predicted tokens replaced by a random token "
                                                 "(the rest stay unchanged)")
    whole_word: Literal["none", "eojeol", "morpheme"] = Field(
        "none", description="MLM: mask whole eojeol (word_starts) or morphemes (morpheme_starts, "
                            "morpheme vocab only); none = token-level")
    max_predictions: int | None = Field(None, ge=1, description="MLM: predicted tokens per example at "
                                                                "most; default ceil(max_seq_length * mask_rate)")
    infill_rate: float = Field(0.3, ge=0, lt=1, description="BART: share of tokens covered by infilling spans")
    poisson_lambda: float = Field(3.0, gt=0, le=64, description="BART: mean infilling span length")
    permute_sentences: bool = Field(False, description="BART: shuffle the sentences of each example")
    ignore_nsp_labels: bool = Field(False, description="train MLM only on data with next-sentence labels "
                                                       "(default: BERT trains its NSP head on them)")
    max_seq_length: int | None = Field(None, ge=8, description="default: the data's; shorter cuts examples")
    phases: list[PretrainPhase] = Field(
        default_factory=list, description="multi-phase schedule by sequence length; steps must add "
                                          "up to pretrain.steps")
    optimizer: Literal["adamw", "lamb"] = Field("adamw", description="lamb: for large batches")
    clip_norm: float = Field(1.0, ge=0, description="clip by global gradient norm; 0 = off")
    grad_accum_steps: int = Field(1, ge=1, description="micro-batches per update (batch_size is per update)")
    keep_checkpoints: int | None = Field(None, ge=1, description="keep the last K checkpoints (plus "
                                                                "keep_checkpoint_every and the final); "
                                                                "default: keep all")
    keep_checkpoint_every: int | None = Field(None, gt=0, description="checkpoints at multiples of this "
                                                                      "are never pruned (the evaluated ones)")
    strategy: Literal["auto", "cpu", "gpu", "tpu", "jax-data-parallel"] = Field(
        "auto", description="auto: TPU if configured, several GPUs mirrored, else one device")
    tpu: str | None = Field(None, description="TPU name or grpc:// address (default: TPU_NAME or the TPU VM)")
    precision: Literal["auto", "float32", "mixed_bfloat16", "mixed_float16"] = Field(
        "auto", description="auto: bf16 on TPU and bf16-capable GPUs; on a CPU with native bf16 "
                            "(avx512_bf16/amx_bf16) mixed_bfloat16 from hidden 256 (mini) up, "
                            "else float32 (korlm.pretrain.distribute)")
    peak_tflops: float | None = Field(None, gt=0, description="peak TFLOP/s per device for the MFU "
                                                              "estimate (default: korlm.pretrain.distribute's table)")
    deterministic: bool = Field(False, description="op determinism + sequential input: a resumed run "
                                                   "ends with the same weights as an uninterrupted one")
    progress: Literal["auto", "bar", "lines"] = Field("auto", description="auto: a bar on a terminal")
    log_every: int = Field(10, gt=0, description="steps between train_log.jsonl / TensorBoard records")
    dropout: float = Field(0.0, ge=0, lt=1, description="backbone dropout while pretraining (Cramming: 0; "
                                                       "docs/training.md); fine-tuning uses evaluate.dropout")
    heldout_examples: int = Field(512, ge=0, description="examples of the data's held-out slice scored "
                                                         "at each checkpoint (held-out loss); 0 = none")
    seed: int = 0

    @model_validator(mode="after")
    def _checkpoint_fits(self):
        if self.checkpoint_every > self.steps:
            raise ValueError(
                f"checkpoint_every ({self.checkpoint_every}) is larger than steps ({self.steps})")
        if self.mask_token_rate + self.random_token_rate > 1 + 1e-9:
            raise ValueError(f"mask_token_rate + random_token_rate must be <= 1, got "
                             f"{self.mask_token_rate} + {self.random_token_rate}")
        if self.phases and sum(p.steps for p in self.phases) != self.steps:
            raise ValueError(f"phases add up to {sum(p.steps for p in self.phases)} steps, "
                             f"steps is {self.steps}")
        for where, batch in [("batch_size", self.batch_size)] + [
                (f"phases[{i}].batch_size", p.batch_size) for i, p in enumerate(self.phases) if p.batch_size]:
            if batch % self.grad_accum_steps:
                raise ValueError(f"{where} ({batch}) does not split into grad_accum_steps="
                                 f"{self.grad_accum_steps} equal micro-batches")
        return self


class EvaluateTaskSettings(_Section):
    """Per-task fine-tuning settings (evaluate.per_task.<task>); unset keys keep the
    section's value."""

    max_seq_length: int | None = Field(None, ge=8)
    batch_size: int | None = Field(None, gt=0)
    epochs: int | None = Field(None, ge=1)
    learning_rate: float | None = Field(None, gt=0, lt=1)
    max_train_examples: int | None = Field(None, ge=1)
    max_eval_examples: int | None = Field(None, ge=1)
    doc_stride: int | None = Field(None, ge=1, description="extractive QA window overlap")
    label_all_subwords: bool | None = Field(
        None, description="token classification: train every subword of a word, not only "
                          "its first (default: the task's setting)")
    weight_decay: float | None = Field(None, ge=0, lt=1)
    warmup_ratio: float | None = Field(None, ge=0, lt=1)
    pooling: Literal["auto", "cls", "mean", "pooler"] | None = None
    dropout: float | None = Field(None, ge=0, lt=1)


class AugmentSettings(_Section):
    """EDA augmentation of the fine-tuning train split (korlm.evaluation.augment; docs/augmentation.md)."""

    method: Literal["eda"] = "eda"
    num_aug: int = Field(4, ge=1, le=64, description="augmented copies per training example")
    alpha_sr: float = Field(0.1, ge=0, le=1, description="synonym replacement rate")
    alpha_ri: float = Field(0.1, ge=0, le=1, description="random insertion rate")
    alpha_rs: float = Field(0.1, ge=0, le=1, description="random swap rate")
    p_rd: float = Field(0.1, ge=0, le=1, description="random deletion probability")
    pair_side: Literal["alternate", "a", "b", "both"] = Field(
        "alternate", description="pair tasks: which text a copy edits")

    @model_validator(mode="after")
    def _some_operation(self):
        if not (self.alpha_sr or self.alpha_ri or self.alpha_rs or self.p_rd):
            raise ValueError("every rate (alpha_sr, alpha_ri, alpha_rs, p_rd) is 0: "
                             "enable one or drop augment")
        return self


class EvaluateSection(_Section):
    tasks: list[str] = Field(default_factory=lambda: ["nsmc"], min_length=1,
                             description="built-in task names or task YAML files")
    data_dir: str = Field("data/sample/eval", description="task data under <data_dir>/<folder>/")
    parallelism: int = Field(2, ge=1, description="checkpoints evaluated at once")
    max_train_examples: int | None = Field(2000, ge=1)
    max_eval_examples: int | None = Field(1000, ge=1, description="caps dev and test")
    epochs: int = Field(1, ge=1, description="maximum; early stopping on dev may stop sooner")
    patience: int = Field(1, ge=1, description="epochs without dev improvement before stopping")
    batch_size: int = Field(32, gt=0)
    learning_rate: float = Field(2e-4, gt=0, lt=1)
    weight_decay: float = Field(0.01, ge=0, lt=1, description="AdamW decoupled weight decay")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="share of steps with linear warmup")
    max_seq_length: int = Field(64, ge=8)
    group_by_length: bool = Field(
        True, description="training batches of examples of similar length, each cut to its "
                          "longest example rounded up to 16 tokens (Hugging Face's group_by_length; "
                          "NSMC at max_seq_length 64: 1.9x the examples/s, benchmarks/README.md); "
                          "false: every batch padded to max_seq_length")
    pooling: Literal["auto", "cls", "mean", "pooler"] = Field(
        "auto", description="sentence representation of classification/regression heads: cls "
                            "(first token state), mean (of the token states), pooler (BERT's "
                            "pooled [CLS]); auto: the pooler only when NSP trained it, else cls "
                            "(BERT: the [CLS] state, measured best; RoBERTa: its head; BART: the "
                            "last token)")
    dropout: float = Field(0.1, ge=0, lt=1, description="backbone and head dropout while fine-tuning "
                                                        "(not the checkpoint's pretrain.dropout)")
    mixed_precision: bool = Field(False, description="float16 compute on a GPU; ignored on CPU")
    seed: int = Field(0, ge=0, description="the fine-tuning seed; with seeds a count, the first")
    seeds: int | list[int] | None = Field(
        None, description="fine-tuning seeds per checkpoint and task (random init too): a count "
        "N (seed, seed+1, ..., seed+N-1) or a list; null: [seed]. The report averages them and "
        "pairs each checkpoint with random init item by item")
    baselines: list[Literal["bag-of-words"]] = Field(
        default_factory=lambda: ["bag-of-words"],
        description="classical baselines computed beside random init (korlm.evaluation.baseline); "
        "[]: none")
    per_task: dict[str, EvaluateTaskSettings] = Field(
        default_factory=dict, description="e.g. {korquad: {max_seq_length: 128, batch_size: 8}}")
    augment: AugmentSettings | None = Field(
        None, description="EDA augmentation of the train split; null: off")

    @model_validator(mode="after")
    def _seeds_are_usable(self):
        fine_tuning_seeds(self.seed, self.seeds)
        if len(set(self.baselines)) != len(self.baselines):
            raise ValueError(f"evaluate.baselines names one twice: {self.baselines}")
        return self

    @property
    def seed_list(self) -> list[int]:
        return fine_tuning_seeds(self.seed, self.seeds)


MAX_SEEDS = 20


def fine_tuning_seeds(seed: int = 0, seeds: int | list[int] | None = None) -> list[int]:
    """The fine-tuning seeds of ``evaluate.seed`` / ``evaluate.seeds`` (a count counts up
    from ``seed``; a list is used as given); ValueError for an empty, repeated, negative
    or too long one."""
    if seeds is None:
        return [int(seed)]
    if isinstance(seeds, int | float) and not isinstance(seeds, bool):
        if int(seeds) != seeds or not 1 <= seeds <= MAX_SEEDS:
            raise ValueError(f"evaluate.seeds: a count must be 1..{MAX_SEEDS}, got {seeds}")
        return list(range(int(seed), int(seed) + int(seeds)))
    found = [int(s) for s in seeds]
    if not found or len(found) > MAX_SEEDS:
        raise ValueError(f"evaluate.seeds: a list needs 1..{MAX_SEEDS} seeds, got {len(found)}")
    if len(set(found)) != len(found) or min(found) < 0:
        raise ValueError(f"evaluate.seeds: seeds must be distinct and >= 0, got {found}")
    return found


class ExportSection(_Section):
    model_name: str | None = None  # the model card title; None: korlm-<model family>
    checkpoint: Literal["last"] = "last"


class PushSection(_Section):
    repo_id: str = Field("korlm/korlm-bert-demo", pattern=r"^[\w.-]+/[\w.-]+$")
    dry_run: bool = True
    private: bool = True
    revision: str | None = Field(None, description="branch to commit to; None commits to main")
    tag_runs: bool = Field(True, description="tag each run's commit run-<run id>")
    token_env: str = "HF_TOKEN"
    token_file: str | None = Field(
        None, description="a file holding the token, e.g. a mounted Kubernetes secret")
    token_secret: str | None = Field(
        None, description="Secret Manager version: projects/P/secrets/S/versions/latest")
    retries: int = Field(4, ge=0, le=10, description="extra tries of a Hub call after a transient failure")


class AblationVocab(_Section):
    """One vocab variant of an ablation; unset keys keep the vocab section's value."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,39}$")
    algorithm: Literal["wordpiece", "sentencepiece-unigram", "sentencepiece-bpe"] | None = None
    pre_tokenizer: Literal["none", "morpheme"] | None = None
    vocab_size: int | None = Field(None, ge=16, le=1_000_000)


class AblationSection(_Section):
    """Vocab variants x model sizes in one pipeline run (pipelines/ablation.py): each arm
    pretrains, is evaluated per checkpoint, and all arms end in one comparison report."""

    vocab_variants: list[AblationVocab] = Field(default_factory=list)
    sizes: list[Literal["tiny", "mini", "small", "base", "large"]] = Field(
        default_factory=list, description="default: pretrain.size")

    @model_validator(mode="after")
    def _unique(self):
        names = [v.name for v in self.vocab_variants]
        if len(set(names)) != len(names):
            raise ValueError(f"vocab_variants: names must be unique, got {names}")
        if len(set(self.sizes)) != len(self.sizes):
            raise ValueError(f"sizes: listed twice in {self.sizes}")
        if self.sizes and not self.vocab_variants:
            raise ValueError("sizes needs vocab_variants (at least one)")
        return self


# Hyperparameters `tune.search_space` may name (keyword arguments of
# korlm.evaluation.evaluate.fine_tune): kind and the range a value must fall in.
TUNABLE_HYPERPARAMETERS: dict[str, tuple[str, float, float, str]] = {
    # name: (int|float, lowest, highest, interval: "[]" both bounds allowed, "()" neither, "[)")
    "learning_rate": ("float", 0.0, 1.0, "()"),
    "weight_decay": ("float", 0.0, 1.0, "[)"),
    "warmup_ratio": ("float", 0.0, 1.0, "[)"),
    "epochs": ("int", 1, 1000, "[]"),
    "batch_size": ("int", 1, 65536, "[]"),
    "patience": ("int", 1, 1000, "[]"),
    "max_seq_length": ("int", 8, 4096, "[]"),
    "max_train_examples": ("int", 1, 10**9, "[]"),
    "doc_stride": ("int", 1, 4096, "[]"),
    "dropout": ("float", 0.0, 1.0, "[)"),
}
# Tunable settings that take names (categorical only): name -> the allowed choices, read
# from the evaluate section's own field so the two cannot drift apart.
TUNABLE_CHOICES: dict[str, tuple[str, ...]] = {
    name: get_args(EvaluateSection.model_fields[name].annotation) for name in ("pooling",)}


class TuneParameter(_Section):
    """One dimension of the search space: float/int ranges (``log`` for a log-uniform
    scale, ``step`` for a grid) or a categorical list of ``choices``."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0, description="float/int: sample on this grid")
    choices: list[float | int | str | bool] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _shape(self):
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical needs choices")
            if self.low is not None or self.high is not None or self.log or self.step is not None:
                raise ValueError("categorical takes choices only (no low/high/log/step)")
            return self
        if self.choices is not None:
            raise ValueError(f"{self.type} takes low/high, not choices")
        if self.low is None or self.high is None:
            raise ValueError(f"{self.type} needs low and high")
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is greater than high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log scale needs low > 0, got {self.low}")
        if self.log and self.step is not None:
            raise ValueError("log and step do not combine")
        if self.type == "int" and not (float(self.low).is_integer() and float(self.high).is_integer()
                                       and (self.step is None or float(self.step).is_integer())):
            raise ValueError("int needs whole-number low, high and step")
        return self


def _default_search_space() -> dict[str, TuneParameter]:
    return {
        "learning_rate": TuneParameter(type="float", low=1e-5, high=1e-3, log=True),
        "epochs": TuneParameter(type="int", low=1, high=4),
        "batch_size": TuneParameter(type="categorical", choices=[16, 32, 64]),
        "weight_decay": TuneParameter(type="float", low=0.0, high=0.1),
        "warmup_ratio": TuneParameter(type="float", low=0.0, high=0.2),
    }


class TuneSection(_Section):
    """Hyperparameter search over fine-tuning (`korlm tune`, docs/tuning.md). Settings not
    in the search space come from the evaluate section (and its per_task entry)."""

    task: str = Field("nsmc", description="built-in task name or task YAML file")
    n_trials: int = Field(20, ge=1, description="trials this worker runs (each a fine-tuning)")
    timeout_s: float | None = Field(None, gt=0, description="stop starting trials after this long")
    direction: Literal["maximize", "minimize"] = Field(
        "maximize", description="of the objective: the best dev value of `metric` over the epochs")
    metric: str | None = Field(None, description="dev metric to optimise; default the task's primary")
    sampler: Literal["tpe", "random"] = "tpe"
    pruner: Literal["median", "threshold", "none"] = Field(
        "median", description="median: stop a trial whose epoch-k dev value is below the median of "
                              "earlier trials at epoch k; threshold: below prune_below (above for minimize)")
    pruner_startup_trials: int = Field(2, ge=0, description="median: trials finished before any pruning")
    pruner_warmup_epochs: int = Field(0, ge=0, description="epochs of each trial never pruned")
    prune_below: float | None = Field(None, description="threshold pruner's bound on the dev value")
    seed: int = Field(0, description="sampler seed (each worker adds its --worker-index)")
    storage: str | None = Field(None, description="Optuna storage shared by parallel workers: an "
                                                  "SQLAlchemy URL (sqlite:///study.db, "
                                                  "postgresql://...) or journal:///path/file.log")
    study_name: str = Field("korlm-tune", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    workers: int = Field(1, ge=1, le=64, description="pipeline run-step tune: parallel workers "
                                                     "(ParallelFor), each running n_trials; > 1 "
                                                     "needs storage")
    search_space: dict[str, TuneParameter] = Field(default_factory=_default_search_space)

    @model_validator(mode="after")
    def _space(self):
        if not self.search_space:
            raise ValueError("search_space: needs at least one hyperparameter")
        unknown = sorted(set(self.search_space) - set(TUNABLE_HYPERPARAMETERS) - set(TUNABLE_CHOICES))
        if unknown:
            raise ValueError(f"search_space: unknown hyperparameter {', '.join(map(repr, unknown))}; "
                             f"tunable: {', '.join([*TUNABLE_HYPERPARAMETERS, *TUNABLE_CHOICES])}")
        for name, p in self.search_space.items():
            if name in TUNABLE_CHOICES:
                allowed = TUNABLE_CHOICES[name]
                if p.type != "categorical":
                    raise ValueError(f"search_space.{name}: takes names; use type categorical "
                                     f"with choices from {', '.join(allowed)}")
                wrong = [v for v in p.choices if v not in allowed]
                if wrong:
                    raise ValueError(f"search_space.{name}: {wrong[0]!r} is not one of "
                                     f"{', '.join(allowed)}")
                continue
            kind, lowest, highest, closed = TUNABLE_HYPERPARAMETERS[name]
            if kind == "int" and p.type == "float":
                raise ValueError(f"search_space.{name}: is a whole number; use type int or categorical")
            if kind == "int" and p.type == "categorical" and all(
                    isinstance(v, float) and v.is_integer() for v in p.choices):
                p.choices = [int(v) for v in p.choices]  # KFP carries numbers as doubles
            values = p.choices if p.type == "categorical" else [p.low, p.high]
            for v in values:
                whole = isinstance(v, int) and not isinstance(v, bool)
                number = whole or (isinstance(v, float) and not isinstance(v, bool))
                if not number or (kind == "int" and not float(v).is_integer()):
                    raise ValueError(f"search_space.{name}: {v!r} is not a valid {kind} value")
                inside = ((lowest <= v if closed[0] == "[" else lowest < v)
                          and (v <= highest if closed[1] == "]" else v < highest))
                if not inside:
                    bound = f"{closed[0]}{lowest:g}, {highest:g}{closed[1]}"
                    raise ValueError(f"search_space.{name}: {v:g} is outside {bound}")
        if self.pruner == "threshold" and self.prune_below is None:
            raise ValueError("pruner threshold needs prune_below")
        if self.workers > 1 and not self.storage:
            raise ValueError(f"workers: {self.workers} parallel workers need a shared storage "
                             "(sqlite:///..., journal:///... or postgresql://...)")
        return self


class FinetuneSection(_Section):
    """`korlm pipeline run-step finetune`: the task and checkpoint a servable model is
    fine-tuned from; the fine-tuning settings are the evaluate section's (and its per_task
    entry), e.g. a tune study's best_params.yaml."""

    task: str = Field("nsmc", description="built-in task name or task YAML file")
    step: int = Field(0, ge=0, description="pretraining checkpoint step; 0: the last checkpoint")


PIPELINE_STEPS = ("clean", "vocab", "pretrain_data", "pretrain", "evaluate", "report", "export", "push", "tune",
                  "finetune", "ablation_merge", "run_manifest")
_ACCELERATORS = ("NVIDIA_TESLA_T4", "NVIDIA_L4", "NVIDIA_TESLA_V100", "NVIDIA_TESLA_A100", "NVIDIA_A100_80GB",
                 "NVIDIA_H100_80GB", "NVIDIA_H200_141GB", "TPU_V2", "TPU_V3", "TPU_V4_POD", "TPU_V5_LITEPOD")


def _pinned_image(image: str, key: str) -> str:
    if image.endswith(":latest") or ":" not in image.rsplit("/", 1)[-1]:
        raise ValueError(f"{key} {image!r} needs a pinned tag, not ':latest'")
    return image


class StepResources(_Section):
    """What one step's task asks for. cpu/memory/accelerators apply on Vertex AI and on
    KFP clusters; machine_type (and every TPU) makes the step a Vertex AI CustomJob."""

    cpu: str | None = Field(None, pattern=r"^\d+(\.\d+)?m?$", description="CPU limit, e.g. '8' or '500m'")
    memory: str | None = Field(None, pattern=r"^\d+(\.\d+)?[KMG]i?$", description="memory limit, e.g. '32G'")
    accelerator_type: Literal[_ACCELERATORS] | None = None  # type: ignore[valid-type]
    accelerator_count: int | None = Field(None, ge=1, le=16)
    machine_type: str | None = Field(None, description="Vertex machine, e.g. cloud-tpu, a2-highgpu-1g")
    image: str | None = Field(None, description="this step's image (e.g. a TPU or GPU build)")
    image_variant: Literal["cpu", "gpu", "tpu"] | None = Field(
        None, description="the docker/Dockerfile VARIANT the image was built with; default: from the image "
                          "name (korlm-tpu -> tpu, korlm-gpu -> gpu, else cpu)")
    backend: Literal["tensorflow", "jax"] | None = Field(
        None, description="KERAS_BACKEND written into the task's env; default: jax on the tpu image and with "
                          "pretrain.strategy jax-data-parallel, else tensorflow")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment variables of the task "
                                                                  "(never secrets: they are compiled in)")
    boot_disk_size_gb: int | None = Field(None, ge=100)
    tpu_topology: str | None = Field(None, pattern=r"^\d+x\d+(x\d+)?$",
                                     description="Vertex machine_spec.tpu_topology, e.g. 2x4 (TPU v5e: required)")
    # Vertex CustomJob settings (steps with a machine_type)
    timeout: str | None = Field(None, pattern=r"^\d+[smhd]$",
                                description="CustomJob timeout, e.g. 72h or 3d (GCPC's default: 7 days)")
    restart_job_on_worker_restart: bool = Field(False, description="restart the whole CustomJob when a worker "
                                                                   "restarts (pretrain resumes from its checkpoint)")
    scheduling: Literal["STANDARD", "SPOT", "FLEX_START"] | None = Field(
        None, description="CustomJob scheduling strategy: SPOT (preemptible, cheaper), FLEX_START (wait for "
                          "capacity), STANDARD (on demand; Vertex's default)")
    max_wait_duration: str | None = Field(None, pattern=r"^\d+[smhd]$",
                                          description="FLEX_START only: how long to wait for capacity")
    tensorboard: str | None = Field(
        None, pattern=r"^projects/[^/]+/locations/[^/]+/tensorboards/[^/]+$",
        description="Vertex AI TensorBoard instance the CustomJob uploads to (needs vertex.service_account)")
    base_output_directory: str | None = Field(None, pattern=r"^gs://[a-z0-9._-]+(/.*)?$",
                                              description="CustomJob base output directory (gs://)")
    # cost estimate of `submit --dry-run` (pipelines/cost.py)
    tokens_per_second: float | None = Field(None, gt=0, description="pretrain throughput of the whole job for "
                                                                    "the duration estimate (default: from MFU)")
    assumed_mfu: float = Field(0.35, gt=0, le=1, description="model FLOPs utilisation assumed when "
                                                            "tokens_per_second is unset")
    expected_hours: float | None = Field(None, gt=0, description="a step's duration for the cost estimate "
                                                                "(steps other than pretrain)")

    @model_validator(mode="after")
    def _consistent(self):
        if (self.accelerator_type is None) != (self.accelerator_count is None):
            raise ValueError("accelerator_type and accelerator_count go together")
        if self.accelerator_type and self.accelerator_type.startswith("TPU") and not self.machine_type:
            raise ValueError("a TPU needs machine_type (ct5lp-hightpu-8t for TPU v5e, cloud-tpu for v2/v3)")
        if self.image:
            _pinned_image(self.image, "image")
        custom_only = [k for k in ("timeout", "scheduling", "max_wait_duration", "tensorboard",
                                   "base_output_directory", "tpu_topology") if getattr(self, k)]
        if self.restart_job_on_worker_restart:
            custom_only.append("restart_job_on_worker_restart")
        if custom_only and not self.machine_type:
            raise ValueError(f"{custom_only[0]} is a Vertex CustomJob setting: it needs machine_type")
        if self.max_wait_duration and self.scheduling != "FLEX_START":
            raise ValueError("max_wait_duration applies to scheduling: FLEX_START only")
        for name in self.env:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"env: {name!r} is not an environment variable name")
        return self


class PipelineSection(_Section):
    name: str = Field("korlm", pattern=r"^[a-z0-9][a-z0-9-]*$")
    image: str = Field("korlm:0.1.0", description="component image URI; never ':latest'")
    enable_caching: bool = False
    resources: dict[str, StepResources] = Field(
        default_factory=dict, description="per step: {pretrain: {machine_type: cloud-tpu, ...}}")

    @model_validator(mode="after")
    def _no_latest(self):
        _pinned_image(self.image, "pipeline.image")
        unknown = sorted(set(self.resources) - set(PIPELINE_STEPS))
        if unknown:
            raise ValueError(f"resources: unknown step {unknown[0]!r}; steps are {', '.join(PIPELINE_STEPS)}")
        return self


class DataflowSection(_Section):
    """Runs the Beam steps (clean, pretrain_data) on Dataflow when the pipeline runs on Vertex."""

    enabled: bool = False
    temp_location: str | None = Field(None, pattern=r"^gs://", description="gs:// for Dataflow's temp files")
    machine_type: str = "n2-standard-4"
    max_num_workers: int = Field(20, ge=1)
    sdk_container_image: str | None = Field(
        None, description="worker image with korlm (docker/Dockerfile.dataflow); default: pipeline.image")
    service_account: str | None = None
    subnetwork: str | None = Field(None, description="regions/REGION/subnetworks/NAME")

    @model_validator(mode="after")
    def _temp(self):
        if self.enabled and not self.temp_location:
            raise ValueError("dataflow.temp_location (gs://...) is needed when dataflow.enabled")
        if self.sdk_container_image:
            _pinned_image(self.sdk_container_image, "dataflow.sdk_container_image")
        return self


class VertexSection(_Section):
    """Where `korlm pipeline submit --target vertex` sends the run."""

    project: str | None = Field(None, pattern=r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
    region: str = Field("us-central1", pattern=r"^[a-z]+-[a-z]+\d$")
    pipeline_root: str | None = Field(None, pattern=r"^gs://[a-z0-9._-]+(/.*)?$")
    service_account: str | None = Field(None, pattern=r"^[^@\s]+@[^@\s]+$")
    network: str | None = Field(None, description="projects/NUMBER/global/networks/NAME (VPC peering)")
    labels: dict[str, str] = Field(default_factory=dict)
    dataflow: DataflowSection = Field(default_factory=DataflowSection)
    price_table: str | None = Field(None, description="YAML price table for the dry-run cost estimate "
                                                      "(default: configs/prices/vertex-us-central1.yaml)")

    @model_validator(mode="after")
    def _labels(self):
        for key, value in self.labels.items():
            if not re.fullmatch(r"[a-z][a-z0-9_-]{0,62}", key) or not re.fullmatch(r"[a-z0-9_-]{0,63}", value):
                raise ValueError(f"labels: {key}={value} is not a valid label (lowercase letters, digits, _ -)")
        return self


class KfpSection(_Section):
    """Where `korlm pipeline submit --target kfp` sends the run: a KFP 2 standalone cluster
    (e.g. kind/minikube from `make run-local`; see k8s/README.md)."""

    host: str = Field("http://localhost:8080", pattern=r"^https?://\S+$",
                      description="KFP API/UI address (kubectl port-forward svc/ml-pipeline-ui 8080:80)")
    namespace: str | None = Field(None, description="profile namespace; multi-user clusters only")
    experiment: str = Field("korlm", min_length=1)
    hf_token_secret: str = Field("korlm-hf-token", pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
                                 description="Secret whose key 'token' becomes the push task's push.token_env")
    data_pvc: str | None = Field(None, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
                                 description="PVC holding the repository's data/ folder (local clean.inputs and "
                                             "evaluate.data_dir), mounted at data_mount_path")
    data_mount_path: str = Field("/opt/korlm/data", pattern=r"^/")
    service_account: str | None = Field(None, description="Kubernetes service account of the run's pods")
    wait_timeout_s: int = Field(6 * 3600, ge=1, description="how long --wait follows the run")
    poll_interval_s: float = Field(10.0, gt=0, description="seconds between run-state checks of --wait")


class ServeSection(_Section):
    """`korlm serve MODEL_DIR` (issue 10): the REST server's address and limits."""

    host: str = Field("127.0.0.1", description="address to bind; 0.0.0.0 in a container")
    port: int = Field(8080, ge=1, le=65535)
    max_batch_size: int = Field(32, ge=1, description="items per model call; 1: no batching")
    max_wait_ms: float = Field(0.0, ge=0, description="wait for more items after a batch's first; 0: take what queued while the last call ran")
    max_items: int = Field(64, ge=1, description="items per request; more answer 422")
    max_chars: int = Field(2000, ge=1, description="characters per text; longer answer 422")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="request body size cap in bytes; larger "
                                "answer 413 (1 MiB holds 64 items of 2000 Korean characters, even \\u-escaped)")


class Config(_Section):
    run: RunSection = Field(default_factory=RunSection)
    clean: CleanSection = Field(default_factory=CleanSection)
    vocab: VocabSection = Field(default_factory=VocabSection)
    pretrain_data: PretrainDataSection = Field(default_factory=PretrainDataSection)
    pretrain: PretrainSection = Field(default_factory=PretrainSection)
    evaluate: EvaluateSection = Field(default_factory=EvaluateSection)
    export: ExportSection = Field(default_factory=ExportSection)
    push: PushSection = Field(default_factory=PushSection)
    pipeline: PipelineSection = Field(default_factory=PipelineSection)
    vertex: VertexSection = Field(default_factory=VertexSection)
    ablation: AblationSection = Field(default_factory=AblationSection)
    kfp: KfpSection = Field(default_factory=KfpSection)
    tune: TuneSection = Field(default_factory=TuneSection)
    finetune: FinetuneSection = Field(default_factory=FinetuneSection)
    serve: ServeSection = Field(default_factory=ServeSection)

    @model_validator(mode="after")
    def _phase_data(self):
        """Multi-phase pretraining reads DATA/seq<N> per phase: pretrain-data packs every
        phase length besides its own max_seq_length (added to extra_seq_lengths)."""
        lengths = {p.max_seq_length for p in self.pretrain.phases} - {self.pretrain_data.max_seq_length}
        if not lengths <= set(self.pretrain_data.extra_seq_lengths):
            self.pretrain_data.extra_seq_lengths = sorted(set(self.pretrain_data.extra_seq_lengths) | lengths)
        return self


def describe_error(err: dict[str, Any]) -> str:
    where = ".".join(str(p) for p in err["loc"]) or "config"
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"{where}: unknown key (check the spelling)"
    if kind == "missing":
        return f"{where}: required key is missing"
    msg = err["msg"]
    msg = msg.removeprefix("Value error, ")
    return f"{where}: {msg[0].lower() + msg[1:]}"


def validate(data: dict[str, Any] | None, source: str = "config") -> Config:
    """Build a :class:`Config` from plain data, with errors that name the key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(describe_error(e) for e in exc.errors())
        raise ConfigError(f"{source}: {problems}") from None


def load(path: str | None) -> Config:
    """Read and validate a YAML config file (``None`` gives the defaults)."""
    if path is None:
        return Config()
    if not os.path.exists(path):
        raise ConfigError(f"config file {path} does not exist")
    if os.path.isdir(path):
        raise ConfigError(f"config file {path} is a folder; pass a YAML file (see configs/)")
    try:
        with open(path, "rb") as f:
            raw = f.read()
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}); "
                          "save the file as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read ({exc.strerror or exc})") from None
    if not text.strip() or all(not ln.strip() or ln.lstrip().startswith("#") for ln in text.splitlines()):
        raise ConfigError(f"config file {path} is empty; give at least one section (see configs/), "
                          "or leave out --config for the defaults")
    try:
        data = yaml.safe_load(text.removeprefix("\ufeff"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    return validate(data, source=path)


def apply_overrides(config: Config, overrides: dict[str, Any]) -> Config:
    """Return a copy with ``{"section.key": value}`` overrides applied and re-validated.

    ``None`` values are skipped, so unset CLI flags leave the file's value alone.
    """
    data = config.model_dump()
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        if section not in data or not key:
            raise ConfigError(f"{dotted}: unknown key")
        data[section][key] = value
    return validate(data, source="config with command-line overrides")


def parse_set(assignments: list[str]) -> dict[str, Any]:
    """Parse ``--set section.key=value`` strings; values are read as YAML scalars."""
    out: dict[str, Any] = {}
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        out[key.strip()] = yaml.safe_load(raw)
    return out


def config_hash(config: Config) -> str:
    """SHA-256 of the validated config (canonical JSON): names a run's settings in commits and cards."""
    import hashlib
    import json

    canonical = json.dumps(config.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def section_params(section: str, params: dict[str, Any], overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Re-validate a step's parameters inside a pipeline task.

    ``overrides`` are the step's pipeline parameters (pipelines/korlm_pipeline.py
    PIPELINE_PARAMETERS), by field name; those given (not None) replace the compiled
    values before validation, so a bad run-time value fails here in one line naming its key.

    KFP carries dict parameters as protobuf Structs, where every number is a double
    (an int 2000 arrives as 2000.0); validating through the same schema restores the
    types and rejects anything edited into a compiled pipeline by hand. Only the keys
    given are returned, so a step receives exactly what the pipeline passed.
    """
    params = {**params, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    model = Config.model_fields[section].annotation
    try:
        validated = model.model_validate(params)
    except ValidationError as exc:
        problems = "; ".join(describe_error({**e, "loc": (section, *e["loc"])}) for e in exc.errors())
        raise ConfigError(f"step parameters: {problems}") from None
    return {k: v for k, v in validated.model_dump().items() if k in params}
