"""korlm.evaluation.tagging: tag spelling, alignment of word/character tags to subword
tokens (first-subword and all-subword), decoding back to character spans of the original
text, truncation accounting, the KLUE-NER scores and the readers (KLUE's character file,
CoNLL-style columns). The scores were also checked against seqeval 1.2.2
(``f1_score(mode="strict", scheme=IOB2/IOBES)``, macro and micro) and scikit-learn's
``f1_score(average="macro", zero_division=1)`` on 3,000 random BIO/BIOES sentence sets:
equal to 1e-12 (see the report of the branch that added them); here the cases are worked
by hand."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from korlm.errors import KorlmError, NotBuiltError
from korlm.evaluation import evaluate, heads, metrics, tagging, tasks
from tests.test_pretrain import build_tokenizer

DATA = Path(__file__).resolve().parent / "data" / "ner"
# the shared data kit (../shared/data from the project root; not on a fresh clone)
KLUE_NER = (Path(__file__).resolve().parents[1].parent / "shared" / "data" / "klue"
            / "klue-ner-v1.1_dev.tsv.gz")


# --- tags ---

def test_tags_are_parsed_in_either_spelling_and_checked_against_the_scheme():
    naver = tagging.TaggingSpec(outside="-", tag_position="suffix")
    assert tagging.parse_tag("PER_B", naver, "x") == "B-PER"
    assert tagging.parse_tag("ORG-I", naver, "x") == "I-ORG"
    assert tagging.parse_tag("-", naver, "x") == "O"
    assert tagging.parse_tag("B_LOC", tagging.TaggingSpec(), "x") == "B-LOC"
    with pytest.raises(KorlmError, match=r"f: line 3: tag 'E-PER' is not a BIO tag"):
        tagging.parse_tag("E-PER", tagging.TaggingSpec(), "f: line 3")
    assert tagging.parse_tag("E-PER", tagging.TaggingSpec(scheme="BIOES"), "x") == "E-PER"
    with pytest.raises(KorlmError, match="like PER_B"):
        tagging.parse_tag("PER", naver, "x")
    assert tagging.label_names(["PS", "LC"], "BIO") == ("O", "B-LC", "I-LC", "B-PS", "I-PS")
    assert len(tagging.label_names(["PS"], "BIOES")) == 5


def test_expand_and_collapse_are_inverse():
    assert tagging.expand("B-PS", 3, "BIO") == ["B-PS", "I-PS", "I-PS"]
    assert tagging.expand("I-PS", 2, "BIO") == ["I-PS", "I-PS"]
    assert tagging.expand("O", 2, "BIOES") == ["O", "O"]
    assert tagging.expand("S-PS", 3, "BIOES") == ["B-PS", "I-PS", "E-PS"]
    assert tagging.expand("S-PS", 1, "BIOES") == ["S-PS"]
    assert tagging.expand("E-PS", 2, "BIOES") == ["I-PS", "E-PS"]
    assert tagging.expand("B-PS", 2, "BIOES") == ["B-PS", "I-PS"]
    assert tagging.expand("B-PS", 0, "BIO") == []
    for scheme in ("BIO", "BIOES"):
        for tag in tagging.label_names(["PS"], scheme):
            for k in (1, 2, 4):
                assert tagging.collapse(tagging.expand(tag, k, scheme), scheme) == tag
    # a token covering the end of one entity and the start of the next keeps the first
    assert tagging.collapse(["I-PS", "O", "B-LC"], "BIO") == "I-PS"
    assert tagging.collapse(["B-PS", "E-PS", "O"], "BIOES") == "B-PS"


def test_entities_are_strict_like_seqeval():
    bio = ["B-PS", "I-PS", "O", "I-LC", "I-LC", "B-LC", "B-LC", "I-PS", "B-OG"]
    # a leading I- is no entity; an I- of another type ends one
    assert tagging.entities(bio, "BIO") == [("PS", 0, 2), ("LC", 5, 6), ("LC", 6, 7),
                                             ("OG", 8, 9)]
    bioes = ["S-PS", "B-LC", "I-LC", "E-LC", "B-OG", "I-OG", "O", "B-DT", "E-DT", "E-DT",
             "I-PS", "E-PS", "B-QT"]
    # B without its E and E without its B are no entities
    assert tagging.entities(bioes, "BIOES") == [("PS", 0, 1), ("LC", 1, 4), ("DT", 7, 9)]


# --- scores ---

def test_entity_and_character_scores_worked_by_hand():
    gold = [["B-PS", "I-PS", "O", "B-LC"], ["B-PS", "O", "O"]]
    pred = [["B-PS", "I-PS", "O", "O"], ["B-PS", "I-PS", "B-LC"]]
    labels = tagging.label_names(["PS", "LC", "OG"], "BIO")
    # PS: tp 1 (sentence 0), pred 2, gold 2 -> F1 0.5; LC: tp 0 -> 0; macro 0.25
    assert tagging.score("entity_f1", gold, pred, labels) == pytest.approx(0.25)
    # micro: tp 1, pred 3, gold 3 -> 1/3
    assert tagging.score("entity_micro_f1", gold, pred, labels) == pytest.approx(1 / 3)
    # characters: O tp 1/pred 2/gold 3 -> 0.4; B-PS 1.0; I-PS tp 1/pred 2/gold 1 -> 2/3;
    # B-LC tp 0 -> 0; I-LC, B-OG, I-OG absent from both -> 1 each (KLUE's zero_division)
    assert tagging.score("char_f1", gold, pred, labels) == pytest.approx(
        (0.4 + 1 + 2 / 3 + 0 + 1 + 1 + 1) / 7)
    # registered with the other metrics, and the all-O predictor scores 0 entity F1
    scores = metrics.compute(["entity_f1", "char_f1"], gold, pred, label_names=labels)
    assert scores["entity_f1"] == pytest.approx(0.25)
    const = metrics.constant_baseline(["entity_f1", "char_f1"], gold, "token-classification",
                                      label_names=labels)
    assert const["metrics"]["entity_f1"] == 0.0
    # all O: O tp 3/pred 7/gold 3 -> 0.6; B-PS, I-PS, B-LC 0; three absent labels 1
    assert const["metrics"]["char_f1"] == pytest.approx((0.6 + 3) / 7)
    with pytest.raises(KorlmError, match="sentence 1: 3 gold tags but 2 predicted"):
        tagging.score("char_f1", gold, [pred[0], pred[1][:2]], labels)
    assert tagging.score("entity_f1", [["O"]], [["O"]]) is None  # no entity anywhere


def test_bootstrap_standard_error_resamples_sentences():
    rng = np.random.default_rng(0)
    labels = tagging.label_names(["PS", "LC"], "BIO")
    gold = [[str(t) for t in rng.choice(labels, size=rng.integers(3, 12))] for _ in range(60)]
    pred = [[t if rng.random() < 0.7 else "O" for t in g] for g in gold]
    se, method = metrics.standard_errors(["entity_f1", "char_f1", "entity_micro_f1"], gold,
                                         pred, label_names=labels)
    assert method["entity_f1"].startswith("bootstrap over test sentences (200 resamples")
    assert all(0 < v < 0.2 for v in se.values())
    # the same as scoring each resample from scratch (counts are additive over sentences)
    draw = np.random.default_rng(metrics.BOOTSTRAP_SEED)
    values = []
    for _ in range(metrics.BOOTSTRAP_RESAMPLES):
        idx = draw.integers(0, len(gold), size=len(gold))
        values.append(tagging.score("entity_f1", [gold[i] for i in idx],
                                    [pred[i] for i in idx], labels))
    assert se["entity_f1"] == pytest.approx(float(np.std(values, ddof=1)))
    assert metrics.standard_errors(["entity_f1"], gold, [["O"] * len(g) for g in gold],
                                   label_names=labels)[0]["entity_f1"] == 0.0


# --- alignment and decoding ---

def test_character_units_against_hand_made_token_offsets():
    # "김철수 씨가" tokenized as [김철, ##수, 씨, ##가]; units: the 5 non-space characters
    text = "김철수 씨가"
    units = tagging.units_of(text, "char")
    assert units == [(0, 1), (1, 2), (2, 3), (4, 5), (5, 6)]
    offsets = [None, (0, 2), (2, 3), (4, 5), (5, 6), None, None]  # [CLS] ... [SEP] [PAD]
    a = tagging.align(offsets, units)
    assert a.heads == [1, 1, 2, 3, 4] and a.led == {1: [0, 1], 2: [2], 3: [3], 4: [4]}
    tags = ["B-PS", "I-PS", "I-PS", "O", "O"]
    index = {t: i for i, t in enumerate(tagging.label_names(["PS"], "BIO"))}
    y = tagging.token_targets(a, tags, 7, index, "BIO", all_subwords=False)
    # the token 김철 takes its first character's tag; [CLS], [SEP], padding are skipped
    assert y.tolist() == [-100, index["B-PS"], index["I-PS"], index["O"], index["O"], -100, -100]
    # predictions: the head's tag spreads over the characters it covers
    pred = tagging.unit_tags(a, ["O", "B-PS", "I-PS", "O", "O", "O", "O"], 5, "BIO", False)
    assert pred == tags
    assert tagging.spans(text, units, pred, "BIO", [0.9, 0.9, 0.6, 1, 1]) == [
        {"start": 0, "end": 3, "label": "PS", "text": "김철수", "score": pytest.approx(0.8)}]


def test_word_units_first_subword_and_all_subwords():
    # words "서울시청에서  김철수가" (two spaces) -> tokens [서울, ##시청, ##에서, 김철수, ##가]
    text = "서울시청에서  김철수가"
    units = tagging.units_of(text, "word")
    assert units == [(0, 6), (8, 12)]
    offsets = [None, (0, 2), (2, 4), (4, 6), (8, 11), (11, 12), None]
    a = tagging.align(offsets, units)
    assert a.pieces == [[1, 2, 3], [4, 5]]
    for scheme, tags in (("BIO", ["B-LC", "B-PS"]), ("BIOES", ["S-LC", "S-PS"])):
        names = tagging.label_names(["LC", "PS"], scheme)
        index = {t: i for i, t in enumerate(names)}
        first = tagging.token_targets(a, tags, 7, index, scheme, all_subwords=False)
        assert [names[i] if i >= 0 else None for i in first] == [
            None, tags[0], None, None, tags[1], None, None]
        every = tagging.token_targets(a, tags, 7, index, scheme, all_subwords=True)
        spread = [None, *tagging.expand(tags[0], 3, scheme), *tagging.expand(tags[1], 2, scheme),
                  None]
        assert [names[i] if i >= 0 else None for i in every] == spread
        # decoding each mode's own targets gives the words' tags back
        for all_subwords, targets in ((False, first), (True, every)):
            token_tags = [names[i] if i >= 0 else "O" for i in targets]
            assert tagging.unit_tags(a, token_tags, 2, scheme, all_subwords) == tags
        assert [s["text"] for s in tagging.spans(text, units, tags, scheme)] == ["서울시청에서",
                                                                                "김철수가"]
    # word tags spread over characters for char_f1 (spaces are not scored)
    assert tagging.char_tags(text, units, ["B-LC", "O"], "BIO") == ["B-LC"] + ["I-LC"] * 5 + ["O"] * 4


def test_units_past_the_window_are_counted_not_silently_o():
    units = tagging.units_of("가 나 다 라", "char")
    offsets = [None, (0, 1), (2, 3), None]  # cut after 2 tokens
    a = tagging.align(offsets, units, truncated=True)
    assert (a.past_window, a.no_token) == (2, 0)
    assert tagging.unit_tags(a, ["O", "B-PS", "B-PS", "O"], 4, "BIO", False) == [
        "B-PS", "B-PS", "O", "O"]
    # a character the tokenizer drops (no token covers it) is counted apart
    a = tagging.align([None, (0, 1), (4, 5), (6, 7)], units, truncated=False)
    assert (a.past_window, a.no_token) == (0, 1) and a.heads == [1, None, 2, 3]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    directory = build_tokenizer(tmp_path_factory.mktemp("tok"), num_sentences=200, vocab_size=500)
    return evaluate.load_tokenizer(str(directory), 32)


def _klue_spec():
    return tasks.get_task("klue-ner")


def test_real_tokenizer_round_trip_offsets_index_the_original_text(tokenizer):
    """Gold tags aligned to a real WordPiece tokenizer's tokens, then decoded from those
    token labels as if predicted: the spans are the gold entities, at offsets into the
    original text (spaces, punctuation, words the vocab only knows as [UNK], a doubled
    space, and a long text cut at 32 tokens)."""
    spec = _klue_spec()
    text = "  <서울시청>에서, 김철수(42) 씨가  12일 오후 3시에 왔다!"
    entities = [("서울시청", "OG"), ("김철수", "PS"), ("42", "QT"), ("12일", "DT"),
                ("오후 3시", "TI")]
    tags = ["O"] * len(text)
    for word, kind in entities:
        start = text.index(word)
        for k, i in enumerate(i for i in range(start, start + len(word)) if text[i] != " "):
            tags[i] = ("B-" if k == 0 else "I-") + kind
    units = tagging.units_of(text, "char")
    long_text = "가나다라 마바사아 " * 12 + "김철수"
    long_units = tagging.units_of(long_text, "char")
    long_tags = ["O"] * (len(long_units) - 3) + ["B-PS", "I-PS", "I-PS"]
    data = tasks.TaskData([text, long_text], [
        {"units": units, "tags": [tags[s] for s, _ in units]},
        {"units": long_units, "tags": long_tags}])
    head = heads.make_head(spec, tokenizer, 32, 8)
    x, y = head.inputs(tokenizer, data)
    assert x["token_ids"].shape == y.shape == (2, 32)
    # as if the model predicted exactly the training targets (ignored positions: O)
    names = list(spec.label_names)
    probabilities = np.zeros((2, 32, len(names)))
    for i in range(2):
        for p in range(32):
            probabilities[i, p, y[i, p] if y[i, p] >= 0 else names.index("O")] = 1.0
    found = head.spans(probabilities, data)
    assert [(s["text"], s["label"]) for s in found[0]] == entities
    for s in found[0]:
        assert text[s["start"]:s["end"]] == s["text"] and s["score"] == 1.0
    assert found[1] == []  # the entity lies past the 32-token window
    assert head.coverage(data)["truncated_sentences"] == 1
    assert head.coverage(data)["units_past_window"] >= 3
    # what the metrics see: per-character tags; gold scores itself perfectly
    predicted = head.decode(probabilities, data)
    assert predicted[0][1] == [tags[s] for s, _ in units]
    gold = head.gold(data)
    assert head.score(data, [gold[0], ["O"] * len(gold[1])])["entity_f1"] < 1.0
    assert head.score(data, gold) == {"entity_f1": 1.0, "char_f1": 1.0}


def test_morpheme_vocabularies_are_refused(tokenizer):
    class Morpheme:
        pre_tokenizer = "morpheme"

    with pytest.raises(NotBuiltError, match="morpheme pre-tokenized vocabulary"):
        heads.make_head(_klue_spec(), Morpheme(), 24, 6)


# --- files ---

def test_klue_reader_on_the_real_file():
    if not KLUE_NER.exists():
        pytest.skip(f"{KLUE_NER} (the shared data kit) is not on this machine")
    with gzip.open(KLUE_NER, "rt", encoding="utf-8") as f:
        lines = f.readlines()
    texts, labels, ids = tagging.read_klue(lines, "klue", tagging.TaggingSpec(level="char"))
    assert len(texts) == 5000 and ids[0] == "klue-ner-v1_dev_00000-wikitree"
    assert texts[0].startswith("경찰은 또 성매매 알선 자금을 관리한 박씨의 딸(32)과")
    first = tagging.spans(texts[0], labels[0]["units"], labels[0]["tags"], "BIO")
    assert [(s["text"], s["label"]) for s in first][:3] == [("경찰", "OG"), ("박", "PS"),
                                                            ("32", "QT")]
    # every sentence's entities are the <text:TYPE> marks of its ## line (but 2 whose
    # file tags a leading space B-: KLUE-baseline drops spaces too, leaving a bare I-)
    heads = [line.split("\t", 1)[1].rstrip("\n") for line in lines if line.startswith("## klue")]
    same = 0
    for text, label, head in zip(texts, labels, heads, strict=True):
        marked, pos = [], 0
        for s in tagging.spans(text, label["units"], label["tags"], "BIO"):
            marked += [text[pos:s["start"]], f"<{s['text']}:{s['label']}>"]
            pos = s["end"]
        same += "".join(marked) + text[pos:] == head
    assert same == 4998
    # the built-in task: dev only here, split deterministically, and the note says so
    splits = tasks.load_task(tasks.get_task("klue-ner"), str(KLUE_NER.parents[1]),
                             max_train_examples=5, max_eval_examples=5)
    assert splits.sizes == {"train": 3500, "dev": 500, "test": 1000}
    assert "not comparable to published KLUE-NER numbers" in splits.split_note
    assert "derived from klue-ner-v1.1_dev.tsv.gz (5000 rows)" in splits.split_note


def test_klue_and_conll_readers_reject_bad_lines(tmp_path):
    spec = tagging.TaggingSpec(level="char")
    texts, labels, _ = tagging.read_klue(["## g1\t<김:PS> 씨\n", "김\tB-PS\n", " \tO\n",
                                          "씨\tO\n", "\n"], "f", spec)
    assert texts == ["김 씨"] and labels[0] == {"units": [(0, 1), (2, 3)], "tags": ["B-PS", "O"]}
    with pytest.raises(KorlmError, match=r"f: line 2: expected one character, a tab"):
        tagging.read_klue(["## g\n", "김철\tB-PS\n"], "f", spec)
    with pytest.raises(KorlmError, match=r"f: line 1: tag 'X-PS' is not a BIO tag"):
        tagging.read_klue(["김\tX-PS\n"], "f", spec)
    conll = tagging.TaggingSpec()
    texts, labels, ids = tagging.read_conll(
        ["-DOCSTART- O\n", "\n", "서울 B-LC\n", "가다 O\r\n", "\n", "\n", "김 B-PS\n"], "c",
        conll, 0, -1)
    assert texts == ["서울 가다", "김"] and ids == ["line 3", "line 7"]
    assert labels[0] == {"units": [(0, 2), (3, 5)], "tags": ["B-LC", "O"]}
    with pytest.raises(KorlmError, match=r"c: line 1 has 1 column\(s\), columns.tag wants index 2"):
        tagging.read_conll(["서울\n"], "c", conll, 0, 2)


def test_yaml_conll_task_reads_the_naver_style_sample():
    spec = tasks.get_task(str(DATA / "naver_style.yaml"))
    assert spec.type == "token-classification" and spec.tagging.level == "word"
    assert spec.tagging.tag_position == "suffix" and spec.metrics == (
        "entity_f1", "entity_micro_f1", "char_f1")
    splits = tasks.load_task(spec)
    assert splits.sizes == {"train": 16, "dev": 2, "test": 6}
    assert "dev (early stopping) = 2 of 18 rows of naver_style_train.txt" in splits.split_note
    assert splits.spec.label_names[:3] == ("O", "B-AFW", "I-AFW")
    first = splits.train.labels[0]
    assert splits.train.texts[0] == "이순신 장군은 1592년 한산도에서 왜군을 크게 물리쳤다."
    assert first["tags"][:3] == ["B-PER", "I-PER", "B-DAT"]


@pytest.mark.parametrize("body, message", [
    ("format: tsv\n", "format: token-classification tasks read conll or klue-ner files"),
    ("format: conll\ncolumns: {token: word, tag: 1}\n", "columns.token: conll columns are "
                                                         "0-based indexes"),
    ("format: klue-ner\ncolumns: {token: 0, tag: 1}\n", "klue-ner files have fixed columns"),
    ("format: conll\nmetrics: [accuracy]\n", "'accuracy' is not a token-classification metric"),
    ("format: conll\nscheme: IOB1\n", "scheme"),
])
def test_bad_token_classification_task_files(tmp_path, body, message):
    (tmp_path / "t.yaml").write_text(f"name: t\ntype: token-classification\n{body}"
                                     "train: a.txt\ntest: b.txt\n", encoding="utf-8")
    with pytest.raises(KorlmError, match=message):
        tasks.get_task(str(tmp_path / "t.yaml"))


def test_scheme_keys_belong_to_token_classification(tmp_path):
    (tmp_path / "t.yaml").write_text("name: t\ntype: classification\nformat: tsv\n"
                                     "columns: {text: 0, label: 1}\nscheme: BIOES\n"
                                     "train: a\ntest: b\n", encoding="utf-8")
    with pytest.raises(KorlmError, match="scheme: only token-classification tasks have it"):
        tasks.get_task(str(tmp_path / "t.yaml"))


def test_declared_entity_types_catch_a_stray_type(tmp_path):
    (tmp_path / "a.txt").write_text("서울 B-LC\n\n김 B-PS\n\n철수 B-PS\n", encoding="utf-8")
    (tmp_path / "t.yaml").write_text("name: t\ntype: token-classification\nformat: conll\n"
                                     "labels: [LC, DT]\ntrain: a.txt\ntest: a.txt\n", encoding="utf-8")
    with pytest.raises(KorlmError, match=r"a.txt: entity type 'PS' is not in the declared "
                                         r"labels \['DT', 'LC'\]"):
        tasks.load_task(tasks.get_task(str(tmp_path / "t.yaml")))
