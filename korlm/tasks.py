"""Downstream tasks a checkpoint is evaluated on: a registry of names, files and metrics.

Each task says where its splits live (file names under the task's data dir), how to read
them and which metric people report for it. ``nsmc`` is built; the others are known so
that a config naming them fails with the issue that tracks them, not with "unknown task".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from korlm import storage
from korlm.errors import KorlmError, NotBuiltError

# Issue that tracks the tasks beyond NSMC.
MORE_TASKS_ISSUE = 7


@dataclass
class TaskData:
    """One split: texts (and second texts for sentence pairs) with integer labels."""

    texts: list[str]
    labels: list[int]
    texts_b: list[str] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def head(self, n: int | None) -> TaskData:
        if n is None or n >= len(self):
            return self
        return TaskData(self.texts[:n], self.labels[:n],
                        None if self.texts_b is None else self.texts_b[:n])


@dataclass(frozen=True)
class TaskSpec:
    name: str
    description: str
    metric: str
    num_classes: int | None = None
    splits: dict[str, str] = field(default_factory=dict)  # split -> file name
    reader: Callable[[str], TaskData] | None = None  # None: designed, not built

    @property
    def built(self) -> bool:
        return self.reader is not None


def _read_nsmc(path: str) -> TaskData:
    import pandas as pd

    compression = "gzip" if path.endswith(".gz") else None
    with storage.open_file(path, "rb") as f:
        # Default quoting on purpose: it turns NSMC's `"""..."""` rows into the strings
        # every published NSMC number was computed on.
        frame = pd.read_csv(f, sep="\t", compression=compression,
                            dtype={"id": str, "document": str})
    missing = {"document", "label"} - set(frame.columns)
    if missing:
        raise KorlmError(f"{path}: missing column(s) {', '.join(sorted(missing))}; "
                         "expected tab-separated id, document, label with a header")
    labels = pd.to_numeric(frame["label"], errors="coerce")
    bad = ~labels.isin([0, 1])
    if bad.any():
        raise KorlmError(f"{path}: label must be 0 or 1, found {frame['label'][bad].iloc[0]!r} "
                         f"in row {int(bad.idxmax()) + 2}")
    return TaskData(frame["document"].fillna("").astype(str).tolist(),
                    labels.astype(int).tolist())


TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in [
    TaskSpec("nsmc", "Naver movie review sentiment, binary", "accuracy", 2,
             {"train": "ratings_train.txt", "test": "ratings_test.txt"}, _read_nsmc),
    TaskSpec("klue-nli", "KLUE natural language inference, 3-way", "accuracy", 3),
    TaskSpec("klue-sts", "KLUE semantic textual similarity 0-5", "pearson"),
    TaskSpec("korsts", "KorSTS semantic textual similarity 0-5", "spearman"),
    TaskSpec("kornli", "KorNLI (XNLI part) natural language inference, 3-way", "accuracy", 3),
    TaskSpec("question-pair", "Korean question pairs, paraphrase or not", "accuracy", 2),
    TaskSpec("hate-speech", "Korean hate speech: none / offensive / hate", "macro_f1", 3),
    TaskSpec("korquad", "KorQuAD 1.0 extractive question answering", "f1"),
]}


def known_tasks() -> list[str]:
    return list(TASKS)


def get_task(name: str) -> TaskSpec:
    """The built task called ``name``; KorlmError for unknown names, NotBuiltError for
    known ones without a reader yet."""
    spec = TASKS.get(name)
    if spec is None:
        raise KorlmError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    if not spec.built:
        raise NotBuiltError(f"task {name!r}", MORE_TASKS_ISSUE)
    return spec


def split_path(spec: TaskSpec, data_dir: str, split: str) -> str:
    """Path of a split's file: ``data_dir/<file>`` or ``data_dir/<task>/<file>``,
    gzipped or not."""
    name = spec.splits[split]
    for folder in (data_dir, storage.join(data_dir, spec.name)):
        for candidate in (name, name + ".gz"):
            path = storage.join(folder, candidate)
            if storage.exists(path):
                return path
    raise KorlmError(f"{spec.name} {split} data not found: {storage.join(data_dir, name)} "
                     f"(also looked for .gz and under {spec.name}/)")


def load_split(spec: TaskSpec, data_dir: str, split: str,
               max_examples: int | None = None) -> TaskData:
    """The first ``max_examples`` rows of a split (file order; NSMC files are shuffled)."""
    data = spec.reader(split_path(spec, data_dir, split))
    if not len(data):
        raise KorlmError(f"{spec.name} {split} split in {data_dir} is empty")
    return data.head(max_examples)
