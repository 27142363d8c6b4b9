"""EDA-style data augmentation (Wei & Zou 2019) for small fine-tuning sets, over Korean
morphemes.

``augment_task_data(train, seed=..., method="eda", num_aug=4, ...)`` keeps every original
row and adds ``num_aug`` edited copies of it (labels, ids and groups copied; ids get a
``#augK`` suffix). Each copy gets exactly one of the four EDA operations, drawn as in the
reference implementation (the enabled operations repeated, shuffled, cut to
``num_aug``). The text is analysed with Kiwi (:mod:`korlm.tokenizer.morpheme`'s shared instance);
the operations touch **content morphemes** only and keep the grammatical skeleton:

* content morphemes: nouns (NNG, NNP), verb and adjective stems (VV, VA), adverbs (MAG)
  and roots (XR). Particles (J*), endings (E*), suffixes (X*), copula, auxiliaries,
  numbers and symbols are never replaced, inserted, swapped or deleted on their own.
* polarity is protected: negation adverbs (안, 못, 별로, 전혀, 결코, 절대) and stems
  ending in 없 (없다, 재미없다...) are never edited, so an edit cannot turn "안 좋다" into
  "좋다".
* synonym replacement (SR, ``alpha_sr``): up to ``max(1, int(alpha_sr * n))`` distinct
  nouns (``n`` = content morphemes of the text) are replaced, every occurrence, by a
  synonym from the Korean WordNet that ``koeda`` ships (see :func:`noun_synonyms`); the
  particles after them stay and are re-joined with Kiwi's ``join``, which picks the
  right allomorph (사람은 → 인간은, 영화가 → 시네마가).
* random insertion (RI, ``alpha_ri``): ``max(1, int(alpha_ri * n))`` times, a synonym of
  a random noun of the text is inserted as a bare word at a random word boundary.
* random swap (RS, ``alpha_rs``): ``max(1, int(alpha_rs * n))`` times, two content
  morphemes of the same group (noun with noun, verb with verb, adjective with
  adjective, adverb with adverb, root with root) trade places; their particles and
  endings stay where they were and are re-joined (먹었다 ↔ 갔다 conjugate correctly).
* random deletion (RD, ``p_rd``): each *argument or adverb word* (an eojeol that starts
  with a noun or adverb and has no verb, adjective or copula in it) is dropped with
  probability ``p_rd``, together with its particles (a particle alone is not Korean);
  predicate words stay, so the sentence keeps its verb and its polarity. A copy left
  empty is the original.

Edited words are rebuilt with ``Kiwi.join`` (morphemes of one word joined without
spaces); untouched words keep their original surface text, so the output is readable
Korean with the original spacing. A copy where the drawn operation finds nothing to do
(no noun with a synonym, one content morpheme, nothing deletable) equals its original;
the count of such copies is logged, never hidden.

Pair tasks: by default (``pair_side="alternate"``) each copy edits exactly one side,
``text_a`` for even copies and ``text_b`` for odd ones, so a pair never has both sides
perturbed at once (an edit that changes meaning on both sides is the likeliest way to
break an NLI or similarity label); ``"a"``, ``"b"`` or ``"both"`` choose otherwise.
Extractive QA is refused: editing a context moves the answer offsets.

Everything is deterministic for a seed: each (row, copy, side) gets its own
``random.Random`` seeded from ``(seed, row, copy, side)``.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import math
import random
import threading
from dataclasses import dataclass, field
from typing import Any

from korlm.errors import KorlmError
from korlm.evaluation.tasks import TaskData

log = logging.getLogger(__name__)

METHODS = ("eda",)
PAIR_SIDES = ("alternate", "a", "b", "both")
OPERATIONS = ("sr", "ri", "rs", "rd")
# The synonym source: koeda's bundled Korean WordNet (installed with --no-deps; only its
# data file is read, koeda's own code, which needs konlpy and Java, is never imported).
SYNONYM_PACKAGE = "koeda"
SYNONYM_PIN = "koeda==0.0.4"
_WORDNET_FILE = "koeda/corpora/wordnet.json"

# Content-morpheme groups (Kiwi tags without the -R/-I conjugation suffix); a swap stays
# inside one group.
_GROUP = {"NNG": "noun", "NNP": "noun", "VV": "verb", "VA": "adjective", "MAG": "adverb",
          "XR": "root"}
_NOUN_TAGS = ("NNG", "NNP")
# A word with any of these is a predicate: random deletion keeps it.
_PREDICATE_TAGS = ("VV", "VA", "VX", "VCP", "VCN", "XSV", "XSA")
_NEGATIONS = frozenset({"안", "못", "별로", "전혀", "결코", "절대", "아니", "않", "안되"})


def _base(tag: str) -> str:
    return tag.split("-", 1)[0]


def _protected(form: str) -> bool:
    return form in _NEGATIONS or form.endswith("없")


# ---------------------------------------------------------------- synonyms


_SYN_LOCK = threading.Lock()
_SYNONYMS: dict[str, tuple[str, ...]] | None = None


def _is_hangul_word(word: str) -> bool:
    return len(word) >= 2 and all("\uac00" <= ch <= "\ud7a3" for ch in word)


def _wordnet_path() -> str:
    try:
        dist = importlib.metadata.distribution(SYNONYM_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise KorlmError(
            "synonym replacement and random insertion need the Korean WordNet of "
            f"'{SYNONYM_PACKAGE}': pip install --no-deps {SYNONYM_PIN} "
            "(or set alpha_sr and alpha_ri to 0)") from None
    path = dist.locate_file(_WORDNET_FILE)
    if not path.is_file():
        raise KorlmError(f"{SYNONYM_PACKAGE} {dist.version} has no {_WORDNET_FILE}; "
                         f"install {SYNONYM_PIN}")
    return str(path)


def noun_synonyms() -> dict[str, tuple[str, ...]]:
    """Noun -> its WordNet synonyms: the union of the lemmas of every noun synset the
    noun belongs to (no sense disambiguation, as in EDA), Hangul words of two syllables
    or more only (one-syllable lemmas are mostly homograph noise: 영화 → 부)."""
    global _SYNONYMS
    with _SYN_LOCK:
        if _SYNONYMS is None:
            with open(_wordnet_path(), encoding="utf-8") as f:
                wordnet = json.load(f)
            synsets = wordnet["synsets"]
            table: dict[str, tuple[str, ...]] = {}
            for lemma, ids in wordnet["lemmas"].items():
                if not _is_hangul_word(lemma):
                    continue
                found: set[str] = set()
                for sid in ids:
                    entry = synsets.get(sid) or {}
                    if "Noun" in entry.get("pos", ()):
                        found.update(w for w in entry.get("lemmas", ()) if _is_hangul_word(w))
                found.discard(lemma)
                if found:
                    table[lemma] = tuple(sorted(found))
            _SYNONYMS = table
        return _SYNONYMS


# ---------------------------------------------------------------- one text


@dataclass
class _Word:
    """One eojeol: its surface text and its morphemes as (form, tag)."""

    surface: str
    morphs: list[tuple[str, str]]
    edited: bool = False


@dataclass
class _Text:
    words: list[_Word] = field(default_factory=list)

    def content(self) -> list[tuple[int, int]]:
        """(word, morpheme) positions of the editable content morphemes."""
        return [(w, m) for w, word in enumerate(self.words)
                for m, (form, tag) in enumerate(word.morphs)
                if _base(tag) in _GROUP and not _protected(form)]

    def render(self, kiwi) -> str:
        out = []
        for word in self.words:
            if not word.edited:
                out.append(word.surface)
            elif word.morphs:
                out.append(kiwi.join([word.morphs[0]] + [(f, t, False) for f, t in word.morphs[1:]]))
        return " ".join(out)


def _analyse(text: str, tokens) -> _Text:
    words = []
    pos = 0
    for surface in text.split():
        start = text.index(surface, pos)
        end = pos = start + len(surface)
        morphs = [(t.form, t.tag) for t in tokens if start <= t.start < end]
        words.append(_Word(surface, morphs or [(surface, "UNK")]))
    return _Text(words)


def _synonym_replacement(text: _Text, rng: random.Random, alpha: float) -> bool:
    synonyms = noun_synonyms()
    content = text.content()
    n = max(1, int(alpha * len(content)))
    nouns = sorted({text.words[w].morphs[m][0] for w, m in content
                    if _base(text.words[w].morphs[m][1]) in _NOUN_TAGS
                    and text.words[w].morphs[m][0] in synonyms})
    rng.shuffle(nouns)
    for noun in nouns[:n]:
        replacement = rng.choice(synonyms[noun])
        for w, m in content:
            form, tag = text.words[w].morphs[m]
            if form == noun and _base(tag) in _NOUN_TAGS:
                text.words[w].morphs[m] = (replacement, tag)
                text.words[w].edited = True
    return bool(nouns)


def _random_insertion(text: _Text, rng: random.Random, alpha: float) -> bool:
    synonyms = noun_synonyms()
    content = text.content()
    nouns = [text.words[w].morphs[m][0] for w, m in content
             if _base(text.words[w].morphs[m][1]) in _NOUN_TAGS
             and text.words[w].morphs[m][0] in synonyms]
    if not nouns:
        return False
    for _ in range(max(1, int(alpha * len(content)))):
        word = rng.choice(synonyms[rng.choice(nouns)])
        text.words.insert(rng.randint(0, len(text.words)), _Word(word, [(word, "NNG")]))
    return True


def _random_swap(text: _Text, rng: random.Random, alpha: float) -> bool:
    content = text.content()
    if len(content) < 2:
        return False
    swapped = False
    for _ in range(max(1, int(alpha * len(content)))):
        for _attempt in range(3):  # as EDA: a few tries to find a partner
            w1, m1 = rng.choice(content)
            a = text.words[w1].morphs[m1]
            partners = [(w, m) for w, m in content
                        if _GROUP[_base(text.words[w].morphs[m][1])] == _GROUP[_base(a[1])]
                        and text.words[w].morphs[m][0] != a[0]]
            if partners:
                w2, m2 = rng.choice(partners)
                b = text.words[w2].morphs[m2]
                text.words[w1].morphs[m1], text.words[w2].morphs[m2] = b, a
                text.words[w1].edited = text.words[w2].edited = True
                swapped = True
                break
    return swapped


def _deletable(word: _Word) -> bool:
    form, tag = word.morphs[0]
    return (_base(tag) in ("NNG", "NNP", "MAG") and not _protected(form)
            and not any(_base(t) in _PREDICATE_TAGS or _protected(f) for f, t in word.morphs))


def _random_deletion(text: _Text, rng: random.Random, p: float) -> bool:
    kept = [word for word in text.words if not (_deletable(word) and rng.random() < p)]
    if len(kept) == len(text.words) or not kept:
        return False
    text.words = kept
    return True


_OPERATIONS = {"sr": _synonym_replacement, "ri": _random_insertion, "rs": _random_swap,
               "rd": _random_deletion}


# ---------------------------------------------------------------- task data


@dataclass
class AugmentStats:
    originals: int = 0
    copies: int = 0
    unchanged: int = 0  # copies equal to their original: the operation found nothing to do
    by_operation: dict[str, int] = field(default_factory=dict)


def _check(method: str, num_aug: Any, rates: dict[str, Any], pair_side: str) -> None:
    if method not in METHODS:
        raise KorlmError(f"unknown augmentation method {method!r}; choose one of {', '.join(METHODS)}")
    if not isinstance(num_aug, int) or isinstance(num_aug, bool) or num_aug < 1:
        raise KorlmError(f"augment num_aug must be an integer >= 1, got {num_aug!r}")
    for name, value in rates.items():
        if (not isinstance(value, int | float) or isinstance(value, bool)
                or not math.isfinite(value) or not 0 <= value <= 1):
            raise KorlmError(f"augment {name} must be a number in [0, 1], got {value!r}")
    if not any(rates.values()):
        raise KorlmError(f"augment: every rate ({', '.join(rates)}) is 0, so no operation "
                         "is enabled; set one above 0 or drop augmentation")
    if pair_side not in PAIR_SIDES:
        raise KorlmError(f"augment pair_side must be one of {', '.join(PAIR_SIDES)}, got {pair_side!r}")


def _is_qa(data: TaskData, spec) -> bool:
    if spec is not None and getattr(spec, "type", None) == "extractive-qa":
        return True
    return any(isinstance(label, list | dict | tuple) for label in data.labels)


def augment_task_data(data: TaskData, *, seed: int, method: str = "eda", num_aug: int = 4,
                      alpha_sr: float = 0.1, alpha_ri: float = 0.1, alpha_rs: float = 0.1,
                      p_rd: float = 0.1, pair_side: str = "alternate", spec=None,
                      stats: AugmentStats | None = None, **unknown) -> TaskData:
    """``data`` (a train split) with ``num_aug`` EDA copies after each original row:
    ``len(data) * (1 + num_aug)`` rows, labels copied. See the module docstring for the
    rules. ``spec`` (optional TaskSpec) only serves to refuse extractive QA by type;
    ``stats``, if given, is filled with the counts that are also logged."""
    if unknown:
        raise KorlmError(f"unknown augment setting(s): {', '.join(sorted(unknown))}; known: "
                         "method, num_aug, alpha_sr, alpha_ri, alpha_rs, p_rd, pair_side")
    rates = {"alpha_sr": alpha_sr, "alpha_ri": alpha_ri, "alpha_rs": alpha_rs, "p_rd": p_rd}
    _check(method, num_aug, rates, pair_side)
    if _is_qa(data, spec):
        raise KorlmError("data augmentation does not apply to extractive QA: editing a "
                         "question or context would move the answer offsets")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise KorlmError(f"augment seed must be an integer, got {seed!r}")
    enabled = [op for op, rate in zip(OPERATIONS, rates.values(), strict=True) if rate > 0]
    if {"sr", "ri"} & set(enabled):
        noun_synonyms()  # fail early, before any analysis, if the WordNet is missing

    pair = data.texts_b is not None
    n = len(data)
    # Which copies edit which side; the operation of each copy.
    plans: list[list[str]] = []
    for i in range(n):
        rng = random.Random(f"korlm-eda/{seed}/{i}")
        ops = enabled * math.ceil(num_aug / len(enabled))
        rng.shuffle(ops)
        plans.append(ops[:num_aug])

    def sides(k: int) -> tuple[str, ...]:
        if not pair:
            return ("a",)
        if pair_side == "alternate":
            return ("a",) if k % 2 == 0 else ("b",)
        return ("a", "b") if pair_side == "both" else (pair_side,)

    from korlm.tokenizer.morpheme import shared_kiwi

    kiwi = shared_kiwi()
    analysed_a = list(kiwi.tokenize(data.texts)) if n else []
    analysed_b = list(kiwi.tokenize(data.texts_b)) if pair and n else []
    rate_of = dict(zip(OPERATIONS, rates.values(), strict=True))
    stats = stats if stats is not None else AugmentStats()
    stats.originals += n

    out = TaskData([], [], [] if pair else None, [] if data.ids is not None else None,
                   [] if data.groups is not None else None)

    def emit(text_a: str, text_b: str | None, i: int, suffix: str) -> None:
        out.texts.append(text_a)
        out.labels.append(data.labels[i])
        if pair:
            out.texts_b.append(text_b)
        if data.ids is not None:
            out.ids.append(f"{data.ids[i]}{suffix}")
        if data.groups is not None:
            out.groups.append(data.groups[i])

    def edit(text: str, tokens, op: str, key: str) -> str:
        if not text.strip():
            return text
        rng = random.Random(f"korlm-eda/{seed}/{key}")
        parsed = _analyse(text, tokens)
        if not _OPERATIONS[op](parsed, rng, rate_of[op]):
            return text
        return parsed.render(kiwi) or text

    for i in range(n):
        emit(data.texts[i], data.texts_b[i] if pair else None, i, "")
        for k, op in enumerate(plans[i]):
            new_a = data.texts[i]
            new_b = data.texts_b[i] if pair else None
            for side in sides(k):
                if side == "a":
                    new_a = edit(new_a, analysed_a[i], op, f"{i}/{k}/a")
                else:
                    new_b = edit(new_b, analysed_b[i], op, f"{i}/{k}/b")
            emit(new_a, new_b, i, f"#aug{k + 1}")
            stats.copies += 1
            stats.by_operation[op] = stats.by_operation.get(op, 0) + 1
            if new_a == data.texts[i] and (not pair or new_b == data.texts_b[i]):
                stats.unchanged += 1
    log.info("augment (%s, seed %d): %d examples -> %d rows (%d copies each; %d copies equal "
             "their original: the drawn operation found nothing to edit)", method, seed, n,
             len(out), num_aug, stats.unchanged)
    return out
