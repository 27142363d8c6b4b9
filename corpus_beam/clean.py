"""clean: raw Korean text -> one sentence per line, a blank line between documents.

Pipeline (elements are files, record batches or documents, never single lines)::

    input files ─ ReadRecordBatches ─ Reshuffle ─ CleanDocuments ─ GroupByKey(hash) ─ KeepFirstSource ─ part-*.txt
                   │                               │                                  │
                   └──────────── rejections ───────┴──────────────────────────────────┴─ rejected/rejected-*.jsonl
    file stats + kept + rejections ─ CombineGlobally(CleanStatsFn) ─ stats.json

Each filter is one function in ``korlm.text``, one Beam counter (namespace ``korlm.clean``)
and one rejection reason. ``stats.json`` is computed inside the pipeline, so it is the
same on the DirectRunner and on Dataflow. ``input_records`` comes from the readers and
``kept_records``/``rejected_records`` from the end of the pipeline; their equality is
checked after the run, so a lost record fails the step instead of passing unnoticed.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from corpus_beam.readers import (
    FILE_STATS_TAG,
    INVALID_UTF8,
    MALFORMED_RECORD,
    REJECTED_TAG,
    UNREADABLE_FILE,
    ReadRecordBatches,
    rejection,
    resolve_inputs,
    source_of,
)
from korlm import storage
from korlm.errors import KorlmError
from korlm.text import (
    NORMALIZATION_FORMS,
    document_hash,
    filter_sentences,
    normalize_text,
    split_sentences_regex,
)

_LOG = logging.getLogger(__name__)

EMPTY_AFTER_NORMALIZATION = "empty_after_normalization"
TOO_SHORT_DOCUMENT = "too_short_document"
NO_SENTENCES_LEFT = "no_sentences_left"
DUPLICATE_DOCUMENT = "duplicate_document"
REJECTION_REASONS = (
    UNREADABLE_FILE,
    INVALID_UTF8,
    MALFORMED_RECORD,
    EMPTY_AFTER_NORMALIZATION,
    TOO_SHORT_DOCUMENT,
    NO_SENTENCES_LEFT,
    DUPLICATE_DOCUMENT,
)
SENTENCE_SPLITTERS = ("kiwi", "regex", "line")

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


class CleanDocuments(beam.DoFn):
    """Record batch -> ``(hash, document)`` for documents that survive the filters.

    Filters, in order: ``empty_after_normalization``, ``too_short_document``, sentence
    length (drops sentences, counted), ``no_sentences_left``.
    """

    def __init__(self, normalization: str, sentence_splitter: str, min_document_chars: int,
                 min_sentence_chars: int, max_sentence_chars: int):
        self.normalization = normalization
        self.sentence_splitter = sentence_splitter
        self.min_document_chars = min_document_chars
        self.min_sentence_chars = min_sentence_chars
        self.max_sentence_chars = max_sentence_chars

    def setup(self):
        self.splitter = SentenceSplitter(self.sentence_splitter)
        self.counters = {
            reason: beam.metrics.Metrics.counter("korlm.clean", reason)
            for reason in (EMPTY_AFTER_NORMALIZATION, TOO_SHORT_DOCUMENT, NO_SENTENCES_LEFT)
        }
        self.dropped_sentences = beam.metrics.Metrics.counter("korlm.clean", "dropped_sentences")

    def _reject(self, reason, batch, line, text, dropped=0):
        self.counters[reason].inc()
        return beam.pvalue.TaggedOutput(
            REJECTED_TAG, rejection(reason, source_of(batch["path"], line), text, batch["input"], dropped)
        )

    def process(self, batch: dict[str, Any]):
        survivors: list[tuple[int, str]] = []
        for line, text in batch["records"]:
            normalized = normalize_text(text, self.normalization)
            if not normalized:
                yield self._reject(EMPTY_AFTER_NORMALIZATION, batch, line, text)
            elif len(normalized) < self.min_document_chars:
                yield self._reject(TOO_SHORT_DOCUMENT, batch, line, normalized)
            else:
                survivors.append((line, normalized))
        if not survivors:
            return
        split = self.splitter.split([normalized for _, normalized in survivors])
        for (line, normalized), sentences in zip(survivors, split, strict=True):
            kept, dropped = filter_sentences(sentences, self.min_sentence_chars, self.max_sentence_chars)
            self.dropped_sentences.inc(dropped)
            if not kept:
                yield self._reject(NO_SENTENCES_LEFT, batch, line, normalized, dropped)
                continue
            yield document_hash(normalized), {
                "input": batch["input"],
                "path": batch["path"],
                "line": line,
                "sentences": kept,
                "dropped_sentences": dropped,
            }


class KeepFirstSource(beam.DoFn):
    """Exact dedup: of the documents sharing a hash, the one from the smallest
    ``(path, line)`` survives (deterministic on any runner); the rest are rejected."""

    def setup(self):
        self.duplicates = beam.metrics.Metrics.counter("korlm.clean", DUPLICATE_DOCUMENT)
        self.kept = beam.metrics.Metrics.counter("korlm.clean", "kept_records")

    def process(self, keyed):
        _, documents = keyed
        first, *rest = sorted(documents, key=lambda d: (d["path"], d["line"]))
        self.kept.inc()
        yield first
        for doc in rest:
            self.duplicates.inc()
            yield beam.pvalue.TaggedOutput(
                REJECTED_TAG,
                rejection(DUPLICATE_DOCUMENT, source_of(doc["path"], doc["line"]),
                          "\n".join(doc["sentences"]), doc["input"], doc["dropped_sentences"]),
            )


def format_document(doc: dict[str, Any]) -> str:
    """Sentences one per line; WriteToText's own newline then leaves the blank line that
    separates this document from the next."""
    return "\n".join(doc["sentences"]) + "\n"


def _new_source() -> dict[str, Any]:
    return {"input_records": 0, "kept_records": 0, "rejected_records": 0,
            "rejected_by_reason": {}, "sentences": 0, "dropped_sentences": 0,
            "input_bytes": 0, "output_bytes": 0, "input_files": 0, "empty_files": 0,
            "unreadable_files": 0, "blank_lines": 0}


class CleanStatsFn(beam.CombineFn):
    """Combines three kinds of events into stats.json's counts, per input and in total:
    ``{"file": ...}`` from the readers, ``{"kept": ...}`` and ``{"rejected": ...}`` from the end."""

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
        elif kind == "kept":
            source["kept_records"] += 1
            source["sentences"] += len(data["sentences"])
            source["dropped_sentences"] += data["dropped_sentences"]
            source["output_bytes"] += len(format_document(data).encode("utf-8")) + 1
        else:
            source["rejected_records"] += 1
            source["dropped_sentences"] += data["dropped_sentences"]
            by_reason = source["rejected_by_reason"]
            by_reason[data["reason"]] = by_reason.get(data["reason"], 0) + 1
        return acc

    def merge_accumulators(self, accumulators):
        merged: dict[str, dict[str, Any]] = {}
        for acc in accumulators:
            for name, counts in acc.items():
                target = merged.setdefault(name, _new_source())
                for key, value in counts.items():
                    if key == "rejected_by_reason":
                        for reason, n in value.items():
                            target[key][reason] = target[key].get(reason, 0) + n
                    else:
                        target[key] += value
        return merged

    def extract_output(self, acc):
        total = _new_source()
        total["rejected_by_reason"] = {reason: 0 for reason in REJECTION_REASONS}
        for counts in acc.values():
            for key, value in counts.items():
                if key == "rejected_by_reason":
                    for reason, n in value.items():
                        total[key][reason] = total[key].get(reason, 0) + n
                else:
                    total[key] += value
        total["per_source"] = {name: acc[name] for name in sorted(acc)}
        return total


def _check_settings(min_sentence_chars, max_sentence_chars, min_document_chars, normalization,
                    sentence_splitter):
    if normalization not in NORMALIZATION_FORMS:
        raise KorlmError(f"normalization {normalization!r} is unknown; choose one of {', '.join(NORMALIZATION_FORMS)}")
    if sentence_splitter not in SENTENCE_SPLITTERS:
        raise KorlmError(f"sentence_splitter {sentence_splitter!r} is unknown; choose one of {', '.join(SENTENCE_SPLITTERS)}")
    if min_sentence_chars < 1 or max_sentence_chars < min_sentence_chars:
        raise KorlmError(
            f"sentence limits {min_sentence_chars}..{max_sentence_chars} are invalid; "
            "need 1 <= min_sentence_chars <= max_sentence_chars"
        )
    if min_document_chars < 0:
        raise KorlmError(f"min_document_chars must be 0 or more, got {min_document_chars}")


def build_clean_graph(p: beam.Pipeline, files: list, staging: str, *, normalization: str,
                      sentence_splitter: str, min_document_chars: int, min_sentence_chars: int,
                      max_sentence_chars: int) -> None:
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
        | "CleanDocuments" >> beam.ParDo(CleanDocuments(
            normalization, sentence_splitter, min_document_chars, min_sentence_chars,
            max_sentence_chars)).with_outputs(REJECTED_TAG, main="documents")
    )
    deduped = (
        cleaned.documents
        | "GroupByHash" >> beam.GroupByKey()
        | "KeepFirstSource" >> beam.ParDo(KeepFirstSource()).with_outputs(REJECTED_TAG, main="kept")
    )
    rejected = (
        (read[REJECTED_TAG], cleaned[REJECTED_TAG], deduped[REJECTED_TAG])
        | "AllRejections" >> beam.Flatten()
    )
    _ = (
        deduped.kept
        | "FormatDocuments" >> beam.Map(format_document)
        | "WriteCorpus" >> beam.io.WriteToText(storage.join(staging, "part"), file_name_suffix=".txt")
    )
    _ = (
        rejected
        | "RejectionJson" >> beam.Map(
            lambda r: json.dumps({k: r[k] for k in ("reason", "source", "text")}, ensure_ascii=False))
        | "WriteRejected" >> beam.io.WriteToText(
            storage.join(staging, "rejected", "rejected"), file_name_suffix=".jsonl")
    )
    _ = (
        (
            read[FILE_STATS_TAG] | "FileEvents" >> beam.Map(lambda d: ("file", d)),
            deduped.kept | "KeptEvents" >> beam.Map(lambda d: ("kept", d)),
            rejected | "RejectedEvents" >> beam.Map(lambda d: ("rejected", d)),
        )
        | "AllEvents" >> beam.Flatten()
        | "CountStats" >> beam.CombineGlobally(CleanStatsFn())
        | "StatsJson" >> beam.Map(lambda s: json.dumps(s, indent=2, ensure_ascii=False))
        | "WriteStats" >> beam.io.WriteToText(
            storage.join(staging, "stats"), file_name_suffix=".json", shard_name_template="")
    )


def run_clean(
    inputs: list[str | dict],
    output_dir: str,
    *,
    min_sentence_chars: int = 2,
    max_sentence_chars: int = 1000,
    min_document_chars: int = 10,
    normalization: str = "NFC",
    sentence_splitter: str = "kiwi",
    beam_options: list[str] | None = None,
) -> dict:
    """Clean raw corpora into ``output_dir`` (published atomically) and return stats.json's dict.

    Writes ``part-*.txt`` (one sentence a line, a blank line after every document),
    ``rejected/rejected-*.jsonl`` (reason, source, text) and ``stats.json``.
    Raises KorlmError for bad settings and for inputs that match no file, before any
    pipeline starts.
    """
    _check_settings(min_sentence_chars, max_sentence_chars, min_document_chars, normalization,
                    sentence_splitter)
    files = resolve_inputs(inputs)
    options = pipeline_options(beam_options)
    started = time.monotonic()
    with storage.atomic_output_dir(output_dir) as staging:
        p = beam.Pipeline(options=options)
        build_clean_graph(p, files, staging, normalization=normalization,
                          sentence_splitter=sentence_splitter, min_document_chars=min_document_chars,
                          min_sentence_chars=min_sentence_chars, max_sentence_chars=max_sentence_chars)
        result = p.run()
        result.wait_until_finish()
        counters = beam_counters(result, "korlm.clean")
        _LOG.info("clean counters: %s", json.dumps(counters, sort_keys=True))
        stats = json.loads(storage.read_text(storage.join(staging, "stats.json")))
        if stats["input_records"] != stats["kept_records"] + stats["rejected_records"]:
            raise RuntimeError(
                f"clean lost records: input {stats['input_records']} != kept {stats['kept_records']}"
                f" + rejected {stats['rejected_records']}; this is a bug, please report it"
            )
    _LOG.info("clean: %d of %d records kept, %d sentences, %.1f s", stats["kept_records"],
              stats["input_records"], stats["sentences"], time.monotonic() - started)
    if stats["kept_records"] == 0:
        _LOG.warning("clean kept no documents; see %s for why", storage.join(output_dir, "rejected"))
    return stats
