"""Local side of the storage layer: atomic artifact directories and output safety
(korlm never deletes or replaces what it did not write).
(gs:// runs against a GCS emulator in tests/test_storage_gcs.py.)"""

import json
import os

import pytest

from korlm import storage


def _tree(root) -> dict[str, bytes]:
    """Every file under root with its bytes (to prove nothing was touched)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _publish(target, step="vocab", files=None, **kwargs):
    with storage.atomic_output_dir(str(target), step, **kwargs) as staging:
        for name, text in (files or {"a.txt": "가나다"}).items():
            storage.write_text(storage.join(staging, name), text)


def test_atomic_dir_publishes_only_on_success(tmp_path):
    target = tmp_path / "artifact"
    with storage.atomic_output_dir(str(target), "vocab") as staging:
        assert not target.exists()
        storage.write_text(storage.join(staging, "a.txt"), "가나다")
    assert (target / "a.txt").read_text(encoding="utf-8") == "가나다"
    assert sorted(os.listdir(target)) == ["_SUCCESS", "a.txt", "korlm_artifact.json"]
    marker = json.loads((target / "korlm_artifact.json").read_text())
    assert marker["step"] == "vocab" and marker["files"] == ["a.txt"]
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []

    with pytest.raises(RuntimeError), \
            storage.atomic_output_dir(str(target), "vocab", overwrite=True) as staging:
        storage.write_text(storage.join(staging, "b.txt"), "half")
        raise RuntimeError("killed")
    # the earlier complete artifact is untouched and no staging dir is left behind
    assert sorted(os.listdir(target)) == ["_SUCCESS", "a.txt", "korlm_artifact.json"]
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []


def test_atomic_dir_fills_a_precreated_empty_dir_in_place(tmp_path):
    # KFP may create an output artifact's directory (even a mount point) before the task runs
    target = tmp_path / "out"
    target.mkdir()
    inode = target.stat().st_ino
    _publish(target, files={"x.json": "{}"})
    assert sorted(os.listdir(target)) == ["_SUCCESS", "korlm_artifact.json", "x.json"]
    assert target.stat().st_ino == inode


def test_own_artifact_needs_overwrite_and_is_then_replaced(tmp_path):
    target = tmp_path / "vocab"
    _publish(target, files={"old.txt": "1"})
    with pytest.raises(storage.OutputRefused, match="already holds a korlm vocab output.*--overwrite"):
        _publish(target, files={"new.txt": "2"})
    assert (target / "old.txt").exists()
    _publish(target, files={"new.txt": "2"}, overwrite=True)
    assert sorted(os.listdir(target)) == ["_SUCCESS", "korlm_artifact.json", "new.txt"]
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_users_folder_is_never_touched(tmp_path, overwrite):
    target = tmp_path / "notes"
    (target / "sub").mkdir(parents=True)
    (target / "todo.md").write_text("내 메모", encoding="utf-8")
    (target / "sub" / "data.bin").write_bytes(os.urandom(100))
    before = _tree(target)
    with pytest.raises(storage.OutputRefused, match="is not empty .*2 files.*todo.md.*not a korlm vocab output"):
        _publish(target, overwrite=overwrite)
    assert _tree(target) == before
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_regular_file_is_never_replaced(tmp_path, overwrite):
    target = tmp_path / "paper.txt"
    target.write_text("논문 초안", encoding="utf-8")
    with pytest.raises(storage.OutputRefused, match="is an existing file, not a folder"):
        _publish(target, overwrite=overwrite)
    assert target.read_text(encoding="utf-8") == "논문 초안"


def test_another_steps_artifact_is_refused_even_with_overwrite(tmp_path):
    target = tmp_path / "corpus"
    _publish(target, step="clean")
    before = _tree(target)
    with pytest.raises(storage.OutputRefused, match="holds a korlm clean output, not vocab"):
        _publish(target, step="vocab", overwrite=True)
    assert _tree(target) == before


def test_overwrite_refuses_an_artifact_holding_a_users_file(tmp_path):
    target = tmp_path / "vocab"
    _publish(target)
    (target / "my-notes.txt").write_text("x")
    before = _tree(target)
    with pytest.raises(storage.OutputRefused, match="also holds files korlm did not write \\(my-notes.txt\\)"):
        _publish(target, overwrite=True)
    assert _tree(target) == before


def test_nested_korlm_artifacts_count_as_korlms_own(tmp_path):
    # pretrain-data writes seq<N>/ variants into its published output
    target = tmp_path / "examples"
    _publish(target, step="pretrain-data")
    _publish(target / "seq512", step="pretrain-data")
    _publish(target, step="pretrain-data", files={"b": "2"}, overwrite=True)
    assert not (target / "seq512").exists()


@pytest.mark.parametrize("layout", ["equal", "output_contains_input", "output_inside_input"])
def test_outputs_keep_clear_of_inputs(tmp_path, layout):
    corpus = tmp_path / "work" / "corpus"
    corpus.mkdir(parents=True)
    (corpus / "part-0.txt").write_text("문장\n")
    out = {"equal": corpus, "output_contains_input": tmp_path / "work",
           "output_inside_input": corpus / "vocab"}[layout]
    before = _tree(tmp_path)
    message = {"equal": "is also an input", "output_contains_input": "contains the input",
               "output_inside_input": "lies inside the input"}[layout]
    with pytest.raises(storage.OutputRefused, match=message):
        _publish(out, inputs=[str(corpus)], overwrite=True)
    assert _tree(tmp_path) == before


def test_containment_sees_through_symlinks_and_dots(tmp_path, monkeypatch):
    real = tmp_path / "real"
    (real / "corpus").mkdir(parents=True)
    (tmp_path / "link").symlink_to(real)
    monkeypatch.chdir(real / "corpus")
    with pytest.raises(storage.OutputRefused, match="contains the input"):
        storage.check_output(str(tmp_path / "link"), "vocab", inputs=["."])
    with pytest.raises(storage.OutputRefused, match="lies inside"):
        storage.check_output("./out", "vocab", inputs=[str(tmp_path / "link" / "corpus")])
    # a sibling with a common name prefix is not inside
    assert storage.check_output(str(real / "corpus2"), "vocab", inputs=[str(real / "corpus")]) == "new"


def test_vertex_fuse_paths_compare_with_gs_uris():
    with pytest.raises(storage.OutputRefused, match="lies inside"):
        storage.check_output("/gcs/bucket/run/corpus/vocab", "vocab", inputs=["gs://bucket/run/corpus"])


def test_stale_staging_of_killed_runs_is_removed(tmp_path):
    target = tmp_path / "out"
    dead_pid = 2 ** 22 + 12345  # above pid_max: no such process
    old_style = tmp_path / ".out.tmp-0123abcd"
    dead = tmp_path / f".out.tmp-{storage._host_tag()}-{dead_pid}-abcdef"
    half_replaced = tmp_path / f".out.old-{storage._host_tag()}-{dead_pid}-123456"
    alive = tmp_path / f".out.tmp-{storage._host_tag()}-{os.getppid()}-fedcba"
    unrelated = tmp_path / ".out.tmp-notes"
    other_output = tmp_path / ".other.tmp-0123abcd"
    for d in (old_style, dead, half_replaced, alive, unrelated, other_output):
        d.mkdir()
        (d / "x").write_text("x")
    _publish(target)
    assert not old_style.exists() and not dead.exists() and not half_replaced.exists()
    assert alive.exists() and unrelated.exists() and other_output.exists()


def test_unwritable_output_is_one_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(storage.StorageError, match=r"cannot write output .*a-file/out: Not a directory"):
        _publish(blocker / "out")
    assert blocker.read_text() == "x"


def test_claim_run_dir_resumes_adopts_and_refuses(tmp_path):
    entries = ("checkpoints", "state", "train_log.jsonl*")
    run = tmp_path / "run"
    assert storage.claim_run_dir(str(run), "pretrain", entries) == "new"
    assert json.loads((run / "korlm_artifact.json").read_text())["entries"] == list(entries)
    (run / "checkpoints").mkdir()
    (run / "train_log.jsonl").write_text("{}\n")
    storage.mark_complete(str(run))
    assert storage.claim_run_dir(str(run), "pretrain", entries) == "resume"
    assert not (run / "_SUCCESS").exists()  # written again when the resumed run ends
    # --overwrite: korlm's entries go, the marker stays, nothing else is touched
    assert storage.claim_run_dir(str(run), "pretrain", entries, overwrite=True) == "replace"
    assert sorted(os.listdir(run)) == ["korlm_artifact.json"]

    # a run folder from before markers existed is adopted when it holds only run entries
    legacy = tmp_path / "legacy"
    (legacy / "state").mkdir(parents=True)
    (legacy / "state" / "state.json").write_text("{}")
    assert storage.claim_run_dir(str(legacy), "pretrain", entries) == "resume"
    assert (legacy / "korlm_artifact.json").exists()

    # ... and refused when anything else is there
    mixed = tmp_path / "mixed"
    (mixed / "state").mkdir(parents=True)
    (mixed / "state" / "state.json").write_text("{}")
    (mixed / "thesis.tex").write_text("x")
    before = _tree(mixed)
    for overwrite in (False, True):
        with pytest.raises(storage.OutputRefused, match="not empty"):
            storage.claim_run_dir(str(mixed), "pretrain", entries, overwrite=overwrite)
    assert _tree(mixed) == before

    # an --overwrite of korlm's run folder holding a user's file is refused whole
    (run / "checkpoints").mkdir()
    (run / "keep-me.txt").write_text("mine")
    before = _tree(run)
    with pytest.raises(storage.OutputRefused, match="keep-me.txt"):
        storage.claim_run_dir(str(run), "pretrain", entries, overwrite=True)
    assert _tree(run) == before


def test_single_file_outputs_replace_only_their_own_kind(tmp_path):
    target = tmp_path / "pipeline.yaml"
    target.write_text("pipelineInfo:\n  name: korlm\n")
    storage.check_output_file(str(target), signature="pipelineInfo:", what="compiled pipeline")
    other = tmp_path / "notes.yaml"
    other.write_text("shopping: [milk]\n")
    with pytest.raises(storage.OutputRefused, match="is not a compiled pipeline korlm wrote"):
        storage.check_output_file(str(other), signature="pipelineInfo:", what="compiled pipeline")
    with pytest.raises(storage.OutputRefused, match="is a folder"):
        storage.check_output_file(str(tmp_path), signature="pipelineInfo:", what="compiled pipeline")


def test_unknown_scheme_is_a_clear_error():
    with pytest.raises(storage.StorageError, match="cannot open nosuch://bucket/x"):
        storage.exists("nosuch://bucket/x")


def test_stale_staging_of_any_output_in_a_folder(tmp_path):
    # a pretraining run cleans its checkpoints/ folder of every killed checkpoint save
    dead_pid = 2 ** 22 + 12345
    for name in (".step-000100.tmp-0123abcd", f".step-000200.tmp-{storage._host_tag()}-{dead_pid}-abcdef",
                 "step-000100", ".hidden-notes"):
        (tmp_path / name).mkdir()
    storage.remove_stale_staging(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == [".hidden-notes", "step-000100"]
