"""Push: the dry-run plan and the checks that run before any upload."""

from __future__ import annotations

import hashlib
import json
import os

import huggingface_hub
import pytest

from korlm.errors import KorlmError
from korlm.hub import push

SECRET = "hf_notarealtoken_0123456789abcdef"


@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "hf"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (d / "model.safetensors").write_bytes(os.urandom(3000))
    (d / "README.md").write_text("---\nlanguage: ko\n---\n# 모델\n", encoding="utf-8")
    (d / "nested").mkdir()
    (d / "nested" / "extra.txt").write_text("x")
    (d / ".git").mkdir()
    (d / ".git" / "HEAD").write_text("ref: refs/heads/main")
    return d


@pytest.fixture
def no_hub(monkeypatch):
    """Any attempt to construct a Hub client fails the test."""

    class Forbidden:
        def __init__(self, *args, **kwargs):
            raise AssertionError("HfApi must not be constructed here")

    monkeypatch.setattr(huggingface_hub, "HfApi", Forbidden)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_dry_run_plan(model_dir, tmp_path, no_hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)  # present but unused by a dry run
    out = tmp_path / "push"
    plan = push.push_model(str(model_dir), "korlm/korean-bert-tiny", str(out),
                           commit_message="first upload", revision="step-000040")
    on_disk = json.loads((out / "push_plan.json").read_text())
    assert on_disk == plan
    assert plan["repo_id"] == "korlm/korean-bert-tiny"
    assert plan["dry_run"] is True and plan["private"] is True
    assert plan["revision"] == "step-000040" and plan["commit_message"] == "first upload"
    paths = [f["path"] for f in plan["files"]]
    assert paths == ["README.md", "config.json", "model.safetensors", "nested/extra.txt"]
    for f in plan["files"]:
        data = (model_dir / f["path"]).read_bytes()
        assert f["bytes"] == len(data)
        assert f["sha256"] == hashlib.sha256(data).hexdigest()
    assert plan["total_bytes"] == sum(f["bytes"] for f in plan["files"])
    assert SECRET not in (out / "push_plan.json").read_text()
    assert sorted(os.listdir(out)) == ["_SUCCESS", "korlm_artifact.json", "push_plan.json"]


def test_dry_run_defaults(model_dir, tmp_path, no_hub, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    plan = push.push_model(str(model_dir), "user/m", str(tmp_path / "push"), private=False)
    assert plan["dry_run"] is True and plan["private"] is False and plan["revision"] is None
    assert "4 files" in plan["commit_message"]


def test_missing_token_fails_before_upload(model_dir, tmp_path, no_hub, monkeypatch):
    monkeypatch.delenv("KORLM_TEST_TOKEN", raising=False)
    with pytest.raises(KorlmError, match="KORLM_TEST_TOKEN"):
        push.push_model(str(model_dir), "user/m", str(tmp_path / "push"), dry_run=False,
                        token_env="KORLM_TEST_TOKEN")
    monkeypatch.setenv("KORLM_TEST_TOKEN", "   ")
    with pytest.raises(KorlmError, match="no Hugging Face token"):
        push.push_model(str(model_dir), "user/m", str(tmp_path / "push"), dry_run=False,
                        token_env="KORLM_TEST_TOKEN")
    assert not (tmp_path / "push").exists()


def test_token_never_in_checks_errors(model_dir, tmp_path, no_hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    with pytest.raises(KorlmError) as info:
        push.push_model(str(tmp_path / "nowhere"), "user/m", str(tmp_path / "push"), dry_run=False)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize("repo_id", [
    "no-namespace", "a/b/c", "/name", "user/", "user/-bad", "user/bad.", "user/a--b",
    "user/a..b", "us er/name", "user/이름", "user/" + "x" * 97, "",
])
def test_bad_repo_id(model_dir, tmp_path, repo_id):
    with pytest.raises(KorlmError, match="bad repo id"):
        push.push_model(str(model_dir), repo_id, str(tmp_path / "push"))
    assert not (tmp_path / "push").exists()


def test_good_repo_ids():
    for repo_id in ("user/m", "my-org/korean_bert.v2", "A1/" + "x" * 96):
        push.validate_repo_id(repo_id)


def test_bad_inputs(model_dir, tmp_path):
    with pytest.raises(KorlmError, match="bad revision"):
        push.push_model(str(model_dir), "user/m", str(tmp_path / "push"), revision="a b")
    with pytest.raises(KorlmError, match="does not exist"):
        push.push_model(str(tmp_path / "nowhere"), "user/m", str(tmp_path / "push"))
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(KorlmError, match="missing model.safetensors"):
        push.push_model(str(model_dir), "user/m", str(tmp_path / "push"))
    with pytest.raises(KorlmError, match="contains the input"):
        push.push_model(str(model_dir), "user/m", str(tmp_path))
    assert not (tmp_path / "push").exists()
