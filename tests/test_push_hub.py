"""The real upload path of `korlm push`, against a local HTTP stand-in for the Hub.

``tests/hub_standin.py`` serves the Hub endpoints huggingface_hub calls (repo, branch and
tag creation, pre-upload, Git LFS batch + PUT, NDJSON commit) and records what arrives.
Not emulated: the Xet storage transfer that huggingface_hub uses for large files when
``hf_xet`` is installed; these tests turn it off (``HF_HUB_DISABLE_XET``) so large files
take the Hub's LFS HTTP API, which the Hub serves as well. Secret Manager is the one
thing mocked (no Google project here).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import pytest

from korlm.errors import KorlmError
from korlm.hub import push
from tests.hub_standin import HubStandIn

TOKEN = "hf_standin_secret_token_0123456789"
REPO = "korlm-test/korean-bert-tiny"


@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "hf"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 8000}))
    (d / "model.safetensors").write_bytes(os.urandom(50_000))
    (d / "tokenizer.json").write_text(json.dumps({"model": {"type": "WordPiece"}}))
    (d / "README.md").write_text("---\nlanguage: ko\n---\n# 한국어 모델\n", encoding="utf-8")
    return d


@pytest.fixture
def hub(monkeypatch):
    with HubStandIn(token=TOKEN) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
        yield server


def _files(model_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in model_dir.iterdir()}


def test_upload_creates_private_repo_commits_every_file_and_tags_the_run(hub, model_dir, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "push"
    plan = push.push_model(str(model_dir), REPO, str(out), dry_run=False, run_id="korlm-20261122-1",
                           config_hash="ab" * 32, retry_delay=0.01)

    repo = hub.repos[REPO]
    assert repo.private is True
    [commit] = repo.branches["main"]
    assert commit.files == _files(model_dir)
    assert "run korlm-20261122-1" in commit.summary and "config abababababab" in commit.summary
    assert repo.tags == {"run-korlm-20261122-1": commit.oid}
    assert plan["commit_oid"] == commit.oid and plan["tag"] == "run-korlm-20261122-1"
    assert plan["token_source"] == "environment variable HF_TOKEN"
    assert json.loads((out / "push_plan.json").read_text()) == plan
    # the large file went through LFS, the small ones inline
    assert any(m == "PUT" and p.startswith("/lfs-upload/") for m, p, _ in hub.requests)
    # the token went to the endpoint in the Authorization header, and nowhere else
    assert all(auth == f"Bearer {TOKEN}" for m, _, auth in hub.requests if m == "POST")
    assert TOKEN not in (out / "push_plan.json").read_text()
    assert TOKEN not in caplog.text


def test_second_run_reuses_the_repo_and_commits_to_a_branch(hub, model_dir, tmp_path):
    push.push_model(str(model_dir), REPO, str(tmp_path / "p1"), dry_run=False, run_id="r1")
    (model_dir / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 16000}))
    push.push_model(str(model_dir), REPO, str(tmp_path / "p2"), dry_run=False, run_id="r2",
                    revision="ablation-morpheme")
    repo = hub.repos[REPO]
    assert len(repo.branches["main"]) == 1
    [commit] = repo.branches["ablation-morpheme"][1:]
    assert json.loads(commit.files["config.json"])["vocab_size"] == 16000
    assert set(repo.tags) == {"run-r1", "run-r2"}


def test_transient_failures_are_retried_with_backoff(hub, model_dir, tmp_path, caplog):
    hub.fail_commits = 2
    caplog.set_level(logging.WARNING, logger="korlm.hub.push")
    plan = push.push_model(str(model_dir), REPO, str(tmp_path / "p"), dry_run=False, retry_delay=0.01)
    commits = [p for m, p, _ in hub.requests if m == "POST" and "/commit/" in p]
    assert len(commits) == 3 and plan["commit_oid"]
    assert caplog.text.count("retrying") == 2

    hub.fail_commits = 5
    with pytest.raises(KorlmError, match="the commit failed after 2 tries") as info:
        push.push_model(str(model_dir), REPO, str(tmp_path / "q"), dry_run=False, retries=1, retry_delay=0.01)
    assert TOKEN not in str(info.value)
    assert not (tmp_path / "q").exists()


def test_an_unreachable_hub_is_retried_then_a_clear_error(model_dir, tmp_path, monkeypatch, caplog):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    caplog.set_level(logging.WARNING, logger="korlm.hub.push")
    with pytest.raises(KorlmError, match="create the repo failed after 3 tries: ConnectError") as info:
        push.push_model(str(model_dir), REPO, str(tmp_path / "p"), dry_run=False, retries=2, retry_delay=0.01)
    assert caplog.text.count("retrying") == 2 and TOKEN not in str(info.value)


def test_rejected_token_and_foreign_namespace_are_clear_errors(hub, model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_wrong_token_987654321")
    with pytest.raises(KorlmError, match=r"rejected the token from environment variable HF_TOKEN \(401"):
        push.push_model(str(model_dir), REPO, str(tmp_path / "p"), dry_run=False, retry_delay=0.01)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with pytest.raises(KorlmError, match=r"refused \(403 forbidden\).*belong to another user") as info:
        push.push_model(str(model_dir), "someone-else/model", str(tmp_path / "p"), dry_run=False)
    assert TOKEN not in str(info.value) and "hf_wrong" not in str(info.value)
    assert hub.repos == {}


def test_token_from_a_mounted_secret_file_or_secret_manager(hub, model_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    secret = tmp_path / "secret" / "token"
    secret.parent.mkdir()
    secret.write_text(TOKEN + "\n")
    plan = push.push_model(str(model_dir), REPO, str(tmp_path / "p"), dry_run=False, token_file=str(secret))
    assert plan["token_source"] == f"token file {secret}"

    # Secret Manager cannot run here: its client is replaced by a stand-in returning the payload.
    from google.cloud import secretmanager

    asked = []

    class FakeSecretManager:
        def access_secret_version(self, name):
            asked.append(name)
            payload = type("Payload", (), {"data": TOKEN.encode()})()
            return type("Response", (), {"payload": payload})()

    monkeypatch.setattr(secretmanager, "SecretManagerServiceClient", FakeSecretManager)
    name = "projects/p/secrets/hf-token/versions/latest"
    plan = push.push_model(str(model_dir), REPO, str(tmp_path / "q"), dry_run=False,
                           token_file=str(tmp_path / "absent"), token_secret=name)
    assert asked == [name] and plan["token_source"] == f"Secret Manager {name}"
    assert len(hub.repos[REPO].branches["main"]) == 2


def test_no_token_anywhere_names_every_source(model_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(KorlmError, match=r"tried the environment variable HF_TOKEN, the token file .*\(missing\)"):
        push.push_model(str(model_dir), REPO, str(tmp_path / "p"), dry_run=False,
                        token_file=str(tmp_path / "absent"))


def test_cli_push_uploads_and_prints_no_token(hub, model_dir, tmp_path):
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HUB_DISABLE_XET": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "korlm.cli", "push", "--model", str(model_dir), "--repo-id", REPO,
         "--output", str(tmp_path / "plan"), "--no-dry-run", "--run-id", "cli-run"],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert TOKEN not in proc.stdout + proc.stderr
    [commit] = hub.repos[REPO].branches["main"]
    assert commit.files == _files(model_dir)
    plan = json.loads((tmp_path / "plan" / "push_plan.json").read_text())
    assert plan["tag"] == "run-cli-run" and len(plan["config_hash"]) == 64
