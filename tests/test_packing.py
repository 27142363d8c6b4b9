"""korlm.pretrain_data.packing on real text (the bundled reviews and petitions), called directly: packing
conserves tokens in every mode, features follow the contract, and the statistics of NSP
and static masking hold over >= 10k examples."""

from __future__ import annotations

import collections
import gzip
import itertools
import json
import os
import re

import numpy as np
import pytest

from korlm import config as cfg
from korlm.errors import KorlmError
from korlm.pretrain_data import packing as pk
from korlm.tokenizer import tokenization
from korlm.tokenizer.vocab import build_vocab
from tests.conftest import SAMPLE_REVIEWS

PETITIONS = os.path.join(os.path.dirname(SAMPLE_REVIEWS), "petitions.jsonl.gz")
BATCH = 256


def _documents(reviews: int, petitions: int) -> list[list[str]]:
    with open(SAMPLE_REVIEWS, encoding="utf-8") as f:
        docs = [[line.rstrip("\n").split("\t")[3]] for line in itertools.islice(f, 1, reviews + 1)]
    with gzip.open(PETITIONS, "rt", encoding="utf-8") as f:
        for line in itertools.islice(f, petitions):
            sentences = [s.strip() for s in re.split(r"(?<=[.?!])\s+", json.loads(line)["content"]) if s.strip()]
            docs.insert(len(docs) * 7 // 13, sentences)  # spread the long documents among the reviews
    return [[s for s in doc if s.strip()] for doc in docs if any(s.strip() for s in doc)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("packing")
    documents = _documents(6000, 80)
    (root / "corpus").mkdir()
    (root / "corpus" / "part-00000-of-00001.txt").write_text(
        "".join("".join(f"{s}\n" for s in doc) + "\n" for doc in documents), encoding="utf-8")
    build_vocab(str(root / "corpus"), str(root / "tokenizer"), vocab_size=3000, heldout_every=0)
    tokenizer = tokenization.load(str(root / "tokenizer"))
    batches = [pk.tokenize_documents(tokenizer, documents[i:i + BATCH]) for i in range(0, len(documents), BATCH)]
    return tokenizer, documents, batches


def _examples(batches, settings, seed=0, dupe=0, counts=None):
    """(batch, PackedExample) over all batches, documents numbered as the Beam step does."""
    for b, batch in enumerate(batches):
        for example in pk.pack_batch(batch, settings, seed=seed, file_name="part", first_document=b * BATCH,
                                     dupe=dupe, counts=counts):
            yield batch, example


def _content(batch, example):
    return [t for piece in example.pieces if not isinstance(piece, str) for t in batch.ids[piece[0]:piece[1]]]


@pytest.mark.parametrize("max_len", [128, 512])
@pytest.mark.parametrize("mode", ["full-sentences", "doc-sentences", "span"])
def test_greedy_modes_lose_no_tokens(corpus, mode, max_len):
    tokenizer, _, batches = corpus
    settings = pk.resolve_settings(packing=mode, max_seq_length=max_len, objective="bart" if mode == "span" else "mlm")
    special = tokenizer.special_token_ids()
    counts = pk.PackCounts()
    expected = collections.Counter()
    for batch in batches:
        for doc in batch.documents:
            for s, e in doc:
                expected.update(batch.ids[s:min(e, s + max_len - 2)].tolist())
    written = collections.Counter()
    crossings = sentences = 0
    for batch, example in _examples(batches, settings, counts=counts):
        features = pk.materialize(batch, example, special)
        ids = features["input_ids"]
        assert len(ids) <= max_len and ids[0] == special["cls"] and ids[-1] == special["sep"]
        assert {len(v) for v in features.values()} == {len(ids)}
        inner_seps = example.pieces[1:-1].count("sep")
        crossings += inner_seps
        assert np.count_nonzero(ids == special["sep"]) >= 1 + inner_seps
        content = _content(batch, example)
        assert len(content) == len(ids) - 2 - inner_seps
        written.update(int(t) for t in content)
        sentences += int(features["sentence_starts"].sum())
        assert features["word_starts"][0] == features["word_starts"][-1] == 1
        assert features["sentence_starts"][0] == features["sentence_starts"][-1] == 0
    assert written == expected, "every token of the corpus is written once, minus the cut ends of long sentences"
    total = sum(batch.num_tokens for batch in batches)
    assert sum(written.values()) + counts.truncated_tokens == total
    assert sentences == sum(len(doc) for batch in batches for doc in batch.documents)
    if mode == "full-sentences":
        assert crossings > 100, "examples cross document boundaries with an extra sep"
    else:
        assert crossings == 0
    if max_len == 128:
        assert counts.truncated_tokens > 0, "petitions have sentences longer than 126 tokens"


def test_full_sentences_pads_far_less_than_doc_sentences(corpus):
    _, _, batches = corpus

    def padding(mode):
        settings = pk.resolve_settings(packing=mode, max_seq_length=128)
        lengths = [sum(1 if isinstance(p, str) else p[1] - p[0] for p in ex.pieces)
                   for _, ex in _examples(batches, settings)]
        return 1 - sum(lengths) / (128 * len(lengths))

    full, doc = padding("full-sentences"), padding("doc-sentences")
    assert full < 0.25 and doc > 0.6, (full, doc)


@pytest.mark.parametrize("max_len", [128, 512])
def test_segment_pairs(corpus, max_len):
    """segment-pair with NSP: cls A sep B sep, segment ids, ~50% random B over >= 10k examples,
    and tokens written - random-B tokens + cut tokens == corpus tokens."""
    tokenizer, _, batches = corpus
    special = tokenizer.special_token_ids()
    settings = pk.resolve_settings(packing="segment-pair", nsp=True, max_seq_length=max_len)
    total = sum(batch.num_tokens for batch in batches)
    labels = []
    short = 0
    for dupe in itertools.count():
        counts = pk.PackCounts()
        written = 0
        for batch, example in _examples(batches, settings, seed=3, dupe=dupe, counts=counts):
            f = pk.materialize(batch, example, special, pair=True)
            ids, segments = f["input_ids"], f["segment_ids"]
            seps = np.flatnonzero(ids == special["sep"])
            assert len(ids) <= max_len and ids[0] == special["cls"] and seps[-1] == len(ids) - 1
            assert len(seps) == 2, "cls A sep B sep"
            assert (segments[:seps[0] + 1] == 0).all() and (segments[seps[0] + 1:] == 1).all()
            assert seps[0] >= 2 and seps[1] - seps[0] >= 2, "A and B are not empty"
            assert f["next_sentence_label"].tolist() == [example.next_sentence_label]
            labels.append(example.next_sentence_label)
            written += len(ids) - 3
            short += len(ids) < max_len // 2
        assert written - counts.random_next_tokens + counts.truncated_tokens == total
        assert counts.nsp_without_other_document == 0
        if len(labels) >= 10_000:
            break
    assert abs(np.mean(labels) - 0.5) <= 0.02, np.mean(labels)


def test_segment_pair_real_next_is_the_following_text(corpus):
    """Label 0: A then B is a run of the document's tokens; only truncate_seq_pair's cuts
    (A's end, B's start) may open a gap between them, and only when the pair was too long."""
    _, _, batches = corpus
    max_len = 64
    settings = pk.resolve_settings(packing="segment-pair", nsp=True, max_seq_length=max_len)
    checked = gaps = 0
    for _, example in _examples(batches[:8], settings):
        if example.next_sentence_label:
            continue
        split = example.pieces.index("sep")
        a = [p for p in example.pieces[:split] if not isinstance(p, str)]
        b = [p for p in example.pieces[split:] if not isinstance(p, str)]
        for side in (a, b):
            assert all(x[1] == y[0] for x, y in zip(side, side[1:], strict=False)), "a side is contiguous"
        gap = b[0][0] - a[-1][1]
        assert gap >= 0, "B follows A"
        length = sum(e - s for s, e, _ in a + b)
        if gap:
            gaps += 1
            assert length == max_len - 3, "a gap only where the pair was truncated to fit"
        checked += 1
    assert checked > 500 and gaps > 0


@pytest.mark.parametrize("whole_word", ["none", "eojeol"])
def test_static_masking_statistics(corpus, whole_word):
    """>= 10k examples: mask rate 15% +- 1 point, 80/10/10 +- 2 points, no special token
    masked, labels are the original ids, whole words masked whole."""
    tokenizer, _, batches = corpus
    special = tokenizer.special_token_ids()
    settings = pk.resolve_settings(packing="doc-sentences", max_seq_length=128, masking="static",
                                   mask_rate=0.15, whole_word=whole_word, dupe_factor=2)
    is_special = np.zeros(tokenizer.get_vocab_size(), bool)
    is_special[list(special.values())] = True
    random_ids = np.flatnonzero(~is_special)
    maskable = masked = as_mask = kept = 0
    examples = 0
    for dupe in range(2):
        for b, batch in enumerate(batches):
            packed = list(pk.pack_batch(batch, settings, first_document=b * BATCH, dupe=dupe))
            features = pk.materialize_many(batch, packed, special)
            sizes = [f["input_ids"].size for f in features]
            all_ids = np.concatenate([f["input_ids"] for f in features])
            all_out, all_positions, all_labels, counts = pk.static_mask_many(
                all_ids, sizes, is_special[all_ids], mask_rate=0.15, max_predictions=settings.max_predictions,
                mask_id=special["mask"], random_ids=random_ids,
                seeds=[pk.example_seed(f"{dupe}-{e.document}-{e.index}".encode()) for e in packed],
                starts=np.concatenate([f["word_starts"] for f in features]) if whole_word == "eojeol" else None)
            outs = np.split(all_out, np.cumsum(sizes)[:-1])
            cut = np.cumsum(counts)[:-1]
            for f, out, positions, labels in zip(features, outs, np.split(all_positions, cut),
                                                 np.split(all_labels, cut), strict=True):
                ids = f["input_ids"]
                assert settings.max_predictions == 20 and len(positions) <= 20
                assert (np.diff(positions) > 0).all()
                assert not is_special[ids[positions]].any(), "no special token is masked"
                assert (labels == ids[positions]).all(), "masked_lm_ids are the original ids"
                untouched = np.ones(len(ids), bool)
                untouched[positions] = False
                assert (out[untouched] == ids[untouched]).all()
                if whole_word == "eojeol" and len(positions):
                    unit = np.cumsum(f["word_starts"])
                    chosen = np.isin(unit, unit[positions]) & ~is_special[ids]
                    assert (np.flatnonzero(chosen) == positions).all(), "a masked eojeol is masked whole"
                maskable += int((~is_special[ids]).sum())
                masked += len(positions)
                as_mask += int((out[positions] == special["mask"]).sum())
                kept += int((out[positions] == labels).sum())
                examples += 1
    assert examples >= 10_000
    assert abs(masked / maskable - 0.15) <= 0.01, masked / maskable
    assert abs(as_mask / masked - 0.8) <= 0.02
    assert abs(kept / masked - 0.1) <= 0.02
    assert abs((masked - as_mask - kept) / masked - 0.1) <= 0.02


def test_static_mask_is_deterministic_per_key(corpus):
    """A mask depends on the example's key only: alone or in a batch, in any order."""
    tokenizer, _, batches = corpus
    special = tokenizer.special_token_ids()
    batch = batches[0]
    settings = pk.resolve_settings(packing="full-sentences", max_seq_length=128)
    features = pk.materialize_many(batch, list(pk.pack_batch(batch, settings)), special)[:12]
    is_special = np.zeros(tokenizer.get_vocab_size(), bool)
    is_special[list(special.values())] = True
    args = dict(mask_rate=0.15, max_predictions=20, mask_id=special["mask"], random_ids=np.flatnonzero(~is_special))
    seeds = [pk.example_seed(f"key{k}".encode()) for k in range(len(features))]
    alone = [pk.static_mask(f["input_ids"], is_special[f["input_ids"]], seed=seed, starts=f["word_starts"], **args)
             for f, seed in zip(features, seeds, strict=True)]
    order = list(reversed(range(len(features))))
    ids = np.concatenate([features[k]["input_ids"] for k in order])
    masked, positions, labels, counts = pk.static_mask_many(
        ids, [features[k]["input_ids"].size for k in order], is_special[ids], seeds=[seeds[k] for k in order],
        starts=np.concatenate([features[k]["word_starts"] for k in order]), **args)
    sizes = [features[k]["input_ids"].size for k in order]
    together = zip(np.split(masked, np.cumsum(sizes)[:-1]), np.split(positions, np.cumsum(counts)[:-1]),
                   np.split(labels, np.cumsum(counts)[:-1]), strict=True)
    for k, (m, p, label) in zip(order, together, strict=True):
        assert (m == alone[k][0]).all() and (p == alone[k][1]).all() and (label == alone[k][2]).all()
    other = pk.static_mask(features[0]["input_ids"], is_special[features[0]["input_ids"]],
                           seed=pk.example_seed(b"other"), **args)
    assert not (other[1].shape == alone[0][1].shape and (other[1] == alone[0][1]).all())


def test_word_starts_follow_whitespace(corpus):
    tokenizer, _, _ = corpus
    batch = pk.tokenize_documents(tokenizer, [["영화가 정말 재미있다.", "漢字好 ok...  테스트"]])
    s0, s1 = batch.documents[0]
    first = tokenizer.hf.encode("영화가 정말 재미있다.", add_special_tokens=False)
    eojeol_of = [len(re.findall(r"\S+", "영화가 정말 재미있다."[:start + 1])) for start, _ in first.offsets]
    expected = [1] + [int(a != b) for a, b in zip(eojeol_of, eojeol_of[1:], strict=False)]
    assert batch.word_starts[s0[0]:s0[1]].tolist() == expected
    assert batch.word_starts[s0[0]:s0[1]].sum() == 3, "three eojeol; '.' does not start one"
    assert batch.word_starts[s1[0]:s1[1]].sum() == 3
    assert batch.morpheme_starts is None


def test_morpheme_vocab_marks_morpheme_and_eojeol_starts(tmp_path):
    from korlm.tokenizer import morpheme

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    docs = _documents(400, 0)
    (corpus / "part-00000-of-00001.txt").write_text("".join(f"{d[0]}\n\n" for d in docs), encoding="utf-8")
    build_vocab(str(corpus), str(tmp_path / "tok"), vocab_size=1500, heldout_every=0, pre_tokenizer="morpheme")
    tokenizer = tokenization.load(str(tmp_path / "tok"))
    assert tokenizer.pre_tokenizer == "morpheme"
    text = "나는 학교에 갔다."
    batch = pk.tokenize_documents(tokenizer, [[text]])
    prepared = morpheme.segment(text)
    pieces = prepared.split()
    encoding = tokenizer.hf.encode(prepared, add_special_tokens=False)
    morpheme_of = [len(re.findall(r"\S+", prepared[:start + 1])) - 1 for start, _ in encoding.offsets]
    expected_m = [1] + [int(a != b) for a, b in zip(morpheme_of, morpheme_of[1:], strict=False)]
    expected_w = [m and not pieces[k].startswith("##") for m, k in zip(expected_m, morpheme_of, strict=True)]
    assert batch.morpheme_starts.tolist() == expected_m
    assert batch.word_starts.tolist() == [int(w) for w in expected_w]
    assert sum(expected_m) == len(pieces) and batch.word_starts.sum() == 3
    settings = pk.resolve_settings(packing="doc-sentences", max_seq_length=32)
    f = pk.materialize(batch, next(pk.pack_batch(batch, settings)), tokenizer.special_token_ids())
    assert f["morpheme_starts"].tolist() == [1, *expected_m, 1]
    assert "morpheme_starts" in pk.feature_names(settings, morpheme_vocab=True)


@pytest.mark.parametrize("settings, message", [
    ({"nsp": True}, "nsp needs packing segment-pair"),
    ({"packing": "span", "nsp": True}, "nsp needs packing segment-pair"),
    ({"objective": "bart", "packing": "segment-pair"}, "objective bart"),
    ({"objective": "bart", "masking": "static"}, "no static masking"),
    ({"dupe_factor": 3}, "only applies to masking: static"),
    ({"short_seq_prob": 0.2}, "segment-pair"),
    ({"packing": "segment-pair", "max_seq_length": 4}, "max_seq_length"),
    ({"packing": "zigzag"}, "packing 'zigzag' is unknown"),
])
def test_invalid_combinations_are_one_line_errors(settings, message):
    with pytest.raises(KorlmError, match=message) as info:
        pk.resolve_settings(**settings)
    assert "\n" not in str(info.value)
    if "max_seq_length" not in settings and "packing" not in settings or settings.get("packing") == "span":
        with pytest.raises(cfg.ConfigError, match=f"pretrain_data: .*{message}") as info:
            cfg.validate({"pretrain_data": settings})
        assert "\n" not in str(info.value)


def test_defaults_by_objective():
    assert pk.resolve_settings().packing == "full-sentences"
    assert pk.resolve_settings(objective="bart").packing == "span"
    static = pk.resolve_settings(packing="segment-pair", nsp=True, masking="static", max_seq_length=512)
    assert (static.dupe_factor, static.mask_rate, static.whole_word, static.max_predictions) == (10, 0.15, "none", 77)
    conf = cfg.validate({"pretrain_data": {"packing": "segment-pair", "nsp": True, "masking": "static",
                                           "whole_word": "eojeol", "dupe_factor": 2}})
    assert conf.pretrain_data.whole_word == "eojeol"


def test_segment_pair_packing_is_deterministic(corpus):
    _, _, batches = corpus
    settings = pk.resolve_settings(packing="segment-pair", nsp=True, max_seq_length=64)

    def run(seed, dupe=0):
        return [(e.document, e.index, e.pieces, e.next_sentence_label)
                for _, e in _examples(batches[:6], settings, seed=seed, dupe=dupe)]

    assert run(1) == run(1)
    assert run(1) != run(2) and run(1) != run(1, dupe=1)


def test_documents_without_tokens_are_skipped_and_never_a_random_b(corpus):
    tokenizer, _, _ = corpus
    special = tokenizer.special_token_ids()
    batch = pk.tokenize_documents(tokenizer, [["영화가 정말 재미있다.", "배우도 좋았다."], ["\u200b"],
                                              ["두 번 봤다.", "또 보고 싶다."]])
    assert batch.documents[1] == []
    for seed in range(30):
        settings = pk.resolve_settings(packing="segment-pair", nsp=True, max_seq_length=32)
        for example in pk.pack_batch(batch, settings, seed=seed):
            assert example.document != 1
            assert len(pk.materialize(batch, example, special, pair=True)["input_ids"]) > 4
    for mode in ("full-sentences", "doc-sentences"):
        examples = list(pk.pack_batch(batch, pk.resolve_settings(packing=mode, max_seq_length=32)))
        assert sum(len(_content(batch, e)) for e in examples) == batch.num_tokens


def test_serialized_examples_parse_back_with_tensorflow():
    import tensorflow as tf

    rng = np.random.default_rng(0)
    examples = []
    for i in range(300):
        n = int(rng.integers(1, 600))
        examples.append({"input_ids": rng.integers(0, 1 << int(rng.integers(1, 40)), n),
                         "word_starts": rng.integers(0, 2, n),
                         "masked_lm_positions": rng.integers(0, n, int(rng.integers(0, 3))),
                         "next_sentence_label": np.array([i % 2])})
    examples[5]["input_ids"][0] = -7
    examples[6]["input_ids"][0] = (1 << 63) - 1
    for features, record in zip(examples, pk.serialize_examples(examples), strict=True):
        expected = tf.train.Example(features=tf.train.Features(feature={
            name: tf.train.Feature(int64_list=tf.train.Int64List(value=values.tolist()))
            for name, values in features.items()}))
        assert tf.train.Example.FromString(record) == expected
    assert pk.serialize_examples([]) == []


def test_sentencepiece_word_starts_sit_on_the_word_initial_piece(corpus, tmp_path_factory):
    """A SentencePiece token that starts on the space ("▁", "▁갔") begins the next eojeol."""
    _, documents, _ = corpus
    out = tmp_path_factory.mktemp("spm")
    (out / "corpus").mkdir()
    (out / "corpus" / "part-00000-of-00001.txt").write_text(
        "".join("".join(f"{s}\n" for s in doc) + "\n" for doc in documents), encoding="utf-8")
    build_vocab(str(out / "corpus"), str(out / "tok"), algorithm="sentencepiece-unigram", vocab_size=2000,
                heldout_every=0)
    tokenizer = tokenization.load(str(out / "tok"))
    text = "영화가 정말 재미있다. 두 번 봤다"
    batch = pk.tokenize_documents(tokenizer, [[text]])
    tokens = tokenizer.hf.encode(text, add_special_tokens=False).tokens
    expected = [int(k == 0 or t.startswith("▁")) for k, t in enumerate(tokens)]
    assert batch.word_starts.tolist() == expected
    assert batch.word_starts.sum() == 6
    assert pk.MORPHEME_BOUNDARY == __import__("korlm.tokenizer.morpheme", fromlist=["BOUNDARY"]).BOUNDARY
