"""Morpheme pre-tokenization with Kiwi (kiwipiepy), reversible to the original spacing.

Each eojeol (a whitespace-separated chunk) is cut at Kiwi's morpheme boundaries on the
*surface* text, using Kiwi's character offsets, so no analysis (lemma, restored
vowel) leaks into the text: ``갔다`` is analysed as 가/VV + 었/EP + 다/EF, whose first
two morphemes share the surface character ``갔``, so the cut falls only between ``갔``
and ``다``. The first piece of an eojeol is written as is, the following pieces with the
WordPiece continuation prefix ``##`` and all pieces joined by single spaces::

    "나는 학교에 갔다."  ->  "나 ##는 학교 ##에 갔 ##다 ##."

A WordPiece tokenizer that splits this only on whitespace reads a ``##`` piece as a
continuation (its first sub-token is looked up with the prefix), and the WordPiece
decoder glues ``##`` tokens to the previous one, so decoding restores the original
eojeol spacing. Runs of whitespace collapse to one space (as every tokenizer here does).

SentencePiece vocabs use another form: the word-initial ``▁`` already marks where an
eojeol starts, so morphemes inside an eojeol are joined by :data:`BOUNDARY`, a
private-use character that the tokenizer splits on and drops::

    "나는 학교에 갔다."  ->  "나\ue001는 학교\ue001에 갔\ue001다\ue001."

SentencePiece is trained with ``pretokenization_delimiter=BOUNDARY`` (no piece crosses
it) and ``tokenizer.json`` splits there after the ``▁`` split, so ``는`` is encoded as a
word-internal piece and the Metaspace decoder restores ``나는``.

The vocab step, the pretraining-data step and fine-tuning all call :func:`segment_batch`
(via ``korlm.tokenizer.tokenization.KorlmTokenizer.prepare``), so the three see identical text.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable

CONTINUATION = "##"
# Training marker: stands for "##" while the HF trainer counts words, because the trainer
# would otherwise split the literal "##" into punctuation symbols. A private-use char
# that never survives cleaning's normalisation.
TRAINING_MARK = "\ue000"
# Morpheme boundary inside an eojeol, for SentencePiece vocabs (removed from the input
# text first, so only segmentation puts it there).
BOUNDARY = "\ue001"
_EOJEOL = re.compile(r"\S+")
_LOCK = threading.Lock()
_KIWI = None


def kiwi_version() -> str:
    import kiwipiepy

    return kiwipiepy.__version__


def shared_kiwi():
    """The process's one Kiwi analyser, loaded on first use."""
    global _KIWI
    with _LOCK:
        if _KIWI is None:
            from kiwipiepy import Kiwi

            # One worker: Beam and the benchmark scale out with processes, and a
            # thread pool per process would oversubscribe the cores.
            _KIWI = Kiwi(num_workers=1)
        return _KIWI


def _cuts(tokens, start: int, end: int) -> list[int]:
    """Morpheme boundaries strictly inside [start, end) that no morpheme straddles."""
    bounds: set[int] = set()
    spans = []
    for token in tokens:
        t0, t1 = token.start, token.start + token.len
        if t1 <= start or t0 >= end:
            continue
        spans.append((t0, t1))
        bounds.update((t0, t1))
    return sorted(b for b in bounds if start < b < end and not any(t0 < b < t1 for t0, t1 in spans))


def split_eojeols(text: str, tokens) -> list[list[str]]:
    """``text`` as eojeols, each a list of its morpheme surface pieces (Kiwi ``tokens``)."""
    out = []
    for match in _EOJEOL.finditer(text):
        start, end = match.span()
        cuts = [start, *_cuts(tokens, start, end), end]
        out.append([text[a:b] for a, b in zip(cuts, cuts[1:], strict=False)])
    return out


def _join(eojeols: list[list[str]], mark: str) -> str:
    return " ".join(" ".join([pieces[0], *(mark + p for p in pieces[1:])]) for pieces in eojeols)


def _join_bounded(eojeols: list[list[str]], boundary: str) -> str:
    return " ".join(boundary.join(pieces) for pieces in eojeols)


def segment_batch(texts: Iterable[str], mark: str = CONTINUATION, boundary: str | None = None) -> list[str]:
    """Morpheme-segmented form of every text (see the module docstring).

    Default: WordPiece form, continuation morphemes as separate words prefixed ``mark``.
    With ``boundary`` (SentencePiece form): morphemes of an eojeol joined by ``boundary``,
    which is first removed from the input.
    """
    texts = list(texts)
    if not texts:
        return []
    if boundary is not None:
        texts = [t.replace(boundary, "") for t in texts]
    analysed = shared_kiwi().tokenize(texts)
    if boundary is not None:
        return [_join_bounded(split_eojeols(text, tokens), boundary)
                for text, tokens in zip(texts, analysed, strict=True)]
    return [_join(split_eojeols(text, tokens), mark) for text, tokens in zip(texts, analysed, strict=True)]


def segment(text: str, mark: str = CONTINUATION, boundary: str | None = None) -> str:
    return segment_batch([text], mark, boundary)[0]


def restore(segmented: str) -> str:
    """The original text (up to whitespace runs) from :func:`segment`'s output (either form)."""
    return re.sub(r" " + re.escape(CONTINUATION), "", segmented).replace(BOUNDARY, "")
