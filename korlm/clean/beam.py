"""clean: raw Korean text -> one sentence per line, a blank line between documents.

Pipeline, in two passes so that only small keys are shuffled and the corpus is never
held in memory (elements are files, record batches, arrays of dedup entries or
document-file ids; never single lines)::

    pass 1  input files ─ ReadRecordBatches ─ [Reshuffle] ─ CleanDocuments ─┬─ survivors ─► temporary document file per bundle
                           │                                 │              ├─ (file id, path) ───────────────────────┐
                           │                                 │              └─ dedup entries ─ GroupByKey(dedup shard) │
                           │                                 │                 ─ FindDuplicates ─ losses per file id ─ CoGroupByKey(file id)
    pass 2                 │                                 │                                    ─ ApplyDedup (streams the file) ─ part-*.txt
                           └ rejected-read-*.jsonl           └ rejected-clean-*.jsonl                               └ rejected-dedup-*.jsonl
    counts per stream (combined in the stage that makes them) ─ Flatten ─ CombineGlobally(CleanStatsFn) ─ stats.json

The in_memory DirectRunner keeps whatever crosses a stage boundary in RAM, so there the
Reshuffle is left out and the dedup entries are spilled to files too
(``in_memory_runner``); other runners shuffle on disk themselves.

``DocumentCleaner`` holds every per-document step (normalize, scrub PII, the optional
normalizations, document filters, sentence split, sentence filters) as plain Python, so
the Beam DoFn, the single-process loop of the benchmark and ``korlm clean --dry-run``
run the same code. Each filter is one ``Filter`` entry (``korlm.clean.cleaner``'s
``DOCUMENT_FILTERS`` and ``SENTENCE_FILTERS``): a name, its function (in
``korlm.clean.filters``/``korlm.clean.pii``) and its rejection reason (documents) or
dropped-sentence reason (sentences), which is also its Beam counter (namespace
``korlm.clean``) and its stats.json key. Deduplication is in ``korlm.clean.dedup``.

``stats.json`` is computed inside the pipeline, so it is the same on the DirectRunner
and on Dataflow. ``input_records`` comes from the readers and ``kept_records``/
``rejected_records`` from the end of the pipeline; their equality is checked after the
run, so a lost record fails the step instead of passing unnoticed.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import struct
import time
import zlib
from collections.abc import Iterable, Iterator
from typing import IO, Any

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from korlm import storage
from korlm.beam_options import beam_counters, pipeline_options
from korlm.clean.cleaner import (
    DOCUMENT_FILTERS,
    EMPTY_AFTER_NORMALIZATION,
    NO_SENTENCES_LEFT,
    SENTENCE_FILTERS,
    TOO_LONG_DOCUMENT,
    CleanSettings,
    DocumentCleaner,
    add_count,
    clean_settings,
    dedup_keys,
)
from korlm.clean.dedup import (
    DUPLICATE_DOCUMENT,
    DUPLICATE_SENTENCE,
    DUPLICATE_SENTENCES,
    ENTRY,
    LOSS,
    MAX_FILES,
    NEAR_DUPLICATE_DOCUMENT,
    DedupIndex,
    Losses,
    find_losers,
    record_order,
    shard_entries,
)
from korlm.clean.pii import scrub_pii
from korlm.clean.readers import (
    FILE_STATS_TAG,
    INVALID_UTF8,
    MALFORMED_RECORD,
    REJECTED_TAG,
    TRUNCATED_FILE,
    UNREADABLE_FILE,
    FileReadSummary,
    ReadRecordBatches,
    read_records,
    rejection,
    resolve_inputs,
    source_of,
)
from korlm.clean.text import (
    printable,
)
from korlm.errors import KorlmError

_LOG = logging.getLogger(__name__)

REJECTION_REASONS = (
    UNREADABLE_FILE,
    TRUNCATED_FILE,
    INVALID_UTF8,
    MALFORMED_RECORD,
    EMPTY_AFTER_NORMALIZATION,
    TOO_LONG_DOCUMENT,
    *(f.reason for f in DOCUMENT_FILTERS),
    NO_SENTENCES_LEFT,
    DUPLICATE_DOCUMENT,
    NEAR_DUPLICATE_DOCUMENT,
    DUPLICATE_SENTENCES,
)
SENTENCE_DROP_REASONS = (*dict.fromkeys(f.reason for f in SENTENCE_FILTERS), DUPLICATE_SENTENCE)
COUNTER_NAMESPACE = "korlm.clean"


def _rejection(reason: str, batch_or_doc: dict[str, Any], line: int, text: str,
               dropped: dict[str, int] | None = None, pii: dict[str, int] | None = None) -> dict:
    r = rejection(reason, source_of(batch_or_doc["path"], line), text, batch_or_doc["input"],
                  sum((dropped or {}).values()))
    r["dropped"] = dict(dropped or {})
    r["pii"] = dict(pii or {})
    return r


# ---------------------------------------------------------------- documents waiting for dedup
#
# Cleaned documents do not travel through a shuffle: pass 1 appends them to a temporary
# shard file (one per bundle), pass 2 streams that file back once the shard's losses are
# known. A shard file is a sequence of frames (8-byte little-endian length + a pickled
# record batch ``{"input", "path", "rank", "docs": [(line, sentences, dropped, pii)]}``);
# it is private to one run, written and read by this module only.

_FRAME = struct.Struct("<Q")


def write_document_batch(f: IO[bytes], batch: dict[str, Any]) -> None:
    data = pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)
    f.write(_FRAME.pack(len(data)))
    f.write(data)


def read_document_batches(f: IO[bytes]) -> Iterator[dict[str, Any]]:
    while head := f.read(_FRAME.size):
        if len(head) != _FRAME.size:
            raise RuntimeError("truncated temporary document shard; this is a bug, please report it")
        n = _FRAME.unpack(head)[0]
        data = f.read(n)
        if len(data) != n:
            raise RuntimeError("truncated temporary document shard; this is a bug, please report it")
        yield pickle.loads(data)


def document_batch(spec_input: str, path: str, rank: int, results: list[dict[str, Any]]) -> dict[str, Any]:
    return {"input": spec_input, "path": path, "rank": rank,
            "docs": [(r["line"], r["sentences"], r["dropped"], r["pii"]) for r in results]}


def dedup_batch(batch: dict[str, Any], losses: Losses) -> Iterator[tuple[dict[str, Any], str | None]]:
    """Per document of a stored batch: ``(document after dedup, None)`` or ``(document,
    rejection reason)``."""
    docs = batch["docs"]
    orders = [record_order(batch["rank"], d[0]) for d in docs]
    for (line, sentences, dropped, pii), loss in zip(docs, losses.lookup(orders), strict=True):
        doc = {"input": batch["input"], "path": batch["path"], "line": line,
               "sentences": sentences, "dropped": dropped, "pii": pii}
        if loss is None:
            yield doc, None
            continue
        kept, reason = apply_loss(doc, loss)
        yield (doc, reason) if kept is None else (kept, None)


def _open_raw(path: str, mode: str) -> IO[bytes]:
    if mode == "w":
        return FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED)
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


class CleanDocuments(beam.DoFn):
    """Pass 1. Record batch -> rejections (side output ``rejected``), the survivors
    appended to this bundle's temporary shard file, whose ``(shard id, path)`` is
    output once (side output ``shards``), and the batch's dedup entries (side output
    ``buckets``: ``(dedup shard, (shard id, ENTRY bytes))``, one element per batch and
    dedup shard). Nothing proportional to the corpus leaves this DoFn but 20 bytes per
    bucket entry.

    With ``spill_entries`` the entries go to one file per bundle and dedup shard instead,
    and ``buckets`` carries ``(dedup shard, (shard id, path))`` once per file: for the
    in_memory DirectRunner, whose shuffle is RAM (elsewhere the runner's shuffle spills
    to disk itself, and a file per bundle and shard would be far too many files)."""

    BUCKETS_TAG = "buckets"
    SHARDS_TAG = "shards"

    def __init__(self, settings: CleanSettings, ranks: dict[str, int], tmp_dir: str,
                 spill_entries: bool = False):
        self.settings = settings
        self.ranks = ranks
        self.tmp_dir = tmp_dir
        self.spill_entries = spill_entries

    def setup(self):
        self.cleaner = DocumentCleaner(self.settings)
        self.keys = dedup_keys(self.settings)
        self.counters: dict[str, Any] = {}
        self._shard: tuple[int, IO[bytes]] | None = None
        self._entry_files: dict[int, IO[bytes]] = {}

    def start_bundle(self):
        self._shard = None
        self._entry_files = {}

    def finish_bundle(self):
        if self._shard is not None:
            self._shard[1].close()
            self._shard = None
        for f in self._entry_files.values():
            f.close()
        self._entry_files = {}

    def _count(self, name: str, n: int = 1) -> None:
        if n:
            if name not in self.counters:
                self.counters[name] = beam.metrics.Metrics.counter(COUNTER_NAMESPACE, name)
            self.counters[name].inc(n)

    def process(self, batch: dict[str, Any]):
        survivors = []
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
            survivors.append(result)
        if not survivors:
            return
        if self._shard is None:
            # a bundle that is retried writes a new file; the failed attempt's id is never output
            shard_id = int.from_bytes(os.urandom(8), "little") >> 1
            path = storage.join(self.tmp_dir, f"docs-{shard_id:016x}.bin")
            self._shard = (shard_id, _open_raw(path, "w"))
            yield beam.pvalue.TaggedOutput(self.SHARDS_TAG, (shard_id, path))
        shard_id, f = self._shard
        rank = self.ranks[batch["path"]]
        write_document_batch(f, document_batch(batch["input"], batch["path"], rank, survivors))
        if self.keys.enabled:
            entries = self.keys.entries((record_order(rank, r["line"]), r["normalized"], r["sentences"])
                                        for r in survivors)
            for dedup_shard, part in shard_entries(entries, self.settings.dedup_shards):
                if not self.spill_entries:
                    yield beam.pvalue.TaggedOutput(self.BUCKETS_TAG, (dedup_shard, (shard_id, part.tobytes())))
                    continue
                if dedup_shard not in self._entry_files:
                    path = storage.join(self.tmp_dir, f"entries-{shard_id:016x}-{dedup_shard:05d}.bin")
                    self._entry_files[dedup_shard] = _open_raw(path, "w")
                    yield beam.pvalue.TaggedOutput(self.BUCKETS_TAG, (dedup_shard, (shard_id, path)))
                self._entry_files[dedup_shard].write(part.tobytes())


class FindDuplicates(beam.DoFn):
    """One dedup shard's entries (inline bytes or spilled files) -> ``(document shard id,
    LOSS bytes)`` per document shard that loses something in it."""

    def process(self, shard):
        _, parts = shard
        owners, blobs = [], []
        for shard_id, payload in parts:
            if isinstance(payload, str):
                with _open_raw(payload, "r") as f:
                    payload = f.read()
            owners.append(shard_id)
            blobs.append(payload)
        entries = np.frombuffer(b"".join(blobs), ENTRY)
        owner = np.repeat(np.array(owners, dtype=np.int64), [len(b) // ENTRY.itemsize for b in blobs])
        del blobs
        lost = find_losers(entries)
        if not len(lost):
            return
        lost_owner = owner[lost]
        by_owner = np.argsort(lost_owner, kind="stable")
        lost, lost_owner = lost[by_owner], lost_owner[by_owner]
        starts = np.flatnonzero(np.r_[True, lost_owner[1:] != lost_owner[:-1]])
        for start, end in zip(starts, np.r_[starts[1:], len(lost)], strict=True):
            chosen = entries[lost[start:end]]
            losses = np.empty(len(chosen), LOSS)
            losses["order"], losses["index"] = chosen["order"], chosen["index"]
            yield int(lost_owner[start]), losses.tobytes()


class ApplyDedup(beam.DoFn):
    """Pass 2. A document shard and its losses -> the kept documents as text blocks (main
    output, one element per record batch), a rejection per dropped document, and the
    shard's kept-side counts (side output ``stats``: one ``{input: counts}`` element)."""

    STATS_TAG = "stats"

    def setup(self):
        self.counters = {name: beam.metrics.Metrics.counter(COUNTER_NAMESPACE, name) for name in
                         (DUPLICATE_DOCUMENT, NEAR_DUPLICATE_DOCUMENT, DUPLICATE_SENTENCES,
                          DUPLICATE_SENTENCE, "kept_records", "dropped_sentences")}

    def process(self, joined):
        _, grouped = joined
        paths = list(grouped["shard"])
        if not paths:
            raise RuntimeError("dedup losses for a document shard that was never written; "
                               "this is a bug, please report it")
        losses = Losses(np.frombuffer(b"".join(grouped["loss"]), LOSS))
        partial: dict[str, dict[str, Any]] = {}
        with _open_raw(paths[0], "r") as f:
            for batch in read_document_batches(f):
                blocks: list[str] = []
                for doc, reason in dedup_batch(batch, losses):
                    if reason is not None:
                        self.counters[reason].inc()
                        yield beam.pvalue.TaggedOutput(REJECTED_TAG, _rejection(
                            reason, doc, doc["line"], "\n".join(doc["sentences"]), doc["dropped"], doc["pii"]))
                        continue
                    n = doc["dropped"].get(DUPLICATE_SENTENCE, 0)
                    self.counters[DUPLICATE_SENTENCE].inc(n)
                    self.counters["dropped_sentences"].inc(n)
                    self.counters["kept_records"].inc()
                    text = format_document(doc)
                    blocks.append(text)
                    add_kept(partial.setdefault(doc["input"], _new_source()), doc, text)
                if blocks:
                    # WriteToText adds one newline per element: joining by "\n" keeps the blank
                    # line between every two documents exactly as one element per document would.
                    yield "\n".join(blocks)
        if partial:
            yield beam.pvalue.TaggedOutput(self.STATS_TAG, partial)


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
    add_count(dropped, DUPLICATE_SENTENCE, len(doc["sentences"]) - len(sentences))
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
            "unreadable_files": 0, "truncated_files": 0, "blank_lines": 0}


def _merge_counts(target: dict[str, int], counts: dict[str, int]) -> None:
    for key, n in counts.items():
        target[key] = target.get(key, 0) + n


def _merge_source(target: dict[str, Any], counts: dict[str, Any]) -> None:
    for key, value in counts.items():
        if isinstance(value, dict):
            _merge_counts(target[key], value)
        else:
            target[key] += value


def _count_file(source: dict[str, Any], data: dict[str, Any]) -> None:
    """One file's read summary (ReadRecordBatches' ``file_stats``) into ``source``."""
    source["input_records"] += data["records"]
    source["input_bytes"] += data["bytes"]
    source["blank_lines"] += data["blank_lines"]
    source["input_files"] += 1
    source["empty_files"] += int(data["bytes"] == 0 and not data["unreadable"] and not data["truncated"])
    source["unreadable_files"] += int(data["unreadable"])
    source["truncated_files"] += int(data["truncated"])


def add_kept(source: dict[str, Any], doc: dict[str, Any], text: str) -> None:
    """Count one kept document (``text`` is its formatted block) into ``source``."""
    source["kept_records"] += 1
    source["sentences"] += len(doc["sentences"])
    source["output_bytes"] += len(text.encode("utf-8")) + 1
    source["dropped_sentences"] += sum(doc["dropped"].values())
    _merge_counts(source["dropped_sentences_by_reason"], doc["dropped"])
    _merge_counts(source["pii_replaced"], doc["pii"])


class SourceCountsFn(beam.CombineFn):
    """Events -> ``{input: counts}``: ``("file", ...)`` from the readers, ``("rejected",
    ...)`` per rejection. Its output is also what ApplyDedup emits for the kept side."""

    def create_accumulator(self):
        return {}

    def add_input(self, acc, event):
        kind, data = event
        source = acc.setdefault(data["input"], _new_source())
        if kind == "file":
            _count_file(source, data)
            return acc
        dropped = data.get("dropped", {})
        source["dropped_sentences"] += sum(dropped.values())
        _merge_counts(source["dropped_sentences_by_reason"], dropped)
        _merge_counts(source["pii_replaced"], data.get("pii", {}))
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
        return acc


class CleanStatsFn(SourceCountsFn):
    """``{input: counts}`` elements (SourceCountsFn outputs, ApplyDedup's stats) ->
    stats.json's dict: the totals plus ``per_source``."""

    def add_input(self, acc, counts):
        for name, part in counts.items():
            _merge_source(acc.setdefault(name, _new_source()), part)
        return acc

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


class CountSources(beam.PTransform):
    """Events of one kind -> one ``{input: counts}`` element. Counting (a lifted combine)
    happens in the stage that produces the events, so only per-bundle counts cross the
    stage boundary, never the events (a rejection carries its text)."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def expand(self, pcoll):
        kind = self.kind
        return (pcoll
                | "Events" >> beam.Map(lambda d: (kind, d))
                | "Count" >> beam.CombineGlobally(SourceCountsFn()).without_defaults())


class WriteRejections(beam.PTransform):
    """Rejections -> ``rejected/rejected-<part>-*.jsonl`` (sampled by ``rejected_sample_rate``)."""

    def __init__(self, staging: str, part: str, settings: CleanSettings):
        super().__init__()
        self.prefix = storage.join(staging, "rejected", f"rejected-{part}")
        self.settings = settings

    def expand(self, pcoll):
        return (pcoll
                | "Sample" >> beam.Filter(keep_rejection_sample, self.settings.rejected_sample_rate)
                | "Json" >> beam.Map(rejection_json, self.settings)
                | "Write" >> beam.io.WriteToText(self.prefix, file_name_suffix=".jsonl"))


def in_memory_runner(options: PipelineOptions) -> bool:
    """The in_memory DirectRunner: one worker, and every shuffle held in RAM. There the
    record batches are not reshuffled (one worker gains nothing, and the shuffle would
    hold the raw corpus) and dedup entries are spilled to files; every other runner
    reshuffles batches, so a few big files still spread over all workers, and shuffles
    the entries itself."""
    runner = options.view_as(StandardOptions).runner
    if runner in (None, "DirectRunner", "direct"):
        return options.view_as(DirectOptions).direct_running_mode == "in_memory"
    return False


def file_ranks(files: list) -> dict[str, int]:
    """Each input path's position among the sorted paths: documents compare by (rank, line)."""
    paths = sorted({f.path for f in files})
    if len(paths) > MAX_FILES:
        raise KorlmError(f"clean takes at most {MAX_FILES} files per run, got {len(paths)}")
    return {path: rank for rank, path in enumerate(paths)}


def dedup_tmp_dir(staging: str) -> str:
    return storage.join(staging, "_dedup_tmp")


def build_clean_graph(p: beam.Pipeline, files: list, staging: str, settings: CleanSettings,
                      in_memory: bool = False) -> None:
    """Add the clean transforms to ``p``, writing every output under ``staging`` (and the
    documents waiting for dedup under ``dedup_tmp_dir(staging)``, for the caller to remove)."""
    read = (
        p
        | "InputFiles" >> beam.Create(files)
        | "ReadRecordBatches" >> beam.ParDo(ReadRecordBatches()).with_outputs(
            REJECTED_TAG, FILE_STATS_TAG, main="batches")
    )
    batches = read.batches if in_memory else read.batches | "SpreadBatches" >> beam.Reshuffle()
    cleaned = batches | "CleanDocuments" >> beam.ParDo(
        CleanDocuments(settings, file_ranks(files), dedup_tmp_dir(staging), spill_entries=in_memory)).with_outputs(
            REJECTED_TAG, CleanDocuments.BUCKETS_TAG, CleanDocuments.SHARDS_TAG, main="none")
    losses = (
        cleaned[CleanDocuments.BUCKETS_TAG]
        | "GroupByDedupShard" >> beam.GroupByKey()
        | "FindDuplicates" >> beam.ParDo(FindDuplicates())
    )
    deduped = (
        {"shard": cleaned[CleanDocuments.SHARDS_TAG], "loss": losses}
        | "JoinLosses" >> beam.CoGroupByKey()
        | "ApplyDedup" >> beam.ParDo(ApplyDedup()).with_outputs(REJECTED_TAG, ApplyDedup.STATS_TAG, main="kept")
    )
    _ = (
        deduped.kept
        | "WriteCorpus" >> beam.io.WriteToText(storage.join(staging, "part"), file_name_suffix=".txt")
    )
    # One rejection log per stage, so no rejection waits in memory for a later stage.
    rejections = {"read": read[REJECTED_TAG], "clean": cleaned[REJECTED_TAG], "dedup": deduped[REJECTED_TAG]}
    counts = [read[FILE_STATS_TAG] | "CountFiles" >> CountSources("file"), deduped[ApplyDedup.STATS_TAG]]
    for part, pcoll in rejections.items():
        _ = pcoll | f"WriteRejected[{part}]" >> WriteRejections(staging, part, settings)
        counts.append(pcoll | f"CountRejected[{part}]" >> CountSources("rejected"))
    _ = (
        tuple(counts)
        | "AllCounts" >> beam.Flatten()
        | "CountStats" >> beam.CombineGlobally(CleanStatsFn())
        | "StatsJson" >> beam.Map(lambda s: json.dumps(s, indent=2, ensure_ascii=False))
        | "WriteStats" >> beam.io.WriteToText(
            storage.join(staging, "stats"), file_name_suffix=".json", shard_name_template="")
    )


def run_clean(inputs: list[str | dict], output_dir: str, *, beam_options: list[str] | None = None,
              overwrite: bool = False, **options: Any) -> dict:
    """Clean raw corpora into ``output_dir`` (published atomically) and return stats.json's dict.

    ``options`` are :class:`CleanSettings` (``korlm.config.CleanSection``) fields
    (``min_sentence_chars=2``, ``pii="replace"``...). Writes ``part-*.txt`` (one sentence a
    line, a blank line after every document), ``rejected/rejected-*.jsonl`` (reason,
    source, text) and ``stats.json``. Raises KorlmError for bad settings, for inputs
    that match no file and for an output korlm may not write (see
    :func:`korlm.storage.check_output`; ``overwrite`` replaces an earlier clean output),
    before any pipeline starts.

    A run that keeps no document although its inputs had records raises KorlmError
    naming the top rejection reasons, and publishes no corpus (an earlier corpus at
    ``output_dir`` stays as it was): its ``stats.json`` and ``rejected/`` are written to
    ``failed_output_dir(output_dir)`` (``OUTPUT.failed``, a korlm ``clean-failed``
    artifact) to be inspected instead. A later successful run removes that folder.
    """
    settings = clean_settings(**options)
    files = resolve_inputs(inputs)
    options_ = pipeline_options(beam_options)
    started = time.monotonic()
    failed_dir = failed_output_dir(output_dir)
    inputs = [f.path for f in files]
    with storage.atomic_output_dir(output_dir, "clean", inputs=inputs, overwrite=overwrite,
                                   stage_remote=True) as staging:
        # staged on the destination's filesystem: Dataflow workers write the shards
        p = beam.Pipeline(options=options_)
        build_clean_graph(p, files, staging, settings, in_memory=in_memory_runner(options_))
        result = p.run()
        result.wait_until_finish()
        storage.remove_tree(dedup_tmp_dir(staging))
        counters = beam_counters(result, COUNTER_NAMESPACE)
        _LOG.info("clean counters: %s", json.dumps(counters, sort_keys=True))
        stats = json.loads(storage.read_text(storage.join(staging, "stats.json")))
        check_accounting(stats)
        if (error := nothing_kept_error(stats, failed_dir)) is not None:
            keep_diagnostics(staging, failed_dir, inputs)
            raise error  # leaves output_dir unpublished
    if (storage.read_marker(failed_dir) or {}).get("step") == FAILED_STEP:
        storage.remove_tree(failed_dir)  # the diagnostics of an earlier failed run
    _LOG.info("clean: %d of %d records kept, %d sentences, %.1f s", stats["kept_records"],
              stats["input_records"], stats["sentences"], time.monotonic() - started)
    if stats["kept_records"] == 0:
        _LOG.warning("clean kept no documents: the inputs hold no records")
    if stats["truncated_files"]:
        _LOG.warning("clean: %d truncated or corrupt file(s); their records before the damage are kept "
                     "(truncated_file in %s)", stats["truncated_files"], storage.join(output_dir, "rejected"))
    return stats


# the artifact kind of OUTPUT.failed (a run's diagnostics when it kept no document)
FAILED_STEP = "clean-failed"


def failed_output_dir(output_dir: str) -> str:
    """Where a run that kept nothing leaves its stats.json and rejected/ (OUTPUT.failed)."""
    return str(output_dir).rstrip("/") + ".failed"


def top_reasons(stats: dict, n: int = 3) -> str:
    """``malformed_record 12,000, too_short_document 3``: the ``n`` commonest rejection reasons."""
    reasons = sorted(((count, reason) for reason, count in stats["rejected_by_reason"].items() if count),
                     key=lambda cr: (-cr[0], cr[1]))
    return ", ".join(f"{reason} {count:,}" for count, reason in reasons[:n]) or "none"


def nothing_kept_error(stats: dict, diagnostics: str | None = None) -> KorlmError | None:
    """The error for a run that kept no document from inputs that had records (else None):
    one line with the top three rejection reasons and where to look."""
    if stats["kept_records"] or not stats["input_records"]:
        return None
    where = f"; stats.json and rejected/ are in {diagnostics}, no corpus was written" if diagnostics else ""
    return KorlmError(
        f"clean kept no documents: all {stats['input_records']:,} input records were rejected "
        f"(top reasons: {top_reasons(stats)}){where}")


def keep_diagnostics(staging: str, target: str, inputs: list[str] = ()) -> None:
    """Copy ``stats.json`` and ``rejected/`` from a staging directory to ``target``
    (replacing an earlier run's diagnostics, never anything korlm did not write)."""
    names = ["stats.json"]
    rejected = storage.join(staging, "rejected")
    if storage.exists(rejected):
        names += [f"rejected/{name}" for name in storage.listdir(rejected)]
    with storage.atomic_output_dir(target, FAILED_STEP, inputs=inputs, overwrite=True,
                                   stage_remote=True) as out:
        for name in names:
            with storage.open_file(storage.join(staging, *name.split("/")), "rb") as src, \
                    storage.open_file(storage.join(out, *name.split("/")), "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)


def check_accounting(stats: dict) -> None:
    if stats["input_records"] != stats["kept_records"] + stats["rejected_records"]:
        raise RuntimeError(
            f"clean lost records: input {stats['input_records']} != kept {stats['kept_records']}"
            f" + rejected {stats['rejected_records']}; this is a bug, please report it"
        )


# ---------------------------------------------------------------- the same steps, one process


def clean_in_process(inputs: list[str | dict], *, max_records_per_file: int | None = None,
                     examples_per_reason: int = 0, batch_size: int = 256,
                     keep_documents: bool = False, corpus_path: str | None = None,
                     **options: Any) -> dict:
    """The clean step's functions in a plain single-process loop (no Beam).

    Used by ``korlm clean --dry-run`` (on the first ``max_records_per_file`` records of
    every file, writing nothing) and by the throughput benchmark's baseline. Two passes
    like the pipeline: survivors wait in a local temporary file while only their dedup
    entries stay in memory. Returns counts shaped like stats.json (without per-source
    detail), plus ``examples`` (up to ``examples_per_reason`` ``{"source", "text"}`` per
    reason) and, with ``keep_documents``, the surviving documents' sentences;
    ``corpus_path`` writes the kept documents there as a ``part-*.txt`` would hold them.
    """
    import tempfile

    settings = clean_settings(**options)
    files = resolve_inputs(inputs)
    ranks = file_ranks(files)
    cleaner = DocumentCleaner(settings)
    keys = dedup_keys(settings)
    index = DedupIndex()
    stats = _new_source()
    stats["rejected_by_reason"] = {reason: 0 for reason in REJECTION_REASONS}
    stats["dropped_sentences_by_reason"] = {reason: 0 for reason in SENTENCE_DROP_REASONS}
    examples: dict[str, list[dict[str, str]]] = {}

    def reject(reason: str, source: str, text: str, dropped: dict | None = None, pii: dict | None = None):
        stats["rejected_records"] += 1
        stats["rejected_by_reason"][reason] = stats["rejected_by_reason"].get(reason, 0) + 1
        _merge_counts(stats["dropped_sentences_by_reason"], dropped or {})
        _merge_counts(stats["pii_replaced"], pii or {})
        shown = examples.setdefault(reason, [])
        if len(shown) < examples_per_reason:
            text = scrub_pii(text, settings.pii_placeholder) if settings.pii != "off" else text
            shown.append({"source": source, "text": printable(text, 300)})

    kept_docs = []
    with tempfile.TemporaryFile(prefix="korlm-clean-") as waiting:
        for spec in files:
            summary = FileReadSummary()
            batch: list[tuple[int, str]] = []

            def flush(spec=spec, batch=batch):
                survivors = []
                for result in cleaner.clean_batch(batch):
                    if result["reason"] is not None:
                        reject(result["reason"], source_of(spec.path, result["line"]), result["text"],
                               result["dropped"], result["pii"])
                    else:
                        survivors.append(result)
                batch.clear()
                if not survivors:
                    return
                rank = ranks[spec.path]
                write_document_batch(waiting, document_batch(spec.input, spec.path, rank, survivors))
                if keys.enabled:
                    index.add(keys.entries((record_order(rank, r["line"]), r["normalized"], r["sentences"])
                                           for r in survivors))

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
            stats["unreadable_files"] += int(summary.unreadable)
            stats["truncated_files"] += int(summary.truncated)
        losses = index.resolve()
        waiting.seek(0)
        out = storage.open_file(corpus_path, "w") if corpus_path else None
        try:
            for stored in read_document_batches(waiting):
                for doc, reason in dedup_batch(stored, losses):
                    if reason is not None:
                        reject(reason, source_of(doc["path"], doc["line"]), "\n".join(doc["sentences"]),
                               doc["dropped"], doc["pii"])
                        continue
                    text = format_document(doc)
                    add_kept(stats, doc, text)
                    if out is not None:
                        out.write(text + "\n")
                    if keep_documents:
                        kept_docs.append(doc["sentences"])
        finally:
            if out is not None:
                out.close()
    stats["dropped_sentences"] = sum(stats["dropped_sentences_by_reason"].values())
    check_accounting(stats)
    stats["examples"] = examples
    if keep_documents:
        stats["documents"] = kept_docs
    return stats


def _limited(records: Iterable, limit: int | None) -> Iterator:
    for i, record in enumerate(records):
        if limit is not None and i >= limit:
            return
        yield record
