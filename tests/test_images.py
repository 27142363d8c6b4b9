"""Container images: the Dockerfiles lint clean and `make build` tags from the commit.
(No Docker engine here, so the images themselves are not built in CI.)"""

from __future__ import annotations

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKERFILES = ["docker/Dockerfile", "docker/Dockerfile.dataflow", "docker/Dockerfile.serve"]


def test_dockerfiles_pass_hadolint():
    hadolint = os.path.join(os.path.dirname(sys.executable), "hadolint")
    proc = subprocess.run([hadolint, *DOCKERFILES], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_copied_path_and_variant_requirements_exist():
    for dockerfile in DOCKERFILES:
        text = open(os.path.join(ROOT, dockerfile), encoding="utf-8").read()
        for line in re.findall(r"^COPY (.+)$", text, flags=re.M):
            for src in line.split()[:-1]:
                if "${VARIANT}" in src:
                    for variant in ("cpu", "gpu", "tpu"):
                        assert os.path.exists(os.path.join(ROOT, src.replace("${VARIANT}", variant))), src
                else:
                    assert os.path.exists(os.path.join(ROOT, src)), (dockerfile, src)
        assert not re.search(r"^FROM \S+:latest\b|^FROM [^:\s]+\s*$", text, flags=re.M), dockerfile


def _make_n(*args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    return subprocess.run(["make", "--no-print-directory", "-n", *args], cwd=ROOT, capture_output=True,
                          text=True, check=True, env=env).stdout


def test_make_build_tags_images_with_the_commit():
    commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.strip()
    tags = re.findall(r"-t (\S+)", _make_n("build", "REGISTRY=us-docker.pkg.dev/p/korlm"))
    assert [t.rsplit(":", 1)[0] for t in tags] == [f"us-docker.pkg.dev/p/korlm/{n}" for n in
                                                  ("korlm", "korlm-gpu", "korlm-tpu", "korlm-dataflow",
                                                   "korlm-serve")]
    assert all(re.fullmatch(rf"{commit}(-dirty)?", t.rsplit(":", 1)[1]) for t in tags), tags
    push = _make_n("push-images", "REGISTRY=r.example/k", "TAG=abc123")
    assert push.count("docker push r.example/k/") == 5 and ":latest" not in push
