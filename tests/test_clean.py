"""clean: text functions, readers, and a real Beam run over a deliberately dirty corpus."""

from __future__ import annotations

import bz2
import glob
import gzip
import json
import logging
import os
import unicodedata

import pytest

from korlm import storage
from korlm.beam_options import pipeline_args, pipeline_options
from korlm.clean.beam import run_clean
from korlm.clean.readers import FileReadSummary, infer_format, read_records, resolve_inputs
from korlm.clean.text import (
    collapse_whitespace,
    document_hash,
    filter_sentences,
    has_invalid_utf8,
    normalize_text,
    printable,
    split_sentences_regex,
    strip_invisible,
)
from korlm.errors import KorlmError

# ---------------------------------------------------------------- pure text functions


def test_normalize_composes_hangul_to_nfc():
    decomposed = unicodedata.normalize("NFD", "한국어 문장")
    assert len(decomposed) > len("한국어 문장")
    assert normalize_text(decomposed) == "한국어 문장"
    assert normalize_text(decomposed, "none") == decomposed


def test_normalize_drops_zero_width_and_control_characters():
    assert normalize_text("안\u200b녕\u200c하\u200d세\u2060요\ufeff\u00ad") == "안녕하세요"
    assert normalize_text("제\x00목\x07:\x1b 값") == "제목: 값"
    # a zero-width joiner between jamo must not block their composition
    jamo = unicodedata.normalize("NFD", "한")
    assert normalize_text(jamo[0] + "\u200d" + jamo[1:]) == "한"
    assert strip_invisible("\u200b\u200b") == ""


def test_normalize_collapses_whitespace_but_keeps_paragraphs():
    text = "  첫\u3000번째\u00a0줄\t입니다  \r\n\r\n\n  두 번째 줄\u2028세 번째 줄  "
    assert normalize_text(text) == "첫 번째 줄 입니다\n두 번째 줄\n세 번째 줄"
    assert collapse_whitespace(" \n\t \n ") == ""


def test_nfkc_folds_compatibility_characters():
    assert normalize_text("Ｋｏｒｅａ ①", "NFKC") == "Korea 1"
    assert normalize_text("Ｋｏｒｅａ", "NFC") == "Ｋｏｒｅａ"


def test_filter_sentences_counts_what_it_drops():
    kept, dropped = filter_sentences(["가", "좋은 문장입니다.", "나" * 20], min_chars=2, max_chars=10)
    assert kept == ["좋은 문장입니다."]
    assert dropped == 2


def test_split_sentences_regex():
    assert split_sentences_regex("정말 좋아요! 또 볼래요? 네. 3.5점 드립니다") == [
        "정말 좋아요!", "또 볼래요?", "네.", "3.5점 드립니다"]
    assert split_sentences_regex('그는 "안녕." 하고 말했다. 끝') == ['그는 "안녕."', "하고 말했다.", "끝"]
    assert split_sentences_regex("마침표 없는 문장") == ["마침표 없는 문장"]
    assert split_sentences_regex("") == []


def test_document_hash_and_printable():
    assert document_hash("같은 문서") == document_hash("같은 문서")
    assert document_hash("같은 문서") != document_hash("다른 문서")
    bad = b"\xff\xfe \xea\xb0\x80".decode("utf-8", "surrogateescape")
    assert has_invalid_utf8(bad) and not has_invalid_utf8("가나다")
    assert printable(bad) == "\ufffd\ufffd 가"
    assert printable("가" * 1500) == "가" * 1000
    assert printable("\ud800x") == "?x"


# ---------------------------------------------------------------- readers


def test_infer_format():
    assert infer_format("a/b.txt") == "txt"
    assert infer_format("gs://bucket/x.jsonl.gz") == "jsonl"
    assert infer_format("X.TSV.bz2") == "tsv"
    assert infer_format("data.csv") == "csv"
    assert infer_format("README.md") is None


def test_resolve_inputs_errors(tmp_path):
    (tmp_path / "a.txt").write_text("문서\n", encoding="utf-8")
    (tmp_path / "notes.md").write_text("x\n", encoding="utf-8")
    with pytest.raises(KorlmError, match="matches no file"):
        resolve_inputs([str(tmp_path / "missing.txt")])
    with pytest.raises(KorlmError, match="matches no file"):
        resolve_inputs([str(tmp_path / "*.jsonl")])
    with pytest.raises(KorlmError, match="cannot tell the format"):
        resolve_inputs([str(tmp_path / "*")])
    with pytest.raises(KorlmError, match="is a directory"):
        resolve_inputs([str(tmp_path)])
    with pytest.raises(KorlmError, match="unknown keys: colum"):
        resolve_inputs([{"path": str(tmp_path / "a.txt"), "colum": "x"}])
    with pytest.raises(KorlmError, match="unknown format"):
        resolve_inputs([{"path": str(tmp_path / "a.txt"), "format": "parquet"}])
    with pytest.raises(KorlmError, match="no inputs"):
        resolve_inputs([])
    files = resolve_inputs([{"path": str(tmp_path / "notes.md"), "format": "txt"}, str(tmp_path / "*.txt"),
                            str(tmp_path / "a.txt")])
    assert [(f.format, os.path.basename(f.path)) for f in files] == [("txt", "notes.md"), ("txt", "a.txt")]


def test_read_records_never_raises_on_bad_content(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"content": "BOM \xec\x9e\x88\xec\x9d\x8c"}\n'
                     b'\n{"content": "\xff bad"}\n[1, 2]\n{"content": null}\n')
    summary = FileReadSummary()
    records = list(read_records(str(path), "jsonl", "content", summary))
    assert [(line, reason) for line, _, reason in records] == [
        (1, None), (3, "invalid_utf8"), (4, "malformed_record"), (5, "malformed_record")]
    assert records[0][1] == "BOM 있음"
    assert summary.records == 4 and summary.blank_lines == 1
    assert summary.bytes_read == path.stat().st_size


# ---------------------------------------------------------------- a real Beam run on a dirty corpus

DUPLICATE = "중복된 문서입니다. 이 문장은 두 번 나옵니다."
LONG_WORD = "가나다라마바사아자차" * 30  # one 300-character "sentence": above max_sentence_chars below


def _write_dirty_corpus(root):
    txt_lines = [
        "오늘은 날씨가 정말 좋네요. 산책하러 나가야겠어요.".encode(),  # 1 kept
        b"   \t ",  # whitespace-only line: a blank separator, not a record
        b"",
        "\u200b\u200b\ufeff".encode(),  # 4 zero-width only -> empty_after_normalization
        "짧은 글".encode(),  # 5 too_short_document
        b"\xff\xfe\xfd \xea\xb0\x80 invalid bytes in this line",  # 6 invalid_utf8
        DUPLICATE.encode(),  # 7 duplicate of docs.jsonl:1
        "안\u200b녕하세요.   반갑습니다\u3000여러분!".encode(),  # 8 kept, zero-width removed
        LONG_WORD.encode(),  # 9 no_sentences_left
        unicodedata.normalize("NFD", "한국어 문장을 정규화합니다.").encode(),  # 10 kept as NFC
    ]
    (root / "docs.txt").write_bytes(b"\n".join(txt_lines) + b"\n")
    jsonl_lines = [
        json.dumps({"text": DUPLICATE}, ensure_ascii=False),  # 1 kept: smallest source of its group
        json.dumps({"text": "  중복된 문서입니다.  이 문장은\t두 번 나옵니다. "}, ensure_ascii=False),  # 2 duplicate
        '{"text": "깨진 JSON',  # 3 malformed
        json.dumps({"body": "필드가 없는 문서입니다"}, ensure_ascii=False),  # 4 malformed
        json.dumps({"text": 12345}),  # 5 malformed
        json.dumps({"text": " \t \n  "}),  # 6 whitespace-only document -> empty_after_normalization
        "",
        json.dumps({"text": "첫 문장은 정상입니다.\n" + "나다라마바사아자차카" * 30}, ensure_ascii=False),  # 8 kept, 1 sentence dropped
        '{"text": "' + "다" * 1500,  # 9 malformed, long
    ]
    (root / "docs.jsonl").write_text("\n".join(jsonl_lines) + "\n", encoding="utf-8")
    (root / "reviews.csv").write_text(
        'id,text\n1,"영화가 정말 재미있었어요. 또 보고 싶네요."\n2\n'
        '3,"따옴표 안에\n줄바꿈이 있는 리뷰입니다."\n4,"열이, 너무, 많은",extra\n', encoding="utf-8")
    (root / "empty.txt").write_bytes(b"")
    (root / "broken.jsonl.gz").write_bytes(b"this is not gzip data at all")
    (root / "extra.txt.gz").write_bytes(gzip.compress("압축된 파일도 투명하게 읽습니다.\n".encode()))
    (root / "extra.txt.bz2").write_bytes(bz2.compress("bz2 압축 파일의 문서입니다.\n".encode()))
    return [str(root / "docs.txt"), str(root / "docs.jsonl"), {"path": str(root / "reviews.csv")},
            str(root / "empty.txt"), str(root / "broken.jsonl.gz"), str(root / "extra.txt.*")]


@pytest.fixture(scope="module")
def dirty_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("dirty")
    inputs = _write_dirty_corpus(root)
    out = root / "corpus"
    # an earlier clean output at the same place (korlm's own: --overwrite replaces it whole)
    with storage.atomic_output_dir(str(out), "clean") as staging:
        storage.write_text(storage.join(staging, "stale.txt"), "left over from an earlier run")
    stats = run_clean(inputs, str(out), max_sentence_chars=200, overwrite=True)
    return root, out, stats


def _documents(out):
    docs = []
    for path in sorted(glob.glob(str(out / "part-*.txt"))):
        text = open(path, encoding="utf-8").read()
        assert text == "" or text.endswith("\n\n"), "every document ends with a blank line"
        docs += [block.split("\n") for block in text.split("\n\n") if block]
    return docs


def _rejections(out):
    rows = []
    for path in glob.glob(str(out / "rejected" / "rejected-*.jsonl")):
        rows += [json.loads(line) for line in open(path, encoding="utf-8")]
    return rows


def test_every_record_is_accounted_for(dirty_run):
    _, _, stats = dirty_run
    assert stats["input_records"] == 23
    assert stats["kept_records"] == 9
    assert stats["rejected_records"] == 14
    assert stats["input_records"] == stats["kept_records"] + stats["rejected_records"]
    assert {k: v for k, v in stats["rejected_by_reason"].items() if v} == {
        "unreadable_file": 1,
        "invalid_utf8": 1,
        "malformed_record": 6,
        "empty_after_normalization": 2,
        "too_short_document": 1,
        "no_sentences_left": 1,
        "duplicate_document": 2,
    }
    assert stats["dropped_sentences"] == 2
    assert stats["input_files"] == 7 and stats["empty_files"] == 1 and stats["unreadable_files"] == 1
    assert stats["truncated_files"] == 0 and stats["rejected_by_reason"]["truncated_file"] == 0
    assert stats["blank_lines"] == 3


def test_per_source_counts(dirty_run):
    root, _, stats = dirty_run
    per = stats["per_source"]
    assert set(per) == {str(root / n) for n in ("docs.txt", "docs.jsonl", "reviews.csv",
                                                "empty.txt", "broken.jsonl.gz", "extra.txt.*")}
    txt = per[str(root / "docs.txt")]
    assert (txt["input_records"], txt["kept_records"]) == (8, 3)
    assert txt["rejected_by_reason"] == {"empty_after_normalization": 1, "too_short_document": 1,
                                         "invalid_utf8": 1, "duplicate_document": 1, "no_sentences_left": 1}
    assert txt["input_bytes"] == (root / "docs.txt").stat().st_size
    assert per[str(root / "docs.jsonl")]["rejected_by_reason"] == {
        "duplicate_document": 1, "malformed_record": 4, "empty_after_normalization": 1}
    assert per[str(root / "reviews.csv")]["rejected_by_reason"] == {"malformed_record": 2}
    assert per[str(root / "empty.txt")]["input_records"] == 0
    assert per[str(root / "extra.txt.*")]["kept_records"] == 2
    for counts in per.values():
        assert counts["input_records"] == counts["kept_records"] + counts["rejected_records"]


def test_output_format_and_contents(dirty_run):
    _, out, stats = dirty_run
    assert not (out / "stale.txt").exists(), "the output directory is replaced as a whole"
    assert not [p for p in os.listdir(out.parent) if ".tmp-" in p], "no staging directory left behind"
    assert "_dedup_tmp" not in os.listdir(out), "the documents waiting for dedup are removed"
    docs = _documents(out)
    assert len(docs) == stats["kept_records"]
    assert sum(len(d) for d in docs) == stats["sentences"]
    sentences = [s for d in docs for s in d]
    assert all(s and s == s.strip() and 2 <= len(s) <= 200 for s in sentences)
    assert all(unicodedata.is_normalized("NFC", s) and "\u200b" not in s for s in sentences)
    assert ["오늘은 날씨가 정말 좋네요.", "산책하러 나가야겠어요."] in docs
    assert ["첫 문장은 정상입니다."] in docs  # the 300-character sentence was dropped
    assert ["따옴표 안에", "줄바꿈이 있는 리뷰입니다."] in docs  # quoted CSV newline = paragraph break
    assert any(d[0] == "안녕하세요." for d in docs)
    assert "한국어 문장을 정규화합니다." in sentences
    assert "압축된 파일도 투명하게 읽습니다." in sentences and "bz2 압축 파일의 문서입니다." in sentences
    assert sum(1 for d in docs if d[0] == "중복된 문서입니다.") == 1
    part_bytes = sum(os.path.getsize(p) for p in glob.glob(str(out / "part-*.txt")))
    assert stats["output_bytes"] == part_bytes
    assert json.loads((out / "stats.json").read_text(encoding="utf-8")) == stats


def test_rejections_file(dirty_run):
    root, out, stats = dirty_run
    rows = _rejections(out)
    assert len(rows) == stats["rejected_records"]
    assert all(set(r) == {"reason", "source", "text"} for r in rows)
    assert all(len(r["text"]) <= 1000 for r in rows)
    by_source = {r["source"]: r for r in rows}
    # the survivor of a duplicate group is its smallest source: docs.jsonl:1 < docs.jsonl:2 < docs.txt:7
    assert by_source[f"{root / 'docs.txt'}:7"]["reason"] == "duplicate_document"
    assert by_source[f"{root / 'docs.jsonl'}:2"]["reason"] == "duplicate_document"
    assert f"{root / 'docs.jsonl'}:1" not in by_source
    assert by_source[f"{root / 'docs.txt'}:6"]["reason"] == "invalid_utf8"
    assert "\ufffd" in by_source[f"{root / 'docs.txt'}:6"]["text"]
    assert by_source[str(root / "broken.jsonl.gz")]["reason"] == "unreadable_file"
    assert by_source[f"{root / 'docs.jsonl'}:9"]["text"] == ('{"text": "' + "다" * 1500)[:1000]
    assert by_source[f"{root / 'reviews.csv'}:3"]["reason"] == "malformed_record"
    assert by_source[f"{root / 'reviews.csv'}:6"]["reason"] == "malformed_record"


def test_beam_counters_match_stats(tmp_path, caplog):
    (tmp_path / "a.txt").write_text("첫 번째 문서입니다.\n짧다\n첫 번째 문서입니다.\n\u200b\n", encoding="utf-8")
    caplog.set_level(logging.INFO, logger="korlm.clean.beam")
    stats = run_clean([str(tmp_path / "a.txt")], str(tmp_path / "out"), sentence_splitter="regex")
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("clean counters: ")]
    counters = json.loads(logged[0].removeprefix("clean counters: "))
    assert {k: v for k, v in counters.items() if v} == {
        "input_records": 4, "kept_records": 1, "too_short_document": 1, "duplicate_document": 1,
        "empty_after_normalization": 1}
    assert stats["input_records"] == 4 and stats["kept_records"] == 1
    assert (tmp_path / "out" / "part-00000-of-00001.txt").read_text(encoding="utf-8") == "첫 번째 문서입니다.\n\n"


def test_missing_input_fails_before_the_pipeline(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(KorlmError, match="matches no file"):
        run_clean([str(tmp_path / "nope" / "*.txt")], str(out))
    assert not out.exists()


@pytest.mark.parametrize("kwargs, message", [
    ({"normalization": "NFD"}, "normalization"),
    ({"sentence_splitter": "spacy"}, "sentence_splitter"),
    ({"min_sentence_chars": 10, "max_sentence_chars": 5}, "min_sentence_chars"),
    ({"min_document_chars": -1}, "min_document_chars"),
])
def test_bad_settings(tmp_path, kwargs, message):
    (tmp_path / "a.txt").write_text("문서입니다\n", encoding="utf-8")
    with pytest.raises(KorlmError, match=message):
        run_clean([str(tmp_path / "a.txt")], str(tmp_path / "out"), **kwargs)


def test_beam_options_pass_through():
    dataflow = ["--runner=DataflowRunner", "--project=p", "--region=r", "--temp_location=gs://b/tmp"]
    assert pipeline_args(dataflow) == dataflow
    assert pipeline_options(dataflow).get_all_options()["runner"] == "DataflowRunner"
    local = pipeline_options(None).get_all_options()
    assert local["runner"] == "DirectRunner" and local["direct_running_mode"] == "in_memory"
    chosen = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    assert pipeline_args(chosen) == ["--runner=DirectRunner", *chosen]


SAMPLE_RAW = os.path.join(os.path.dirname(__file__), "..", "data", "sample", "raw")


def test_bundled_law_sample(tmp_path):
    stats = run_clean([os.path.join(SAMPLE_RAW, "law", "*.txt")], str(tmp_path / "law"))
    assert stats["input_records"] == stats["kept_records"] + stats["rejected_records"] > 1000
    assert stats["per_source"][os.path.join(SAMPLE_RAW, "law", "*.txt")]["input_files"] == 11
    assert stats["kept_records"] > 0 and stats["sentences"] >= stats["kept_records"]
    assert stats["output_bytes"] == sum(os.path.getsize(p) for p in glob.glob(str(tmp_path / "law" / "part-*.txt")))
    assert "제1조 ① 대한민국은 민주공화국이다." in {s for d in _documents(tmp_path / "law") for s in d}


# ---------------------------------------------------------------- no silent loss: truncated files, nothing kept

def test_truncated_gzip_is_counted_and_its_first_records_kept(tmp_path, caplog):
    lines = [f"{i}번째 문서는 잘린 압축 파일 앞부분에 있습니다." for i in range(400)]
    blob = gzip.compress(("\n".join(lines) + "\n").encode())
    (tmp_path / "cut.txt.gz").write_bytes(blob[: len(blob) * 2 // 3])
    (tmp_path / "whole.txt").write_text("온전한 파일의 문서 하나입니다.\n", encoding="utf-8")
    caplog.set_level(logging.WARNING)
    stats = run_clean([str(tmp_path / "cut.txt.gz"), str(tmp_path / "whole.txt")], str(tmp_path / "out"),
                      sentence_splitter="regex", near_dedup=False)
    assert stats["input_records"] == stats["kept_records"] + stats["rejected_records"]
    assert stats["truncated_files"] == 1 and stats["unreadable_files"] == 0
    assert stats["rejected_by_reason"]["truncated_file"] == 1
    cut = stats["per_source"][str(tmp_path / "cut.txt.gz")]
    assert 0 < cut["kept_records"] < len(lines) and cut["rejected_by_reason"] == {"truncated_file": 1}
    kept = {d[0] for d in _documents(tmp_path / "out")}
    assert {lines[0], lines[cut["kept_records"] - 1]} <= kept
    rows = [r for r in _rejections(tmp_path / "out") if r["reason"] == "truncated_file"]
    assert [r["source"] for r in rows] == [str(tmp_path / "cut.txt.gz")]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("cut.txt.gz is truncated or corrupt" in w for w in warnings)


def test_a_run_that_keeps_nothing_fails_and_keeps_the_earlier_corpus(tmp_path):
    (tmp_path / "en.txt").write_text("English only review number one\nAnother English line here\n"
                                     "짧음\nThird one in English\n", encoding="utf-8")
    out = tmp_path / "corpus"
    with storage.atomic_output_dir(str(out), "clean") as staging:  # an earlier run's corpus
        storage.write_text(storage.join(staging, "part-00000-of-00001.txt"), "이전 실행의 코퍼스\n\n")
    with pytest.raises(KorlmError) as err:
        run_clean([str(tmp_path / "en.txt")], str(out), sentence_splitter="regex", overwrite=True)
    message = str(err.value)
    assert "\n" not in message
    assert "kept no documents: all 4 input records were rejected" in message
    assert "top reasons: low_hangul_ratio 3, too_short_document 1" in message
    failed = tmp_path / "corpus.failed"
    assert str(failed) in message
    assert (out / "part-00000-of-00001.txt").read_text(encoding="utf-8") == "이전 실행의 코퍼스\n\n"
    stats = json.loads((failed / "stats.json").read_text(encoding="utf-8"))
    assert stats["kept_records"] == 0 and stats["rejected_records"] == 4
    assert len(_rejections(failed)) == 4
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]
    # a later run that keeps documents publishes its corpus and removes the diagnostics
    (tmp_path / "ko.txt").write_text("한국어 문서는 이제 남습니다.\n", encoding="utf-8")
    stats = run_clean([str(tmp_path / "ko.txt")], str(out), sentence_splitter="regex", overwrite=True)
    assert stats["kept_records"] == 1 and not failed.exists()
    # inputs without any record are not a failure: nothing to keep
    (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
    assert run_clean([str(tmp_path / "empty.txt")], str(tmp_path / "e"))["input_records"] == 0
