"""Downstream tasks a checkpoint is evaluated on: built-in Korean benchmarks and
user-declared YAML tasks, read the same way.

A task is a :class:`TaskSpec`: its type (classification, pair-classification,
regression, extractive-qa, token-classification), its metrics (the first is the one early stopping and the
report's bold cell use), its label set, and one or more *layouts*: which file holds
which split. Built-in tasks use the public file names, under ``<data_dir>/<folder>/``
where ``folder`` is the folder name of the shared data kit (``klue/``, ``korsts/``,
``question-pair/``...), so ``--data-dir ../shared/data`` works as is. A user task (YAML,
:func:`load_task_file`) names its files directly.

Splits a task does not ship are derived deterministically (a fixed permutation that
does not depend on the fine-tuning seed) and the derivation is recorded as the task's
``split_note``, which ``metrics.json`` and the report carry.

Files are read through :mod:`korlm.storage` (local paths or ``gs://``); ``.gz`` files are
decompressed on the fly. Bad rows are errors naming the file and the line.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from korlm import storage
from korlm.errors import KorlmError, NotBuiltError
from korlm.evaluation import tagging

# Issue that tracked the tasks beyond NSMC (kept for messages of modes still open).
MORE_TASKS_ISSUE = 7
TaskType = Literal["classification", "pair-classification", "regression", "extractive-qa",
                   "token-classification"]
TASK_TYPES = ("classification", "pair-classification", "regression", "extractive-qa",
              "token-classification")
SPLITS = ("train", "dev", "test")
# The derived-split permutation's seed: fixed, so every checkpoint and every fine-tuning
# seed sees the same train/dev/test rows.
SPLIT_SEED = 20240607
DEV_FRACTION = 0.1
TEST_FRACTION = 0.2


@dataclass
class TaskData:
    """One split. ``labels`` are class ids (classification), float scores (regression),
    for extractive QA lists of ``{"text", "answer_start"}`` gold answers, with the
    questions in ``texts`` and the contexts in ``texts_b``, or for token classification
    ``{"units": [(start, end), ...], "tags": [...]}`` (:mod:`korlm.evaluation.tagging`). ``groups`` (QA: the article
    index) keeps related rows on the same side of a derived split."""

    texts: list[str]
    labels: list[Any]
    texts_b: list[str] | None = None
    ids: list[str] | None = None
    groups: list[int] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, indices: Sequence[int]) -> TaskData:
        def pick(values):
            return None if values is None else [values[i] for i in indices]

        return TaskData(pick(self.texts), pick(self.labels), pick(self.texts_b),
                        pick(self.ids), pick(self.groups))

    def head(self, n: int | None) -> TaskData:
        if n is None or n >= len(self):
            return self
        return self.take(range(n))

    def sample(self, n: int | None) -> TaskData:
        """``n`` rows chosen by a fixed permutation (the same rows on every call, and a
        smaller sample inside a larger one), kept in file order. Files sorted by label
        (ChatbotData.csv) or by source would give one-sided prefixes."""
        if n is None or n >= len(self):
            return self
        order = np.random.default_rng(SPLIT_SEED).permutation(len(self))
        return self.take(sorted(order[:n].tolist()))


@dataclass(frozen=True)
class Layout:
    """Which file holds which split (``train``/``dev``/``test``), and what to say about
    it in the report when it departs from the official protocol."""

    files: dict[str, str]
    note: str = ""


@dataclass(frozen=True)
class TableFormat:
    """How rows become examples: file format, header, and the column (name or 0-based
    index; for JSON a key, dotted for nesting) of each role (text, text_a, text_b,
    label)."""

    format: Literal["csv", "tsv", "jsonl", "json", "squad", "conll", "klue-ner"]
    columns: dict[str, str | int] = field(default_factory=dict)
    header: bool = True
    quoting: Literal["csv", "none"] = "csv"
    # Raw label value -> label name; default: the raw value is the name.
    label_values: dict[str, str] | None = None


@dataclass(frozen=True)
class TaskSpec:
    name: str
    description: str
    type: TaskType
    metrics: tuple[str, ...]
    table: TableFormat | None = None  # None: designed, not built
    layouts: tuple[Layout, ...] = ()
    folder: str | None = None  # sub-folder of --data-dir; None: paths are used as given
    # Classification label names, in class-id order; None: taken from the train split.
    label_names: tuple[str, ...] | None = None
    # What a class id means when its name is a bare code (NSMC's 0/1): shown by serving.
    label_descriptions: tuple[str, ...] | None = None
    # Token classification: the tag scheme, unit level and subword labelling.
    tagging: tagging.TaggingSpec | None = None

    @property
    def built(self) -> bool:
        return self.table is not None

    @property
    def metric(self) -> str:
        """The primary metric (early stopping, the report's bold cell)."""
        return self.metrics[0]

    @property
    def num_classes(self) -> int | None:
        return None if self.label_names is None else len(self.label_names)

    @property
    def is_classification(self) -> bool:
        return self.type in ("classification", "pair-classification")


@dataclass
class TaskSplits:
    spec: TaskSpec  # label_names filled in from the train split when not declared
    train: TaskData
    dev: TaskData
    test: TaskData
    files: dict[str, str]
    split_note: str
    sizes: dict[str, int]  # rows per split before max_*_examples

    def summary(self) -> dict[str, Any]:
        return {split: {"file": self.files.get(split, self.files.get("train")),
                        "rows": self.sizes[split],
                        "used": len(getattr(self, split))} for split in SPLITS}


# --- reading files ---

def _open_text(path: str) -> io.TextIOBase:
    raw = storage.open_file(path, "rb")
    stream = gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else raw
    # utf-8-sig: a BOM in the first header cell would otherwise break column names
    return io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")


def _records_from_table(path: str, table: TableFormat) -> Iterator[tuple[str, Any]]:
    """(where, record) pairs: a list of cells (csv/tsv) or a dict (json/jsonl)."""
    try:
        with _open_text(path) as f:
            if table.format in ("csv", "tsv"):
                reader = csv.reader(
                    f, delimiter="," if table.format == "csv" else "\t",
                    quoting=csv.QUOTE_NONE if table.quoting == "none" else csv.QUOTE_MINIMAL)
                for row in reader:
                    if row:  # blank lines carry no example
                        yield f"line {reader.line_num}", row
            elif table.format == "jsonl":
                for number, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    try:
                        yield f"line {number}", json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise KorlmError(f"{path}: line {number} is not valid JSON "
                                         f"({exc.msg})") from None
            else:
                try:
                    data = json.load(f)
                except json.JSONDecodeError as exc:
                    raise KorlmError(f"{path}: not valid JSON ({exc.msg} at line "
                                     f"{exc.lineno})") from None
                if table.format == "squad":
                    yield "data", data
                    return
                if isinstance(data, dict) and isinstance(data.get("data"), list):
                    data = data["data"]
                if not isinstance(data, list):
                    raise KorlmError(f"{path}: expected a JSON list of records "
                                     "(or {\"data\": [...]})")
                for number, record in enumerate(data):
                    yield f"record {number}", record
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError, csv.Error) as exc:
        raise KorlmError(f"{path}: cannot be read as {table.format} ({exc})") from None


def _column_getter(path: str, table: TableFormat, header: list[str] | None, role: str):
    key = table.columns[role]
    if table.format in ("csv", "tsv"):
        if isinstance(key, str):
            if header is None:
                raise KorlmError(f"{path}: column {key!r} (columns.{role}) is a name but the "
                                 "file has no header; use a 0-based index")
            if key not in header:
                raise KorlmError(f"{path}: column {key!r} (columns.{role}) is not in the "
                                 f"header {header}")
            key = header.index(key)
        index = int(key)

        def get(row, where):
            if index >= len(row):
                raise KorlmError(f"{path}: {where} has {len(row)} column(s), columns.{role} "
                                 f"wants index {index}")
            return row[index]

        return get
    parts = str(key).split(".")

    def get_json(record, where):
        value = record
        for part in parts:
            if not isinstance(value, dict) or part not in value:
                raise KorlmError(f"{path}: {where} has no field {key!r} (columns.{role})")
            value = value[part]
        return value

    return get_json


def _parse_label(spec: TaskSpec, raw: Any, path: str, where: str) -> Any:
    if spec.type == "regression":
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise KorlmError(f"{path}: {where}: score {raw!r} is not a number") from None
        if not math.isfinite(value):
            raise KorlmError(f"{path}: {where}: score {raw!r} is not a finite number")
        return value
    text = str(raw).strip() if not isinstance(raw, bool) else str(raw)
    if spec.table.label_values is not None:
        if text not in spec.table.label_values:
            raise KorlmError(f"{path}: {where}: label {text!r} is not one of "
                             f"{sorted(spec.table.label_values)}")
        text = spec.table.label_values[text]
    if text == "":
        raise KorlmError(f"{path}: {where}: empty label")
    return text


def read_table(spec: TaskSpec, path: str) -> TaskData:
    """A split of a csv/tsv/json/jsonl task; labels are raw label names (classification)
    or floats (regression), mapped to ids by :func:`_label_ids`."""
    table = spec.table
    if table.format == "squad":
        return read_squad(path)
    if table.format in ("conll", "klue-ner"):
        return read_tagged(spec, path)
    records = _records_from_table(path, table)
    header = None
    if table.format in ("csv", "tsv") and table.header:
        first = next(records, None)
        if first is None:
            raise KorlmError(f"{path} is empty")
        header = [c.strip() for c in first[1]]
    pair = spec.type == "pair-classification" or (
        spec.type == "regression" and "text_a" in table.columns)
    roles = ("text_a", "text_b", "label") if pair else ("text", "label")
    getters = {r: _column_getter(path, table, header, r) for r in roles}
    texts, texts_b, labels = [], [] if pair else None, []
    for where, record in records:
        if table.format in ("json", "jsonl") and not isinstance(record, dict):
            raise KorlmError(f"{path}: {where} is not a JSON object")
        first_text = getters["text_a" if pair else "text"](record, where)
        texts.append("" if first_text is None else str(first_text))
        if pair:
            second = getters["text_b"](record, where)
            texts_b.append("" if second is None else str(second))
        labels.append(_parse_label(spec, getters["label"](record, where), path, where))
    if not texts:
        raise KorlmError(f"{path} has no examples (empty file or header only)")
    return TaskData(texts, labels, texts_b)


def read_tagged(spec: TaskSpec, path: str) -> TaskData:
    """A token-classification split: CoNLL-style columns or KLUE-NER's character lines."""
    try:
        with _open_text(path) as f:
            if spec.table.format == "klue-ner":
                texts, labels, ids = tagging.read_klue(f, path, spec.tagging)
            else:
                columns = spec.table.columns
                texts, labels, ids = tagging.read_conll(
                    f, path, spec.tagging, int(columns.get("token", 0)),
                    int(columns.get("tag", -1)))
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as exc:
        raise KorlmError(f"{path}: cannot be read as {spec.table.format} ({exc})") from None
    if not texts:
        raise KorlmError(f"{path} has no tagged sentences")
    return TaskData(texts, labels, ids=ids)


def _tag_names(spec: TaskSpec, read: dict[str, TaskData], paths: dict[str, str]) -> tuple:
    """Every tag of the scheme over the declared entity types (a tag of another type
    is an error naming the file), or over the types of every split."""
    found = {split: {tagging.split_tag(t)[1] for label in data.labels for t in label["tags"]}
             - {""} for split, data in read.items()}
    names = spec.label_names
    if names is None:
        return tagging.label_names(set().union(*found.values()), spec.tagging.scheme)
    known = {tagging.split_tag(n)[1] for n in names}
    for split, kinds in found.items():
        if kinds - known:
            raise KorlmError(f"{paths.get(split, paths['train'])}: entity type "
                             f"{sorted(kinds - known)[0]!r} is not in the declared labels "
                             f"{sorted(known - {''})}")
    return names


def read_squad(path: str) -> TaskData:
    """SQuAD v1.1 JSON (KorQuAD 1.0): one example per question, answers kept as lists."""
    (_, data), = list(_records_from_table(path, TableFormat("squad")))
    articles = data.get("data") if isinstance(data, dict) else None
    if not isinstance(articles, list):
        raise KorlmError(f"{path}: not SQuAD v1.1 JSON (no top-level \"data\" list)")
    out = TaskData([], [], [], [], [])
    for a, article in enumerate(articles):
        for p, paragraph in enumerate(article.get("paragraphs", [])):
            context = paragraph.get("context")
            if not isinstance(context, str):
                raise KorlmError(f"{path}: data[{a}].paragraphs[{p}] has no context")
            for q, qa in enumerate(paragraph.get("qas", [])):
                where = f"data[{a}].paragraphs[{p}].qas[{q}]"
                answers = qa.get("answers") or []
                if not answers or "question" not in qa:
                    raise KorlmError(f"{path}: {where} has no question or no answers")
                for answer in answers:
                    start, text = answer.get("answer_start"), answer.get("text")
                    if (not isinstance(start, int) or not isinstance(text, str)
                            or context[start:start + len(text)] != text):
                        raise KorlmError(f"{path}: {where}: answer {text!r} is not at "
                                         f"answer_start {start} of the context")
                out.texts.append(qa["question"])
                out.texts_b.append(context)
                out.labels.append([{"text": x["text"], "answer_start": x["answer_start"]}
                                   for x in answers])
                out.ids.append(str(qa.get("id", where)))
                out.groups.append(a)
    if not out.texts:
        raise KorlmError(f"{path} has no questions")
    return out


def _label_ids(spec: TaskSpec, data: TaskData, names: tuple[str, ...], path: str) -> TaskData:
    index = {n: i for i, n in enumerate(names)}
    ids = []
    for row, label in enumerate(data.labels):
        if label not in index:
            raise KorlmError(f"{path}: example {row + 1}: label {label!r} is not in the "
                             f"declared label set {list(names)}")
        ids.append(index[label])
    return replace(data, labels=ids)


def _sorted_names(values: set[str]) -> tuple[str, ...]:
    try:  # numeric labels in numeric order ("2" before "10")
        return tuple(sorted(values, key=float))
    except ValueError:
        return tuple(sorted(values))


# --- finding files and deriving splits ---

def _resolve(spec: TaskSpec, data_dir: str | None, name: str) -> str | None:
    folders = []
    if spec.folder is None or storage.is_remote(name) or name.startswith("/"):
        folders.append(None)
    if data_dir:
        folders += [data_dir, *(storage.join(data_dir, f) for f in
                                dict.fromkeys([spec.folder or "", spec.name]) if f)]
    for folder in folders:
        for candidate in (name, name + ".gz"):
            path = candidate if folder is None else storage.join(folder, candidate)
            if storage.exists(path):
                return path
    return None


def find_layout(spec: TaskSpec, data_dir: str | None) -> tuple[Layout, dict[str, str]]:
    """The first layout whose files all exist, with their resolved paths."""
    first_missing = None
    for layout in spec.layouts:
        paths = {split: _resolve(spec, data_dir, name) for split, name in layout.files.items()}
        missing = [layout.files[s] for s, p in paths.items() if p is None]
        if not missing:
            return layout, paths
        first_missing = first_missing or missing[0]
    where = storage.join(data_dir, spec.folder or spec.name, first_missing) if (
        data_dir and spec.folder) else first_missing
    looked = f" (also looked for .gz, in {data_dir} and {spec.folder or spec.name}/)" if (
        data_dir) else " (also looked for .gz)"
    raise KorlmError(f"{spec.name} data not found: {where}{looked}")


def _derive(data: TaskData, fractions: Sequence[float]) -> list[TaskData]:
    """Deterministic split into parts of the given fractions (the last gets the rest),
    whole groups at a time when the data has groups."""
    keys = data.groups if data.groups is not None else list(range(len(data)))
    unique = sorted(set(keys))
    order = np.random.default_rng(SPLIT_SEED).permutation(len(unique))
    # every derived part gets at least one row (group); the first part keeps the rest
    held_out = [max(1, int(round(f * len(unique)))) for f in fractions[1:]]
    sizes = [len(unique) - sum(held_out), *held_out]
    if sizes[0] < 1:
        raise KorlmError(f"{len(data)} rows are too few to derive {len(fractions)} splits")
    bounds, start, parts = [], 0, []
    for size in sizes:
        bounds.append((start, start + size))
        start += size
    for lo, hi in bounds:
        chosen = {unique[i] for i in order[lo:hi]}
        # file order kept inside each part, so head(n) is a stable prefix
        parts.append(data.take([i for i, k in enumerate(keys) if k in chosen]))
    return parts


def load_task(spec: TaskSpec, data_dir: str | None = None, *,
              max_train_examples: int | None = None,
              max_eval_examples: int | None = None) -> TaskSplits:
    """Read a task's splits, derive the missing ones, cap their sizes, map labels."""
    if not spec.built:
        raise NotBuiltError(f"task {spec.name!r}", MORE_TASKS_ISSUE)
    layout, paths = find_layout(spec, data_dir)
    read = {split: read_table(spec, path) for split, path in paths.items()}
    notes = [layout.note] if layout.note else []
    if "test" not in read and "dev" not in read:
        n = len(read["train"])
        read["train"], read["dev"], read["test"] = _derive(
            read["train"], [1 - DEV_FRACTION - TEST_FRACTION, DEV_FRACTION, TEST_FRACTION])
        notes.append(f"train/dev/test derived from {_name(paths['train'])} ({n} rows) by a "
                     f"fixed permutation: {len(read['train'])}/{len(read['dev'])}/"
                     f"{len(read['test'])}")
    elif "test" not in read:
        raise KorlmError(f"{spec.name}: no test split declared (test: PATH)")
    elif "dev" not in read:
        n = len(read["train"])
        read["train"], read["dev"] = _derive(read["train"], [1 - DEV_FRACTION, DEV_FRACTION])
        notes.append(f"dev (early stopping) = {len(read['dev'])} of {n} rows of "
                     f"{_name(paths['train'])}, held out by a fixed permutation")
    sizes = {s: len(read[s]) for s in SPLITS}
    if spec.type == "token-classification":
        spec = replace(spec, label_names=_tag_names(spec, read, paths))
    if spec.is_classification:
        names = spec.label_names or _sorted_names(set(read["train"].labels))
        if len(names) < 2:
            raise KorlmError(f"{paths['train']}: only one label ({names[0]!r}); "
                             "classification needs at least two")
        spec = replace(spec, label_names=tuple(names))
        for split in SPLITS:
            read[split] = _label_ids(spec, read[split], spec.label_names,
                                     paths.get(split, paths["train"]))
    return TaskSplits(
        spec=spec,
        train=read["train"].sample(max_train_examples),
        dev=read["dev"].sample(max_eval_examples),
        test=read["test"].sample(max_eval_examples),
        files={s: p for s, p in paths.items()},
        split_note="; ".join(notes),
        sizes=sizes)


def _name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


# --- the built-in tasks ---

_NLI = ("entailment", "neutral", "contradiction")
_KLUE_DEV_AS_TEST = ("scored on the official dev set (KLUE test labels are not public)")

TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in [
    TaskSpec(
        "nsmc", "Naver movie review sentiment, binary", "classification", ("accuracy",),
        # csv quoting on purpose: it turns NSMC's `"""..."""` rows into the strings every
        # published NSMC number was computed on (pandas' default quoting).
        TableFormat("tsv", {"text": "document", "label": "label"}, quoting="csv"),
        (Layout({"train": "ratings_train.txt", "test": "ratings_test.txt"}),),
        folder="nsmc", label_names=("0", "1"), label_descriptions=("negative", "positive")),
    TaskSpec(
        "klue-nli", "KLUE natural language inference, 3-way", "pair-classification",
        ("accuracy",),
        TableFormat("json", {"text_a": "premise", "text_b": "hypothesis",
                             "label": "gold_label"}),
        (Layout({"train": "klue-nli-v1.1_train.json", "test": "klue-nli-v1.1_dev.json"},
                _KLUE_DEV_AS_TEST),),
        folder="klue", label_names=_NLI),
    TaskSpec(
        "klue-sts", "KLUE semantic textual similarity 0-5", "regression",
        ("pearson", "spearman", "f1_at_threshold"),
        TableFormat("json", {"text_a": "sentence1", "text_b": "sentence2",
                             "label": "labels.label"}),
        (Layout({"train": "klue-sts-v1.1_train.json", "test": "klue-sts-v1.1_dev.json"},
                _KLUE_DEV_AS_TEST),
         Layout({"train": "klue-sts-v1.1_dev.json"},
                "KLUE-STS train is not in the data dir: fine-tuned and scored on parts of "
                "the official dev set, not comparable to published KLUE-STS numbers")),
        folder="klue"),
    TaskSpec(
        "korsts", "KorSTS semantic textual similarity 0-5", "regression",
        ("spearman", "pearson"),
        TableFormat("tsv", {"text_a": "sentence1", "text_b": "sentence2", "label": "score"},
                    quoting="none"),
        (Layout({"train": "sts-train.tsv", "dev": "sts-dev.tsv", "test": "sts-test.tsv"}),),
        folder="korsts"),
    TaskSpec(
        "kornli", "KorNLI natural language inference, 3-way (scored on XNLI test)",
        "pair-classification", ("accuracy",),
        TableFormat("tsv", {"text_a": "sentence1", "text_b": "sentence2",
                            "label": "gold_label"}, quoting="none"),
        (Layout({"train": "multinli.train.ko.tsv", "dev": "xnli.dev.ko.tsv",
                 "test": "xnli.test.ko.tsv"}),
         Layout({"train": "xnli.dev.ko.tsv", "test": "xnli.test.ko.tsv"},
                "KorNLI MNLI/SNLI train is not in the data dir: fine-tuned on xnli.dev.ko "
                "(2,490 pairs), not comparable to published KorNLI numbers")),
        folder="kornli", label_names=_NLI),
    TaskSpec(
        "question-pair", "Korean question pairs: same question or not", "pair-classification",
        ("accuracy",),
        # The file's is_duplicate = 0 means the SAME question (see the data's SOURCE.md).
        TableFormat("tsv", {"text_a": "question1", "text_b": "question2",
                            "label": "is_duplicate"}, quoting="none",
                    label_values={"0": "same", "1": "different"}),
        (Layout({"train": "train.txt", "dev": "validation.txt", "test": "test.txt"}),),
        folder="question-pair", label_names=("different", "same")),
    TaskSpec(
        "hate-speech", "Korean hate speech: none / offensive / hate", "classification",
        ("accuracy", "macro_f1"),
        TableFormat("tsv", {"text": "comments", "label": "hate"}, quoting="none"),
        (Layout({"train": "train.tsv", "test": "dev.tsv"},
                "scored on the official dev set (test labels are not public)"),),
        folder="korean-hate-speech", label_names=("none", "offensive", "hate")),
    TaskSpec(
        "hate-speech-bias", "Korean hate speech: social bias none / gender / others",
        "classification", ("accuracy", "macro_f1"),
        TableFormat("tsv", {"text": "comments", "label": "bias"}, quoting="none"),
        (Layout({"train": "train.tsv", "test": "dev.tsv"},
                "scored on the official dev set (test labels are not public)"),),
        folder="korean-hate-speech", label_names=("none", "gender", "others")),
    TaskSpec(
        "chatbot", "Chatbot data Q/A pairs: daily / negative / positive", "pair-classification",
        ("accuracy",),
        TableFormat("csv", {"text_a": "Q", "text_b": "A", "label": "label"}),
        (Layout({"train": "ChatbotData.csv"}, "no official split"),),
        folder="chatbot-data", label_names=("0", "1", "2"),
        label_descriptions=("daily", "breakup (negative)", "love (positive)")),
    TaskSpec(
        "korquad", "KorQuAD 1.0 extractive question answering", "extractive-qa",
        ("exact_match", "f1"),
        TableFormat("squad"),
        (Layout({"train": "KorQuAD_v1.0_train.json", "test": "KorQuAD_v1.0_dev.json"},
                "scored on the official dev set (KorQuAD test is hidden)"),
         Layout({"train": "KorQuAD_v1.0_dev.json"},
                "KorQuAD train is not in the data dir: fine-tuned and scored on parts of "
                "the dev set split by article, not comparable to published KorQuAD numbers")),
        folder="korquad-1.0"),
    TaskSpec(
        "klue-ner", "KLUE named-entity recognition, character-level BIO (PS LC OG DT TI QT)",
        "token-classification", ("entity_f1", "char_f1"),
        TableFormat("klue-ner"),
        (Layout({"train": "klue-ner-v1.1_train.tsv", "test": "klue-ner-v1.1_dev.tsv"},
                _KLUE_DEV_AS_TEST),
         Layout({"train": "klue-ner-v1.1_dev.tsv"},
                "KLUE-NER train is not in the data dir: fine-tuned and scored on parts of "
                "the official dev set, not comparable to published KLUE-NER numbers")),
        folder="klue", label_names=tagging.KLUE_LABELS,
        tagging=tagging.TaggingSpec(scheme="BIO", level="char")),
]}


def known_tasks() -> list[str]:
    return list(TASKS)


def get_task(name: str) -> TaskSpec:
    """The built task called ``name`` or declared in the YAML file ``name``; KorlmError
    for unknown names, NotBuiltError for known ones without a reader yet."""
    if name.endswith((".yaml", ".yml")):
        return load_task_file(name)
    spec = TASKS.get(name)
    if spec is None:
        raise KorlmError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)} "
                         "(or a task file FILE.yaml)")
    if not spec.built:
        raise NotBuiltError(f"task {name!r}", MORE_TASKS_ISSUE)
    return spec


# --- user-declared tasks (YAML) ---

_ROLES = {
    "classification": ({"text", "label"},),
    "pair-classification": ({"text_a", "text_b", "label"},),
    "regression": ({"text", "label"}, {"text_a", "text_b", "label"}),
    "extractive-qa": (set(),),
    "token-classification": ({"token", "tag"}, set()),
}
_METRICS_BY_TYPE = {
    "classification": ("accuracy", "macro_f1"),
    "pair-classification": ("accuracy", "macro_f1"),
    "regression": ("pearson", "spearman", "f1_at_threshold"),
    "extractive-qa": ("exact_match", "f1"),
    "token-classification": tagging.METRICS,
}
_DEFAULT_METRICS = {"classification": ["accuracy"], "pair-classification": ["accuracy"],
                    "regression": ["pearson", "spearman"],
                    "extractive-qa": ["exact_match", "f1"],
                    "token-classification": ["entity_f1", "char_f1"]}


def _task_file_model():
    from pydantic import BaseModel, ConfigDict, Field, model_validator

    class TaskFile(BaseModel):
        """The schema of a user task file (see docs/evaluate.md)."""

        model_config = ConfigDict(extra="forbid")
        name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
        description: str = ""
        type: Literal["classification", "pair-classification", "regression", "extractive-qa",
                      "token-classification"]
        format: Literal["csv", "tsv", "jsonl", "json", "conll", "klue-ner"]
        header: bool = True
        quoting: Literal["csv", "none"] | None = Field(
            None, description="csv: RFC 4180 double quotes (default for csv); none: quotes "
                              "are text (default for tsv)")
        columns: dict[str, str | int] = Field(default_factory=dict)
        labels: list[str | int] | None = Field(None, min_length=2,
                                         description="the label set; default: train's labels")
        train: str
        dev: str | None = None
        test: str
        metrics: list[str] | None = Field(None, min_length=1)
        # token classification (docs/evaluate.md, "Token classification")
        scheme: Literal["BIO", "BIOES"] = "BIO"
        label_all_subwords: bool = Field(False, description="train every subword of a unit, "
                                                            "not only its first")
        separator: str | None = Field(None, min_length=1, description="conll: the column "
                                      "separator; default: runs of whitespace")
        outside: str = Field("O", min_length=1, description="the raw tag meaning outside")
        tag_position: Literal["prefix", "suffix"] = Field(
            "prefix", description="B-PER (prefix) or PER_B (suffix, Naver NER)")

        @model_validator(mode="after")
        def _consistent(self):
            allowed = _ROLES[self.type]
            if set(self.columns) not in allowed:
                want = " or ".join("{" + ", ".join(sorted(r)) + "}" for r in allowed)
                unknown = sorted(set(self.columns) - set().union(*allowed))
                if unknown:
                    raise ValueError(f"columns.{unknown[0]}: not a column role of a "
                                     f"{self.type} task (roles: {want or 'none'})")
                raise ValueError(f"columns: a {self.type} task needs {want}, "
                                 f"got {{{', '.join(sorted(self.columns))}}}")
            for role, key in self.columns.items():
                if isinstance(key, int) and key < 0:
                    raise ValueError(f"columns.{role}: index {key} must be 0 or more")
                if isinstance(key, int) and self.format in ("json", "jsonl"):
                    raise ValueError(f"columns.{role}: {self.format} records need a field "
                                     f"name, not index {key}")
                if isinstance(key, str) and not self.header and self.format in ("csv", "tsv"):
                    raise ValueError(f"columns.{role}: {key!r} is a column name but header "
                                     "is false; use a 0-based index")
            if self.type == "extractive-qa" and self.format != "json":
                raise ValueError("format: extractive-qa tasks read SQuAD v1.1 JSON "
                                 "(format: json)")
            tagged = self.format in ("conll", "klue-ner")
            if tagged != (self.type == "token-classification"):
                raise ValueError(f"format: {self.type} tasks read "
                                 + ("conll or klue-ner files" if not tagged else
                                    "csv, tsv, jsonl or json, not tagged files"))
            if self.format == "conll" and set(self.columns) not in ({"token", "tag"}, set()):
                raise ValueError("columns: a conll task names {token, tag} (or neither: "
                                 "token 0, tag last)")
            stray = sorted({"scheme", "label_all_subwords", "separator", "outside",
                            "tag_position"} & self.model_fields_set)
            if stray and not tagged:
                raise ValueError(f"{stray[0]}: only token-classification tasks have it")
            if self.format == "klue-ner" and self.columns:
                raise ValueError("columns: klue-ner files have fixed columns (character, tag)")
            for role, key in self.columns.items():
                if tagged and not isinstance(key, int):
                    raise ValueError(f"columns.{role}: {self.format} columns are 0-based "
                                     f"indexes, not {key!r}")
            for metric in self.metrics or []:
                if metric not in _METRICS_BY_TYPE[self.type]:
                    raise ValueError(f"metrics: {metric!r} is not a {self.type} metric "
                                     f"(choose from {', '.join(_METRICS_BY_TYPE[self.type])})")
            if self.labels is not None and self.type not in (
                    "classification", "pair-classification", "token-classification"):
                raise ValueError(f"labels: only classification and token-classification "
                                 f"tasks have labels, not {self.type}")
            return self

    return TaskFile


def task_from_dict(data: Any, source: str = "task file", base_dir: str | None = None
                   ) -> TaskSpec:
    """Validate a task declaration (the YAML's content) into a TaskSpec; relative paths
    are taken relative to ``base_dir`` (the YAML file's folder)."""
    from pydantic import ValidationError

    from korlm.config import describe_error

    if not isinstance(data, dict):
        raise KorlmError(f"{source}: a task file is a mapping (name, type, format, ...)")
    try:
        declared = _task_file_model().model_validate(data)
    except ValidationError as exc:
        problems = [describe_error(e) if e["loc"] else e["msg"].removeprefix("Value error, ")
                    for e in exc.errors()]
        raise KorlmError(f"{source}: " + "; ".join(problems)) from None

    def locate(path: str) -> str:
        if base_dir and not storage.is_remote(path) and not path.startswith("/"):
            return storage.join(base_dir, path)
        return path

    files = {split: locate(getattr(declared, split)) for split in SPLITS
             if getattr(declared, split)}
    table = TableFormat(
        "squad" if declared.type == "extractive-qa" else declared.format,
        dict(declared.columns), declared.header,
        declared.quoting or ("csv" if declared.format == "csv" else "none"))
    labels = tuple(str(x) for x in declared.labels) if declared.labels else None
    tags = None
    if declared.type == "token-classification":
        tags = tagging.TaggingSpec(
            declared.scheme, "char" if declared.format == "klue-ner" else "word",
            declared.label_all_subwords, declared.separator, declared.outside,
            declared.tag_position)
        if labels:  # entity types: every tag of the scheme over them
            labels = tagging.label_names(labels, declared.scheme)
    return TaskSpec(
        declared.name, declared.description or f"user task from {source}", declared.type,
        tuple(declared.metrics or _DEFAULT_METRICS[declared.type]), table,
        (Layout(files),), folder=None, label_names=labels, tagging=tags)


def load_task_file(path: str) -> TaskSpec:
    """A user-declared task from a YAML file."""
    import yaml

    if not storage.exists(path):
        raise KorlmError(f"task file {path} does not exist")
    try:
        data = yaml.safe_load(storage.read_text(path))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise KorlmError(f"{path}: not valid YAML{where}") from None
    base = path.rsplit("/", 1)[0] if "/" in path else "."
    return task_from_dict(data, source=path, base_dir=base)
