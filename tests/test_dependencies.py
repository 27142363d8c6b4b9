"""Dependencies say what they are: requirements.lock (what the images install) holds what
korlm's code imports and its resolution, no test tool; pyproject's dependencies are the
packages imported by korlm, components and pipelines, and nothing only tests need."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
CODE = ("korlm", "components", "pipelines")
OWN = {"korlm", "components", "pipelines", "tests"}


def _lock(name: str) -> dict[str, str]:
    pins = {}
    for line in (ROOT / name).read_text().splitlines():
        if line and not line.startswith("#"):
            dist, version = line.split("==")
            pins[canonicalize_name(dist)] = version
    return pins


def _imported_modules() -> set[str]:
    names = set()
    for folder in CODE:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names.update(a.name for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    if node.module.split(".")[0] == "google":  # a namespace: what is imported from it
                        names.update(f"{node.module}.{a.name}" for a in node.names)
                    else:
                        names.add(node.module.split(".")[0])
    return names


def _distribution_of(module: str, index: dict[str, list[str]]) -> set[str]:
    """The installed distributions providing ``module`` (google.cloud.x by its package)."""
    parts = module.split(".")
    if parts[0] == "google":  # a namespace package: the distribution that holds the module's files
        for depth in range(len(parts), 1, -1):  # google.cloud.storage, then google.cloud, google.auth
            prefix = "/".join(parts[:depth])
            found = {canonicalize_name(d.metadata["Name"]) for d in metadata.distributions()
                     if any(str(f).startswith((prefix + "/", prefix + ".py")) for f in (d.files or []))}
            if found:
                return found
        return set()
    return {canonicalize_name(d) for d in index.get(parts[0], [])}


def test_pyproject_dependencies_are_what_the_code_imports():
    runtime = _lock("requirements.lock")
    declared = {canonicalize_name(Requirement(r).name)
                for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    index = metadata.packages_distributions()
    imported: dict[str, str] = {}
    for module in sorted(_imported_modules()):
        top = module.split(".")[0]
        if top in OWN or top in sys.stdlib_module_names or top == "__future__":
            continue
        dists = _distribution_of(module, index)
        assert dists, f"{module} is imported by korlm but no installed package provides it"
        for dist in dists:
            imported[dist] = module
    # every imported distribution is pinned for the images (requirements.lock) ...
    missing = {d: m for d, m in imported.items() if d not in runtime}
    assert not missing, f"imported but not in requirements.lock: {missing}"
    # ... and every declared dependency is imported (directly or through its own name),
    # except the ones korlm uses without importing them by that name
    used_otherwise = {
        "apache-beam": "imported as apache_beam",
        "jaxlib": "jax's compiled half", "tensorboard": "tf.summary writes scalars only with it",
        "tensorflow-text": "imported as tensorflow_text", "gcsfs": "fsspec's gs:// protocol",
        "uvicorn": "korlm serve starts it", "kfp-kubernetes": "imported as kfp.kubernetes",
        "google-cloud-pipeline-components": "imported as google_cloud_pipeline_components",
        "docker": "kfp.local imports it (else `import docker` finds the repo's docker/ folder)",
    }
    unused = declared - set(imported) - set(used_otherwise)
    assert not unused, f"declared in pyproject but never imported: {sorted(unused)}"


def test_the_run_time_lock_holds_no_test_tool():
    runtime, test = _lock("requirements.lock"), _lock("requirements-test.lock")
    assert not set(runtime) & set(test)
    for tool in ("pytest", "torch", "transformers", "pandas", "hypothesis", "schemathesis", "ruff"):
        assert tool in test and tool not in runtime, tool
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for req in extras["test"]:
        name = canonicalize_name(Requirement(req).name)
        assert test.get(name) == str(next(iter(Requirement(req).specifier)).version), req
    for req in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        req = Requirement(req)
        assert runtime.get(canonicalize_name(req.name)) == next(iter(req.specifier)).version, str(req)


def test_installed_versions_match_the_locks():
    """A stale .venv (a lock changed without reinstalling) shows here, not as odd failures."""
    wrong = {}
    for name in ("requirements.lock", "requirements-test.lock"):
        for dist, version in _lock(name).items():
            try:
                installed = metadata.version(dist)
            except metadata.PackageNotFoundError:
                installed = None
            if installed is None or re.sub(r"\+.*", "", installed) != version:
                wrong[dist] = (version, installed)
    assert not wrong, wrong
