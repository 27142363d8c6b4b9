"""EDA augmentation over Korean morphemes (korlm.evaluation.augment): counts, determinism, the
morpheme rules, edge cases and errors. Real Kiwi, real koeda WordNet."""

from __future__ import annotations

import importlib.metadata

import pytest

from korlm.errors import KorlmError
from korlm.evaluation import augment
from korlm.evaluation.augment import AugmentStats, augment_task_data, noun_synonyms
from korlm.evaluation.tasks import TaskData, get_task
from korlm.tokenizer.morpheme import shared_kiwi

REVIEWS = [
    "배우들의 연기가 정말 돋보였던 영화였다.",
    "스토리는 지루하고 결말은 너무 뻔했다.",
    "이 영화는 정말 안 좋다",
    "사람은 좋은데 영화는 재미없다.",
    "음악과 영상이 아름다운 작품",
    "최고",
]


def _reviews(n_copies: int = 1) -> TaskData:
    texts = REVIEWS * n_copies
    return TaskData(texts, [i % 2 for i in range(len(texts))],
                    ids=[f"r{i}" for i in range(len(texts))], groups=list(range(len(texts))))


def _tags(text: str) -> list[tuple[str, str]]:
    return [(t.form, t.tag) for t in shared_kiwi().tokenize(text)]


def test_counts_labels_ids_and_originals_first():
    data = _reviews()
    stats = AugmentStats()
    out = augment_task_data(data, seed=0, num_aug=3, stats=stats)
    n = len(data)
    assert len(out) == n * 4 and len(out.labels) == len(out.ids) == len(out.groups) == n * 4
    assert out.texts_b is None
    for i in range(n):
        block = slice(4 * i, 4 * i + 4)
        assert out.texts[4 * i] == data.texts[i]  # the original, untouched, first
        assert out.labels[block] == [data.labels[i]] * 4
        assert out.groups[block] == [data.groups[i]] * 4
        assert out.ids[block] == [f"r{i}", f"r{i}#aug1", f"r{i}#aug2", f"r{i}#aug3"]
    assert stats.originals == n and stats.copies == 3 * n
    assert sum(stats.by_operation.values()) == 3 * n
    # most copies differ from their original (one-word "최고" is the expected exception)
    assert stats.unchanged < stats.copies / 2
    assert all(t.strip() for t in out.texts)


def test_deterministic_for_a_seed_and_different_across_seeds():
    data = _reviews(2)
    first = augment_task_data(data, seed=7, num_aug=4)
    again = augment_task_data(data, seed=7, num_aug=4)
    other = augment_task_data(data, seed=8, num_aug=4)
    assert first.texts == again.texts and first.ids == again.ids
    assert first.texts != other.texts
    # a row's copies depend on the row's position, not on the rest of the data
    alone = augment_task_data(data.take([0]), seed=7, num_aug=4)
    assert alone.texts == first.texts[:5]


def test_synonym_replacement_keeps_particles_and_picks_their_allomorph():
    synonyms = noun_synonyms()
    assert "인간" in synonyms["사람"] and "사람" not in synonyms["사람"]
    assert all(len(w) >= 2 for w in synonyms["영화"])  # one-syllable homographs dropped
    data = TaskData(["사람은 좋다"] * 12, [1] * 12)
    out = augment_task_data(data, seed=1, num_aug=1, alpha_ri=0, alpha_rs=0, p_rd=0)
    copies = out.texts[1::2]
    assert len(set(copies)) > 3
    for copy in copies:
        word, predicate = copy.split()
        noun, particle = word[:-1], word[-1]
        assert noun in synonyms["사람"] and predicate == "좋다"
        # 은 after a final consonant, 는 after a vowel: Kiwi's join chose the allomorph
        assert particle == ("은" if (ord(noun[-1]) - 0xAC00) % 28 else "는")
    assert any(c.endswith("는 좋다") for c in copies) and any(c.endswith("은 좋다") for c in copies)


def test_random_swap_moves_content_morphemes_only():
    texts = ["학생이 책을 읽었다", "배우가 연기를 잘하고 감독이 연출을 잘했다"]
    data = TaskData(texts, [0, 1])
    out = augment_task_data(data, seed=3, num_aug=6, alpha_sr=0, alpha_ri=0, p_rd=0)
    for i, text in enumerate(texts):
        grammar = [t for t in _tags(text) if t[1][0] in "JE"]
        content = sorted(f for f, t in _tags(text) if t.split("-")[0] in ("NNG", "VV", "VA"))
        for copy in out.texts[7 * i + 1: 7 * i + 7]:
            assert copy != text
            # same particles and endings in the same order; the nouns/verbs permuted
            assert [t[1] for t in _tags(copy) if t[1][0] in "JE"] == [t[1] for t in grammar]
            assert sorted(f for f, t in _tags(copy)
                          if t.split("-")[0] in ("NNG", "VV", "VA")) == content
    assert "책이 학생을 읽었다" in out.texts[1:7]


def test_random_deletion_drops_whole_argument_words_and_keeps_predicates_and_negation():
    data = TaskData(["이 영화는 정말 안 좋다", "배우들의 연기가 돋보였다"], [0, 1])
    out = augment_task_data(data, seed=0, num_aug=2, alpha_sr=0, alpha_ri=0, alpha_rs=0,
                            p_rd=1.0)
    # p_rd=1: every noun/adverb word goes with its particles; 이 (determiner), the
    # negation 안 and the predicates stay
    assert out.texts[1:3] == ["이 안 좋다"] * 2
    assert out.texts[4:6] == ["돋보였다"] * 2


def test_edge_cases_one_word_empty_and_nothing_to_edit():
    data = TaskData(["최고", "", "   ", "ㅋㅋㅋ", "안 좋다"], [1, 0, 0, 1, 0])
    stats = AugmentStats()
    out = augment_task_data(data, seed=0, num_aug=4, alpha_sr=0.5, alpha_ri=0, alpha_rs=0.5,
                            p_rd=1.0, stats=stats)
    assert len(out) == 25
    # deleting the only word would leave nothing: the copy is the original; a single
    # content morpheme cannot swap; empty text stays empty; polarity words are never
    # edited
    for i, text in enumerate(data.texts):
        copies = out.texts[5 * i: 5 * i + 5]
        if text != "최고":
            assert copies == [text] * 5
        else:
            assert all(c == "최고" or c in noun_synonyms()["최고"] for c in copies)
    assert stats.unchanged >= 16


def test_pair_tasks_alternate_sides_by_default():
    data = TaskData(["배우들의 연기가 정말 돋보였다"] * 2, [0, 2],
                    texts_b=["음악과 영상이 정말 아름다운 작품이다"] * 2)
    out = augment_task_data(data, seed=5, num_aug=4, alpha_sr=0, alpha_ri=0, p_rd=0)
    assert len(out.texts_b) == 10 and out.labels == [0] * 5 + [2] * 5
    for i in range(2):
        a, b = out.texts[5 * i: 5 * i + 5], out.texts_b[5 * i: 5 * i + 5]
        for k in range(1, 5):
            edited_a, edited_b = a[k] != data.texts[i], b[k] != data.texts_b[i]
            # copy k edits text_a when k is odd (first copy = k 1 = index 0), else text_b
            assert (edited_a, edited_b) == ((True, False) if k % 2 else (False, True))
    both = augment_task_data(data, seed=5, num_aug=2, alpha_sr=0, alpha_ri=0, p_rd=0,
                             pair_side="both")
    assert both.texts[1] != data.texts[0] and both.texts_b[1] != data.texts_b[0]
    only_b = augment_task_data(data, seed=5, num_aug=2, alpha_sr=0, alpha_ri=0, p_rd=0,
                               pair_side="b")
    assert only_b.texts == data.texts[:1] * 3 + data.texts[1:] * 3


def test_regression_labels_are_copied():
    data = TaskData(["배우들의 연기가 돋보였다"], [3.6], texts_b=["연기가 좋았다"])
    out = augment_task_data(data, seed=0, num_aug=2)
    assert out.labels == [3.6, 3.6, 3.6]


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "backtranslation"}, "unknown augmentation method 'backtranslation'"),
    ({"alpha_sr": 1.5}, "alpha_sr must be a number in [0, 1]"),
    ({"p_rd": -0.1}, "p_rd must be a number in [0, 1]"),
    ({"alpha_rs": float("nan")}, "alpha_rs must be a number in [0, 1]"),
    ({"alpha_ri": "0.1"}, "alpha_ri must be a number in [0, 1]"),
    ({"num_aug": 0}, "num_aug must be an integer >= 1"),
    ({"num_aug": 2.5}, "num_aug must be an integer >= 1"),
    ({"alpha_sr": 0, "alpha_ri": 0, "alpha_rs": 0, "p_rd": 0}, "no operation is enabled"),
    ({"pair_side": "left"}, "pair_side must be one of alternate, a, b, both"),
    ({"alpha": 0.1}, "unknown augment setting(s): alpha"),
])
def test_bad_settings_are_one_line_errors(kwargs, message):
    with pytest.raises(KorlmError) as err:
        augment_task_data(TaskData(["영화 최고"], [1]), seed=0, **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_extractive_qa_is_refused():
    qa = TaskData(["주인공은 누구인가?"], [[{"text": "철수", "answer_start": 0}]],
                  texts_b=["철수가 주인공이다."])
    with pytest.raises(KorlmError, match="extractive QA.*answer offsets"):
        augment_task_data(qa, seed=0)
    # by the task type too, whatever the labels look like
    with pytest.raises(KorlmError, match="extractive QA"):
        augment_task_data(TaskData(["a"], [0]), seed=0, spec=get_task("korquad"))


def test_missing_wordnet_package_is_a_clear_error(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(augment, "_SYNONYMS", None)
    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(KorlmError, match=r"pip install --no-deps koeda==0\.0\.4"):
        augment_task_data(TaskData(["영화 최고"], [1]), seed=0)
    # swap and deletion need no synonyms
    out = augment_task_data(TaskData(["배우는 좋고 영화는 별로"], [1]), seed=0, alpha_sr=0,
                            alpha_ri=0)
    assert len(out) == 5


def test_config_validates_the_augment_section():
    from korlm.config import ConfigError, validate

    cfg = validate({"evaluate": {"augment": {"num_aug": 2, "p_rd": 0.2}}})
    assert cfg.evaluate.augment.num_aug == 2 and cfg.evaluate.augment.alpha_sr == 0.1
    assert validate({}).evaluate.augment is None
    # the section's settings are exactly augment_task_data's keyword arguments
    out = augment_task_data(TaskData(["배우는 좋고 영화는 별로"], [1]), seed=0,
                            **cfg.evaluate.augment.model_dump())
    assert len(out) == 3
    for bad, key in (({"alpha_sr": 2}, "alpha_sr"), ({"method": "x"}, "method"),
                     ({"alpha_sr": 0, "alpha_ri": 0, "alpha_rs": 0, "p_rd": 0}, "augment"),
                     ({"num_aug": 0}, "num_aug"), ({"typo": 1}, "typo")):
        with pytest.raises(ConfigError, match=key):
            validate({"evaluate": {"augment": bad}})


def test_cli_flags_turn_augmentation_on_over_the_config(tmp_path):
    from korlm import cli, config

    def params(argv, conf):
        args = cli.build_parser().parse_args(
            ["finetune", "--checkpoint", "c", "--task", "nsmc", "--output", "o", *argv])
        return cli._fine_tune_params(args, conf)

    plain = config.validate({})
    assert params([], plain)["augment"] is None
    assert params(["--augment", "eda", "--num-aug", "2"], plain)["augment"] == {
        "method": "eda", "num_aug": 2, "alpha_sr": 0.1, "alpha_ri": 0.1, "alpha_rs": 0.1,
        "p_rd": 0.1, "pair_side": "alternate"}
    configured = config.validate({"evaluate": {"augment": {"num_aug": 2, "p_rd": 0.3}}})
    assert params(["--num-aug", "6"], configured)["augment"]["p_rd"] == 0.3
    assert params(["--num-aug", "6"], configured)["augment"]["num_aug"] == 6
    with pytest.raises(KorlmError, match="--num-aug needs --augment eda"):
        params(["--num-aug", "3"], plain)
    with pytest.raises(KorlmError, match="num_aug"):
        params(["--augment", "eda", "--num-aug", "0"], plain)


@pytest.mark.slow
def test_fine_tune_trains_on_the_augmented_split_only(tmp_path):
    """End to end through the fine-tuning API: a tiny checkpoint, 40 NSMC rows."""
    from korlm.evaluation import evaluate, tasks
    from korlm.pretrain.train import run_pretrain
    from tests.test_evaluate import write_nsmc_slice
    from tests.test_pretrain import build_tokenizer, write_pretraining_data

    tokenizer_dir = build_tokenizer(tmp_path / "tokenizer")
    data_dir = write_pretraining_data(tmp_path / "examples", tokenizer_dir, num_examples=32,
                                      max_seq_length=32)
    checkpoint = run_pretrain(str(data_dir), str(tokenizer_dir), str(tmp_path / "run"),
                                       steps=2, checkpoint_every=2, batch_size=8)[-1]["uri"]
    nsmc = write_nsmc_slice(tmp_path / "nsmc", num_train=60, num_test=40)
    tuned = evaluate.fine_tune(checkpoint, str(tokenizer_dir), "nsmc", str(nsmc),
                               max_train_examples=40, max_eval_examples=20, epochs=1,
                               batch_size=16, max_seq_length=32,
                               augment={"method": "eda", "num_aug": 2, "p_rd": 0.2})
    record = tuned.record
    assert record["num_train"] == 40 and record["fine_tune"]["num_train_augmented"] == 120
    assert record["fine_tune"]["augment"]["num_aug"] == 2
    # dev (best epoch) and test are never augmented
    plain = tasks.load_task(get_task("nsmc"), str(nsmc), max_train_examples=40,
                            max_eval_examples=20)
    assert record["splits"]["dev"]["used"] == len(plain.dev) and record["num_eval"] == 20
