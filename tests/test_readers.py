"""Readers: XML block structure and streamed Modu-corpus JSON."""

from __future__ import annotations

import bz2
import io
import json

from corpus_beam.readers import FileReadSummary, read_records


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
