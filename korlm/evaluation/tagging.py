"""Token classification (named-entity recognition): tagged files, the alignment of word-
or character-level tags to subword tokens, the decoding of predicted tags back to
character spans of the original text, and KLUE-NER's scores.

An example is a text and its *units*, each a ``(start, end)`` character range of the
text with one tag: the words of a CoNLL-style file (joined by single spaces) or the
non-space characters of a KLUE-NER sentence. Tags follow the task's scheme, ``BIO``
(IOB2: ``B-PS I-PS O``) or ``BIOES`` (``S-`` a one-unit entity, ``E-`` its last unit).

Alignment (:func:`align`): a unit's tokens are those whose offsets overlap it; its
*head* is the first of them. A token heading several units (a WordPiece covering three
characters of a KLUE sentence) is trained on the first unit's tag (BIO) or the tag
that joins its units (BIOES: ``B I E`` -> ``S``), as the KLUE baseline takes "the first
character label for the token label". A unit split into several tokens trains only its
head (first-subword labelling, the default) or every token, the tag spread over them
(``label_all_subwords``: ``B-X`` -> ``B-X I-X``; BIOES ``S-X`` -> ``B-X E-X``); other
tokens are ignored by the loss. Predictions go back the same way: a head's tag spreads
over the units it heads (the first keeps it, the rest continue the entity: KLUE-
baseline's ``named_entity_recognition.py`` does this character by character), and in
all-subword mode a unit's tokens are joined back into one tag.

Units that get no token are predicted ``O`` and counted: those past ``max_seq_length``
(the sentence was truncated) and those the tokenizer drops. The counts go into
``metrics.json`` (``tagging``) and the split note, so a score that missed entities to
truncation says so. (KLUE-baseline instead drops the characters past the window from
the gold labels too.)

Scores (KLUE, Park et al. 2021, "KLUE: Korean Language Understanding Evaluation",
section on KLUE-NER; KLUE-baseline ``klue_baseline/metrics/functional.py``:
``klue_ner_entity_macro_f1`` and ``klue_ner_char_macro_f1``, read at commit 8a03c94):

- ``entity_f1``: entity-level macro F1 as ``seqeval.metrics.f1_score(average="macro",
  mode="strict", scheme=IOB2)`` computes it: an entity is ``B-X`` followed by every
  ``I-X`` (BIOES: ``S-X`` or ``B-X I-X* E-X``); ill-formed runs (a leading ``I-X``) are no
  entity; F1 per entity type over the types in gold or predictions, then their mean
  (a type never predicted scores 0);
- ``entity_micro_f1``: the same entities, pooled over types (CoNLL's and KoELECTRA's
  Naver-NER F1);
- ``char_f1``: character-level macro F1 as ``sklearn.metrics.f1_score(labels=every
  label, average="macro", zero_division=1)``: per label (``O`` included, as the code
  does although its docstring says "except O tag") F1 of the characters' tags, a label
  absent from both gold and predictions counting 1, then the mean. KLUE also scores the
  [CLS]/[SEP] positions as two ``O`` characters per sentence; korlm scores only the
  text's characters. Word-level tasks spread a word's tag over its characters first.

This module imports nothing else of korlm's evaluation package: the task reader, the
metrics registry and the fine-tuning heads all use it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import numpy as np

from korlm.errors import KorlmError

SCHEMES = ("BIO", "BIOES")
LEVELS = ("char", "word")
OUTSIDE = "O"
IGNORE = -100  # a token position the loss skips
METRICS = ("entity_f1", "entity_micro_f1", "char_f1")
# KLUE-NER's label list, in KLUE-baseline's order (KlueNERProcessor.get_labels).
KLUE_TYPES = ("PS", "LC", "OG", "DT", "TI", "QT")
KLUE_LABELS = (*(f"{p}-{t}" for t in KLUE_TYPES for p in "BI"), OUTSIDE)


@dataclasses.dataclass(frozen=True)
class TaggingSpec:
    """How a token-classification task tags its units, and how a file spells the tags.
    ``outside``: the raw tag meaning O (``-`` in Naver NER); ``tag_position``: ``prefix``
    (``B-PER``) or ``suffix`` (``PER_B``, Naver NER), either with ``-`` or ``_``;
    ``separator``: the CoNLL column separator (None: runs of whitespace)."""

    scheme: Literal["BIO", "BIOES"] = "BIO"
    level: Literal["char", "word"] = "word"
    label_all_subwords: bool = False
    separator: str | None = None
    outside: str = OUTSIDE
    tag_position: Literal["prefix", "suffix"] = "prefix"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- tags ---

def split_tag(tag: str) -> tuple[str, str]:
    """``("B", "PS")`` for ``B-PS``; ``("O", "")`` for ``O``."""
    return (OUTSIDE, "") if tag == OUTSIDE else (tag[0], tag[2:])


def label_names(types: Iterable[str], scheme: str) -> tuple[str, ...]:
    """Every tag of ``scheme`` over the entity ``types`` (sorted), ``O`` first."""
    prefixes = "BI" if scheme == "BIO" else "BIES"
    return (OUTSIDE, *(f"{p}-{t}" for t in sorted(set(types)) for p in prefixes))


def parse_tag(raw: str, spec: TaggingSpec, where: str) -> str:
    """A file's tag in korlm's spelling (``B-PER``), checked against the scheme."""
    raw = raw.strip()
    if raw == spec.outside or raw == OUTSIDE:
        return OUTSIDE
    letters = "BI" if spec.scheme == "BIO" else "BIES"
    if spec.tag_position == "prefix":
        prefix, sep, kind = raw[:1], raw[1:2], raw[2:]
    else:
        prefix, sep, kind = raw[-1:], raw[-2:-1], raw[:-2]
    if prefix not in letters or sep not in ("-", "_") or not kind:
        example = "B-PER" if spec.tag_position == "prefix" else "PER_B"
        raise KorlmError(f"{where}: tag {raw!r} is not a {spec.scheme} tag (like {example}, "
                         f"or {spec.outside!r} for outside)")
    return f"{prefix}-{kind}"


def expand(tag: str, k: int, scheme: str) -> list[str]:
    """One tag spread over ``k`` consecutive pieces (units of a token, tokens of a unit,
    characters of a word): the first keeps where the entity begins, the last where it
    ends, the rest continue it."""
    if k <= 0:
        return []
    if k == 1 or tag == OUTSIDE:
        return [tag] * k
    prefix, kind = split_tag(tag)
    inside = f"I-{kind}"
    first = f"B-{kind}" if prefix in "BS" else inside
    if scheme == "BIO":
        return [first] + [inside] * (k - 1)
    last = f"E-{kind}" if prefix in "ES" else inside
    return [first] + [inside] * (k - 2) + [last]


def collapse(tags: Sequence[str], scheme: str) -> str:
    """The one tag of several consecutive pieces (the inverse of :func:`expand`): BIO
    the first piece's tag; BIOES also ends (``E``/``S``) where the last piece ends the
    same entity."""
    first = tags[0]
    if scheme == "BIO" or first == OUTSIDE or len(tags) == 1:
        return first
    prefix, kind = split_tag(first)
    last_prefix, last_kind = split_tag(tags[-1])
    begins = prefix in "BS"
    ends = last_kind == kind and last_prefix in "ES"
    return f"{'S' if begins and ends else 'B' if begins else 'E' if ends else 'I'}-{kind}"


def entities(tags: Sequence[str], scheme: str) -> list[tuple[str, int, int]]:
    """``(type, start, end)`` of the well-formed entities (seqeval's strict mode):
    BIO ``B-X I-X*``; BIOES ``S-X`` or ``B-X I-X* E-X``."""
    found, i, n = [], 0, len(tags)
    while i < n:
        prefix, kind = split_tag(tags[i])
        if scheme == "BIOES" and prefix == "S":
            found.append((kind, i, i + 1))
            i += 1
            continue
        if prefix != "B":
            i += 1
            continue
        j = i + 1
        while j < n and tags[j] == f"I-{kind}":
            j += 1
        if scheme == "BIO":
            found.append((kind, i, j))
        elif j < n and tags[j] == f"E-{kind}":
            j += 1
            found.append((kind, i, j))
        i = j
    return found


# --- files ---

def read_conll(lines: Iterable[str], path: str, spec: TaggingSpec, token_column: int,
               tag_column: int) -> tuple[list[str], list[dict], list[str]]:
    """CoNLL-style sentences: one unit per line (columns split by ``spec.separator``),
    a blank line between sentences, ``-DOCSTART-`` lines skipped. Returns texts (the
    tokens joined by single spaces), labels ``{"units", "tags"}`` and ids (the line of
    each sentence's first token)."""
    texts, labels, ids = [], [], []
    words: list[str] = []
    tags: list[str] = []
    first_line = 0

    def flush() -> None:
        if not words:
            return
        units, pos = [], 0
        for w in words:
            units.append((pos, pos + len(w)))
            pos += len(w) + 1
        texts.append(" ".join(words))
        labels.append({"units": units, "tags": list(tags)})
        ids.append(f"line {first_line}")
        words.clear()
        tags.clear()

    for number, line in enumerate(lines, start=1):
        line = line.rstrip("\r\n")
        if not line.strip():
            flush()
            continue
        if line.startswith("-DOCSTART-"):
            continue
        cells = line.split(spec.separator) if spec.separator else line.split()
        where = f"{path}: line {number}"
        for role, index in (("token", token_column), ("tag", tag_column)):
            if not -len(cells) <= index < len(cells):
                raise KorlmError(f"{where} has {len(cells)} column(s), columns.{role} wants "
                                 f"index {index}")
        word = cells[token_column].strip()
        if not word:
            raise KorlmError(f"{where}: empty token")
        if not words:
            first_line = number
        words.append(word)
        tags.append(parse_tag(cells[tag_column], spec, where))
    flush()
    return texts, labels, ids


def read_klue(lines: Iterable[str], path: str, spec: TaggingSpec
              ) -> tuple[list[str], list[dict], list[str]]:
    """KLUE-NER's character-tagged TSV: ``## guid<TAB>tagged sentence`` and other ``##``
    comment lines, then one ``character<TAB>tag`` line per character (a space is a
    character, tagged O), a blank line between sentences. The text is the characters in
    order; every non-space character is a unit."""
    texts, labels, ids = [], [], []
    chars: list[str] = []
    tags: list[str] = []
    guid = ""

    def flush() -> None:
        nonlocal guid
        if chars:
            text = "".join(chars)
            keep = [i for i, c in enumerate(text) if not c.isspace()]
            texts.append(text)
            labels.append({"units": [(i, i + 1) for i in keep], "tags": [tags[i] for i in keep]})
            ids.append(guid or f"sentence {len(texts)}")
        chars.clear()
        tags.clear()
        guid = ""

    for number, line in enumerate(lines, start=1):
        line = line.rstrip("\r\n")
        if line.startswith("##"):
            if chars:
                flush()
            guid = line[2:].split("\t", 1)[0].strip()
            continue
        if not line.strip("\t"):
            flush()
            continue
        char, sep, tag = line.partition("\t")
        where = f"{path}: line {number}"
        if not sep or len(char) != 1:
            raise KorlmError(f"{where}: expected one character, a tab and its tag "
                             f"(KLUE-NER format), got {line[:40]!r}")
        chars.append(char)
        tags.append(OUTSIDE if char.isspace() else parse_tag(tag, spec, where))
    flush()
    return texts, labels, ids


def units_of(text: str, level: str) -> list[tuple[int, int]]:
    """The units of an untagged text: its non-space characters (``char``) or its
    whitespace-separated words (``word``)."""
    if level == "char":
        return [(i, i + 1) for i, c in enumerate(text) if not c.isspace()]
    units, start = [], None
    for i, c in enumerate(text + " "):
        if c.isspace():
            if start is not None:
                units.append((start, i))
                start = None
        elif start is None:
            start = i
    return units


# --- alignment ---

@dataclasses.dataclass
class Alignment:
    """One example's units against its token positions. ``heads[u]``: the head token
    position of unit ``u`` (None: no token); ``pieces[u]``: every token position
    overlapping it; ``led[p]``: the units token ``p`` heads, in order; ``past_window``:
    units without a token because the text was cut at ``max_seq_length``."""

    heads: list[int | None]
    pieces: list[list[int]]
    led: dict[int, list[int]]
    past_window: int = 0
    no_token: int = 0


def align(offsets: Sequence[tuple[int, int] | None], units: Sequence[tuple[int, int]],
          truncated: bool = False) -> Alignment:
    """Units against token ``offsets`` (one per position; None for special and padding
    positions). ``truncated``: the tokenizer cut the text; units after the last token
    then count as past the window."""
    tokens = sorted((s, e, p) for p, o in enumerate(offsets)
                    if o is not None for s, e in [o] if e > s)
    heads: list[int | None] = []
    pieces: list[list[int]] = []
    led: dict[int, list[int]] = {}
    last_end = max((e for _, e, _ in tokens), default=0)
    past = missing = t = 0
    for u, (us, ue) in enumerate(units):
        while t < len(tokens) and tokens[t][1] <= us:
            t += 1
        overlap = []
        k = t
        while k < len(tokens) and tokens[k][0] < ue:
            if tokens[k][1] > us:
                overlap.append(tokens[k][2])
            k += 1
        pieces.append(overlap)
        heads.append(overlap[0] if overlap else None)
        if overlap:
            led.setdefault(overlap[0], []).append(u)
        elif truncated and us >= last_end:
            past += 1
        else:
            missing += 1
    return Alignment(heads, pieces, led, past, missing)


def token_targets(alignment: Alignment, tags: Sequence[str], length: int,
                  index: dict[str, int], scheme: str, all_subwords: bool) -> np.ndarray:
    """Per-position training label ids (``IGNORE`` where the loss skips)."""
    out = np.full(length, IGNORE, dtype="int32")
    for p, units in alignment.led.items():
        pieces = alignment.pieces[units[0]]
        if len(units) == 1 and all_subwords and len(pieces) > 1:
            for q, tag in zip(pieces, expand(tags[units[0]], len(pieces), scheme), strict=True):
                if q == p or out[q] == IGNORE:  # a later unit's head keeps its own tag
                    out[q] = index[tag]
            continue
        out[p] = index[collapse([tags[u] for u in units], scheme)]
    return out


def unit_tags(alignment: Alignment, token_tags: Sequence[str], n_units: int, scheme: str,
              all_subwords: bool) -> list[str]:
    """Per-unit predicted tags from per-position predicted tags; units without a token
    are ``O``."""
    out = [OUTSIDE] * n_units
    for p, units in alignment.led.items():
        pieces = alignment.pieces[units[0]]
        if len(units) == 1 and all_subwords and len(pieces) > 1:
            out[units[0]] = collapse([token_tags[q] for q in pieces], scheme)
            continue
        for u, tag in zip(units, expand(token_tags[p], len(units), scheme), strict=True):
            out[u] = tag
    return out


def char_tags(text: str, units: Sequence[tuple[int, int]], tags: Sequence[str],
              scheme: str) -> list[str]:
    """The tag of every non-space character inside the units (what ``char_f1`` and
    ``entity_f1`` score): a word's tag spread over its characters."""
    out: list[str] = []
    for (s, e), tag in zip(units, tags, strict=True):
        n = sum(1 for c in text[s:e] if not c.isspace())
        if n:
            out.extend(expand(tag, n, scheme))
    return out


def spans(text: str, units: Sequence[tuple[int, int]], tags: Sequence[str], scheme: str,
          scores: Sequence[float] | None = None) -> list[dict[str, Any]]:
    """The entities of per-unit tags as character spans of ``text``: ``start``/``end``
    (``text[start:end]`` is the entity, spaces between its words included), ``label``
    (the entity type), ``text`` and ``score`` (mean of the units' tag probabilities;
    None without ``scores``)."""
    out = []
    for kind, i, j in entities(tags, scheme):
        start, end = units[i][0], units[j - 1][1]
        score = None if scores is None else float(np.mean(scores[i:j]))
        out.append({"start": start, "end": end, "label": kind, "text": text[start:end],
                    "score": score})
    return out


# --- scores ---

def _check(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> None:
    if len(gold) != len(predicted):
        raise KorlmError(f"{len(gold)} gold sentences but {len(predicted)} predicted")
    if not len(gold):
        raise KorlmError("cannot score an empty split")
    for i, (g, p) in enumerate(zip(gold, predicted, strict=True)):
        if len(g) != len(p):
            raise KorlmError(f"sentence {i}: {len(g)} gold tags but {len(p)} predicted")


def scheme_of(sequences: Iterable[Sequence[str]]) -> str:
    """BIOES when any tag is ``E-``/``S-``, else BIO."""
    return "BIOES" if any(t[:2] in ("E-", "S-") for seq in sequences for t in seq) else "BIO"


def sentence_counts(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]],
                    metric: str, labels: Sequence[str] | None = None,
                    scheme: str | None = None) -> tuple[np.ndarray, list[str]]:
    """Per sentence and class, ``(true positives, predicted, gold)``: an array
    ``[sentences, classes, 3]`` and the classes (entity types for the entity metrics,
    tags for ``char_f1``). A metric is a function of these counts summed over the
    sentences, so a bootstrap over sentences resamples rows."""
    _check(gold, predicted)
    if metric == "char_f1":
        classes = list(labels) if labels else sorted({t for s in (*gold, *predicted) for t in s})
        index = {c: k for k, c in enumerate(classes)}
        counts = np.zeros((len(gold), len(classes), 3), dtype=np.int64)
        for i, (g, p) in enumerate(zip(gold, predicted, strict=True)):
            for a, b in zip(g, p, strict=True):
                for tag in (a, b):
                    if tag not in index:
                        raise KorlmError(f"tag {tag!r} is not in the label set {classes}")
                counts[i, index[b], 1] += 1
                counts[i, index[a], 2] += 1
                if a == b:
                    counts[i, index[a], 0] += 1
        return counts, classes
    scheme = scheme or scheme_of([labels] if labels else [*gold, *predicted])
    found = [(set(entities(g, scheme)), set(entities(p, scheme)))
             for g, p in zip(gold, predicted, strict=True)]
    classes = sorted({k for pair in found for side in pair for k, _, _ in side})
    index = {c: k for k, c in enumerate(classes)}
    counts = np.zeros((len(gold), len(classes), 3), dtype=np.int64)
    for i, (g, p) in enumerate(found):
        for kind, _, _ in g & p:
            counts[i, index[kind], 0] += 1
        for kind, _, _ in p:
            counts[i, index[kind], 1] += 1
        for kind, _, _ in g:
            counts[i, index[kind], 2] += 1
    return counts, classes


def score_counts(counts: np.ndarray, metric: str) -> np.ndarray | float | None:
    """The metric from summed counts ``[..., classes, 3]`` (leading axes: e.g. bootstrap
    resamples). None (or NaN in a batch) where no class exists."""
    tp, pred, true = counts[..., 0], counts[..., 1], counts[..., 2]
    if counts.shape[-2] == 0:
        return None if counts.ndim == 2 else np.full(counts.shape[:-2], np.nan)
    if metric == "entity_micro_f1":
        tp, pred, true = tp.sum(-1), pred.sum(-1), true.sum(-1)
        denominator = pred + true
        value = np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)
    else:
        denominator = pred + true
        per_class = np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 1.0)
        if metric == "char_f1":  # a label absent from gold and predictions scores 1
            value = per_class.mean(-1)
        else:  # the mean over the types found in gold or predictions (of this resample)
            present = denominator > 0
            with np.errstate(invalid="ignore", divide="ignore"):
                value = (per_class * present).sum(-1) / present.sum(-1)
    return float(value) if np.ndim(value) == 0 else value


def score(metric: str, gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]],
          labels: Sequence[str] | None = None) -> float | None:
    """``entity_f1``, ``entity_micro_f1`` or ``char_f1`` of per-sentence tag sequences
    (``labels``: char_f1's label set, every tag of the task). None when neither gold
    nor predictions hold an entity (entity metrics)."""
    if metric not in METRICS:
        raise KorlmError(f"unknown tagging metric {metric!r}; known: {', '.join(METRICS)}")
    counts, _ = sentence_counts(gold, predicted, metric, labels)
    if metric != "char_f1" and not counts[..., 1:].sum():
        return None
    return score_counts(counts.sum(0), metric)


def bootstrap_se(metric: str, gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]],
                 labels: Sequence[str] | None, resamples: int, seed: int) -> float | None:
    """The standard deviation of the metric over ``resamples`` bootstrap resamples of
    the sentences (fixed ``seed``); resamples where it is undefined are skipped."""
    counts, _ = sentence_counts(gold, predicted, metric, labels)
    n = len(gold)
    rng = np.random.default_rng(seed)
    weights = np.stack([np.bincount(rng.integers(0, n, size=n), minlength=n)
                        for _ in range(resamples)])
    summed = np.einsum("rn,nkc->rkc", weights, counts)
    values = score_counts(summed, metric)
    if values is None:
        return None
    if metric != "char_f1":  # a resample without any entity has no entity F1
        values = np.where(summed[..., 1:].sum((-1, -2)) > 0, values, np.nan)
    values = values[~np.isnan(values)]
    return float(np.std(values, ddof=1)) if len(values) > 1 else None
