"""Readers: XML block structure, streamed Modu-corpus JSON, CSV/TSV quoting, truncated
and corrupt compressed files, and the field check before reading."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import logging

import pytest

from korlm.clean import readers
from korlm.clean.readers import FileReadSummary, read_records, resolve_inputs
from korlm.errors import KorlmError


def _read(path, fmt, field=None, open_fn=None):
    summary = FileReadSummary()
    kwargs = {"open_fn": open_fn} if open_fn else {}
    return list(read_records(str(path), fmt, field, summary, **kwargs)), summary


def test_xml_block_children_become_line_breaks_inline_ones_do_not(tmp_path):
    (tmp_path / "a.xml").write_text(
        '<?xml version="1.0" encoding="UTF-8"?><corpus>'
        "<text><head>기사 제목</head><p>첫 문단은 <b>굵은</b> 글씨를 담았다.</p><p>둘째 문단이다.</p>꼬리 문장.</text>"
        "<text>한 문단만<sup>1</sup> 있는 문서.</text></corpus>", encoding="utf-8")
    records, summary = _read(tmp_path / "a.xml", "xml", "text")
    assert records == [
        (1, "기사 제목\n첫 문단은 굵은 글씨를 담았다.\n둘째 문단이다.\n꼬리 문장.", None),
        (2, "한 문단만1 있는 문서.", None)]
    assert summary.records == 2


def _modu(n_documents: int) -> dict:
    return {"id": "NWRW", "metadata": {"title": "모두의 말뭉치"}, "document": [
        {"id": f"d{i}", "paragraph": [{"id": f"d{i}.1", "form": f"{i}번째 문서의 첫 문단입니다."},
                                      {"id": f"d{i}.2", "form": "둘째 문단입니다."}]}
        for i in range(1, n_documents + 1)]}


def test_modu_is_streamed_document_by_document(tmp_path):
    path = tmp_path / "big.json"
    path.write_text(json.dumps(_modu(30_000), ensure_ascii=False), encoding="utf-8")
    size = path.stat().st_size
    assert size > 2_000_000
    summary = FileReadSummary()
    records = read_records(str(path), "modu", None, summary, open_fn=lambda p: open(p, "rb"))
    first = next(records)
    assert first == (1, "1번째 문서의 첫 문단입니다.\n둘째 문단입니다.", None)
    # The first document came out after reading a small part of the file, not all of it.
    assert summary.bytes_read < size / 4
    rest = list(records)
    assert len(rest) == 29_999 and summary.bytes_read == size


def test_modu_truncated_file_keeps_documents_before_the_error(tmp_path):
    text = json.dumps(_modu(5), ensure_ascii=False)
    cut = text[: text.index('"d4"') + 10]
    path = tmp_path / "cut.json.bz2"
    path.write_bytes(bz2.compress(cut.encode()))
    records, summary = _read(path, "modu")
    assert [r[0] for r in records] == [1, 2, 3, 4]
    assert all(r[2] is None for r in records[:3])
    assert records[3][2] == "malformed_record" and records[3][1].startswith("json error:")
    assert summary.records == 4


def test_modu_without_document_list_or_with_bad_utf8_is_one_rejection(tmp_path):
    (tmp_path / "other.json").write_text('{"data": [{"form": "문서"}]}', encoding="utf-8")
    records, _ = _read(tmp_path / "other.json", "modu")
    assert records == [(0, "no 'document' list at the top level", "malformed_record")]

    raw = json.dumps(_modu(2), ensure_ascii=False).encode().replace("둘째".encode(), b"\xff\xfe", 1)
    records, _ = _read(tmp_path / "bad.json", "modu", open_fn=lambda p: io.BytesIO(raw))
    assert len(records) == 1 and records[0][2] == "malformed_record"


# ---------------------------------------------------------------- CSV/TSV quoting

def _tsv(tmp_path, text, name="a.tsv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_unbalanced_quote_does_not_swallow_the_rows_after_it(tmp_path):
    # NSMC's extra reviews hold nine such lines; pandas and the csv module merge up to
    # ~900 following rows into each of them
    rows = ["id\tmovie_id\trating\treview", '1\t10\t9\t"걸리버 여행기\' 보다 재밌어요']
    rows += [f"{i}\t10\t8\t{i}번째 리뷰입니다" for i in range(2, 8)]
    rows += ['8\t10\t7\t"따옴표로 감싼 리뷰"', '9\t10\t6\t끝에만 따옴표"']
    records, summary = _read(_tsv(tmp_path, "\n".join(rows) + "\n"), "tsv", "review")
    assert records[0] == (2, "unclosed quote: 1\t10\t9\t\"걸리버 여행기' 보다 재밌어요", "malformed_record")
    assert records[1:] == [(i + 1, f"{i}번째 리뷰입니다", None) for i in range(2, 8)] + [
        (9, "따옴표로 감싼 리뷰", None), (10, '끝에만 따옴표"', None)]
    assert summary.records == 9 == len(rows) - 1


def test_nsmc_style_quoting_reads_like_pandas(tmp_path):
    text = ('id\tdocument\tlabel\n'
            '1\t"""영화 끝나갈때쯤에 """"ㅈ같다."""""""\t1\n'
            '2\t"""시미즈레이코의 만화책""""비밀"""".에서 영향받은거 아냐?"""\t0\n'
            '3\t"완벽한 재연출이군"\t1\n'
            '4\t멘탈이 아작나겠네요." 엄마 "마법"\t1\n'
            '5\t"좋아요"ㅋㅋ\t1\n')
    records, _ = _read(_tsv(tmp_path, text), "tsv", "document")
    # the strings pandas.read_csv(sep="\t") gives (checked against it on all 200,000 NSMC rows)
    assert [r[1] for r in records] == [
        '"영화 끝나갈때쯤에 ""ㅈ같다."""', '"시미즈레이코의 만화책""비밀"".에서 영향받은거 아냐?"',
        "완벽한 재연출이군", '멘탈이 아작나겠네요." 엄마 "마법"', "좋아요ㅋㅋ"]
    assert all(r[2] is None for r in records)


def test_a_real_multi_line_field_is_one_record(tmp_path):
    text = ('id,text,score\n'
            '1,"첫 줄\n\n둘째 줄에 ""인용""도 있고\n셋째 줄",5\n'
            '2,"한 줄 리뷰",4\n'
            '3,"마지막 칸이\r\n두 줄",3\n')
    records, summary = _read(_tsv(tmp_path, text, "a.csv"), "csv", "text")
    assert records == [(2, '첫 줄\n\n둘째 줄에 "인용"도 있고\n셋째 줄', None), (6, "한 줄 리뷰", None),
                       (7, "마지막 칸이\r\n두 줄", None)]
    assert summary.blank_lines == 0


def test_multi_line_fields_whose_lines_look_like_rows_only_by_their_width(tmp_path):
    # the text column first: its closing line always has the full number of columns
    text = 'text,id\n"첫 줄\n닫는 줄",1\n"한 줄",2\n'
    records, _ = _read(_tsv(tmp_path, text, "first.csv"), "csv", "text")
    assert records == [(2, "첫 줄\n닫는 줄", None), (4, "한 줄", None)]
    # a prose line with one comma has the width of an (id, text) row, but no number in
    # the column that always held one
    text = 'id,text\n1,"그런데, 나는\n이렇게 생각한다, 정말로"\n2,"다음 행"\n'
    records, _ = _read(_tsv(tmp_path, text, "prose.csv"), "csv", "text")
    assert records == [(2, "그런데, 나는\n이렇게 생각한다, 정말로", None), (4, "다음 행", None)]
    # with only text columns, width is all there is to go by: such a field is rejected
    # (a counted malformed_record) and its next line read as the row it looks like,
    # never merged with the rows after it
    text = 'title,text\n제목,"그런데, 나는\n이렇게, 생각한다"\n'
    records, _ = _read(_tsv(tmp_path, text, "words.csv"), "csv", "text")
    assert records == [(2, 'unclosed quote: 제목,"그런데, 나는', "malformed_record"), (3, ' 생각한다"', None)]


def test_a_multi_line_span_that_is_not_a_record_is_read_again_line_by_line(tmp_path):
    text = ('id,text,score\n'
            '1,"닫히지 않은 따옴표\n'      # closes properly on the next line, but the
            '이어지는 줄",5,초과,더\n'       # record would have 5 columns, not 3
            '2,"멀쩡한 행",4\n'
            '3,"또 열린 따옴표\n'
            '4,다음 행처럼 보이는 줄,2\n'   # on its own a whole row: the quote was unbalanced
            '5,"끝까지 안 닫힘\n'
            '6,"줄"바뀜,1\n')              # the carried quote closes mid-field: unbalanced
    records, summary = _read(_tsv(tmp_path, text, "a.csv"), "csv", "text")
    assert records == [
        (2, 'unclosed quote: 1,"닫히지 않은 따옴표', "malformed_record"),
        (3, '이어지는 줄",5,초과,더', "malformed_record"),  # read again: 4 columns
        (4, "멀쩡한 행", None),
        (5, 'unclosed quote: 3,"또 열린 따옴표', "malformed_record"),
        (6, "다음 행처럼 보이는 줄", None),
        (7, 'unclosed quote: 5,"끝까지 안 닫힘', "malformed_record"),
        (8, "줄바뀜", None)]
    assert summary.records == 7


def test_a_quote_open_at_the_end_of_the_file_loses_nothing(tmp_path, monkeypatch):
    records, _ = _read(_tsv(tmp_path, 'text\n"열린 채 끝남\n둘째\n셋째\n', "one.csv"), "csv", "text")
    # one column: every line looks like a row, so only the end of the file (or the line
    # cap) ends the search for the closing quote
    assert records == [(2, 'unclosed quote: "열린 채 끝남', "malformed_record"), (3, "둘째", None), (4, "셋째", None)]
    monkeypatch.setattr(readers, "MAX_QUOTED_LINES", 3)
    lines = ["text", '"열린 따옴표'] + [f"줄 {i}" for i in range(5)] + ['닫힘"']
    records, _ = _read(_tsv(tmp_path, "\n".join(lines) + "\n", "cap.csv"), "csv", "text")
    assert records[0][2] == "malformed_record" and [r[1] for r in records[1:]] == lines[2:]


# ---------------------------------------------------------------- truncated and corrupt compressed files

LINES = [f"{i}번째 줄의 문장입니다 " + "가나다라마바사"[i % 7] * (i % 50) for i in range(3000)]
DATA = ("\n".join(LINES) + "\n").encode()


@pytest.mark.parametrize("compress, suffix", [(gzip.compress, ".gz"), (bz2.compress, ".bz2")])
def test_truncated_stream_keeps_what_came_before(tmp_path, compress, suffix, caplog):
    blob = compress(DATA)
    path = tmp_path / f"cut.txt{suffix}"
    path.write_bytes(blob[:-10])  # the end marker and a few bytes of data are missing
    with caplog.at_level(logging.WARNING, logger="korlm.clean.readers"):
        records, summary = _read(path, "txt")
    good = [r for r in records if r[2] is None]
    assert 0 < len(good) and [r[1] for r in good] == LINES[:len(good)]
    assert records[-1][0] == 0 and records[-1][2] == "truncated_file"
    assert "ends before its end marker" in records[-1][1]
    assert summary.truncated and not summary.unreadable and summary.records == len(records)
    assert any(str(path) in r.getMessage() and "truncated" in r.getMessage() for r in caplog.records)


def test_a_gzip_cut_mid_line_drops_the_partial_line():
    blob = gzip.compress(DATA)
    for cut in (len(blob) // 3, len(blob) // 2, len(blob) - 9):
        records, summary = _read("x.txt.gz", "txt", open_fn=lambda p, b=blob[:cut]: io.BytesIO(b))
        good = [r[1] for r in records if r[2] is None]
        assert good == LINES[:len(good)], "no record is a cut-off piece of a line"
        assert records[-1][2] == "truncated_file" and summary.truncated


def test_bzip2_cut_inside_its_first_block_is_truncated_not_silently_empty():
    blob = bz2.compress(DATA)
    records, summary = _read("x.txt.bz2", "txt", open_fn=lambda p: io.BytesIO(blob[: len(blob) // 2]))
    assert records == [(0, records[0][1], "truncated_file")] and summary.truncated


def test_corrupt_data_and_not_compressed_at_all():
    blob = bytearray(gzip.compress(DATA, compresslevel=1))
    blob[len(blob) // 2: len(blob) // 2 + 8] = b"\xff" * 8
    records, summary = _read("x.txt.gz", "txt", open_fn=lambda p: io.BytesIO(bytes(blob)))
    assert records[-1][2] == "truncated_file" and "corrupt compressed data" in records[-1][1]
    assert summary.truncated and summary.records == len(records) > 1
    # the whole file is one 64 KiB read: the data before the damage is salvaged from it
    # (deflate has no per-block check, so bytes after the damage may decode to noise
    # until the member's CRC fails; they go through the filters like any text)
    assert [r[1] for r in records[: len(LINES) // 3]] == LINES[: len(LINES) // 3]
    records, summary = _read("x.txt.gz", "txt", open_fn=lambda p: io.BytesIO(b"plain text, not gzip\n"))
    assert [r[2] for r in records] == ["unreadable_file"] and summary.unreadable and not summary.truncated


def test_concatenated_members_and_zero_padding_are_read_whole():
    blob = gzip.compress("첫 멤버\n".encode()) + gzip.compress("둘째 멤버\n".encode()) + b"\0" * 512
    records, summary = _read("x.txt.gz", "txt", open_fn=lambda p: io.BytesIO(blob))
    assert records == [(1, "첫 멤버", None), (2, "둘째 멤버", None)] and not summary.truncated
    blob = bz2.compress("첫 스트림\n".encode()) + bz2.compress("둘째 스트림\n".encode())
    records, _ = _read("x.txt.bz2", "txt", open_fn=lambda p: io.BytesIO(blob))
    assert records == [(1, "첫 스트림", None), (2, "둘째 스트림", None)]
    assert _read("x.txt.gz", "txt", open_fn=lambda p: io.BytesIO(b""))[0] == []


def test_highly_compressed_data_comes_out_in_bounded_pieces():
    big = b"\0" * 30_000_000 + "\n끝\n".encode()
    records, summary = _read("z.txt.gz", "txt", open_fn=lambda p: io.BytesIO(gzip.compress(big)))
    assert [(r[0], len(r[1]), r[2]) for r in records] == [(1, 30_000_000, None), (2, 1, None)]
    assert summary.bytes_read == len(big)


@pytest.mark.parametrize("fmt, name", [("xml", "a.xml.gz"), ("modu", "a.json.gz"), ("jsonl", "a.jsonl.gz")])
def test_truncated_structured_files(fmt, name):
    docs = [f"{i}번째 문서 " + "나" * 3000 for i in range(60)]
    if fmt == "xml":
        raw = ("<corpus>" + "".join(f"<text>{d}</text>" for d in docs) + "</corpus>").encode()
    elif fmt == "modu":
        raw = json.dumps({"document": [{"paragraph": [{"form": d}]} for d in docs]}, ensure_ascii=False).encode()
    else:
        raw = "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs).encode()
    blob = gzip.compress(raw, compresslevel=1)
    records, summary = _read(name, fmt, open_fn=lambda p: io.BytesIO(blob[: len(blob) // 2]))
    good = [r[1] for r in records if r[2] is None]
    assert 0 < len(good) < len(docs) and good == docs[:len(good)]
    assert [r[2] for r in records[len(good):]] == ["truncated_file"], "the cut is one truncated_file, no parse error"
    assert summary.truncated and summary.records == len(records)


def test_a_parse_error_does_not_hide_a_truncated_stream_behind_it():
    # found by the fuzz tier: XML/Modu reading stops at a parse error, and the cut
    # stream behind it went unnoticed
    xml = "<corpus><text>첫 문서</text><text>둘째 <b 문서</text>" + "<text>뒤</text>" * 500 + "</corpus>"
    blob = gzip.compress(xml.encode())
    records, summary = _read("a.xml.gz", "xml", "text", open_fn=lambda p: io.BytesIO(blob[:-12]))
    assert [r[2] for r in records] == [None, "malformed_record", "truncated_file"]
    assert records[1][1].startswith("xml error:") and summary.truncated
    records, summary = _read("a.xml.gz", "xml", "text", open_fn=lambda p: io.BytesIO(blob))
    assert [r[2] for r in records] == [None, "malformed_record"] and not summary.truncated
    modu = '{"document": [{"paragraph": [{"form": "문서"}]}, {"paragraph": [' + " " * 5000 + "]]}"
    blob = bz2.compress(modu.encode())
    records, summary = _read("a.json.bz2", "modu", open_fn=lambda p: io.BytesIO(blob[:-4]))
    assert [r[2] for r in records] == [None, "malformed_record", "truncated_file"] and summary.truncated


def test_two_unbalanced_quotes_in_a_row_do_not_pair_up(tmp_path):
    # found by the fuzz tier: the second line closes the first one's quote properly
    # ("\t) and the pair has the header's width, but that line starts a row of its own
    text = 'id\ttext\tscore\n0\t"\t0\n1\t"\t1\n2\t"좋아\t2\n3\t최고"\t3\n4\t보통\t4\n'
    records, _ = _read(_tsv(tmp_path, text), "tsv", "text")
    assert records == [(2, 'unclosed quote: 0\t"\t0', "malformed_record"),
                       (3, 'unclosed quote: 1\t"\t1', "malformed_record"),
                       (4, 'unclosed quote: 2\t"좋아\t2', "malformed_record"),
                       (5, '최고"', None), (6, "보통", None)]


# ---------------------------------------------------------------- the field is checked before reading

def test_a_missing_column_or_key_is_named_before_any_work(tmp_path):
    _tsv(tmp_path, "id\tmovie_id\trating\treview\n1\t2\t3\t리뷰\n", "r.tsv")
    with pytest.raises(KorlmError, match=r"has no column 'text' \(columns: id, movie_id, rating, review\)"):
        resolve_inputs([str(tmp_path / "r.tsv")])
    assert resolve_inputs([{"path": str(tmp_path / "r.tsv"), "field": "review"}])[0].field == "review"
    (tmp_path / "p.jsonl.gz").write_bytes(gzip.compress(
        "".join(json.dumps({"title": "제목", "content": f"본문 {i}"}, ensure_ascii=False) + "\n"
                for i in range(80)).encode()))
    with pytest.raises(KorlmError, match=r"none of the first 50 JSON objects .* has the field 'text' "
                                         r"\(keys: title, content\)"):
        resolve_inputs([str(tmp_path / "p.jsonl.gz")])
    # a key that only some objects carry is fine: those without it are malformed records
    (tmp_path / "s.jsonl").write_text('{"a": 1}\n{"text": "문서"}\n', encoding="utf-8")
    assert len(resolve_inputs([str(tmp_path / "s.jsonl")])) == 1


def test_a_header_without_the_column_in_a_later_file_of_a_glob(tmp_path):
    _tsv(tmp_path, "id\treview\n1\t첫 파일\n", "a.tsv")
    _tsv(tmp_path, "id\tbody\n1\t둘째 파일\n", "b.tsv")
    files = resolve_inputs([{"path": str(tmp_path / "*.tsv"), "field": "review"}])
    records, _ = _read(files[1].path, "tsv", "review")
    assert records == [(2, "1\t둘째 파일", "malformed_record")]
