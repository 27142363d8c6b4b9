"""pretrain-data: clean corpus -> token-id TFRecord shards for pretraining.

Pipeline::

    part files ─ ReadDocuments ─ Reshuffle ─ TokenizeAndPack ─ Partition(shard) ─┬─ SortShard i ─ WriteToTFRecord(train-i-of-N)
                                                                                 └─ (held out) ─ heldout/heldout-00000-of-00001
                                                  └── counts ─ CombineGlobally ─ metadata.json

``TokenizeAndPack`` takes a batch of documents (up to 256 documents of one part file),
tokenizes every sentence with the vocab's ``KorlmTokenizer`` (morpheme segmentation first
for a morpheme vocab), packs by ``packing`` (``full-sentences`` | ``doc-sentences`` |
``segment-pair`` | ``span``; see ``korlm.pretrain_data.packing``, which also documents truncation),
optionally masks statically (``dupe_factor`` packings of each batch with different
masks), and writes one unpadded ``tf.train.Example`` per packed example (features in
``docs/pretrain_data.md``). ``full-sentences`` examples and random NSP segments cross
documents only within a batch.

Order is deterministic for a given corpus and seed: each example gets a key hashed from
(seed, part file name, document or batch index, example index, dupe); the key picks the
shard, and each shard is sorted by key before it is written, so the seed also fixes the
shuffle. The same key seeds the example's static mask (and the document's key its
segment-pair randomness).

Held-out slice (``heldout_fraction``): a fixed share of the text goes to ``heldout/``
instead of the training shards, for pretraining's held-out masked-LM loss. The unit held
out is a document (every packing that keeps documents apart: all its examples and, with
static masking, all its dupes) or, for ``full-sentences`` (examples cross documents), one
packed example of a batch (its text is the same in every dupe). Which units are held out
is a hash of (seed, part file, unit), so it is the same in every run with the same seed,
and training (``train-*.tfrecord`` of the data directory only) never reads them. Only
segment-pair NSP can still show a held-out document's sentences as another document's
random B. metadata.json's ``heldout`` block names the shard and counts; the training
examples' counts (``num_examples``, ``num_tokens``, ``examples_per_shard``) exclude it.

The unigram entropy of the training examples' maskable (non-special) tokens,
``unigram_entropy_nats``, is the loss of a model that predicts every masked token from the
token frequencies alone: the floor a masked LM has to get below to have learned anything
from context (pretraining draws it in TensorBoard and the report).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from korlm import storage
from korlm.beam_options import beam_counters, pipeline_options
from korlm.clean.corpus import corpus_files, first_non_utf8_line
from korlm.errors import KorlmError
from korlm.pretrain_data import packing as pk
from korlm.pretrain_data.shards import verify_shards
from korlm.tokenizer import tokenization
from korlm.tokenizer.files import vocab_hash

_LOG = logging.getLogger(__name__)

OBJECTIVES = pk.OBJECTIVES
FEATURE = "input_ids"
COUNTS_TAG = "counts"
__all__ = ["run_pretrain_data", "verify_shards", "split_documents", "pack_document", "shard_name"]


HELDOUT_DIR = "heldout"
HELDOUT_SHARD = "heldout-00000-of-00001.tfrecord"


def shard_name(index: int, num_shards: int) -> str:
    return f"train-{index:05d}-of-{num_shards:05d}.tfrecord"


def is_heldout(seed: int, file_name: str, unit: str, fraction: float) -> bool:
    """Whether a hold-out unit (a document, or a full-sentences example) of a part file is
    in the held-out slice: a hash of (seed, file, unit) below ``fraction``."""
    if fraction <= 0:
        return False
    digest = hashlib.blake2b(f"{seed}\t{file_name}\t{unit}\theldout".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64 < fraction


def unigram_entropy(counts) -> float | None:
    """Entropy in nats of the unigram distribution of token ``counts`` (None when empty)."""
    import numpy as np

    counts = np.asarray(counts, dtype=np.float64)
    counts = counts[counts > 0]
    total = counts.sum()
    if not total:
        return None
    return float(np.log(total) - (counts * np.log(counts)).sum() / total)


def pack_document(sentence_ids: list[list[int]], max_seq_length: int, cls_id: int,
                  sep_id: int) -> tuple[list[list[int]], int]:
    """``doc-sentences`` packing of one document's token ids (plain lists); returns
    (examples, truncated tokens). The list form of ``korlm.pretrain_data.packing`` for one document."""
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


def example_key(seed: int, file_name: str, document: int | str, example: int, dupe: int = 0) -> bytes:
    """The example's sort/shard/mask key; ``document`` is ``"batch<first document>"`` for
    full-sentences examples, which belong to a batch rather than one document."""
    text = f"{seed}\t{file_name}\t{document}\t{example}" + (f"\t{dupe}" if dupe else "")
    return hashlib.blake2b(text.encode(), digest_size=12).digest()


class CorpusNotUtf8(KorlmError):
    """A corpus part with bytes that are not UTF-8 (raised inside the Beam pipeline)."""


class ReadDocuments(beam.DoFn):
    """A part file (read whole) -> batches ``{"file", "start", "documents"}`` of documents."""

    def __init__(self, max_documents: int = 256, max_chars: int = 500_000):
        self.max_documents = max_documents
        self.max_chars = max_chars

    def process(self, path: str):
        with FileSystems.open(path) as f:
            data = f.read()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            # replacement characters would be silent corruption: stop, naming the place
            line = data[: exc.start].count(b"\n") + 1
            raise CorpusNotUtf8(f"corpus file {path}, line {line}: not UTF-8 text; korlm "
                                "clean writes UTF-8 (re-clean the raw files)") from None
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

    def __init__(self, tokenizer_json: str, settings: pk.PackSettings, seed: int, num_shards: int,
                 heldout_fraction: float = 0.0):
        self.tokenizer_json = tokenizer_json
        self.settings = settings
        self.seed = seed
        self.num_shards = num_shards
        self.heldout_fraction = heldout_fraction

    def setup(self):
        self.packer = ExamplePacker(tokenization.KorlmTokenizer.from_json(self.tokenizer_json), self.settings,
                                    self.seed, self.heldout_fraction)
        self.examples_counter = beam.metrics.Metrics.counter("korlm.pretrain_data", "examples")
        self.truncated_counter = beam.metrics.Metrics.counter("korlm.pretrain_data", "truncated_tokens")

    def process(self, batch):
        counts = new_counts(self.num_shards)
        for key, serialized, heldout in self.packer.pack(batch, counts):
            if heldout:  # the partition after the training shards
                yield self.num_shards, (key, serialized)
                continue
            shard = int.from_bytes(key[:4], "big") % self.num_shards
            counts["per_shard"][shard] += 1
            yield shard, (key, serialized)
        self.examples_counter.inc(counts["examples"])
        self.truncated_counter.inc(counts["truncated_tokens"])
        yield beam.pvalue.TaggedOutput(COUNTS_TAG, counts)


def new_counts(num_shards: int) -> dict:
    return {"documents": 0, "sentences": 0, "input_tokens": 0, "examples": 0, "tokens": 0,
            "truncated_tokens": 0, "random_next_tokens": 0, "example_tokens": 0, "next_sentence_random": 0,
            "nsp_without_other_document": 0, "masked_tokens": 0, "maskable_tokens": 0,
            "heldout_examples": 0, "heldout_tokens": 0, "token_counts": None,
            "per_shard": [0] * num_shards}


class ExamplePacker:
    """Tokenize, pack, mask and serialize a batch of documents (the work of ``TokenizeAndPack``,
    callable without Beam for the benchmark)."""

    def __init__(self, tokenizer: tokenization.KorlmTokenizer, settings: pk.PackSettings, seed: int,
                 heldout_fraction: float = 0.0):
        import numpy as np

        self.np = np
        self.tokenizer = tokenizer
        self.settings = settings
        self.seed = seed
        self.heldout_fraction = heldout_fraction
        self.special_ids = tokenizer.special_token_ids()
        specials = np.asarray(sorted(set(self.special_ids.values())), dtype=np.int64)
        self.is_special = np.zeros(tokenizer.get_vocab_size(), dtype=bool)
        self.is_special[specials] = True  # never masked (unk included)
        self.random_ids = np.flatnonzero(~self.is_special).astype(np.int64)
        self.whole_word = {"none": None, "eojeol": "word_starts", "morpheme": "morpheme_starts"}[
            settings.whole_word]

    def _mask(self, materialized: list[dict], keys: list[bytes], counts: dict) -> None:
        """Static masking of a batch of examples in place (one numpy pass)."""
        np, settings = self.np, self.settings
        ids = np.concatenate([f["input_ids"] for f in materialized])
        sizes = [f["input_ids"].size for f in materialized]
        starts = np.concatenate([f[self.whole_word] for f in materialized]) if self.whole_word else None
        special = self.is_special[ids]
        masked, positions, labels, per_example = pk.static_mask_many(
            ids, sizes, special, seeds=[pk.example_seed(k) for k in keys], mask_rate=settings.mask_rate,
            max_predictions=settings.max_predictions, mask_id=self.special_ids["mask"],
            random_ids=self.random_ids, starts=starts)
        split = np.cumsum(sizes)[:-1]
        cut = np.cumsum(per_example)[:-1]
        for features, m, p, label in zip(materialized, np.split(masked, split), np.split(positions, cut),
                                         np.split(labels, cut), strict=True):
            features["input_ids"] = m
            features["masked_lm_positions"] = p
            features["masked_lm_ids"] = label
        counts["masked_tokens"] += int(positions.size)
        counts["maskable_tokens"] += int((~special).sum())

    def _count_tokens(self, materialized: list[dict], heldout: list[bool], counts: dict) -> None:
        """Add the training examples' maskable tokens to ``counts["token_counts"]`` (per id)."""
        np = self.np
        ids = [f["input_ids"] for f, out in zip(materialized, heldout, strict=True) if not out]
        if not ids:
            return
        found = np.bincount(np.concatenate(ids), minlength=self.is_special.size)
        found[self.is_special] = 0
        if counts["token_counts"] is None:
            counts["token_counts"] = found
        else:
            counts["token_counts"] = counts["token_counts"] + found

    def pack(self, batch: dict, counts: dict):
        """Yield ``(key, serialized example, held out)`` for a ``ReadDocuments`` batch, adding
        to ``counts``."""
        settings = self.settings
        documents = batch["documents"]
        tokens = pk.tokenize_documents(self.tokenizer, documents)
        counts["documents"] += len(documents)
        counts["sentences"] += sum(len(doc) for doc in documents)
        counts["input_tokens"] += tokens.num_tokens
        pair = settings.packing == "segment-pair"
        static = settings.masking == "static"
        for dupe in range(settings.dupe_factor):
            pack_counts = pk.PackCounts()
            examples = list(pk.pack_batch(tokens, settings, seed=self.seed, file_name=batch["file"],
                                          first_document=batch["start"], dupe=dupe, counts=pack_counts))
            materialized = pk.materialize_many(tokens, examples, self.special_ids, pair=pair)
            keys, heldout = [], []
            for example in examples:
                owner = f"batch{batch['start']}" if example.document < 0 else batch["start"] + example.document
                keys.append(example_key(self.seed, batch["file"], owner, example.index, dupe))
                # the hold-out unit: the document, or a full-sentences example of the batch
                unit = f"{owner}\t{example.index}" if example.document < 0 else str(owner)
                heldout.append(is_heldout(self.seed, batch["file"], unit, self.heldout_fraction))
            self._count_tokens(materialized, heldout, counts)  # before static masks replace ids
            if static and examples:
                self._mask(materialized, keys, counts)
            records = pk.serialize_examples(materialized)
            for example, key, features, serialized, out in zip(examples, keys, materialized, records, heldout,
                                                               strict=True):
                size = features["input_ids"].size
                tokens = size - sum(1 for piece in example.pieces if isinstance(piece, str))
                if out:  # held out: counted apart, not in the training figures
                    counts["heldout_examples"] += 1
                    counts["heldout_tokens"] += tokens
                    yield key, serialized, True
                    continue
                counts["examples"] += 1
                counts["tokens"] += tokens
                counts["example_tokens"] += size
                if example.next_sentence_label:
                    counts["next_sentence_random"] += 1
                yield key, serialized, False
            counts["truncated_tokens"] += pack_counts.truncated_tokens
            counts["random_next_tokens"] += pack_counts.random_next_tokens
            counts["nsp_without_other_document"] += pack_counts.nsp_without_other_document


def _sum_counts(counts_list):
    total: dict = {}
    for counts in counts_list:
        for key, value in counts.items():
            if key == "per_shard":
                total[key] = [a + b for a, b in zip(total.get(key, [0] * len(value)), value, strict=True)]
            elif key == "token_counts":
                if value is not None:
                    total[key] = value if total.get(key) is None else total[key] + value
                else:
                    total.setdefault(key, None)
            else:
                total[key] = total.get(key, 0) + value
    return total


def _sorted_shard(keyed_examples):
    for _, serialized in sorted(keyed_examples):
        yield serialized


def _metadata(counts: dict, static: dict) -> dict:
    max_len = static["max_seq_length"]
    n = counts.get("examples", 0)
    meta = {
        "num_examples": n,
        "num_tokens": counts.get("tokens", 0),
        "num_truncated_tokens": counts.get("truncated_tokens", 0),
        "num_documents": counts.get("documents", 0),
        "num_sentences": counts.get("sentences", 0),
        "num_input_tokens": counts.get("input_tokens", 0),
        "num_random_next_tokens": counts.get("random_next_tokens", 0),
        **static,
        "examples_per_shard": counts.get("per_shard", [0] * len(static["shards"])),
        "padding_fraction": (1 - counts["example_tokens"] / (n * max_len)) if n else None,
    }
    if static["nsp"]:
        meta["next_sentence_random_fraction"] = counts.get("next_sentence_random", 0) / n if n else None
        meta["nsp_without_other_document"] = counts.get("nsp_without_other_document", 0)
    token_counts = counts.get("token_counts")
    meta["num_maskable_tokens"] = int(token_counts.sum()) if token_counts is not None else 0
    meta["unigram_entropy_nats"] = unigram_entropy(token_counts) if token_counts is not None else None
    if static.get("heldout_fraction"):
        meta["heldout"] = {"fraction": static["heldout_fraction"], "dir": HELDOUT_DIR,
                           "shards": [HELDOUT_SHARD],
                           "num_examples": counts.get("heldout_examples", 0),
                           "examples_per_shard": [counts.get("heldout_examples", 0)],
                           "num_tokens": counts.get("heldout_tokens", 0),
                           "unit": "example" if static["packing"] == "full-sentences" else "document"}
    if static["masking"] == "static":
        maskable = counts.get("maskable_tokens", 0)
        meta["num_masked_tokens"] = counts.get("masked_tokens", 0)
        meta["masked_fraction"] = meta["num_masked_tokens"] / maskable if maskable else None
    return meta


def build_pretrain_data_graph(p: beam.Pipeline, files: list[str], staging: str, tokenizer_json: str, *,
                              settings: pk.PackSettings, num_shards: int, seed: int, static: dict) -> None:
    """Add the tokenize-and-pack transforms to ``p``, writing every output under ``staging``."""
    heldout = float(static.get("heldout_fraction") or 0.0)
    packed = (
        p
        | "PartFiles" >> beam.Create(files)
        | "ReadDocuments" >> beam.ParDo(ReadDocuments())
        | "SpreadBatches" >> beam.Reshuffle()
        | "TokenizeAndPack" >> beam.ParDo(TokenizeAndPack(
            tokenizer_json, settings, seed, num_shards, heldout)).with_outputs(COUNTS_TAG, main="examples")
    )
    parts = num_shards + (1 if heldout > 0 else 0)  # the held-out slice: the last partition
    shards = packed.examples | "ByShard" >> beam.Partition(lambda kv, n: kv[0], parts)
    for i, shard in enumerate(shards):
        path = (storage.join(staging, shard_name(i, num_shards)) if i < num_shards
                else storage.join(staging, HELDOUT_DIR, HELDOUT_SHARD))
        _ = (
            shard
            | f"Values{i}" >> beam.Values()
            | f"Collect{i}" >> beam.combiners.ToList()
            | f"Sort{i}" >> beam.FlatMap(_sorted_shard)
            | f"Write{i}" >> beam.io.WriteToTFRecord(path, shard_name_template="")
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
    packing: str | None = None,
    nsp: bool = False,
    short_seq_prob: float | None = None,
    masking: str = "dynamic",
    dupe_factor: int | None = None,
    mask_rate: float | None = None,
    whole_word: str | None = None,
    beam_options: list[str] | None = None,
    extra_seq_lengths: list[int] | None = None,
    heldout_fraction: float = 0.02,
    overwrite: bool = False,
) -> dict:
    """Tokenize and pack ``corpus_dir`` into TFRecord shards in ``output_dir``; return metadata.json's dict.

    ``extra_seq_lengths``: the same data packed again at each of these lengths, into
    ``output_dir/seq<N>/`` (for a multi-phase pretraining schedule: 128 then 512); the
    root metadata.json lists them under ``seq_length_variants`` once all are written.

    ``heldout_fraction``: the share of documents (of examples, for ``full-sentences``
    packing) written to ``heldout/`` instead of the training shards (see the module
    docstring); 0 writes none.

    ``packing`` None picks the objective's default
    (``full-sentences`` for mlm, ``span`` for bart). Raises KorlmError for a bad tokenizer
    directory, a corpus without documents, an invalid combination of settings or an
    output korlm may not write (``overwrite`` replaces an earlier pretrain-data output).
    """
    settings = pk.resolve_settings(
        objective=objective, packing=packing, max_seq_length=max_seq_length, nsp=nsp,
        short_seq_prob=short_seq_prob, masking=masking, dupe_factor=dupe_factor, mask_rate=mask_rate,
        whole_word=whole_word)
    if num_shards < 1:
        raise KorlmError(f"num_shards must be at least 1, got {num_shards}")
    if not 0 <= heldout_fraction < 0.5:
        raise KorlmError(f"heldout_fraction must be in [0, 0.5), got {heldout_fraction}")
    tokenizer = tokenization.load(tokenizer_dir)
    special_ids = tokenizer.special_token_ids()
    morpheme_vocab = tokenizer.pre_tokenizer == "morpheme"
    if settings.whole_word == "morpheme" and not morpheme_vocab:
        raise KorlmError(f"whole_word morpheme needs a morpheme vocab; {tokenizer_dir!r} was built with "
                         "pre_tokenizer none (use whole_word eojeol, or `korlm vocab --pre-tokenizer morpheme`)")
    static = {
        "max_seq_length": max_seq_length,
        "objective": objective,
        "vocab_size": tokenizer.get_vocab_size(),
        "vocab_hash": vocab_hash(tokenizer_dir),
        "special_token_ids": special_ids,
        "feature": FEATURE,
        "features": pk.feature_names(settings, morpheme_vocab),
        "pre_tokenizer": tokenizer.pre_tokenizer,
        "packing": settings.packing,
        "nsp": settings.nsp,
        "masking": settings.masking,
        "dupe_factor": settings.dupe_factor,
        "seed": seed,
        "shards": [shard_name(i, num_shards) for i in range(num_shards)],
    }
    if heldout_fraction > 0:
        static["heldout_fraction"] = heldout_fraction
    if settings.packing == "segment-pair":
        static["short_seq_prob"] = settings.short_seq_prob
    if settings.masking == "static":
        static.update(mask_rate=settings.mask_rate, whole_word=settings.whole_word,
                      max_predictions_per_seq=settings.max_predictions)
    if not storage.isdir(corpus_dir):
        raise KorlmError(f"corpus {corpus_dir!r} is not a directory; pass the output directory of `korlm clean`")
    files = corpus_files(corpus_dir)
    if not files:
        raise KorlmError(f"corpus {corpus_dir!r} has no part-*.txt files; run `korlm clean` into it first")
    for path in files if not storage.is_remote(corpus_dir) else []:
        # here, before Beam: a worker's error would come wrapped in its traceback
        # (remote corpora are checked by the workers as they read, ReadDocuments)
        line = first_non_utf8_line(path)
        if line is not None:
            raise CorpusNotUtf8(f"corpus file {path}, line {line}: not UTF-8 text; korlm clean "
                                "writes UTF-8 (re-clean the raw files)")

    started = time.monotonic()
    with storage.atomic_output_dir(output_dir, "pretrain-data", inputs=[corpus_dir, tokenizer_dir],
                                   overwrite=overwrite, stage_remote=True) as staging:
        # staged on the destination's filesystem: Dataflow workers write the shards
        p = beam.Pipeline(options=pipeline_options(beam_options))
        build_pretrain_data_graph(p, files, staging, tokenizer.to_json(), settings=settings,
                                  num_shards=num_shards, seed=seed, static=static)
        result = p.run()
        result.wait_until_finish()
        _LOG.info("pretrain-data counters: %s", json.dumps(beam_counters(result, "korlm.pretrain_data")))
        metadata = json.loads(storage.read_text(storage.join(staging, "metadata.json")))
        if metadata["num_examples"] == 0:
            if (metadata.get("heldout") or {}).get("num_examples"):
                raise KorlmError(f"corpus {corpus_dir!r} is so small that the held-out slice took every "
                                 "example; lower pretrain_data.heldout_fraction (0 = none)")
            raise KorlmError(f"corpus {corpus_dir!r} has no documents; check clean's stats.json")
    _LOG.info("pretrain-data: %d examples (%s packing, %s masking), %d tokens (%d truncated) in %d shards, "
              "padding %.1f%%, %.1f s", metadata["num_examples"], settings.packing, settings.masking,
              metadata["num_tokens"], metadata["num_truncated_tokens"], num_shards,
              100 * metadata["padding_fraction"], time.monotonic() - started)
    extra = sorted({int(n) for n in extra_seq_lengths or []} - {int(max_seq_length)})
    if extra:
        variants = {}
        for length in extra:
            run_pretrain_data(corpus_dir, tokenizer_dir, storage.join(output_dir, f"seq{length}"),
                              objective=objective, max_seq_length=length, num_shards=num_shards,
                              seed=seed, packing=packing, nsp=nsp, short_seq_prob=short_seq_prob,
                              masking=masking, dupe_factor=dupe_factor, mask_rate=mask_rate,
                              whole_word=whole_word, beam_options=beam_options,
                              heldout_fraction=heldout_fraction)
            variants[str(length)] = f"seq{length}"
        # Listed last: a reader that finds a variant listed finds its data complete.
        metadata["seq_length_variants"] = variants
        storage.write_text(storage.join(output_dir, "metadata.json"),
                           json.dumps(metadata, indent=2, ensure_ascii=False))
    return metadata
