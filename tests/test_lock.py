"""The locks and pyproject.toml agree: every requirement of the package and its extras is
pinned in each lock at a version its range admits, and nothing pinned as a direct
requirement has left pyproject.toml. Regenerate with `bash scripts/lock.sh`."""

from __future__ import annotations

import re
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conftest import ROOT

# The lock's platform (scripts/lock.sh): CPython 3.11 on x86-64 Linux.
ENVIRONMENT = {"python_version": "3.11", "python_full_version": "3.11.7", "sys_platform": "linux",
               "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
               "implementation_name": "cpython", "platform_python_implementation": "CPython"}
VARIANTS = {"cpu": "cpu", "cuda": "gpu"}  # lock file → the FAISS extra it carries
LOCKED_EXTRAS = ("api", "workers", "cluster", "test")


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def requirements(extras: tuple[str, ...]) -> list[Requirement]:
    """The base requirements and those of `extras`, self-references (identity[...]) expanded."""
    meta = project()
    found, todo, seen = [Requirement(r) for r in meta["dependencies"]], list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for raw in meta["optional-dependencies"][extra]:
            req = Requirement(raw)
            if canonicalize_name(req.name) == canonicalize_name(meta["name"]):
                todo += sorted(req.extras)
            else:
                found.append(req)
    return [r for r in found if r.marker is None or r.marker.evaluate(ENVIRONMENT)]


def read_lock(name: str) -> tuple[dict[str, str], set[str]]:
    """Pins (name → version) and the names uv marked as required by the project itself."""
    pins, direct, current = {}, set(), None
    for line in (ROOT / "requirements" / f"{name}.txt").read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;]+)", line):
            current = canonicalize_name(match.group(1))
            pins[current] = match.group(3)
        elif current and re.match(r"^\s+#\s+(via\s+|\s*)identity \(pyproject\.toml\)", line):
            direct.add(current)
    return pins, direct


@pytest.mark.parametrize("lock", sorted(VARIANTS))
def test_every_requirement_is_pinned_within_its_range(lock):
    pins, _ = read_lock(lock)
    for req in requirements((VARIANTS[lock], *LOCKED_EXTRAS)):
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is required by pyproject.toml but not in requirements/{lock}.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"requirements/{lock}.txt pins {req.name}=={pins[name]}, outside pyproject.toml's {req.specifier}")


@pytest.mark.parametrize("lock", sorted(VARIANTS))
def test_the_lock_holds_no_direct_requirement_pyproject_dropped(lock):
    _, direct = read_lock(lock)
    wanted = {canonicalize_name(r.name) for r in requirements((VARIANTS[lock], *LOCKED_EXTRAS))}
    assert direct <= wanted, f"requirements/{lock}.txt still pins {sorted(direct - wanted)} for the project"


def test_each_lock_carries_exactly_one_faiss_build():
    cpu, _ = read_lock("cpu")
    cuda, _ = read_lock("cuda")
    assert "faiss-cpu" in cpu and "faiss-gpu" not in cpu
    assert "faiss-gpu" in cuda and "faiss-cpu" not in cuda


def test_torch_and_torchvision_are_the_matching_tested_pair():
    for lock in VARIANTS:
        pins, _ = read_lock(lock)
        assert (pins["torch"], pins["torchvision"]) == ("2.14.1", "0.29.1")
