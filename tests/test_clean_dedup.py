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

import numpy as np
import pytest

from korlm import config as cfg
from korlm.clean.beam import (
    clean_in_process,
    read_document_batches,
    run_clean,
    write_document_batch,
)
from korlm.clean.cleaner import CleanSettings, clean_settings
from korlm.clean.dedup import (
    DOCUMENT,
    ENTRY,
    DedupIndex,
    DedupKeys,
    Losses,
    MinHasher,
    jaccard,
    losses_of,
    lsh_params,
    record_order,
    shard_entries,
)
from korlm.clean.pii import find_pii
from korlm.clean.readers import FileReadSummary, infer_format, read_records, resolve_inputs
from korlm.errors import KorlmError

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
    assert set(keys.band_hashes(BASE)) & set(keys.band_hashes(near))
    assert not set(keys.band_hashes(BASE)) & set(keys.band_hashes(far))


def test_duplicates_smallest_holder_wins_in_any_order_and_sharding():
    keys = DedupKeys(sentence_min_chars=5, near_min_words=10)
    docs = {  # (file rank, line): ("normalized text", sentences)
        (1, 1): ("같은 문서", ["같은 문장이 여기에 있다.", "다른 문장."]),
        (0, 2): ("같은 문서", ["같은 문장이 여기에 있다.", "다른 문장."]),
        (2, 3): ("다른 문서", ["같은 문장이 여기에 있다.", "새로운 문장입니다."]),
        (3, 4): ("또 다른 문서", ["새로운 문장입니다.", "새로운 문장입니다."]),
    }
    orders = {key: record_order(*key) for key in docs}
    entries = keys.entries((orders[key], text, sents) for key, (text, sents) in docs.items())
    assert entries.dtype == ENTRY and entries.itemsize == 20
    results = []
    for seed in range(5):
        shuffled = entries[random.Random(seed).sample(range(len(entries)), len(entries))]
        index = DedupIndex()
        for _, part in shard_entries(shuffled, num_shards=seed + 1):  # any sharding, any order
            index.add(part)
        results.append(index.resolve().lookup([orders[k] for k in docs]))
    assert all(r == results[0] for r in results)
    loss = dict(zip(docs, results[0], strict=True))
    assert loss[(1, 1)]["reason"] == "duplicate_document"  # file rank 0 sorts first
    assert loss[(0, 2)] is None
    assert loss[(2, 3)] == {"reason": None, "sentences": {0}}
    # (3, 4)'s first sentence loses to (2, 3)'s; its second is a repeat inside itself
    assert loss[(3, 4)] == {"reason": None, "sentences": {0, 1}}
    # a document order sorts like (path rank, line), beyond 32-bit line numbers
    assert record_order(0, 2**39) < record_order(1, 0) < record_order(1, 1)


def test_loss_lookup_merges_reasons():
    entries = np.array([(7, 10, DOCUMENT), (7, 5, DOCUMENT), (9, 2, -2), (9, 10, -2), (3, 10, 0)], dtype=ENTRY)
    losses = Losses(losses_of(entries))
    assert losses.lookup([5, 10, 2]) == [None, {"reason": "duplicate_document", "sentences": set()}, None]
    assert len(Losses(losses_of(entries[4:]))) == 0


def test_document_shard_frames_round_trip(tmp_path):
    batches = [{"input": "a", "path": "p", "rank": 0, "docs": [(1, ["문장 \udcff"], {}, {"url": 1})]},
               {"input": "a", "path": "p", "rank": 0, "docs": []}]
    with open(tmp_path / "s.bin", "wb") as f:
        for b in batches:
            write_document_batch(f, b)
    with open(tmp_path / "s.bin", "rb") as f:
        assert list(read_document_batches(f)) == batches
    (tmp_path / "cut.bin").write_bytes((tmp_path / "s.bin").read_bytes()[:-3])
    with open(tmp_path / "cut.bin", "rb") as f, pytest.raises(RuntimeError, match="truncated"):
        list(read_document_batches(f))


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


def test_multi_worker_runner_gives_the_same_answer(tmp_path, pii_run):
    # two workers: batches are reshuffled, dedup entries go through Beam's shuffle (not
    # spilled files) and losses are routed back to more than one document file
    root, inputs, stats = pii_run
    multi = run_clean(inputs, str(tmp_path / "multi"), beam_options=[
        "--direct_running_mode=multi_processing", "--direct_num_workers=2"], **SETTINGS)
    assert {k: v for k, v in multi.items()} == stats
    for pattern in ("part-*.txt", "rejected/*.jsonl"):
        assert sorted(_texts(tmp_path / "multi", pattern).split("\n")) == sorted(
            _texts(root / "out", pattern).split("\n"))
    assert os.listdir(tmp_path / "multi") and "_dedup_tmp" not in os.listdir(tmp_path / "multi")


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
    ({"inputs": ["a.txt"]}, "unknown clean option"),
    ({"pii_placeholder": "<{kind}{x}>"}, "pii_placeholder"),
])
def test_bad_options(options, message):
    with pytest.raises(KorlmError, match=message):
        clean_settings(**options)


def test_one_schema_for_config_and_library():
    # the library's settings are the config section: one place for every default
    assert CleanSettings is cfg.CleanSection
    assert clean_settings() == cfg.CleanSection()
    assert clean_settings(max_repeat=3, boilerplate_patterns=None).max_repeat == 3
    with pytest.raises(KorlmError, match="clean.max_repeat"):
        clean_settings(max_repeat=-1)
    with pytest.raises(cfg.ConfigError, match="clean: boilerplate_patterns: not a valid regular"):
        cfg.validate({"clean": {"boilerplate_patterns": ["(unclosed"]}})
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
