"""clean: raw Korean text -> one sentence per line, a blank line between documents.

Pipeline (elements are files, record batches or documents, never single lines)::

    input files ─ ReadRecordBatches ─ Reshuffle ─ CleanDocuments ─┬─ documents ─────────────┐
                   │                               │              └─ bucket batches          │
                   │                               │                 ─ GroupByKey(shard)     │
                   │                               │                 ─ FindDuplicates ─ CoGroupByKey(doc) ─ ApplyDedup ─ part-*.txt
                   └──────────── rejections ───────┴────────────────────────────────────────────────┴─ rejected/rejected-*.jsonl
    file stats + kept + rejections ─ CombineGlobally(CleanStatsFn) ─ stats.json

``DocumentCleaner`` holds every per-document step (normalize, scrub PII, the optional
normalizations, document filters, sentence split, sentence filters) as plain Python, so
the Beam DoFn, the single-process loop of the benchmark and ``korlm clean --dry-run``
run the same code. Each filter is one function in ``korlm.text``/``korlm.filters``/
``korlm.pii``, one Beam counter (namespace ``korlm.clean``) and one rejection reason
(documents) or dropped-sentence reason (sentences). Deduplication is in
``corpus_beam.dedup``.

``stats.json`` is computed inside the pipeline, so it is the same on the DirectRunner
and on Dataflow. ``input_records`` comes from the readers and ``kept_records``/
``rejected_records`` from the end of the pipeline; their equality is checked after the
run, so a lost record fails the step instead of passing unnoticed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import zlib
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from corpus_beam.dedup import (
    DUPLICATE_DOCUMENT,
    DUPLICATE_SENTENCE,
    DUPLICATE_SENTENCES,
    NEAR_DUPLICATE_DOCUMENT,
    DedupIndex,
    DedupKeys,
    batch_of,
    bucket_batches,
    doc_key,
    find_duplicates,
    merge_losers,
)
from corpus_beam.readers import (
    FILE_STATS_TAG,
    INVALID_UTF8,
    MALFORMED_RECORD,
    REJECTED_TAG,
    UNREADABLE_FILE,
    FileReadSummary,
    ReadRecordBatches,
    read_records,
    rejection,
    resolve_inputs,
    source_of,
)
from korlm import storage
from korlm.errors import KorlmError
from korlm.filters import (
    DEFAULT_BOILERPLATE_PATTERNS,
    compile_patterns,
    count_eojeol,
    digit_ratio,
    hangul_ratio,
    is_boilerplate,
    repetition_reason,
    symbol_ratio,
)
from korlm.pii import DEFAULT_PLACEHOLDER, PII_MODES, placeholders, scrub_pii
from korlm.text import (
    NORMALIZATION_FORMS,
    normalize_extras,
    normalize_text,
    printable,
    split_sentences_regex,
)

_LOG = logging.getLogger(__name__)

# Document rejection reasons, in the order the filters run.
EMPTY_AFTER_NORMALIZATION = "empty_after_normalization"
TOO_SHORT_DOCUMENT = "too_short_document"
TOO_LONG_DOCUMENT = "too_long_document"
LOW_HANGUL_RATIO = "low_hangul_ratio"
HIGH_SYMBOL_RATIO = "high_symbol_ratio"
HIGH_DIGIT_RATIO = "high_digit_ratio"
REPEATED_LINES = "repeated_lines"
REPEATED_NGRAMS = "repeated_ngrams"
NO_SENTENCES_LEFT = "no_sentences_left"
REJECTION_REASONS = (
    UNREADABLE_FILE,
    INVALID_UTF8,
    MALFORMED_RECORD,
    EMPTY_AFTER_NORMALIZATION,
    TOO_LONG_DOCUMENT,
    TOO_SHORT_DOCUMENT,
    LOW_HANGUL_RATIO,
    HIGH_SYMBOL_RATIO,
    HIGH_DIGIT_RATIO,
    REPEATED_LINES,
    REPEATED_NGRAMS,
    NO_SENTENCES_LEFT,
    DUPLICATE_DOCUMENT,
    NEAR_DUPLICATE_DOCUMENT,
    DUPLICATE_SENTENCES,
)
# Sentence drop reasons (the document survives if any sentence is left).
BOILERPLATE_SENTENCE = "boilerplate_sentence"
PII_SENTENCE = "pii_sentence"
SENTENCE_TOO_SHORT = "sentence_too_short"
SENTENCE_TOO_LONG = "sentence_too_long"
SENTENCE_DROP_REASONS = (BOILERPLATE_SENTENCE, PII_SENTENCE, SENTENCE_TOO_SHORT, SENTENCE_TOO_LONG,
                         DUPLICATE_SENTENCE)
SENTENCE_SPLITTERS = ("kiwi", "regex", "line")
COUNTER_NAMESPACE = "korlm.clean"


@dataclasses.dataclass(frozen=True)
class CleanSettings:
    """Every option of the clean step; ``korlm.config.CleanSection`` documents each one."""

    normalization: str = "NFC"
    sentence_splitter: str = "kiwi"
    max_repeat: int = 2
    remove_emoji: bool = True
    remove_hanja: bool = False
    remove_foreign_scripts: bool = False
    pii: str = "replace"
    pii_placeholder: str = DEFAULT_PLACEHOLDER
    min_document_chars: int = 10
    max_document_chars: int = 1_000_000
    min_hangul_ratio: float = 0.5
    max_symbol_ratio: float = 0.5
    max_digit_ratio: float = 0.5
    repetition_filter: bool = True
    max_duplicate_line_fraction: float = 0.3
    max_duplicate_line_char_fraction: float = 0.2
    repetition_min_words: int = 50
    boilerplate_patterns: tuple[str, ...] = DEFAULT_BOILERPLATE_PATTERNS
    min_sentence_chars: int = 2
    max_sentence_chars: int = 1000
    min_sentence_eojeol: int = 1
    max_sentence_eojeol: int = 300
    dedup_documents: bool = True
    dedup_sentences: bool = True
    dedup_sentence_min_chars: int = 15
    near_dedup: bool = True
    near_dedup_threshold: float = 0.8
    near_dedup_num_perm: int = 128
    near_dedup_shingle_size: int = 3
    near_dedup_min_words: int = 20
    dedup_shards: int = 16
    rejected_sample_rate: float = 1.0

    @classmethod
    def from_kwargs(cls, **kwargs) -> CleanSettings:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise KorlmError(f"unknown clean option(s): {', '.join(unknown)}")
        if "boilerplate_patterns" in kwargs and kwargs["boilerplate_patterns"] is not None:
            kwargs["boilerplate_patterns"] = tuple(kwargs["boilerplate_patterns"])
        settings = cls(**{k: v for k, v in kwargs.items() if v is not None})
        settings.check()
        return settings

    def check(self) -> None:
        def bad(msg: str):
            raise KorlmError(msg)

        if self.normalization not in NORMALIZATION_FORMS:
            bad(f"normalization {self.normalization!r} is unknown; choose one of {', '.join(NORMALIZATION_FORMS)}")
        if self.sentence_splitter not in SENTENCE_SPLITTERS:
            bad(f"sentence_splitter {self.sentence_splitter!r} is unknown; choose one of {', '.join(SENTENCE_SPLITTERS)}")
        if self.min_sentence_chars < 1 or self.max_sentence_chars < self.min_sentence_chars:
            bad(f"sentence limits {self.min_sentence_chars}..{self.max_sentence_chars} are invalid; "
                "need 1 <= min_sentence_chars <= max_sentence_chars")
        if self.min_sentence_eojeol < 0 or self.max_sentence_eojeol < max(1, self.min_sentence_eojeol):
            bad(f"eojeol limits {self.min_sentence_eojeol}..{self.max_sentence_eojeol} are invalid; "
                "need 0 <= min_sentence_eojeol <= max_sentence_eojeol")
        if self.min_document_chars < 0:
            bad(f"min_document_chars must be 0 or more, got {self.min_document_chars}")
        if self.max_document_chars < max(1, self.min_document_chars):
            bad(f"max_document_chars ({self.max_document_chars}) must be at least min_document_chars")
        if self.max_repeat < 0:
            bad(f"max_repeat must be 0 (off) or more, got {self.max_repeat}")
        if self.pii not in PII_MODES:
            bad(f"pii {self.pii!r} is unknown; choose one of {', '.join(PII_MODES)}")
        try:
            self.pii_placeholder.format(kind="EMAIL")
        except (KeyError, IndexError, ValueError):
            bad(f"pii_placeholder {self.pii_placeholder!r} may only use the field {{kind}}")
        for name in ("min_hangul_ratio", "max_symbol_ratio", "max_digit_ratio",
                     "max_duplicate_line_fraction", "max_duplicate_line_char_fraction",
                     "rejected_sample_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                bad(f"{name} must be between 0 and 1, got {getattr(self, name)}")
        if not 0.0 < self.near_dedup_threshold < 1.0:
            bad(f"near_dedup_threshold must be between 0 and 1 (exclusive), got {self.near_dedup_threshold}")
        if self.near_dedup_num_perm < 8 or self.near_dedup_shingle_size < 1 or self.dedup_shards < 1:
            bad("near_dedup_num_perm must be >= 8, near_dedup_shingle_size >= 1, dedup_shards >= 1")
        try:
            compile_patterns(self.boilerplate_patterns)
        except Exception as exc:
            bad(f"boilerplate_patterns: not a valid regular expression list ({exc})")

    def dedup_keys(self) -> DedupKeys:
        return DedupKeys(documents=self.dedup_documents, sentences=self.dedup_sentences,
                         sentence_min_chars=self.dedup_sentence_min_chars, near=self.near_dedup,
                         near_threshold=self.near_dedup_threshold,
                         near_num_perm=self.near_dedup_num_perm,
                         near_shingle_size=self.near_dedup_shingle_size,
                         near_min_words=self.near_dedup_min_words)


# Measured on the bundled sample (~2.7 MB, 14,780 records; 2 cores shared with other
# jobs), 11-12 alternating runs each: in_memory median 20.8 s (18.6-22.1), two
# multi_processing workers median 25.5 s (15.9-30.1). Two workers only win on an idle
# machine; with other load their start-up and per-process Kiwi model cost more than
# they gain. Pass --direct_running_mode=multi_processing for large local inputs.
DEFAULT_DIRECT_OPTIONS = ["--runner=DirectRunner", "--direct_running_mode=in_memory"]


def pipeline_args(beam_options: list[str] | None) -> list[str]:
    """The caller's Beam flags unchanged, plus the local default runner mode when the
    caller picked no runner (a ``--runner=DataflowRunner ...`` list passes as is)."""
    args = list(beam_options or [])
    names = {a.split("=", 1)[0] for a in args if a.startswith("--")}
    if "--runner" not in names:
        args = [a for a in DEFAULT_DIRECT_OPTIONS if a.split("=", 1)[0] not in names] + args
    return args


def pipeline_options(beam_options: list[str] | None) -> PipelineOptions:
    return PipelineOptions(pipeline_args(beam_options))


def beam_counters(result, namespace: str) -> dict[str, int]:
    """Committed Beam counters of a finished pipeline (for logs; stats.json does not use them)."""
    from apache_beam.metrics.metric import MetricsFilter

    totals: dict[str, int] = {}
    for counter in result.metrics().query(MetricsFilter().with_namespace(namespace))["counters"]:
        name = counter.key.metric.name
        totals[name] = totals.get(name, 0) + (counter.committed or 0)
    return totals


class SentenceSplitter:
    """Split normalized documents (paragraphs joined by ``\\n``) into sentences.

    ``kiwi``: kiwipiepy's ``Kiwi.split_into_sents`` on every paragraph, batched.
    ``regex``: terminal punctuation followed by a space (fast, no model, cruder).
    ``line``: each paragraph is one sentence (for corpora already one sentence a line).
    """

    def __init__(self, method: str):
        self.method = method
        self._kiwi = None
        if method == "kiwi":
            from kiwipiepy import Kiwi

            # One analysis thread: the runner already runs a DoFn per core. (0 threads
            # would be Kiwi's synchronous mode, which refuses batched input.)
            self._kiwi = Kiwi(num_workers=1)
            self._kiwi.split_into_sents("초기화.")  # load the model now, not on the first batch

    def split(self, documents: list[str]) -> list[list[str]]:
        paragraphs = [doc.split("\n") for doc in documents]
        if self.method == "regex":
            return [[s for p in doc for s in split_sentences_regex(p)] for doc in paragraphs]
        if self._kiwi is None:
            return paragraphs
        flat = [p for doc in paragraphs for p in doc]
        split = self._kiwi.split_into_sents(flat, return_tokens=False, return_sub_sents=False)
        per_paragraph = [[s.text.strip() for s in sents] for sents in split]
        out: list[list[str]] = []
        i = 0
        for doc in paragraphs:
            sentences = [s for p in per_paragraph[i : i + len(doc)] for s in p if s]
            out.append(sentences)
            i += len(doc)
        return out


def _add(counts: dict[str, int], key: str, n: int = 1) -> None:
    counts[key] = counts.get(key, 0) + n


class DocumentCleaner:
    """Every per-document step of clean, as plain Python (no Beam).

    ``clean_batch`` takes ``[(line, raw text)]`` and returns one result per record:
    ``{"line", "reason", "text", "dropped", "pii"}`` for a rejection, or ``{"line",
    "reason": None, "normalized", "sentences", "dropped", "pii"}`` for a survivor.
    ``dropped`` counts dropped sentences by reason, ``pii`` scrubbed spans by kind.
    """

    def __init__(self, settings: CleanSettings):
        self.s = settings
        self.splitter = SentenceSplitter(settings.sentence_splitter)
        self.boilerplate = compile_patterns(settings.boilerplate_patterns)
        self.placeholders = placeholders(settings.pii_placeholder)

    def _strip_placeholders(self, text: str) -> str:
        for ph in self.placeholders:
            text = text.replace(ph, " ")
        return text

    def document_reason(self, text: str, scrubbed: bool) -> str | None:
        """The first document filter ``text`` fails, or None."""
        s = self.s
        if len(text) < s.min_document_chars:
            return TOO_SHORT_DOCUMENT
        measured = self._strip_placeholders(text) if scrubbed else text
        if s.min_hangul_ratio > 0 and hangul_ratio(measured) < s.min_hangul_ratio:
            return LOW_HANGUL_RATIO
        if s.max_symbol_ratio < 1 and symbol_ratio(measured) > s.max_symbol_ratio:
            return HIGH_SYMBOL_RATIO
        if s.max_digit_ratio < 1 and digit_ratio(measured) > s.max_digit_ratio:
            return HIGH_DIGIT_RATIO
        if s.repetition_filter:
            return repetition_reason(
                text, max_duplicate_line_fraction=s.max_duplicate_line_fraction,
                max_duplicate_line_char_fraction=s.max_duplicate_line_char_fraction,
                min_words=s.repetition_min_words)
        return None

    def sentence_reason(self, sentence: str) -> str | None:
        s = self.s
        if is_boilerplate(sentence, self.boilerplate):
            return BOILERPLATE_SENTENCE
        if s.pii == "drop_sentence" and any(ph in sentence for ph in self.placeholders):
            return PII_SENTENCE
        n = len(sentence)
        if n < s.min_sentence_chars:
            return SENTENCE_TOO_SHORT
        if n > s.max_sentence_chars:
            return SENTENCE_TOO_LONG
        if s.min_sentence_eojeol > 1 or s.max_sentence_eojeol < n:
            words = count_eojeol(sentence)
            if words < s.min_sentence_eojeol:
                return SENTENCE_TOO_SHORT
            if words > s.max_sentence_eojeol:
                return SENTENCE_TOO_LONG
        return None

    def clean_batch(self, records: list[tuple[int, str]]) -> list[dict[str, Any]]:
        s = self.s
        results: list[dict[str, Any]] = []
        survivors: list[dict[str, Any]] = []
        for line, raw in records:
            pii: dict[str, int] = {}
            text = normalize_text(raw, s.normalization)
            if len(text) > s.max_document_chars:
                # before the regexes and the splitter: a 10 MB line costs Kiwi minutes
                results.append({"line": line, "reason": TOO_LONG_DOCUMENT, "text": text,
                                "dropped": {}, "pii": pii})
                continue
            if text and s.pii != "off":
                text = scrub_pii(text, s.pii_placeholder, counts=pii)
            if text:
                text = normalize_extras(text, max_repeat=s.max_repeat, emoji=s.remove_emoji,
                                        hanja=s.remove_hanja, foreign_scripts=s.remove_foreign_scripts)
            reason = EMPTY_AFTER_NORMALIZATION if not text else self.document_reason(text, bool(pii))
            result = {"line": line, "reason": reason, "text": text or raw, "dropped": {}, "pii": pii}
            results.append(result)
            if reason is None:
                survivors.append(result)
        if survivors:
            split = self.splitter.split([r["text"] for r in survivors])
            for result, sentences in zip(survivors, split, strict=True):
                kept = []
                for sentence in sentences:
                    why = self.sentence_reason(sentence)
                    if why is None:
                        kept.append(sentence)
                    else:
                        _add(result["dropped"], why)
                if kept:
                    result["normalized"] = result.pop("text")
                    result["sentences"] = kept
                else:
                    result["reason"] = NO_SENTENCES_LEFT
        return results


def _document(batch: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    return {"input": batch["input"], "path": batch["path"], "line": result["line"],
            "sentences": result["sentences"], "dropped": result["dropped"], "pii": result["pii"]}


def _rejection(reason: str, batch_or_doc: dict[str, Any], line: int, text: str,
               dropped: dict[str, int] | None = None, pii: dict[str, int] | None = None) -> dict:
    r = rejection(reason, source_of(batch_or_doc["path"], line), text, batch_or_doc["input"],
                  sum((dropped or {}).values()))
    r["dropped"] = dict(dropped or {})
    r["pii"] = dict(pii or {})
    return r


class CleanDocuments(beam.DoFn):
    """Record batch -> ``(batch_id, [document, ...])`` for the survivors, rejections (side
    output ``rejected``) and the batch's dedup bucket keys (side output ``buckets``, one
    element per (batch, shard))."""

    BUCKETS_TAG = "buckets"

    def __init__(self, settings: CleanSettings):
        self.settings = settings

    def setup(self):
        self.cleaner = DocumentCleaner(self.settings)
        self.keys = self.settings.dedup_keys()
        self.counters: dict[str, Any] = {}

    def _count(self, name: str, n: int = 1) -> None:
        if n:
            if name not in self.counters:
                self.counters[name] = beam.metrics.Metrics.counter(COUNTER_NAMESPACE, name)
            self.counters[name].inc(n)

    def process(self, batch: dict[str, Any]):
        buckets = []
        documents = []
        first_line = batch["records"][0][0]
        for result in self.cleaner.clean_batch(batch["records"]):
            for kind, n in result["pii"].items():
                self._count(f"pii_{kind}", n)
            for why, n in result["dropped"].items():
                self._count(why, n)
                self._count("dropped_sentences", n)
            if result["reason"] is not None:
                self._count(result["reason"])
                yield beam.pvalue.TaggedOutput(REJECTED_TAG, _rejection(
                    result["reason"], batch, result["line"], result["text"], result["dropped"], result["pii"]))
                continue
            key = doc_key(batch["path"], result["line"], first_line)
            if self.keys.enabled:
                buckets.append((key, self.keys.keys(result["normalized"], result["sentences"])))
            documents.append({**_document(batch, result), "key": key})
        if documents:
            yield batch_of(documents[0]["key"]), documents
        for shard_entries in bucket_batches(buckets, self.settings.dedup_shards):
            yield beam.pvalue.TaggedOutput(self.BUCKETS_TAG, shard_entries)


class FindDuplicates(beam.DoFn):
    """One shard of bucket entries -> ``(batch_id, (doc_key, {"reason", "sentences"}))`` per loser."""

    def process(self, shard):
        _, batches = shard
        for key, loser in find_duplicates(e for entries in batches for e in entries).items():
            yield batch_of(key), (key, {"reason": loser["reason"], "sentences": sorted(loser["sentences"])})


class ApplyDedup(beam.DoFn):
    """A batch of documents and their losses -> the kept documents as one text block (main
    output), a rejection per dropped document, and the batch's kept-side counts (side
    output ``stats``, so stats.json costs one element per batch, not per document)."""

    STATS_TAG = "stats"

    def setup(self):
        self.counters = {name: beam.metrics.Metrics.counter(COUNTER_NAMESPACE, name) for name in
                         (DUPLICATE_DOCUMENT, NEAR_DUPLICATE_DOCUMENT, DUPLICATE_SENTENCES,
                          DUPLICATE_SENTENCE, "kept_records", "dropped_sentences")}

    def process(self, joined):
        _, grouped = joined
        losses: dict[str, list[dict]] = {}
        for key, loss in grouped["dup"]:
            losses.setdefault(key, []).append(loss)
        blocks: list[str] = []
        partial: dict[str, dict[str, Any]] = {}
        for documents in grouped["docs"]:
            for doc in documents:
                loss = merge_losers(losses.get(doc["key"], []))
                kept, reason = apply_loss(doc, loss)
                if kept is None:
                    self.counters[reason].inc()
                    yield beam.pvalue.TaggedOutput(REJECTED_TAG, _rejection(
                        reason, doc, doc["line"], "\n".join(doc["sentences"]), doc["dropped"], doc["pii"]))
                    continue
                n = kept["dropped"].get(DUPLICATE_SENTENCE, 0)
                self.counters[DUPLICATE_SENTENCE].inc(n)
                self.counters["dropped_sentences"].inc(n)
                self.counters["kept_records"].inc()
                text = format_document(kept)
                blocks.append(text)
                add_kept(partial.setdefault(kept["input"], _new_source()), kept, text)
        if blocks:
            # WriteToText adds one newline per element: joining by "\n" keeps the blank line
            # between every two documents exactly as one element per document would.
            yield "\n".join(blocks)
        for input_name, counts in partial.items():
            yield beam.pvalue.TaggedOutput(self.STATS_TAG, {"input": input_name, "counts": counts})


def apply_loss(doc: dict[str, Any], loss: dict) -> tuple[dict[str, Any] | None, str | None]:
    """``(document, None)`` with duplicate sentences removed, or ``(None, reason)``."""
    if loss["reason"] is not None:
        return None, loss["reason"]
    drop = set(loss["sentences"])
    if not drop:
        return doc, None
    sentences = [s for i, s in enumerate(doc["sentences"]) if i not in drop]
    if not sentences:
        return None, DUPLICATE_SENTENCES
    dropped = dict(doc["dropped"])
    _add(dropped, DUPLICATE_SENTENCE, len(doc["sentences"]) - len(sentences))
    return {**doc, "sentences": sentences, "dropped": dropped}, None


def format_document(doc: dict[str, Any]) -> str:
    """Sentences one per line; WriteToText's own newline then leaves the blank line that
    separates this document from the next."""
    return "\n".join(doc["sentences"]) + "\n"


def _new_source() -> dict[str, Any]:
    return {"input_records": 0, "kept_records": 0, "rejected_records": 0,
            "rejected_by_reason": {}, "sentences": 0, "dropped_sentences": 0,
            "dropped_sentences_by_reason": {}, "pii_replaced": {},
            "input_bytes": 0, "output_bytes": 0, "input_files": 0, "empty_files": 0,
            "unreadable_files": 0, "blank_lines": 0}


def _merge_counts(target: dict[str, int], counts: dict[str, int]) -> None:
    for key, n in counts.items():
        target[key] = target.get(key, 0) + n


def _merge_source(target: dict[str, Any], counts: dict[str, Any]) -> None:
    for key, value in counts.items():
        if isinstance(value, dict):
            _merge_counts(target[key], value)
        else:
            target[key] += value


def add_kept(source: dict[str, Any], doc: dict[str, Any], text: str, count_dropped: bool = True) -> None:
    """Count one kept document (``text`` is its formatted block) into ``source``."""
    source["kept_records"] += 1
    source["sentences"] += len(doc["sentences"])
    source["output_bytes"] += len(text.encode("utf-8")) + 1
    if count_dropped:
        source["dropped_sentences"] += sum(doc["dropped"].values())
        _merge_counts(source["dropped_sentences_by_reason"], doc["dropped"])
        _merge_counts(source["pii_replaced"], doc["pii"])


class CleanStatsFn(beam.CombineFn):
    """Combines events into stats.json's counts, per input and in total: ``("file", ...)``
    from the readers, ``("rejected", ...)`` per rejection, ``("partial", ...)`` kept-side
    counts per batch from ApplyDedup (``("kept", document)`` is accepted too)."""

    def create_accumulator(self):
        return {}

    def add_input(self, acc, event):
        kind, data = event
        source = acc.setdefault(data["input"], _new_source())
        if kind == "file":
            source["input_records"] += data["records"]
            source["input_bytes"] += data["bytes"]
            source["blank_lines"] += data["blank_lines"]
            source["input_files"] += 1
            source["empty_files"] += int(data["bytes"] == 0 and not data["unreadable"])
            source["unreadable_files"] += int(data["unreadable"])
            return acc
        if kind == "partial":
            _merge_source(source, data["counts"])
            return acc
        dropped = data.get("dropped", {})
        source["dropped_sentences"] += sum(dropped.values())
        _merge_counts(source["dropped_sentences_by_reason"], dropped)
        _merge_counts(source["pii_replaced"], data.get("pii", {}))
        if kind == "kept":
            add_kept(source, data, format_document(data), count_dropped=False)
        else:
            source["rejected_records"] += 1
            _merge_counts(source["rejected_by_reason"], {data["reason"]: 1})
        return acc

    def merge_accumulators(self, accumulators):
        merged: dict[str, dict[str, Any]] = {}
        for acc in accumulators:
            for name, counts in acc.items():
                _merge_source(merged.setdefault(name, _new_source()), counts)
        return merged

    def extract_output(self, acc):
        total = _new_source()
        total["rejected_by_reason"] = {reason: 0 for reason in REJECTION_REASONS}
        total["dropped_sentences_by_reason"] = {reason: 0 for reason in SENTENCE_DROP_REASONS}
        for counts in acc.values():
            for key, value in counts.items():
                if isinstance(value, dict):
                    _merge_counts(total[key], value)
                else:
                    total[key] += value
        total["per_source"] = {name: acc[name] for name in sorted(acc)}
        return total


def keep_rejection_sample(record: dict, rate: float) -> bool:
    """Deterministic sample of the rejection log: the same records on every run and runner."""
    if rate >= 1.0:
        return True
    h = zlib.crc32(f"{record['reason']}\0{record['source']}".encode("utf-8", "surrogateescape"))
    return h / 2**32 < rate


def rejection_json(record: dict, settings: CleanSettings) -> str:
    """The rejection log line; its text is PII-scrubbed too (the log is an artifact)."""
    text = record["text"]
    if settings.pii != "off":
        text = scrub_pii(text, settings.pii_placeholder)
    return json.dumps({"reason": record["reason"], "source": record["source"], "text": text},
                      ensure_ascii=False)


def build_clean_graph(p: beam.Pipeline, files: list, staging: str, settings: CleanSettings) -> None:
    """Add the clean transforms to ``p``, writing every output under ``staging``."""
    read = (
        p
        | "InputFiles" >> beam.Create(files)
        | "ReadRecordBatches" >> beam.ParDo(ReadRecordBatches()).with_outputs(
            REJECTED_TAG, FILE_STATS_TAG, main="batches")
    )
    cleaned = (
        read.batches
        | "SpreadBatches" >> beam.Reshuffle()
        | "CleanDocuments" >> beam.ParDo(CleanDocuments(settings)).with_outputs(
            REJECTED_TAG, CleanDocuments.BUCKETS_TAG, main="documents")
    )
    losers = (
        cleaned[CleanDocuments.BUCKETS_TAG]
        | "GroupByShard" >> beam.GroupByKey()
        | "FindDuplicates" >> beam.ParDo(FindDuplicates())
    )
    deduped = (
        {"docs": cleaned.documents, "dup": losers}
        | "JoinDuplicates" >> beam.CoGroupByKey()
        | "ApplyDedup" >> beam.ParDo(ApplyDedup()).with_outputs(REJECTED_TAG, ApplyDedup.STATS_TAG, main="kept")
    )
    rejected = (
        (read[REJECTED_TAG], cleaned[REJECTED_TAG], deduped[REJECTED_TAG])
        | "AllRejections" >> beam.Flatten()
    )
    _ = (
        deduped.kept
        | "WriteCorpus" >> beam.io.WriteToText(storage.join(staging, "part"), file_name_suffix=".txt")
    )
    rate = settings.rejected_sample_rate
    _ = (
        rejected
        | "SampleRejections" >> beam.Filter(keep_rejection_sample, rate)
        | "RejectionJson" >> beam.Map(rejection_json, settings)
        | "WriteRejected" >> beam.io.WriteToText(
            storage.join(staging, "rejected", "rejected"), file_name_suffix=".jsonl")
    )
    _ = (
        (
            read[FILE_STATS_TAG] | "FileEvents" >> beam.Map(lambda d: ("file", d)),
            deduped[ApplyDedup.STATS_TAG] | "KeptEvents" >> beam.Map(lambda d: ("partial", d)),
            rejected | "RejectedEvents" >> beam.Map(lambda d: ("rejected", d)),
        )
        | "AllEvents" >> beam.Flatten()
        | "CountStats" >> beam.CombineGlobally(CleanStatsFn())
        | "StatsJson" >> beam.Map(lambda s: json.dumps(s, indent=2, ensure_ascii=False))
        | "WriteStats" >> beam.io.WriteToText(
            storage.join(staging, "stats"), file_name_suffix=".json", shard_name_template="")
    )


def run_clean(inputs: list[str | dict], output_dir: str, *, beam_options: list[str] | None = None,
              **options: Any) -> dict:
    """Clean raw corpora into ``output_dir`` (published atomically) and return stats.json's dict.

    ``options`` are :class:`CleanSettings` fields (``min_sentence_chars=2``, ``pii="replace"``...).
    Writes ``part-*.txt`` (one sentence a line, a blank line after every document),
    ``rejected/rejected-*.jsonl`` (reason, source, text) and ``stats.json``.
    Raises KorlmError for bad settings and for inputs that match no file, before any
    pipeline starts.
    """
    settings = CleanSettings.from_kwargs(**options)
    files = resolve_inputs(inputs)
    options_ = pipeline_options(beam_options)
    started = time.monotonic()
    with storage.atomic_output_dir(output_dir, stage_remote=True) as staging:
        # staged on the destination's filesystem: Dataflow workers write the shards
        p = beam.Pipeline(options=options_)
        build_clean_graph(p, files, staging, settings)
        result = p.run()
        result.wait_until_finish()
        counters = beam_counters(result, COUNTER_NAMESPACE)
        _LOG.info("clean counters: %s", json.dumps(counters, sort_keys=True))
        stats = json.loads(storage.read_text(storage.join(staging, "stats.json")))
        check_accounting(stats)
    _LOG.info("clean: %d of %d records kept, %d sentences, %.1f s", stats["kept_records"],
              stats["input_records"], stats["sentences"], time.monotonic() - started)
    if stats["kept_records"] == 0:
        _LOG.warning("clean kept no documents; see %s for why", storage.join(output_dir, "rejected"))
    return stats


def check_accounting(stats: dict) -> None:
    if stats["input_records"] != stats["kept_records"] + stats["rejected_records"]:
        raise RuntimeError(
            f"clean lost records: input {stats['input_records']} != kept {stats['kept_records']}"
            f" + rejected {stats['rejected_records']}; this is a bug, please report it"
        )


# ---------------------------------------------------------------- the same steps, one process


def clean_in_process(inputs: list[str | dict], *, max_records_per_file: int | None = None,
                     examples_per_reason: int = 0, batch_size: int = 256,
                     keep_documents: bool = False, **options: Any) -> dict:
    """The clean step's functions in a plain single-process loop (no Beam).

    Used by ``korlm clean --dry-run`` (on the first ``max_records_per_file`` records of
    every file, writing nothing) and by the throughput benchmark's baseline. Returns
    counts shaped like stats.json (without per-source detail), plus ``examples`` (up to
    ``examples_per_reason`` ``{"source", "text"}`` per reason) and, with
    ``keep_documents``, the surviving documents' sentences.
    """
    settings = CleanSettings.from_kwargs(**options)
    files = resolve_inputs(inputs)
    cleaner = DocumentCleaner(settings)
    keys = settings.dedup_keys()
    index = DedupIndex()
    stats = _new_source()
    stats["rejected_by_reason"] = {reason: 0 for reason in REJECTION_REASONS}
    stats["dropped_sentences_by_reason"] = {reason: 0 for reason in SENTENCE_DROP_REASONS}
    examples: dict[str, list[dict[str, str]]] = {}
    survivors: dict[str, dict[str, Any]] = {}

    def reject(reason: str, source: str, text: str, dropped: dict | None = None, pii: dict | None = None):
        stats["rejected_records"] += 1
        stats["rejected_by_reason"][reason] = stats["rejected_by_reason"].get(reason, 0) + 1
        _merge_counts(stats["dropped_sentences_by_reason"], dropped or {})
        _merge_counts(stats["pii_replaced"], pii or {})
        shown = examples.setdefault(reason, [])
        if len(shown) < examples_per_reason:
            text = scrub_pii(text, settings.pii_placeholder) if settings.pii != "off" else text
            shown.append({"source": source, "text": printable(text, 300)})

    for spec in files:
        summary = FileReadSummary()
        batch: list[tuple[int, str]] = []

        def flush(spec=spec, batch=batch):
            for result in cleaner.clean_batch(batch):
                if result["reason"] is not None:
                    reject(result["reason"], source_of(spec.path, result["line"]), result["text"],
                           result["dropped"], result["pii"])
                else:
                    key = doc_key(spec.path, result["line"])
                    survivors[key] = _document({"input": spec.input, "path": spec.path}, result)
                    if keys.enabled:
                        index.add(key, keys.keys(result["normalized"], result["sentences"]))
            batch.clear()

        records = read_records(spec.path, spec.format, spec.field, summary)
        seen = 0
        for line, text, reason in _limited(records, max_records_per_file):
            seen += 1
            if reason is not None:
                reject(reason, source_of(spec.path, line), text)
                continue
            batch.append((line, text))
            if len(batch) >= batch_size:
                flush()
        flush()
        stats["input_records"] += seen
        stats["input_bytes"] += summary.bytes_read
        stats["input_files"] += 1
    losers = index.resolve() if keys.enabled else {}
    kept_docs = []
    for key in sorted(survivors):
        doc = survivors[key]
        kept, reason = apply_loss(doc, merge_losers([losers[key]]) if key in losers else
                                  {"reason": None, "sentences": set()})
        if kept is None:
            reject(reason, source_of(doc["path"], doc["line"]), "\n".join(doc["sentences"]),
                   doc["dropped"], doc["pii"])
            continue
        stats["kept_records"] += 1
        stats["sentences"] += len(kept["sentences"])
        stats["output_bytes"] += len(format_document(kept).encode("utf-8")) + 1
        _merge_counts(stats["dropped_sentences_by_reason"], kept["dropped"])
        _merge_counts(stats["pii_replaced"], kept["pii"])
        if keep_documents:
            kept_docs.append(kept["sentences"])
    stats["dropped_sentences"] = sum(stats["dropped_sentences_by_reason"].values())
    check_accounting(stats)
    stats["examples"] = examples
    if keep_documents:
        stats["documents"] = kept_docs
    return stats


def _limited(records: Iterator, limit: int | None) -> Iterator:
    for i, record in enumerate(records):
        if limit is not None and i >= limit:
            return
        yield record
