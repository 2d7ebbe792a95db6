"""The lock (constraints.txt) covers the project's dependencies, the install paths use it, and,
under CI (``WORKBENCH_REQUIRE_LOCKED=1``), the environment under test is exactly the locked one."""

from __future__ import annotations

import os
import re
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "constraints.txt"


def locked() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"constraints.txt must pin exactly: {line!r}"
            pins[_norm(req.name)] = spec.version
    return pins


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_every_dependency_and_extra_is_pinned_and_satisfies_pyproject():
    pins = locked()
    reqs = [Requirement(r) for r in project()["dependencies"]]
    reqs += [Requirement(r) for extra in project()["optional-dependencies"].values() for r in extra]
    for req in reqs:
        name = _norm(req.name)
        assert name in pins, f"{req.name} is a dependency but constraints.txt does not pin it: run invoke lock"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {req.name}=={pins[name]}, outside pyproject's {req}: run invoke lock")


def test_torch_pin_admits_cpu_and_cuda_builds():
    torch_pin = locked()["torch"]
    assert "+" not in torch_pin, "torch is pinned without a build label so CUDA builds satisfy it too"
    spec = Requirement(f"torch=={torch_pin}").specifier
    assert spec.contains(f"{torch_pin}+cpu") and spec.contains(f"{torch_pin}+cu128")


def test_readme_and_environment_yml_install_through_the_lock():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()
    assert len(block) == 2, "the README's first code block holds exactly two commands"
    run_line, test_line = block
    assert "-c constraints.txt" in run_line and "invoke run" in run_line
    assert "-c constraints.txt" in test_line and "invoke test" in test_line
    env = (ROOT / "environment.yml").read_text()
    assert "-c constraints.txt" in env
    python = re.search(r"python=(\d+\.\d+)", env).group(1)
    assert f"Python {python}" in LOCK.read_text(), "environment.yml's Python is the one the lock was resolved for"


def test_ci_runs_the_readme_test_line_in_a_fresh_venv():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python3 -m venv" in ci and "README.md" in ci and 'eval "$test_line"' in ci


@pytest.mark.skipif(os.environ.get("WORKBENCH_REQUIRE_LOCKED") != "1",
                    reason="only CI (WORKBENCH_REQUIRE_LOCKED=1) requires the locked versions")
def test_installed_versions_are_the_locked_ones():
    wrong = []
    for name, version in locked().items():
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            wrong.append(f"{name}: locked {version}, not installed")
            continue
        if have.split("+")[0] != version:
            wrong.append(f"{name}: locked {version}, installed {have}")
    assert not wrong, "the environment under test is not the lock:\n" + "\n".join(wrong)
