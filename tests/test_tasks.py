"""Task loaders (built-in formats, user YAML tasks) and their errors on bad input."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from korlm.errors import KorlmError
from korlm.evaluation import tasks

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(),
                                  reason=f"shared data kit not found at {SHARED}")


def load(name, data_dir=SHARED, **kw):
    return tasks.load_task(tasks.get_task(name), str(data_dir), **kw)


@needs_shared
@pytest.mark.parametrize("name,sizes,note", [
    ("klue-nli", (22498, 2500, 3000), "KLUE test labels are not public"),
    ("klue-sts", (363, 52, 104), "not comparable to published KLUE-STS"),
    ("korsts", (5749, 1500, 1379), ""),
    ("kornli", (2241, 249, 5010), "fine-tuned on xnli.dev.ko"),
    ("question-pair", (6136, 682, 758), ""),
    ("hate-speech", (7106, 790, 471), "official dev set"),
    ("hate-speech-bias", (7106, 790, 471), "official dev set"),
    ("chatbot", (8276, 1182, 2365), "no official split"),
])
def test_builtin_tasks_read_the_shared_data_kit(name, sizes, note):
    splits = load(name, max_train_examples=5, max_eval_examples=5)
    assert tuple(splits.sizes[s] for s in tasks.SPLITS) == sizes
    assert note in splits.split_note
    assert len(splits.train) == len(splits.test) == 5
    spec = splits.spec
    if spec.is_classification:
        assert all(0 <= y < spec.num_classes for y in splits.train.labels + splits.test.labels)
    else:
        assert all(0.0 <= y <= 5.0 for y in splits.train.labels)
    assert (splits.train.texts_b is not None) == (spec.type != "classification")
    if spec.is_classification:  # capped splits are samples, not one-label file prefixes
        bigger = load(name, max_train_examples=200)
        assert len(set(bigger.train.labels)) > 1
        assert set(splits.train.texts) <= set(bigger.train.texts)


@needs_shared
def test_known_rows_of_the_real_files():
    nli = load("klue-nli").test
    assert nli.texts[0].startswith("흡연자분들은 발코니가")
    assert nli.labels[0] == 2  # contradiction
    sts = load("korsts").test
    assert sts.labels[0] == 2.5 and sts.texts[0].startswith("한 소녀가 머리를 스타일링")
    hate = load("hate-speech").test
    bias = load("hate-speech-bias").test
    assert hate.texts[:2] == bias.texts[:2]
    assert hate.labels[1] == 1 and bias.labels[1] == 0  # "지현우 나쁜놈": offensive, no bias


@needs_shared
def test_question_pair_zero_means_same():
    splits = load("question-pair")
    names = splits.spec.label_names
    first = splits.train  # row 1: identical questions, is_duplicate = 0
    assert first.texts[0] == first.texts_b[0]
    assert names[first.labels[0]] == "same"
    test = splits.test  # row 1 of test.txt: different questions, is_duplicate = 1
    assert names[test.labels[0]] == "different"


def test_question_pair_mapping_on_a_small_file(tmp_path):
    folder = tmp_path / "question-pair"
    folder.mkdir()
    rows = "question1\tquestion2\tis_duplicate\n밥 먹었어?\t밥 먹었어?\t0\n밥 먹었어?\t잘 자\t1\n"
    for name in ("train.txt", "validation.txt", "test.txt"):
        (folder / name).write_text(rows, encoding="utf-8")
    splits = load("question-pair", tmp_path)
    assert [splits.spec.label_names[y] for y in splits.test.labels] == ["same", "different"]


@needs_shared
def test_korquad_dev_split_by_article():
    splits = load("korquad", max_train_examples=3, max_eval_examples=3)
    assert "split by article" in splits.split_note
    assert sum(splits.sizes.values()) == 5774
    # no article is on two sides of the derived split
    full = tasks.load_task(tasks.get_task("korquad"), str(SHARED))
    train_groups, test_groups = set(full.train.groups), set(full.test.groups)
    assert train_groups and test_groups and not train_groups & test_groups
    answer = splits.train.labels[0][0]
    context = splits.train.texts_b[0]
    assert context[answer["answer_start"]:].startswith(answer["text"])


def test_gzip_files_are_read_transparently(tmp_path):
    folder = tmp_path / "korsts"
    folder.mkdir()
    header = "genre\tfilename\tyear\tid\tscore\tsentence1\tsentence2\n"
    row = 'main\tx\t2012\t1\t{}\t그가 "안녕" 했다.\t그는 인사했다.\n'
    with gzip.open(folder / "sts-train.tsv.gz", "wt", encoding="utf-8") as f:
        f.write(header + row.format("4.5") + row.format("1.0"))
    (folder / "sts-dev.tsv").write_text(header + row.format("3"), encoding="utf-8")
    (folder / "sts-test.tsv").write_text(header + row.format("2"), encoding="utf-8")
    splits = load("korsts", tmp_path)
    assert splits.train.labels == [4.5, 1.0]
    assert splits.train.texts[0] == '그가 "안녕" 했다.'  # quotes are text in KorSTS
    assert splits.files["train"].endswith("sts-train.tsv.gz")


# --- user-declared tasks ---

def write_task(tmp_path: Path, yaml_text: str, files: dict[str, str]) -> str:
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    (tmp_path / "task.yaml").write_text(yaml_text, encoding="utf-8")
    return str(tmp_path / "task.yaml")


TSV = "label\treview\npos\t좋아요\nneg\t별로\npos\t최고\nneg\t지루함\n"


def test_yaml_task_by_column_name_and_by_index(tmp_path):
    path = write_task(tmp_path, (
        "name: my-intent\ntype: classification\nformat: tsv\nheader: true\n"
        "columns: {text: review, label: label}\ntrain: train.tsv\ntest: test.tsv\n"
        "metrics: [accuracy, macro_f1]\n"), {"train.tsv": TSV, "test.tsv": TSV})
    spec = tasks.get_task(path)
    assert spec.name == "my-intent" and spec.metrics == ("accuracy", "macro_f1")
    splits = tasks.load_task(spec)
    assert splits.spec.label_names == ("neg", "pos")
    assert splits.test.labels == [1, 0, 1, 0] and splits.test.texts[0] == "좋아요"
    assert len(splits.dev) == 1 and "held out" in splits.split_note

    no_header = TSV.split("\n", 1)[1]
    path = write_task(tmp_path, (
        "name: by-index\ntype: classification\nformat: csv\nheader: false\n"
        "columns: {text: 1, label: 0}\ntrain: a.csv\ndev: a.csv\ntest: a.csv\n"
        "labels: [neg, pos]\n"), {"a.csv": no_header.replace("\t", ",")})
    splits = tasks.load_task(tasks.get_task(path))
    assert splits.test.texts == ["좋아요", "별로", "최고", "지루함"] and splits.split_note == ""


def test_yaml_task_jsonl_regression(tmp_path):
    rows = "".join(json.dumps({"q": f"문장 {i}", "p": "비교", "s": {"v": i / 2}}) + "\n"
                   for i in range(6))
    path = write_task(tmp_path, (
        "name: sim\ntype: regression\nformat: jsonl\n"
        "columns: {text_a: q, text_b: p, label: s.v}\ntrain: r.jsonl\ntest: r.jsonl\n"
        "metrics: [spearman]\n"), {"r.jsonl": rows})
    splits = tasks.load_task(tasks.get_task(path))
    assert splits.test.labels == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    assert splits.test.texts_b[0] == "비교"


@pytest.mark.parametrize("yaml_text,message", [
    ("type: classification\nformat: tsv\ncolumns: {text: 0, lable: 1}\n",
     "columns.lable: not a column role of a classification task"),
    ("type: classifier\nformat: tsv\ncolumns: {text: 0, label: 1}\n", "type: input should be"),
    ("type: classification\nformat: tsv\ncolumns: {text: 0, label: 1}\nmetrics: [pearson]\n",
     "metrics: 'pearson' is not a classification metric"),
    ("type: classification\nformat: xlsx\ncolumns: {text: 0, label: 1}\n", "format: input"),
    ("type: classification\nformat: tsv\nheader: false\ncolumns: {text: review, label: 1}\n",
     "columns.text: 'review' is a column name but header is false"),
    ("type: pair-classification\nformat: tsv\ncolumns: {text: 0, label: 1}\n",
     "columns.text: not a column role of a pair-classification task"),
    ("type: pair-classification\nformat: tsv\ncolumns: {text_a: 0, label: 1}\n",
     "columns: a pair-classification task needs {label, text_a, text_b}"),
    ("type: classification\nformat: tsv\ncolumns: {text: 0, label: 1}\nepochs: 3\n",
     "epochs: unknown key"),
])
def test_yaml_task_errors_name_the_key(tmp_path, yaml_text, message):
    path = write_task(tmp_path, "name: t\ntrain: a.tsv\ntest: a.tsv\n" + yaml_text, {})
    with pytest.raises(KorlmError, match="task.yaml: ") as err:
        tasks.get_task(path)
    assert message in str(err.value).lower() and "\n" not in str(err.value)


def test_yaml_task_wrong_column_name_in_the_file(tmp_path):
    path = write_task(tmp_path, (
        "name: t\ntype: classification\nformat: tsv\ncolumns: {text: reviews, label: label}\n"
        "train: a.tsv\ntest: a.tsv\n"), {"a.tsv": TSV})
    with pytest.raises(KorlmError, match=r"a.tsv: column 'reviews' \(columns.text\) is not in "
                                         r"the header \['label', 'review'\]"):
        tasks.load_task(tasks.get_task(path))


# --- bad input ---

def test_missing_split_file(tmp_path):
    path = write_task(tmp_path, (
        "name: t\ntype: classification\nformat: tsv\ncolumns: {text: review, label: label}\n"
        "train: a.tsv\ntest: missing.tsv\n"), {"a.tsv": TSV})
    with pytest.raises(KorlmError, match="t data not found: .*missing.tsv"):
        tasks.load_task(tasks.get_task(path))
    with pytest.raises(KorlmError, match="klue-nli data not found: .*klue-nli-v1.1_train.json"):
        load("klue-nli", tmp_path)


def test_empty_file(tmp_path):
    path = write_task(tmp_path, (
        "name: t\ntype: classification\nformat: tsv\ncolumns: {text: review, label: label}\n"
        "train: a.tsv\ntest: empty.tsv\n"), {"a.tsv": TSV, "empty.tsv": ""})
    with pytest.raises(KorlmError, match="empty.tsv is empty"):
        tasks.load_task(tasks.get_task(path))
    (tmp_path / "empty.tsv").write_text("label\treview\n")
    with pytest.raises(KorlmError, match="empty.tsv has no examples"):
        tasks.load_task(tasks.get_task(path))


def test_labels_outside_the_declared_set(tmp_path):
    path = write_task(tmp_path, (
        "name: t\ntype: classification\nformat: tsv\ncolumns: {text: review, label: label}\n"
        "train: a.tsv\ntest: b.tsv\nlabels: [neg, pos]\n"),
        {"a.tsv": TSV, "b.tsv": TSV + "neutral\t그냥 그래요\n"})
    with pytest.raises(KorlmError, match=r"b.tsv: example 5: label 'neutral' is not in the "
                                         r"declared label set \['neg', 'pos'\]"):
        tasks.load_task(tasks.get_task(path))
    # undeclared: the train split's labels are the set
    (tmp_path / "task.yaml").write_text(
        (tmp_path / "task.yaml").read_text().replace("labels: [neg, pos]\n", ""))
    with pytest.raises(KorlmError, match="label 'neutral' is not in"):
        tasks.load_task(tasks.get_task(str(tmp_path / "task.yaml")))
    # a built-in task with a fixed label set
    folder = tmp_path / "korean-hate-speech"
    folder.mkdir()
    good = "comments\tcontain_gender_bias\tbias\thate\n좋아요\tFalse\tnone\tnone\n" \
           "나빠요\tFalse\tnone\toffensive\n"
    (folder / "train.tsv").write_text(good)
    (folder / "dev.tsv").write_text(good + "뭐야\tFalse\tnone\tspam\n")
    with pytest.raises(KorlmError, match=r"dev.tsv: example 3: label 'spam'"):
        load("hate-speech", tmp_path)


def test_nan_and_non_numeric_scores_name_the_row(tmp_path):
    header = "genre\tfilename\tyear\tid\tscore\tsentence1\tsentence2\n"
    folder = tmp_path / "korsts"
    folder.mkdir()
    (folder / "sts-train.tsv").write_text(header + "g\tf\ty\t1\t3.0\ta\tb\n"
                                          "g\tf\ty\t2\tNaN\ta\tb\n")
    (folder / "sts-dev.tsv").write_text(header + "g\tf\ty\t1\t3.0\ta\tb\n")
    (folder / "sts-test.tsv").write_text(header + "g\tf\ty\t1\tabc\ta\tb\n")
    with pytest.raises(KorlmError, match=r"sts-train.tsv: line 3: score 'NaN' is not a finite"):
        load("korsts", tmp_path)
    (folder / "sts-train.tsv").write_text(header + "g\tf\ty\t1\t3.0\ta\tb\n")
    with pytest.raises(KorlmError, match=r"sts-test.tsv: line 2: score 'abc' is not a number"):
        load("korsts", tmp_path)
    (folder / "sts-test.tsv").write_text(header + "g\tf\ty\t1\n")
    with pytest.raises(KorlmError, match=r"sts-test.tsv: line 2 has 4 column\(s\)"):
        load("korsts", tmp_path)


def test_bad_json_and_squad(tmp_path):
    path = write_task(tmp_path, (
        "name: t\ntype: regression\nformat: jsonl\ncolumns: {text: t, label: y}\n"
        "train: a.jsonl\ntest: a.jsonl\n"), {"a.jsonl": '{"t": "가", "y": 1}\n{"t": "나"\n'})
    with pytest.raises(KorlmError, match="a.jsonl: line 2 is not valid JSON"):
        tasks.load_task(tasks.get_task(path))
    squad = {"data": [{"paragraphs": [{"context": "서울은 수도이다.", "qas": [
        {"id": "1", "question": "수도는?", "answers": [{"text": "부산", "answer_start": 0}]}]}]}]}
    path = write_task(tmp_path, "name: q\ntype: extractive-qa\nformat: json\ntrain: s.json\n"
                      "test: s.json\n", {"s.json": json.dumps(squad, ensure_ascii=False)})
    with pytest.raises(KorlmError, match=r"s.json: data\[0\].paragraphs\[0\].qas\[0\]: answer "
                                         r"'부산' is not at answer_start 0"):
        tasks.load_task(tasks.get_task(path))


def test_per_task_settings_override_the_section():
    from korlm import config
    from korlm.evaluation.evaluate import settings_for_task

    section = config.validate({"evaluate": {"max_seq_length": 64, "per_task": {
        "korquad": {"max_seq_length": 128, "doc_stride": 32}}}}).evaluate
    params = section.model_dump(exclude={"tasks", "data_dir", "parallelism"})
    quad = settings_for_task(params, "korquad")
    assert quad["max_seq_length"] == 128 and quad["doc_stride"] == 32 and "per_task" not in quad
    assert settings_for_task(params, "nsmc")["max_seq_length"] == 64
    assert settings_for_task(params, "tasks/korquad.yaml")["max_seq_length"] == 128
    with pytest.raises(config.ConfigError, match="evaluate.per_task.korquad.batch_size"):
        config.validate({"evaluate": {"per_task": {"korquad": {"batch_size": 0}}}})


def test_remote_uris_through_korlm_storage(tmp_path):
    """A remote filesystem (fsspec's memory://, standing in for gs://) with gzip."""
    import fsspec

    fs = fsspec.filesystem("memory")
    header = "question1\tquestion2\tis_duplicate\n"
    with fs.open("/e7/question-pair/train.txt", "wb") as f:
        f.write((header + "가\t가\t0\n가\t나\t1\n").encode())
    for name in ("validation.txt", "test.txt.gz"):
        with fs.open(f"/e7/question-pair/{name}", "wb") as f:
            data = (header + "다\t라\t1\n").encode()
            f.write(gzip.compress(data) if name.endswith(".gz") else data)
    splits = load("question-pair", "memory://e7")
    assert splits.files["test"] == "memory://e7/question-pair/test.txt.gz"
    assert splits.test.texts == ["다"] and splits.train.labels == [1, 0]
    fs.rm("/e7", recursive=True)
