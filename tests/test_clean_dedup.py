"""clean, extended: dedup (exact sentence/document, MinHash LSH), more readers, PII end to end,
rejected sampling, the dry run, and Beam vs the plain loop giving the same answer."""

from __future__ import annotations

import bz2
import glob
import gzip
import json
import os
import random
import subprocess
import sys

import pytest

from corpus_beam.clean import CleanSettings, clean_in_process, run_clean
from corpus_beam.dedup import (
    DedupKeys,
    MinHasher,
    find_duplicates,
    jaccard,
    lsh_params,
)
from corpus_beam.readers import FileReadSummary, infer_format, read_records, resolve_inputs
from korlm import config as cfg
from korlm.errors import KorlmError
from korlm.pii import find_pii

# ---------------------------------------------------------------- MinHash and bucket resolution

BASE = ("국민건강보험 공단 고객센터 상담사 입니다 문재인 정부가 출범 하면서 1호 정책으로 내세운 일자리 정책이라는 "
        "기사와 고객센터 상담사가 정규직이 된다는 기사를 보고 기대를 많이 했습니다 타 공공기관 상담사 들이 "
        "정규직으로 전환되는 것을 지켜보며 기대감 뿐 아니라 관심도도 상승하게 되었습니다").split()


def test_lsh_params_fit_num_perm():
    bands, rows = lsh_params(0.8, 128)
    assert bands * rows <= 128 and bands > 1 and rows > 1
    assert lsh_params(0.5, 128)[1] < rows  # a lower threshold needs fewer rows per band


def test_minhash_estimates_jaccard_and_is_deterministic():
    near = list(BASE)
    near[5] = "윤석열"  # one word changed
    far = "오늘은 날씨가 정말 좋아서 친구들과 함께 한강 공원에 가서 자전거를 타고 치킨을 먹었습니다".split()
    a, b = MinHasher(256, 3), MinHasher(256, 3)
    sig_base, sig_near, sig_far = a.signature(BASE), b.signature(near), a.signature(far)
    assert (a.signature(BASE) == b.signature(BASE)).all()  # same seed, same signature in every worker
    true = jaccard(a.shingles(BASE), a.shingles(near))
    assert abs(float((sig_base == sig_near).mean()) - true) < 0.12
    assert float((sig_base == sig_far).mean()) < 0.05
    keys = MinHasher(128, 3, 0.8)
    assert set(keys.band_keys(BASE)) & set(keys.band_keys(near))
    assert not set(keys.band_keys(BASE)) & set(keys.band_keys(far))


def test_find_duplicates_smallest_holder_wins_in_any_order():
    keys = DedupKeys(sentence_min_chars=5, near_min_words=10)
    docs = {
        "b\0001": ("같은 문서", ["같은 문장이 여기에 있다.", "다른 문장."]),
        "a\0002": ("같은 문서", ["같은 문장이 여기에 있다.", "다른 문장."]),
        "c\0003": ("다른 문서", ["같은 문장이 여기에 있다.", "새로운 문장입니다."]),
        "d\0004": ("또 다른 문서", ["새로운 문장입니다.", "새로운 문장입니다."]),
    }
    entries = [(bucket, key, index) for key, (text, sents) in docs.items()
               for bucket, index in keys.keys(text, sents)]
    results = []
    for seed in range(5):
        random.Random(seed).shuffle(entries)
        results.append(find_duplicates(entries))
    assert all(r == results[0] for r in results)
    losers = results[0]
    assert losers["b\0001"]["reason"] == "duplicate_document"  # "a..." sorts first
    assert "a\0002" not in losers
    assert losers["c\0003"] == {"reason": None, "sentences": {0}}
    # d's first sentence loses to c's; its second is a repeat inside d itself
    assert losers["d\0004"] == {"reason": None, "sentences": {0, 1}}


# ---------------------------------------------------------------- readers

MODU = {"id": "NWRW1800000001", "document": [
    {"id": "d1", "paragraph": [{"id": "p1", "form": "모두의 말뭉치 첫 문단입니다."},
                               {"id": "p2", "form": "두 번째 문단도 있습니다."}]},
    {"id": "d2", "utterance": [{"form": "안녕하세요 반갑습니다"}, {"form": "네 저도 반가워요"}]},
    {"id": "d3", "metadata": {}},
]}
XML = ('<?xml version="1.0" encoding="UTF-8"?>\n<corpus xmlns="http://example.org/ns">'
       '<doc id="1"><title>제목</title><text>엑스엠엘 문서의 <b>본문</b>입니다.</text></doc>'
       '<doc id="2"><text>두 번째 엑스엠엘 문서입니다.</text></doc></corpus>\n')


def test_new_formats(tmp_path):
    assert infer_format("x.xml.bz2") == "xml" and infer_format("NWRW1800000001.json") == "modu"
    (tmp_path / "m.json").write_text(json.dumps(MODU, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "a.xml").write_text(XML, encoding="utf-8")
    (tmp_path / "broken.xml").write_text("<corpus><text>좋은 문서</text><text>깨진", encoding="utf-8")
    (tmp_path / "p.txt").write_text("첫 문서 첫 줄\n첫 문서 둘째 줄\n\n\n둘째 문서\n", encoding="utf-8")
    read = lambda name, fmt, field=None: list(read_records(str(tmp_path / name), fmt, field, FileReadSummary()))  # noqa: E731
    assert read("m.json", "modu") == [
        (1, "모두의 말뭉치 첫 문단입니다.\n두 번째 문단도 있습니다.", None),
        (2, "안녕하세요 반갑습니다\n네 저도 반가워요", None),
        (3, '{"id": "d3", "metadata": {}}', "malformed_record")]
    assert read("a.xml", "xml", "text") == [(1, "엑스엠엘 문서의 본문입니다.", None), (2, "두 번째 엑스엠엘 문서입니다.", None)]
    assert [r[1] for r in read("a.xml", "xml", "doc/title")] == ["제목"]
    broken = read("broken.xml", "xml", "text")
    assert broken[0] == (1, "좋은 문서", None) and broken[1][2] == "malformed_record"
    assert read("p.txt", "paragraphs") == [(1, "첫 문서 첫 줄\n첫 문서 둘째 줄", None), (5, "둘째 문서", None)]
    assert read("p.txt", "txt")[1] == (2, "첫 문서 둘째 줄", None)
    with pytest.raises(KorlmError, match="has no field"):
        resolve_inputs([{"path": str(tmp_path / "p.txt"), "format": "paragraphs", "field": "x"}])


# ---------------------------------------------------------------- a Beam run with PII, duplicates, bad input

PII_VALUES = ["010-9876-5432", "hong.gildong@naver.com", "900101-1234567", "4111-1111-1111-1111",
              "https://blog.example.co.kr/post/123", "192.168.10.20", "+82 10-5555-6666", "0212345678"]
NEAR = ("정부는 오늘 국무회의에서 내년도 예산안을 확정하고 국회에 제출하기로 했다고 밝혔다 이번 예산안은 일자리 "
        "창출과 복지 확대에 중점을 두었으며 지방 균형 발전을 위한 투자도 크게 늘렸다고 설명했다 기획재정부 "
        "관계자는 경기 둔화에 대응하기 위해 재정의 역할을 강화할 필요가 있다며 국회의 신속한 심의를 요청했다")


def _write_corpus(root):
    lines = [
        f"제 연락처는 {PII_VALUES[0]}이고 메일은 {PII_VALUES[1]}입니다. 편하게 연락 주세요.",  # 1
        f"주민번호 {PII_VALUES[2]}와 카드 {PII_VALUES[3]}를 적으면 안 됩니다. 조심하세요.",  # 2
        f"자세한 내용은 {PII_VALUES[4]} 에서 보세요. 서버 주소는 {PII_VALUES[5]}입니다.",  # 3
        f"해외에서는 {PII_VALUES[6]}로, 사무실은 {PII_VALUES[7]}로 연락하세요.",  # 4
        "가격은 1,234,567원이고 2020-01-15에 출시된 버전 1.2.3 제품입니다. 법률 제12345호를 따릅니다.",  # 5
        NEAR,  # 6 near-duplicate survivor (smaller source)
        NEAR.replace("요청했다", "촉구했다"),  # 7 near duplicate
        "반복되는 문장은 한 번만 남아야 합니다. 이 문서의 두 번째 문장입니다.",  # 8
        "반복되는 문장은 한 번만 남아야 합니다. 하지만 이 문장은 새롭습니다.",  # 9 loses sentence 1
        "반복되는 문장은 한 번만 남아야 합니다.",  # 10 every sentence seen: duplicate_sentences
        "영화 정말 재밌었어요ㅋㅋㅋㅋㅋㅋㅋ!!!!!!",  # 11 kept, capped
        "One of my favorite animated films of all time!",  # 12 low_hangul_ratio
        "~!~!!~~!~~!!~~!~! ^^;; ㅎ",  # 13 high_symbol_ratio
        "2019 2020 2021 2022 2023 합계",  # 14 high_digit_ratio
        "홍길동 기자 gildong@news.co.kr 무단전재 및 재배포 금지",  # 15 boilerplate only -> no_sentences_left
        "영화가 좋았다. 무단전재 및 재배포 금지",  # 16 kept, boilerplate sentence dropped
    ]
    (root / "web.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "binary.txt").write_bytes(bytes(random.Random(0).randrange(256) for _ in range(3000)))
    (root / "huge.txt").write_bytes(("가나다라 마바사 " * 460_000).encode())  # one 10.6 MB line
    (root / "modu.json.bz2").write_bytes(bz2.compress(json.dumps(MODU, ensure_ascii=False).encode()))
    (root / "a.xml.gz").write_bytes(gzip.compress(XML.encode()))
    (root / "docs.paragraphs").write_text(f"문단 형식의 첫 문서입니다.\n{PII_VALUES[0]}로 전화 주세요.\n\n둘째 문서입니다 정말로.\n",
                                          encoding="utf-8")
    return [str(root / "web.txt"), str(root / "binary.txt"), str(root / "huge.txt"),
            str(root / "modu.json.bz2"), {"path": str(root / "a.xml.gz"), "field": "text"},
            {"path": str(root / "docs.paragraphs"), "format": "paragraphs"}]


SETTINGS = {"sentence_splitter": "regex", "near_dedup_min_words": 10, "dedup_sentence_min_chars": 10}


@pytest.fixture(scope="module")
def pii_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pii")
    inputs = _write_corpus(root)
    stats = run_clean(inputs, str(root / "out"), **SETTINGS)
    return root, inputs, stats


def _texts(out, pattern):
    return "".join(open(p, encoding="utf-8").read() for p in glob.glob(str(out / pattern)))


def test_accounting_and_reasons(pii_run):
    root, _, stats = pii_run
    assert stats["input_records"] == stats["kept_records"] + stats["rejected_records"]
    web = stats["per_source"][str(root / "web.txt")]
    assert web["input_records"] == 16
    assert web["rejected_by_reason"] == {
        "near_duplicate_document": 1, "duplicate_sentences": 1, "low_hangul_ratio": 1,
        "high_symbol_ratio": 1, "high_digit_ratio": 1, "no_sentences_left": 1}
    assert web["kept_records"] == 10
    assert web["dropped_sentences_by_reason"] == {"duplicate_sentence": 1, "boilerplate_sentence": 2}
    assert web["pii_replaced"] == {"phone": 3, "email": 2, "rrn": 1, "card": 1, "url": 1, "ip": 1}
    assert stats["per_source"][str(root / "huge.txt")]["rejected_by_reason"] == {"too_long_document": 1}
    binary = stats["per_source"][str(root / "binary.txt")]
    assert binary["input_records"] == binary["rejected_records"] > 0
    assert stats["per_source"][str(root / "modu.json.bz2")]["kept_records"] == 2
    assert stats["per_source"][str(root / "a.xml.gz")]["kept_records"] == 2
    assert stats["per_source"][str(root / "docs.paragraphs")]["kept_records"] == 2


def test_no_pii_anywhere_in_the_artifacts(pii_run):
    root, _, _ = pii_run
    corpus = _texts(root / "out", "part-*.txt")
    rejected = _texts(root / "out", "rejected/*.jsonl")
    for value in PII_VALUES + ["gildong@news.co.kr"]:
        assert value not in corpus and value not in rejected
    assert find_pii(corpus) == [] and find_pii(rejected) == []
    for kept in ("1,234,567원", "2020-01-15", "버전 1.2.3", "법률 제12345호"):
        assert kept in corpus
    assert "제 연락처는 <PHONE>이고 메일은 <EMAIL>입니다." in corpus.split("\n")
    assert "영화 정말 재밌었어요ㅋㅋ!!" in corpus.split("\n")


def test_no_exact_duplicates_in_the_output(pii_run):
    root, _, _ = pii_run
    corpus = _texts(root / "out", "part-*.txt")
    docs = [d for d in corpus.split("\n\n") if d.strip()]
    assert len(docs) == len(set(docs))
    sentences = [s for s in corpus.split("\n") if len(s) >= SETTINGS["dedup_sentence_min_chars"]]
    assert len(sentences) == len(set(sentences))
    assert corpus.count("반복되는 문장은 한 번만 남아야 합니다.") == 1
    assert NEAR in corpus and NEAR.replace("요청했다", "촉구했다") not in corpus


def test_plain_loop_gives_the_same_answer(pii_run):
    root, inputs, stats = pii_run
    local = clean_in_process(inputs, keep_documents=True, **SETTINGS)
    for key in ("input_records", "kept_records", "rejected_records", "rejected_by_reason", "sentences",
                "dropped_sentences_by_reason", "pii_replaced", "output_bytes"):
        assert local[key] == stats[key], key
    corpus = _texts(root / "out", "part-*.txt")
    assert sorted("\n".join(d) + "\n\n" for d in local["documents"]) == sorted(
        d + "\n\n" for d in corpus.split("\n\n") if d.strip())


def test_rejected_sampling(tmp_path, pii_run):
    root, inputs, stats = pii_run
    half = run_clean(inputs[:1], str(tmp_path / "half"), rejected_sample_rate=0.5, **SETTINGS)
    none = run_clean(inputs[:1], str(tmp_path / "none"), rejected_sample_rate=0.0, **SETTINGS)
    assert half["rejected_records"] == none["rejected_records"] == 6
    assert _texts(tmp_path / "none", "rejected/*.jsonl") == ""
    written = _texts(tmp_path / "half", "rejected/*.jsonl").splitlines()
    assert 0 < len(written) < 6


def test_pii_drop_sentence_mode(tmp_path):
    (tmp_path / "a.txt").write_text("연락처는 010-1234-5678입니다. 그 외 내용은 평범한 문장입니다.\n", encoding="utf-8")
    stats = run_clean([str(tmp_path / "a.txt")], str(tmp_path / "out"), pii="drop_sentence",
                      sentence_splitter="regex")
    assert _texts(tmp_path / "out", "part-*.txt") == "그 외 내용은 평범한 문장입니다.\n\n"
    assert stats["dropped_sentences_by_reason"]["pii_sentence"] == 1


@pytest.mark.parametrize("options, message", [
    ({"pii": "mask"}, "pii"),
    ({"min_hangul_ratio": 1.5}, "min_hangul_ratio"),
    ({"boilerplate_patterns": ["(unclosed"]}, "boilerplate_patterns"),
    ({"near_dedup_threshold": 1.0}, "near_dedup_threshold"),
    ({"max_document_chars": 5}, "max_document_chars"),
    ({"colour": 1}, "unknown clean option"),
])
def test_bad_options(options, message):
    with pytest.raises(KorlmError, match=message):
        CleanSettings.from_kwargs(**options)


def test_config_section_matches_the_library():
    section = cfg.CleanSection()
    lib = {f for f in CleanSettings.__dataclass_fields__}
    assert set(section.model_dump(exclude={"inputs", "beam_options"})) == lib
    with pytest.raises(cfg.ConfigError, match="clean.max_repeat"):
        cfg.validate({"clean": {"max_repeat": -1}})
    with pytest.raises(cfg.ConfigError, match="clean.pii"):
        cfg.validate({"clean": {"pii": "mask"}})
    conf = cfg.validate({"clean": {"inputs": [{"path": "x.xml", "format": "xml", "field": "doc/text"}],
                                   "boilerplate_patterns": []}})
    assert conf.clean.boilerplate_patterns == []


def test_dry_run_cli_writes_nothing(tmp_path):
    (tmp_path / "a.txt").write_text("좋은 문서입니다 정말로요.\n짧다\nEnglish only text here\n"
                                    "좋은 문서입니다 정말로요.\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(__file__))}
    out = subprocess.run([sys.executable, "-m", "korlm.cli", "clean", "--input", str(tmp_path / "a.txt"),
                          "--dry-run", "--dry-run-records", "3"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout[out.stdout.index("{"):])
    assert report["input_records"] == 3
    assert report["rejected_by_reason"]["too_short_document"] == 1
    assert report["rejected_by_reason"]["low_hangul_ratio"] == 1
    assert report["examples"]["low_hangul_ratio"][0]["text"] == "English only text here"
    assert sorted(os.listdir(tmp_path)) == ["a.txt"]
