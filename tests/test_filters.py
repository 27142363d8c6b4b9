"""Normalization extras and quality filters, with Korean examples."""

from __future__ import annotations

import pytest

from korlm.clean.filters import (
    DEFAULT_BOILERPLATE_PATTERNS,
    compile_patterns,
    digit_ratio,
    duplicate_line_fraction,
    duplicate_ngram_fraction,
    hangul_ratio,
    is_boilerplate,
    repetition_reason,
    symbol_ratio,
    top_ngram_fraction,
)
from korlm.clean.text import (
    cap_repeats,
    normalize_extras,
    remove_emoji,
    remove_foreign_scripts,
    remove_hanja,
)

# ---------------------------------------------------------------- normalization extras


def test_cap_repeats():
    assert cap_repeats("ㅋㅋㅋㅋㅋㅋ 진짜!!!!! 웃겨ㅠㅠㅠㅠ....", 2) == "ㅋㅋ 진짜!! 웃겨ㅠㅠ.."
    assert cap_repeats("ㅋㅋㅋㅋ", 3) == "ㅋㅋㅋ"
    assert cap_repeats("ㅋㅋ 좋아", 2) == "ㅋㅋ 좋아"
    assert cap_repeats("1,000,000원 10000명", 2) == "1,000,000원 10000명"  # digits never capped
    assert cap_repeats("ㅋㅋㅋㅋ", 0) == "ㅋㅋㅋㅋ"


def test_remove_emoji_keeps_korean_text_symbols():
    assert remove_emoji("좋아요😀👍🏻 최고❤️✨") == "좋아요 최고"
    assert remove_emoji("별점 ★★★☆☆ 사랑해♡ ♪ ※참고") == "별점 ★★★☆☆ 사랑해♡ ♪ ※참고"


def test_remove_hanja_and_foreign_scripts():
    assert remove_hanja("大韓民國 대한민국 憲法") == " 대한민국 "
    assert remove_foreign_scripts("안녕 こんにちは привет hello 大韓") == "안녕   hello 大韓"
    assert remove_foreign_scripts("大韓 대한", keep_hanja=False) == " 대한"


def test_normalize_extras_order_and_whitespace():
    text = "좋아요 😀😀 大韓 ㅋㅋㅋㅋ"
    assert normalize_extras(text, max_repeat=2, emoji=True, hanja=True) == "좋아요 ㅋㅋ"
    assert normalize_extras(text) == text


# ---------------------------------------------------------------- ratios


def test_hangul_ratio():
    assert hangul_ratio("오늘 날씨가 좋다") == 1.0
    assert hangul_ratio("One of my favorite films") == 0.0
    assert hangul_ratio("ㅋㅋ 굿") == 1.0  # jamo count as Hangul
    assert hangul_ratio("2020. 11. 12.") == 1.0  # no letters, no evidence
    assert hangul_ratio("I am your father .. ㅎㄷㄷ 진짜") == pytest.approx(5 / 18)


def test_symbol_and_digit_ratios():
    assert symbol_ratio("~!~!!~~!") == 1.0
    assert symbol_ratio("좋은 영화입니다.") == pytest.approx(1 / 8)
    assert symbol_ratio("") == 0.0
    assert digit_ratio("1010101010") == 1.0
    assert digit_ratio("2019년 4월") == pytest.approx(5 / 7)
    assert digit_ratio("숫자 없음") == 0.0


# ---------------------------------------------------------------- repetition (Gopher)


def test_duplicate_lines():
    assert duplicate_line_fraction(["가", "나", "가", "가"]) == (0.5, 0.5)
    assert duplicate_line_fraction([]) == (0.0, 0.0)
    spam = "\n".join(["오늘의 특가 상품 안내"] * 4 + ["본문 한 줄입니다"])
    assert repetition_reason(spam) == "repeated_lines"


def test_ngram_fractions():
    words = "사랑해 사랑해 사랑해 사랑해 정말".split()
    assert top_ngram_fraction(words, 2) == pytest.approx(3 * 6 / 14)
    assert top_ngram_fraction("가 나 다 라".split(), 2) == 0.0
    assert duplicate_ngram_fraction("가 나 다 가 나 다".split(), 3) == 1.0
    assert duplicate_ngram_fraction("가 나 다 라 마 바".split(), 3) == 0.0


def test_repetition_spares_short_reviews_and_normal_prose():
    review = "이 영화를 열심히 보았다면 이 영화가 헌정 영화라는 것을 알 수 있다. 하지만 이 영화를 제대로 보았다면 알 수 있다."
    assert repetition_reason(review) is None  # under repetition min_words
    prose = ("국민건강보험 공단 고객센터 상담사 입니다. 문재인 정부가 출범 하면서 1호 정책으로 내세운 일자리 "
             "정책이라는 기사와 고객센터 상담사가 정규직이 된다는 기사를 보고 기대를 많이 했습니다. 타 공공기관 "
             "상담사 들이 정규직으로 전환되는 것을 지켜보며 기대감 뿐 아니라 관심도도 상승하게 되었습니다. 그러나 "
             "건강보험 공단의 고객센터 상담사는 계속 정규직 전환은 여전히 차일피일 미뤄지고 있습니다.")
    assert len(prose.split()) >= 50
    assert repetition_reason(prose) is None
    spam = " ".join(["지금 바로 클릭 하세요 최저가 보장"] * 10)
    assert repetition_reason(spam) == "repeated_ngrams"


# ---------------------------------------------------------------- boilerplate


BOILERPLATE = [
    "<저작권자 ⓒ 연합뉴스, 무단 전재-재배포 금지>",
    "무단전재 및 재배포 금지",
    "무단 전재 및 재배포를 금합니다.",
    "ⓒ 한겨레신문사",
    "Copyright © 2024 Korea Herald. All rights reserved.",
    "홍길동 기자 <EMAIL>",
    "김철수 기자 kim@news.co.kr",
    "[서울=뉴시스] 홍길동 기자",
    "기사원문 보기",
    "▶ 관련기사 바로가기",
    "광고문의 02-000-0000",
    "구독과 좋아요 부탁드립니다",
]
NOT_BOILERPLATE = [
    "기자회견에서 대통령은 이렇게 말했다.",
    "그는 10년 동안 기자로 일했다.",
    "저작권법 제1조는 목적을 정한다.",
    "광고가 너무 많아서 영화 보기가 힘들었다.",
    "무단횡단은 위험합니다.",
]


@pytest.mark.parametrize("sentence", BOILERPLATE)
def test_boilerplate_defaults_match(sentence):
    assert is_boilerplate(sentence, compile_patterns(DEFAULT_BOILERPLATE_PATTERNS))


@pytest.mark.parametrize("sentence", NOT_BOILERPLATE)
def test_boilerplate_defaults_spare_prose(sentence):
    assert not is_boilerplate(sentence, compile_patterns(DEFAULT_BOILERPLATE_PATTERNS))


def test_boilerplate_custom_and_empty_lists():
    assert compile_patterns([]) is None and not is_boilerplate("무단전재 및 재배포 금지", None)
    assert is_boilerplate("협찬 받은 글입니다", compile_patterns([r"협찬\s*받"]))


# ---------------------------------------------------------------- the filter entries


def test_a_filter_is_one_entry_whose_reason_is_counted():
    """The cleaner iterates the entries in order; each entry's reason is what a rejected
    document or dropped sentence is counted under in stats.json (and the Beam counter)."""
    from korlm.clean import cleaner
    from korlm.clean.beam import REJECTION_REASONS, SENTENCE_DROP_REASONS

    documents = [f.reason for f in cleaner.DOCUMENT_FILTERS]
    assert documents == ["too_short_document", "low_hangul_ratio", "high_symbol_ratio",
                         "high_digit_ratio", "repeated_lines", "repeated_ngrams"]
    start = REJECTION_REASONS.index(documents[0])
    assert list(REJECTION_REASONS[start:start + len(documents)]) == documents
    assert set(f.reason for f in cleaner.SENTENCE_FILTERS) < set(SENTENCE_DROP_REASONS)
    assert len({f.name for f in (*cleaner.DOCUMENT_FILTERS, *cleaner.SENTENCE_FILTERS)}) == 12


def test_an_added_filter_rejects_under_its_own_reason(monkeypatch):
    from korlm.clean import cleaner

    no_ascii = cleaner.Filter("no_latin", "latin_letters",
                              lambda c, text, measured: any("a" <= ch.lower() <= "z" for ch in measured))
    monkeypatch.setattr(cleaner, "DOCUMENT_FILTERS", (*cleaner.DOCUMENT_FILTERS, no_ascii))
    documents = cleaner.DocumentCleaner(cleaner.clean_settings(sentence_splitter="regex"))
    results = documents.clean_batch([(1, "오늘은 날씨가 정말 좋아서 산책을 했다. 기분이 좋았다."),
                                     (2, "오늘은 날씨가 좋아서 walk 를 했다. 기분이 좋았다.")])
    assert [r["reason"] for r in results] == [None, "latin_letters"]


def test_repetition_rules_split_into_lines_and_ngrams():
    from korlm.clean.filters import has_repeated_lines, has_repeated_ngrams

    spam = "\n".join(["지금 바로 클릭하세요"] * 5 + ["다른 줄"])
    assert has_repeated_lines(spam) and repetition_reason(spam) == "repeated_lines"
    words = " ".join(["좋아요 최고 영화"] * 30)
    assert not has_repeated_lines(words) and has_repeated_ngrams(words)
    assert not has_repeated_ngrams(words, min_words=1000)
