"""pretrain-data: clean corpus -> token-id TFRecord shards for pretraining.

Pipeline::

    part files ─ ReadDocuments ─ Reshuffle ─ TokenizeAndPack ─ Partition(shard) ─┬─ SortShard i ─ WriteToTFRecord(train-i-of-N)
                                                  └── counts ─ CombineGlobally ─ metadata.json

Packing is FULL-SENTENCES style within a document: a document's sentences are packed
greedily, in order, into examples ``[CLS] s1 s2 ... [SEP]`` of at most ``max_seq_length``
tokens; a sentence never spans two examples, and a single sentence longer than
``max_seq_length - 2`` is truncated (the cut tokens are counted in metadata).
Examples carry one feature, ``input_ids`` (int64 list, variable length, no padding);
masking happens at training time.

Order is deterministic for a given corpus and seed: each example gets a key hashed from
(seed, part file name, document index, example index); the key picks the shard, and
each shard is sorted by key before it is written, so the seed also fixes the shuffle.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from corpus_beam.clean import beam_counters, pipeline_options
from korlm import storage, tokenization
from korlm.errors import KorlmError, NotBuiltError
from korlm.vocab import SPECIAL_TOKENS, corpus_files, vocab_hash

_LOG = logging.getLogger(__name__)

OBJECTIVES = ("mlm", "bart")
FEATURE = "input_ids"
COUNTS_TAG = "counts"


def shard_name(index: int, num_shards: int) -> str:
    return f"train-{index:05d}-of-{num_shards:05d}.tfrecord"


def pack_document(sentence_ids: list[list[int]], max_seq_length: int, cls_id: int,
                  sep_id: int) -> tuple[list[list[int]], int]:
    """Greedy FULL-SENTENCES packing of one document; returns (examples, truncated tokens)."""
    budget = max_seq_length - 2
    examples: list[list[int]] = []
    current: list[int] = []
    truncated = 0
    for ids in sentence_ids:
        if not ids:
            continue
        if len(ids) > budget:
            truncated += len(ids) - budget
            ids = ids[:budget]
        if current and len(current) + len(ids) > budget:
            examples.append([cls_id, *current, sep_id])
            current = []
        current.extend(ids)
    if current:
        examples.append([cls_id, *current, sep_id])
    return examples, truncated


def split_documents(text: str) -> list[list[str]]:
    """Clean-corpus text -> documents, each a list of sentences (blank lines separate documents)."""
    documents: list[list[str]] = []
    current: list[str] = []
    for line in text.split("\n"):
        line = line.strip()
        if line:
            current.append(line)
        elif current:
            documents.append(current)
            current = []
    if current:
        documents.append(current)
    return documents


def example_key(seed: int, file_name: str, document: int, example: int) -> bytes:
    return hashlib.blake2b(f"{seed}\t{file_name}\t{document}\t{example}".encode(), digest_size=12).digest()


class ReadDocuments(beam.DoFn):
    """A part file (read whole) -> batches ``{"file", "start", "documents"}`` of documents."""

    def __init__(self, max_documents: int = 256, max_chars: int = 500_000):
        self.max_documents = max_documents
        self.max_chars = max_chars

    def process(self, path: str):
        with FileSystems.open(path) as f:
            text = f.read().decode("utf-8", "replace")
        name = os.path.basename(path)
        batch: list[list[str]] = []
        start = chars = 0
        for index, document in enumerate(split_documents(text)):
            if not batch:
                start = index
            batch.append(document)
            chars += sum(len(s) for s in document)
            if len(batch) >= self.max_documents or chars >= self.max_chars:
                yield {"file": name, "start": start, "documents": batch}
                batch, chars = [], 0
        if batch:
            yield {"file": name, "start": start, "documents": batch}


class TokenizeAndPack(beam.DoFn):
    """Document batch -> ``(shard, (key, serialized tf.train.Example))``; side output
    ``counts`` with one dict of totals per batch."""

    def __init__(self, tokenizer_json: str, max_seq_length: int, seed: int, num_shards: int):
        self.tokenizer_json = tokenizer_json
        self.max_seq_length = max_seq_length
        self.seed = seed
        self.num_shards = num_shards

    def setup(self):
        import tensorflow as tf

        self.tf = tf
        # KorlmTokenizer.to_json: tokenizer.json plus its pre-tokenizer (morpheme vocabs).
        self.tokenizer = tokenization.KorlmTokenizer.from_json(self.tokenizer_json)
        self.cls_id = self.tokenizer.token_to_id(SPECIAL_TOKENS["cls"])
        self.sep_id = self.tokenizer.token_to_id(SPECIAL_TOKENS["sep"])
        self.examples_counter = beam.metrics.Metrics.counter("korlm.pretrain_data", "examples")
        self.truncated_counter = beam.metrics.Metrics.counter("korlm.pretrain_data", "truncated_tokens")

    def _serialize(self, ids: list[int]) -> bytes:
        tf = self.tf
        feature = tf.train.Feature(int64_list=tf.train.Int64List(value=ids))
        return tf.train.Example(features=tf.train.Features(feature={FEATURE: feature})).SerializeToString()

    def process(self, batch):
        documents = batch["documents"]
        flat = [s for doc in documents for s in doc]
        encodings = self.tokenizer.encode_batch(flat, add_special_tokens=False)
        counts = {"documents": len(documents), "sentences": len(flat), "examples": 0, "tokens": 0,
                  "truncated_tokens": 0, "example_tokens": 0, "per_shard": [0] * self.num_shards}
        i = 0
        for offset, doc in enumerate(documents):
            ids = [encodings[j].ids for j in range(i, i + len(doc))]
            i += len(doc)
            examples, truncated = pack_document(ids, self.max_seq_length, self.cls_id, self.sep_id)
            counts["truncated_tokens"] += truncated
            for n, example in enumerate(examples):
                key = example_key(self.seed, batch["file"], batch["start"] + offset, n)
                shard = int.from_bytes(key[:4], "big") % self.num_shards
                counts["examples"] += 1
                counts["per_shard"][shard] += 1
                counts["tokens"] += len(example) - 2
                counts["example_tokens"] += len(example)
                yield shard, (key, self._serialize(example))
        self.examples_counter.inc(counts["examples"])
        self.truncated_counter.inc(counts["truncated_tokens"])
        yield beam.pvalue.TaggedOutput(COUNTS_TAG, counts)


def _sum_counts(counts_list):
    total: dict = {}
    for counts in counts_list:
        for key, value in counts.items():
            if key == "per_shard":
                total[key] = [a + b for a, b in zip(total.get(key, [0] * len(value)), value, strict=True)]
            else:
                total[key] = total.get(key, 0) + value
    return total


def _sorted_shard(keyed_examples):
    for _, serialized in sorted(keyed_examples):
        yield serialized


def _metadata(counts: dict, static: dict) -> dict:
    max_len = static["max_seq_length"]
    n = counts.get("examples", 0)
    return {
        "num_examples": n,
        "num_tokens": counts.get("tokens", 0),
        "num_truncated_tokens": counts.get("truncated_tokens", 0),
        "num_documents": counts.get("documents", 0),
        "num_sentences": counts.get("sentences", 0),
        **static,
        "examples_per_shard": counts.get("per_shard", [0] * len(static["shards"])),
        "padding_fraction": (1 - counts["example_tokens"] / (n * max_len)) if n else None,
    }


def build_pretrain_data_graph(p: beam.Pipeline, files: list[str], staging: str, tokenizer_json: str, *,
                              max_seq_length: int, num_shards: int, seed: int, static: dict) -> None:
    """Add the tokenize-and-pack transforms to ``p``, writing every output under ``staging``."""
    packed = (
        p
        | "PartFiles" >> beam.Create(files)
        | "ReadDocuments" >> beam.ParDo(ReadDocuments())
        | "SpreadBatches" >> beam.Reshuffle()
        | "TokenizeAndPack" >> beam.ParDo(TokenizeAndPack(
            tokenizer_json, max_seq_length, seed, num_shards)).with_outputs(COUNTS_TAG, main="examples")
    )
    shards = packed.examples | "ByShard" >> beam.Partition(lambda kv, n: kv[0], num_shards)
    for i, shard in enumerate(shards):
        _ = (
            shard
            | f"Values{i}" >> beam.Values()
            | f"Collect{i}" >> beam.combiners.ToList()
            | f"Sort{i}" >> beam.FlatMap(_sorted_shard)
            | f"Write{i}" >> beam.io.WriteToTFRecord(
                storage.join(staging, shard_name(i, num_shards)), shard_name_template="")
        )
    _ = (
        packed[COUNTS_TAG]
        | "SumCounts" >> beam.CombineGlobally(_sum_counts)
        | "Metadata" >> beam.Map(lambda counts: json.dumps(_metadata(counts, static), indent=2))
        | "WriteMetadata" >> beam.io.WriteToText(
            storage.join(staging, "metadata"), file_name_suffix=".json", shard_name_template="")
    )


def run_pretrain_data(
    corpus_dir: str,
    tokenizer_dir: str,
    output_dir: str,
    *,
    objective: str = "mlm",
    max_seq_length: int = 128,
    num_shards: int = 2,
    seed: int = 0,
    beam_options: list[str] | None = None,
) -> dict:
    """Tokenize and pack ``corpus_dir`` into TFRecord shards in ``output_dir``; return metadata.json's dict.

    Raises KorlmError for a bad tokenizer directory, a corpus without documents or bad
    settings; NotBuiltError for the ``bart`` objective.
    """
    if objective not in OBJECTIVES:
        raise KorlmError(f"objective {objective!r} is unknown; choose one of {', '.join(OBJECTIVES)}")
    if objective == "bart":
        raise NotBuiltError("BART span packing", 5)
    if max_seq_length < 3:
        raise KorlmError(f"max_seq_length {max_seq_length} leaves no room beside [CLS] and [SEP]; use e.g. 128")
    if num_shards < 1:
        raise KorlmError(f"num_shards must be at least 1, got {num_shards}")
    tokenizer = tokenization.load(tokenizer_dir)
    special_ids = {name: tokenizer.token_to_id(token) for name, token in SPECIAL_TOKENS.items()}
    missing = [SPECIAL_TOKENS[name] for name, i in special_ids.items() if i is None]
    if missing:
        raise KorlmError(f"tokenizer in {tokenizer_dir!r} lacks {', '.join(missing)}; build it with `korlm vocab`")
    static = {
        "max_seq_length": max_seq_length,
        "objective": objective,
        "vocab_size": tokenizer.get_vocab_size(),
        "vocab_hash": vocab_hash(tokenizer_dir),
        "special_token_ids": special_ids,
        "feature": FEATURE,
        "seed": seed,
        "shards": [shard_name(i, num_shards) for i in range(num_shards)],
    }
    if not storage.isdir(corpus_dir):
        raise KorlmError(f"corpus {corpus_dir!r} is not a directory; pass the output directory of `korlm clean`")
    files = corpus_files(corpus_dir)
    if not files:
        raise KorlmError(f"corpus {corpus_dir!r} has no part-*.txt files; run `korlm clean` into it first")

    started = time.monotonic()
    with storage.atomic_output_dir(output_dir, stage_remote=True) as staging:
        # staged on the destination's filesystem: Dataflow workers write the shards
        p = beam.Pipeline(options=pipeline_options(beam_options))
        build_pretrain_data_graph(p, files, staging, tokenizer.to_json(), max_seq_length=max_seq_length,
                                  num_shards=num_shards, seed=seed, static=static)
        result = p.run()
        result.wait_until_finish()
        _LOG.info("pretrain-data counters: %s", json.dumps(beam_counters(result, "korlm.pretrain_data")))
        metadata = json.loads(storage.read_text(storage.join(staging, "metadata.json")))
        if metadata["num_examples"] == 0:
            raise KorlmError(f"corpus {corpus_dir!r} has no documents; check clean's stats.json")
    _LOG.info("pretrain-data: %d examples, %d tokens (%d truncated) in %d shards, %.1f s",
              metadata["num_examples"], metadata["num_tokens"], metadata["num_truncated_tokens"],
              num_shards, time.monotonic() - started)
    return metadata
