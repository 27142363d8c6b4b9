"""Local side of the storage layer: atomic artifact directories.
(gs:// runs against a GCS emulator in tests/test_storage_gcs.py.)"""

import os

import pytest

from korlm import storage


def test_atomic_dir_publishes_only_on_success(tmp_path):
    target = tmp_path / "artifact"
    with storage.atomic_output_dir(str(target)) as staging:
        assert not target.exists()
        storage.write_text(storage.join(staging, "a.txt"), "가나다")
    assert (target / "a.txt").read_text(encoding="utf-8") == "가나다"
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []

    with pytest.raises(RuntimeError), storage.atomic_output_dir(str(target)) as staging:
        storage.write_text(storage.join(staging, "b.txt"), "half")
        raise RuntimeError("killed")
    # the earlier complete artifact is untouched and no staging dir is left behind
    assert sorted(os.listdir(target)) == ["a.txt"]
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []


def test_atomic_dir_replaces_a_precreated_empty_dir(tmp_path):
    # KFP may create an output artifact's directory before the task runs
    target = tmp_path / "out"
    target.mkdir()
    with storage.atomic_output_dir(str(target)) as staging:
        storage.write_text(storage.join(staging, "x.json"), "{}")
    assert os.listdir(target) == ["x.json"]
    with pytest.raises(storage.StorageError, match="already exists"), \
            storage.atomic_output_dir(str(target), overwrite=False):
        pass


def test_unknown_scheme_is_a_clear_error():
    with pytest.raises(storage.StorageError, match="cannot open nosuch://bucket/x"):
        storage.exists("nosuch://bucket/x")
