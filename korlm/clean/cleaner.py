"""The clean step's per-document work as plain Python (no Beam): normalize, scrub PII,
the optional normalizations, the document filters, the sentence split and the sentence
filters, with the rejection reason of each. The Beam DoFn (``korlm.clean.beam``), the
single-process loop of ``korlm clean --dry-run`` and the throughput benchmark run this
same code. Settings are the run config's ``clean:`` section (``korlm.config.CleanSection``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from korlm.clean.dedup import DedupKeys
from korlm.clean.filters import (
    DEFAULT_BOILERPLATE_PATTERNS,
    compile_patterns,
    count_eojeol,
    digit_ratio,
    hangul_ratio,
    has_repeated_lines,
    has_repeated_ngrams,
    is_boilerplate,
    symbol_ratio,
)
from korlm.clean.pii import placeholders, scrub_pii
from korlm.clean.text import normalize_extras, normalize_text, split_sentences_regex
from korlm.config import CleanSection, describe_error
from korlm.errors import KorlmError

# Document rejection reasons, in the order the filters run.
EMPTY_AFTER_NORMALIZATION = "empty_after_normalization"
TOO_SHORT_DOCUMENT = "too_short_document"
TOO_LONG_DOCUMENT = "too_long_document"
LOW_HANGUL_RATIO = "low_hangul_ratio"
HIGH_SYMBOL_RATIO = "high_symbol_ratio"
HIGH_DIGIT_RATIO = "high_digit_ratio"
REPEATED_LINES = "repeated_lines"
REPEATED_NGRAMS = "repeated_ngrams"
NO_SENTENCES_LEFT = "no_sentences_left"


# Sentence drop reasons (the document survives if any sentence is left).
BOILERPLATE_SENTENCE = "boilerplate_sentence"
PII_SENTENCE = "pii_sentence"
SENTENCE_TOO_SHORT = "sentence_too_short"
SENTENCE_TOO_LONG = "sentence_too_long"


# One schema for the clean step's options: the run config's ``clean:`` section (its
# defaults, bounds and descriptions live in ``korlm.config.CleanSection`` only).
CleanSettings = CleanSection
_NOT_SETTINGS = frozenset({"inputs", "beam_options"})


def clean_settings(**options: Any) -> CleanSettings:
    """Validated settings from keyword options (``None`` = the default), with a one-line
    KorlmError naming the option for an unknown name or a bad value."""
    unknown = sorted(set(options) - (set(CleanSection.model_fields) - _NOT_SETTINGS))
    if unknown:
        raise KorlmError(f"unknown clean option(s): {', '.join(unknown)}")
    try:
        return CleanSection.model_validate({k: v for k, v in options.items() if v is not None})
    except ValidationError as exc:
        raise KorlmError("clean options: " + "; ".join(
            describe_error({**e, "loc": ("clean", *e["loc"])}) for e in exc.errors())) from None


def boilerplate_patterns(settings: CleanSettings) -> tuple[str, ...]:
    """The configured boilerplate regexes; ``None`` means the Korean defaults, ``[]`` none."""
    if settings.boilerplate_patterns is None:
        return DEFAULT_BOILERPLATE_PATTERNS
    return tuple(settings.boilerplate_patterns)


def dedup_keys(settings: CleanSettings) -> DedupKeys:
    return DedupKeys(documents=settings.dedup_documents, sentences=settings.dedup_sentences,
                     sentence_min_chars=settings.dedup_sentence_min_chars, near=settings.near_dedup,
                     near_threshold=settings.near_dedup_threshold,
                     near_num_perm=settings.near_dedup_num_perm,
                     near_shingle_size=settings.near_dedup_shingle_size,
                     near_min_words=settings.near_dedup_min_words)


class SentenceSplitter:
    """Split normalized documents (paragraphs joined by ``\\n``) into sentences.

    ``kiwi``: kiwipiepy's ``Kiwi.split_into_sents`` on every paragraph, batched.
    ``regex``: terminal punctuation followed by a space (fast, no model, cruder).
    ``line``: each paragraph is one sentence (for corpora already one sentence a line).
    """

    def __init__(self, method: str):
        self.method = method
        self._kiwi = None
        if method == "kiwi":
            from kiwipiepy import Kiwi

            # One analysis thread: the runner already runs a DoFn per core. (0 threads
            # would be Kiwi's synchronous mode, which refuses batched input.)
            self._kiwi = Kiwi(num_workers=1)
            self._kiwi.split_into_sents("초기화.")  # load the model now, not on the first batch

    def split(self, documents: list[str]) -> list[list[str]]:
        paragraphs = [doc.split("\n") for doc in documents]
        if self.method == "regex":
            return [[s for p in doc for s in split_sentences_regex(p)] for doc in paragraphs]
        if self._kiwi is None:
            return paragraphs
        flat = [p for doc in paragraphs for p in doc]
        split = self._kiwi.split_into_sents(flat, return_tokens=False, return_sub_sents=False)
        per_paragraph = [[s.text.strip() for s in sents] for sents in split]
        out: list[list[str]] = []
        i = 0
        for doc in paragraphs:
            sentences = [s for p in per_paragraph[i : i + len(doc)] for s in p if s]
            out.append(sentences)
            i += len(doc)
        return out


def add_count(counts: dict[str, int], key: str, n: int = 1) -> None:
    counts[key] = counts.get(key, 0) + n


class DocumentCleaner:
    """Every per-document step of clean, as plain Python (no Beam).

    ``clean_batch`` takes ``[(line, raw text)]`` and returns one result per record:
    ``{"line", "reason", "text", "dropped", "pii"}`` for a rejection, or ``{"line",
    "reason": None, "normalized", "sentences", "dropped", "pii"}`` for a survivor.
    ``dropped`` counts dropped sentences by reason, ``pii`` scrubbed spans by kind.
    """

    def __init__(self, settings: CleanSettings):
        self.s = settings
        self.splitter = SentenceSplitter(settings.sentence_splitter)
        self.boilerplate = compile_patterns(boilerplate_patterns(settings))
        self.placeholders = placeholders(settings.pii_placeholder)

    def _strip_placeholders(self, text: str) -> str:
        for ph in self.placeholders:
            text = text.replace(ph, " ")
        return text

    def document_reason(self, text: str, scrubbed: bool) -> str | None:
        """The reason of the first document filter ``text`` fails, or None."""
        # ratios are measured without the PII placeholders the scrubber put in
        measured = self._strip_placeholders(text) if scrubbed else text
        for f in DOCUMENT_FILTERS:
            if f.rejects(self, text, measured):
                return f.reason
        return None

    def sentence_reason(self, sentence: str) -> str | None:
        """The reason of the first sentence filter ``sentence`` fails, or None."""
        for f in SENTENCE_FILTERS:
            if f.rejects(self, sentence):
                return f.reason
        return None

    def clean_batch(self, records: list[tuple[int, str]]) -> list[dict[str, Any]]:
        s = self.s
        results: list[dict[str, Any]] = []
        survivors: list[dict[str, Any]] = []
        for line, raw in records:
            pii: dict[str, int] = {}
            text = normalize_text(raw, s.normalization)
            if len(text) > s.max_document_chars:
                # before the regexes and the splitter: a 10 MB line costs Kiwi minutes
                results.append({"line": line, "reason": TOO_LONG_DOCUMENT, "text": text,
                                "dropped": {}, "pii": pii})
                continue
            if text and s.pii != "off":
                text = scrub_pii(text, s.pii_placeholder, counts=pii)
            if text:
                text = normalize_extras(text, max_repeat=s.max_repeat, emoji=s.remove_emoji,
                                        hanja=s.remove_hanja, foreign_scripts=s.remove_foreign_scripts)
            reason = EMPTY_AFTER_NORMALIZATION if not text else self.document_reason(text, bool(pii))
            result = {"line": line, "reason": reason, "text": text or raw, "dropped": {}, "pii": pii}
            results.append(result)
            if reason is None:
                survivors.append(result)
        if survivors:
            split = self.splitter.split([r["text"] for r in survivors])
            for result, sentences in zip(survivors, split, strict=True):
                kept = []
                for sentence in sentences:
                    why = self.sentence_reason(sentence)
                    if why is None:
                        kept.append(sentence)
                    else:
                        add_count(result["dropped"], why)
                if kept:
                    result["normalized"] = result.pop("text")
                    result["sentences"] = kept
                else:
                    result["reason"] = NO_SENTENCES_LEFT
        return results


@dataclass(frozen=True)
class Filter:
    """One cleaning filter: ``name`` says what it measures, ``reason`` is the rejection
    reason (document filters) or dropped-sentence reason (sentence filters) it gives, and
    so the stats.json key and the Beam counter (namespace ``korlm.clean``) that count it;
    ``rejects`` decides: ``(cleaner, text, measured)`` for a document (``measured``: the
    text without PII placeholders), ``(cleaner, sentence)`` for a sentence. A new filter
    is one entry here (and its function in ``korlm.clean.filters``)."""

    name: str
    reason: str
    rejects: Callable[..., bool]


def _eojeol_judged(s: CleanSettings, sentence: str) -> bool:
    # counting eojeol costs a split: only when a bound can bite
    return s.min_sentence_eojeol > 1 or s.max_sentence_eojeol < len(sentence)


# Document filters, in the order they run (after normalization, the length cap and PII
# scrubbing; a document's reason is its first failed filter).
DOCUMENT_FILTERS = (
    Filter("min_document_chars", TOO_SHORT_DOCUMENT,
           lambda c, text, measured: len(text) < c.s.min_document_chars),
    Filter("hangul_ratio", LOW_HANGUL_RATIO,
           lambda c, text, measured: c.s.min_hangul_ratio > 0 and hangul_ratio(measured) < c.s.min_hangul_ratio),
    Filter("symbol_ratio", HIGH_SYMBOL_RATIO,
           lambda c, text, measured: c.s.max_symbol_ratio < 1 and symbol_ratio(measured) > c.s.max_symbol_ratio),
    Filter("digit_ratio", HIGH_DIGIT_RATIO,
           lambda c, text, measured: c.s.max_digit_ratio < 1 and digit_ratio(measured) > c.s.max_digit_ratio),
    Filter("gopher_duplicate_lines", REPEATED_LINES,
           lambda c, text, measured: c.s.repetition_filter and has_repeated_lines(
               text, max_duplicate_line_fraction=c.s.max_duplicate_line_fraction,
               max_duplicate_line_char_fraction=c.s.max_duplicate_line_char_fraction)),
    Filter("gopher_ngrams", REPEATED_NGRAMS,
           lambda c, text, measured: c.s.repetition_filter and has_repeated_ngrams(
               text, min_words=c.s.repetition_min_words)),
)
# Sentence filters, in the order they run on each sentence of a surviving document.
SENTENCE_FILTERS = (
    Filter("boilerplate", BOILERPLATE_SENTENCE,
           lambda c, sentence: is_boilerplate(sentence, c.boilerplate)),
    Filter("pii_sentence", PII_SENTENCE,
           lambda c, sentence: c.s.pii == "drop_sentence" and any(ph in sentence for ph in c.placeholders)),
    Filter("min_sentence_chars", SENTENCE_TOO_SHORT,
           lambda c, sentence: len(sentence) < c.s.min_sentence_chars),
    Filter("max_sentence_chars", SENTENCE_TOO_LONG,
           lambda c, sentence: len(sentence) > c.s.max_sentence_chars),
    Filter("min_sentence_eojeol", SENTENCE_TOO_SHORT,
           lambda c, sentence: _eojeol_judged(c.s, sentence) and count_eojeol(sentence) < c.s.min_sentence_eojeol),
    Filter("max_sentence_eojeol", SENTENCE_TOO_LONG,
           lambda c, sentence: _eojeol_judged(c.s, sentence) and count_eojeol(sentence) > c.s.max_sentence_eojeol),
)
