"""PII scrubbing: every kind caught in Korean context, and look-alikes left alone."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from korlm.clean.pii import (
    find_pii,
    fold_width,
    luhn_valid,
    placeholders,
    rrn_birth_date,
    rrn_checksum_ok,
    scrub_pii,
)

CAUGHT = [
    # (text, kind, the span that must disappear)
    ("연락처는 010-1234-5678 입니다", "phone", "010-1234-5678"),
    ("01012345678로 문자 주세요", "phone", "01012345678"),
    ("번호010.9876.5432입니다", "phone", "010.9876.5432"),
    ("010 1234 5678 로 연락", "phone", "010 1234 5678"),
    ("011-123-4567번", "phone", "011-123-4567"),
    ("+82 10-1234-5678 (해외)", "phone", "+82 10-1234-5678"),
    ("+82-10-1234-5678", "phone", "+82-10-1234-5678"),
    ("+821012345678", "phone", "+821012345678"),
    ("0082-10-1234-5678", "phone", "0082-10-1234-5678"),
    ("+82 (0)2 123 4567", "phone", "+82 (0)2 123 4567"),
    ("사무실 02-123-4567로 전화", "phone", "02-123-4567"),
    ("(02) 788-4649 문의", "phone", "(02) 788-4649"),
    ("경기 031.123.4567", "phone", "031.123.4567"),
    ("부산 051-1234-5678", "phone", "051-1234-5678"),
    ("0212345678", "phone", "0212345678"),
    ("인터넷전화 070-1234-5678", "phone", "070-1234-5678"),
    ("안심번호 0504-123-4567", "phone", "0504-123-4567"),
    # area code in parentheses, or closed by one
    ("경기 031)123-4567 사무실", "phone", "031)123-4567"),
    ("부산 (051) 234-5678 문의", "phone", "(051) 234-5678"),
    ("서울(02)123-4567로", "phone", "(02)123-4567"),
    ("대표 02) 6744-4222", "phone", "02) 6744-4222"),
    ("휴대폰 (010)1234-5678", "phone", "(010)1234-5678"),
    # full-width forms (detected on the NFKC-folded view, replaced in the original)
    ("연락처 ０１０－１２３４－５６７８ 입니다", "phone", "０１０－１２３４－５６７８"),
    ("TEL ０４４－２０１－４７５2)에게", "phone", "０４４－２０１－４７５2"),
    ("메일 ｈｏｎｇ＠ｎａｖｅｒ．ｃｏｍ 로", "email", "ｈｏｎｇ＠ｎａｖｅｒ．ｃｏｍ"),
    ("메일 kim＠daum．net 로", "email", "kim＠daum．net"),
    ("메일은 hong.gildong@naver.com 으로.", "email", "hong.gildong@naver.com"),
    ("문의:kim_1+tag@korea.ac.kr로", "email", "kim_1+tag@korea.ac.kr"),
    ("메일hong@daum.net로 보내세요", "email", "hong@daum.net"),
    ("https://www.example.co.kr/path?q=1 참고.", "url", "https://www.example.co.kr/path?q=1"),
    ("자세한 내용은 http://blog.naver.com/abc123.", "url", "http://blog.naver.com/abc123"),
    ("www.naver.com 에서 검색", "url", "www.naver.com"),
    ("주민번호 900101-1234567", "rrn", "900101-1234567"),
    ("주민등록번호는9001011234568이고", "rrn", "9001011234568"),  # bare digits: check digit valid
    ("9001011234567", "rrn", "9001011234567"),  # bare digits, check digit wrong: still a date + sex digit
    ("2021년생 2101014987654 번호", "rrn", "2101014987654"),  # issued since 2020: no check digit
    ("주민번호 000229-3123456", "rrn", "000229-3123456"),  # 2000 was a leap year
    ("주민번호 ９００１０１－１２３４５６７", "rrn", "９００１０１－１２３４５６７"),
    ("외국인 851231-5123456", "rrn", "851231-5123456"),
    ("900101-1****** 로 가렸지만", "rrn", "900101-1******"),
    ("카드 4111-1111-1111-1111 결제", "card", "4111-1111-1111-1111"),
    ("카드번호4111111111111111로", "card", "4111111111111111"),
    ("5500 0000 0000 0004 입니다", "card", "5500 0000 0000 0004"),
    ("아멕스 3782-822463-10005", "card", "3782-822463-10005"),
    ("서버 192.168.0.1 접속", "ip", "192.168.0.1"),
    ("접속 IP는211.234.10.5이다", "ip", "211.234.10.5"),
    ("IPv6 2001:db8::1 주소", "ip", "2001:db8::1"),
    ("fe80:0000:0000:0000:0202:b3ff:fe1e:8329 이다", "ip", "fe80:0000:0000:0000:0202:b3ff:fe1e:8329"),
]


@pytest.mark.parametrize("text, kind, span", CAUGHT)
def test_pii_is_scrubbed(text, kind, span):
    counts: dict[str, int] = {}
    out = scrub_pii(text, counts=counts)
    assert span not in out
    assert f"<{kind.upper()}>" in out
    assert counts == {kind: 1}
    assert find_pii(text) == [(kind, span)]


UNTOUCHED = [
    "가격은 1,234,567원입니다",
    "12,000원에 샀어요",
    "₩3,500,000 할인",
    "2020-01-15에 개봉",
    "2020.01.15. 발표",
    "2020. 1. 15.",
    "20200115",
    "발의연월일 : 2010. 11. 12.",
    "버전 1.2.3",
    "v1.2.3.4 릴리스",
    "버전 10.0.19041.1 업데이트",
    "법률 제12345호",
    "법률 제20220101호로 개정",
    "대통령령 제1234호",
    "의안번호 1809890",
    "고객센터 1588-1234",
    "시간 12:30:45",
    "19:00~21:00",
    "원주율 3.14159",
    "1.5배 빠름",
    "전화 1234-5678",
    "4111-1111-1111-1112",  # fails the Luhn check
    "010-12-34",
    "주문번호 1234567890123",  # month 34: not a resident number
    "ISBN 978-89-1234-567-8",
    "람보1.2.3.4 씨리즈",
    "1010101010110",  # 13 bare digits with a valid date head, but only two symbols: a pattern
    "1010101010101",
    "주민번호 900230-1234567",  # 30 February
    "주민번호 010229-3123456",  # 2001 was not a leap year
    "주민번호 300101-3123456",  # born in 2030: the future
    "주민번호 900101-9234567",  # sex digit 9 (born in the 1800s): not counted
    "바코드 8801234567890",  # month 12, day 34
    "2019082702943",  # a petition number: month 19
    "3.9001011234567",  # digits after a decimal point
    "031-1234",  # too short for a phone
    "제0조 ① 031) 이하 생략",
    "김성열은 2::8 3::7 얼굴",  # a score, not IPv6
    "재밌음0.0.0.0",
    "평점 10.0.0",
    "제1조 ① 대한민국은 민주공화국이다.",
    "이메일 주소 없이 골뱅이(@)만 있는 문장",
    "3,000명 중 1,234명",
]


@pytest.mark.parametrize("text", UNTOUCHED)
def test_look_alikes_are_not_touched(text):
    assert scrub_pii(text) == text
    assert find_pii(text) == []


def test_several_kinds_in_one_text_and_custom_placeholder():
    text = "(02-788-4649, tanzania@assembly.go.kr) 담당: 010-1111-2222, 웹 https://assembly.go.kr"
    counts: dict[str, int] = {}
    assert scrub_pii(text, counts=counts) == "(<PHONE>, <EMAIL>) 담당: <PHONE>, 웹 <URL>"
    assert counts == {"phone": 2, "email": 1, "url": 1}
    assert scrub_pii("010-1234-5678", placeholder="[{kind}]") == "[PHONE]"
    assert scrub_pii("010-1234-5678", placeholder="") == ""
    assert placeholders() == ("<URL>", "<EMAIL>", "<RRN>", "<CARD>", "<PHONE>", "<IP>")


def test_url_with_email_inside_counts_once():
    counts: dict[str, int] = {}
    assert scrub_pii("mailto 링크 https://a.kr/?to=kim@a.kr 끝", counts=counts) == "mailto 링크 <URL> 끝"
    assert counts == {"url": 1}


def test_luhn_and_rrn_check_digit():
    assert luhn_valid("4111111111111111") and luhn_valid("378282246310005")
    assert not luhn_valid("4111111111111112")
    assert rrn_checksum_ok("9001011234568") and not rrn_checksum_ok("9001011234567")


def test_text_without_digits_or_at_skips_the_regexes():
    text = "숫자도 골뱅이도 없는 평범한 문장입니다"
    assert scrub_pii(text) is text


def test_full_width_text_around_a_match_keeps_its_characters():
    text = "연락처：０１０－１２３４－５６７８，메일 ｈｏｎｇ＠ｎａｖｅｒ．ｃｏｍ（사무실）"
    counts: dict[str, int] = {}
    assert scrub_pii(text, counts=counts) == "연락처：<PHONE>，메일 <EMAIL>（사무실）"
    assert counts == {"phone": 1, "email": 1}
    # characters that NFKC expands (… ㈜ ℡) are left as they are: the view keeps the length
    assert scrub_pii("㈜한국… ℡ ０２－１２３－４５６７") == "㈜한국… ℡ <PHONE>"
    assert fold_width("０１０．＠Ａ①") == "010.@A1" and len(fold_width("㈜…")) == 2


def test_rrn_birth_date():
    assert rrn_birth_date("900101", "1") == datetime.date(1990, 1, 1)
    assert rrn_birth_date("900101", "6") == datetime.date(1990, 1, 1)  # foreigner, 1900s
    assert rrn_birth_date("200229", "4") == datetime.date(2020, 2, 29)
    assert rrn_birth_date("210229", "4") is None and rrn_birth_date("901301", "1") is None
    assert rrn_birth_date("900101", "9") is None and rrn_birth_date("900101", "0") is None
    assert rrn_birth_date("990101", "3") is None  # 2099: not born yet


_FULL_WIDTH = {c: chr(ord(c) + 0xFEE0) for c in "0123456789@.-()abcdefghijklmnopqrstuvwxyz"}
_PIECES = st.sampled_from(["010-1234-5678", "031)123-4567", "(02) 788-4649", "900101-1234567",
                           "hong@naver.com", "https://a.kr/x", "4111-1111-1111-1111", "192.168.10.20",
                           "1,234,567원", "2020-01-15", " ", "은", "의 ", "전화", "：", "，", "…", "㈜", "\n"])


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_PIECES, st.lists(st.booleans(), min_size=20, max_size=20)), max_size=12))
def test_scrubbing_commutes_with_width_folding(parts):
    """Detection on the folded view means a full-width spelling is scrubbed exactly
    where its ASCII spelling is, and nothing else in the text changes."""
    text = "".join("".join(_FULL_WIDTH.get(c, c) if wide[i % 20] else c for i, c in enumerate(piece))
                   for piece, wide in parts)
    assert fold_width(scrub_pii(text)) == scrub_pii(fold_width(text))
    assert [k for k, _ in find_pii(text)] == [k for k, _ in find_pii(fold_width(text))]
    assert len(fold_width(text)) == len(text)
