"""gs:// through the storage layer, Beam and whole steps, against a real GCS emulator
(gcp-storage-emulator, started here: see tests/gcs_emulator.py)."""

from __future__ import annotations

import json
import uuid

import pytest

from korlm import storage
from korlm.cli import main as korlm_main
from tests import gcs_emulator
from tests.conftest import write_review_corpus


@pytest.fixture(scope="module")
def bucket():
    with gcs_emulator.running() as url:
        yield url


@pytest.fixture
def prefix(bucket):
    return f"{bucket}/{uuid.uuid4().hex[:8]}"


def _upload_dir(local_dir, remote: str) -> None:
    for path in sorted(local_dir.rglob("*")):
        if path.is_file():
            with storage.open_file(storage.join(remote, str(path.relative_to(local_dir))), "wb") as f:
                f.write(path.read_bytes())


def test_files_round_trip(prefix):
    storage.write_text(storage.join(prefix, "a", "문서.txt"), "안녕하세요\n")
    storage.write_text(storage.join(prefix, "a", "b.txt"), "x")
    assert storage.read_text(f"{prefix}/a/문서.txt") == "안녕하세요\n"
    assert storage.exists(f"{prefix}/a/b.txt") and not storage.exists(f"{prefix}/a/c.txt")
    assert storage.isdir(f"{prefix}/a") and not storage.isdir(f"{prefix}/a/b.txt")
    assert storage.glob(f"{prefix}/a/*.txt") == [f"{prefix}/a/b.txt", f"{prefix}/a/문서.txt"]
    assert storage.listdir(f"{prefix}/a") == ["b.txt", "문서.txt"]
    storage.remove_tree(f"{prefix}/a")
    assert not storage.exists(f"{prefix}/a/b.txt")


@pytest.mark.parametrize("stage_remote", [False, True])
def test_atomic_output_dir_on_gcs(prefix, stage_remote):
    target = f"{prefix}/artifact"
    with storage.atomic_output_dir(target, "vocab", stage_remote=stage_remote) as staging:
        storage.write_text(storage.join(staging, "sub", "a.json"), "{}")
        storage.write_text(storage.join(staging, "b.txt"), "가")
        assert not storage.exists(f"{target}/b.txt")
    assert storage.listdir(target) == ["_SUCCESS", "b.txt", "korlm_artifact.json", "sub"]
    assert storage.read_text(f"{target}/sub/a.json") == "{}"
    marker = json.loads(storage.read_text(f"{target}/korlm_artifact.json"))
    assert marker["step"] == "vocab" and marker["files"] == ["b.txt", "sub/a.json"]

    with pytest.raises(RuntimeError, match="killed"), \
            storage.atomic_output_dir(target, "vocab", overwrite=True, stage_remote=stage_remote) as staging:
        storage.write_text(storage.join(staging, "half.txt"), "half")
        raise RuntimeError("killed")
    # the complete artifact is untouched and no staging prefix is left behind
    assert storage.listdir(target) == ["_SUCCESS", "b.txt", "korlm_artifact.json", "sub"]
    assert storage.listdir(prefix) == ["artifact"]

    # without --overwrite an earlier artifact stays; with it, it is replaced whole
    with pytest.raises(storage.OutputRefused, match="already holds a korlm vocab output"), \
            storage.atomic_output_dir(target, "vocab", stage_remote=stage_remote):
        pass
    with storage.atomic_output_dir(target, "vocab", overwrite=True, stage_remote=stage_remote) as staging:
        storage.write_text(storage.join(staging, "c.txt"), "다")
    assert storage.listdir(target) == ["_SUCCESS", "c.txt", "korlm_artifact.json"]


def _foreign_prefix(prefix: str) -> dict[str, str]:
    objects = {f"{prefix}/out/notes.txt": "팀 메모", f"{prefix}/out/data/keep.csv": "a,b\n1,2\n"}
    for path, text in objects.items():
        storage.write_text(path, text)
    return objects


@pytest.mark.parametrize("stage_remote", [False, True])
def test_a_prefix_holding_foreign_objects_is_never_touched(prefix, stage_remote):
    objects = _foreign_prefix(prefix)
    for overwrite in (False, True):
        with pytest.raises(storage.OutputRefused, match="is not empty .*not a korlm clean output"), \
                storage.atomic_output_dir(f"{prefix}/out", "clean", overwrite=overwrite,
                                          stage_remote=stage_remote):
            pass
    assert {p: storage.read_text(p) for p in objects} == objects
    assert storage.listdir(prefix) == ["out"]
    # an object where the folder would go is not replaced either
    storage.write_text(f"{prefix}/single", "x")
    with pytest.raises(storage.OutputRefused, match="existing object"):
        storage.check_output(f"{prefix}/single", "clean", overwrite=True)
    assert storage.read_text(f"{prefix}/single") == "x"


def test_gcs_output_keeps_clear_of_gcs_inputs(prefix):
    storage.write_text(f"{prefix}/corpus/part-0.txt", "문장\n")
    with pytest.raises(storage.OutputRefused, match="contains the input"):
        storage.check_output(f"{prefix}/", "vocab", inputs=[f"{prefix}/corpus"])
    with pytest.raises(storage.OutputRefused, match="lies inside"):
        storage.check_output(f"{prefix}/corpus/tok", "vocab", inputs=[f"{prefix}/corpus/"])


def test_stale_remote_staging_is_removed(prefix):
    storage.write_text(f"{prefix}/.out.tmp-0123abcd/part-0.txt", "half")
    storage.write_text(f"{prefix}/.outer.tmp-0123abcd/part-0.txt", "another output's")
    with storage.atomic_output_dir(f"{prefix}/out", "clean", stage_remote=True) as staging:
        storage.write_text(storage.join(staging, "part-1.txt"), "x")
    assert storage.listdir(prefix) == [".outer.tmp-0123abcd", "out"]


def test_vocab_step_reads_and_writes_gs(prefix, tmp_path):
    write_review_corpus(tmp_path / "corpus", 800)
    _upload_dir(tmp_path / "corpus", f"{prefix}/corpus")
    code = korlm_main(["vocab", "--corpus", f"{prefix}/corpus", "--output", f"{prefix}/tokenizer",
                       "--vocab-size", "1000"])
    assert code in (0, None)
    names = storage.listdir(f"{prefix}/tokenizer")
    assert {"tokenizer.json", "vocab.txt", "vocab_stats.json", "_SUCCESS"} <= set(names)
    stats = json.loads(storage.read_text(f"{prefix}/tokenizer/vocab_stats.json"))
    assert stats["vocab_size"] == 1000

    from korlm.tokenizer import tokenization

    tok = tokenization.load(f"{prefix}/tokenizer")
    assert tok.get_vocab_size() == 1000
    assert tok.decode(tok.encode_ids(["정말 재미있는 영화였다"])[0]) == "정말 재미있는 영화였다"


def test_clean_step_in_beam_reads_and_writes_gs(prefix, tmp_path):
    raw = tmp_path / "raw.txt"
    raw.write_text("\n".join([
        "이 영화는 정말 재미있었고 배우들의 연기도 훌륭했다.",
        "문의는 hong@example.com 으로 보내 주세요 감사합니다 여러분.",
        "이 영화는 정말 재미있었고 배우들의 연기도 훌륭했다.",
        "짧음",
    ]) + "\n", encoding="utf-8")
    with storage.open_file(f"{prefix}/raw/reviews.txt", "wb") as f:
        f.write(raw.read_bytes())
    code = korlm_main(["clean", "--input", f"{prefix}/raw/reviews.txt", "--output", f"{prefix}/corpus"])
    assert code in (0, None)
    stats = json.loads(storage.read_text(f"{prefix}/corpus/stats.json"))
    assert stats["input_records"] == 4
    assert stats["input_records"] == stats["kept_records"] + stats["rejected_records"]
    text = "".join(storage.read_text(p) for p in storage.glob(f"{prefix}/corpus/part-*"))
    assert "hong@example.com" not in text and "<EMAIL>" in text
    assert text.count("배우들의 연기도 훌륭했다.") == 1
    assert storage.exists(f"{prefix}/corpus/_SUCCESS")
    # the staging prefix that Beam wrote into is gone
    assert [n for n in storage.listdir(prefix) if n.startswith(".")] == []


def test_checkpoint_carries_its_tokenizer_and_states_resume_on_gcs(prefix, tmp_path, capsys):
    """A gs:// run dir: a checkpoint holds its tokenizer (read back through the resolver),
    a state whose upload was cut short (no _SUCCESS) is skipped for the complete one, a
    checkpoint newer than the state is named, and the next save replaces them."""
    from korlm.errors import KorlmError
    from korlm.modeling.build import build_masked_lm
    from korlm.modeling.checkpoints import (
        checkpoint_info,
        read_tokenizer_files,
        resolve_tokenizer,
        save_checkpoint,
    )
    from korlm.pretrain.dataset import tokenizer_vocab_hash
    from korlm.pretrain.state import choose_resume_state, find_state, save_state
    from korlm.tokenizer import tokenization
    from tests.test_pretrain import build_tokenizer

    tok = build_tokenizer(tmp_path / "tok", num_sentences=100, vocab_size=300)
    vocab = tokenization.load(str(tok)).get_vocab_size()
    task = build_masked_lm("bert", "tiny", vocab, 16)
    run = f"{prefix}/run"
    ckpt = f"{run}/checkpoints/step-000004"
    save_checkpoint(task, ckpt, {"step": 4, "model": "bert", "size": "tiny",
                                        "vocab_size": vocab, "max_seq_length": 16},
                           tokenizer_files=read_tokenizer_files(str(tok)))
    assert set(storage.listdir(f"{ckpt}/tokenizer")) == {"tokenizer.json", "vocab.txt"}
    info = checkpoint_info(ckpt)
    assert info["tokenizer_vocab_hash"] == tokenizer_vocab_hash(str(tok))
    assert resolve_tokenizer(ckpt) == f"{ckpt}/tokenizer"
    assert tokenization.load(resolve_tokenizer(ckpt)).get_vocab_size() == vocab
    assert resolve_tokenizer(ckpt, str(tok)) == str(tok)
    other = build_tokenizer(tmp_path / "other", num_sentences=60, vocab_size=200)
    with pytest.raises(KorlmError, match="is not the vocabulary checkpoint"):
        resolve_tokenizer(ckpt, str(other))

    save_state(task, run, {"step": 2})
    assert set(storage.listdir(f"{run}/state/step-000002")) == {
        "_SUCCESS", "korlm_artifact.json", "model.weights.h5", "state.json"}
    # step 4's state, its upload killed before _SUCCESS
    with storage.open_file(f"{run}/state/step-000004/model.weights.h5", "wb") as f:
        f.write(b"part")
    storage.write_text(f"{run}/state/step-000004/state.json", json.dumps({"step": 4}))
    capsys.readouterr()
    state, where = choose_resume_state(run)
    printed = capsys.readouterr().out
    assert state["step"] == 2 and where == f"{run}/state/step-000002"
    assert (f"skipping training state {run}/state/step-000004: no _SUCCESS marker (its upload "
            "did not finish)") in printed
    assert ("checkpoint step-000004 is newer but holds no optimizer state, so steps 3-4 are "
            "retrained") in printed

    save_state(task, run, {"step": 4})
    assert storage.listdir(f"{run}/state") == ["step-000004"]
    chosen, skipped = find_state(run)
    assert chosen.step == 4 and not skipped
