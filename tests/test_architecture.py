"""The layers of docs/ARCHITECTURE.md, checked against the import graph (grimp).

Every import counts, including those inside functions (deferred imports still tie the
layers together) and chains through other modules: `store` importing a module that
imports `service` breaks the layering as surely as importing `service` itself.
"""

from __future__ import annotations

from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]

# Below the service: none of these may reach the service, its two front ends or workers.
LOWER = ("identity.faces", "identity.store", "identity.index", "identity.cluster", "identity.evaluate")
UPPER = ("identity.service", "identity.api", "identity.cli", "workers")
# The vision layer turns bytes into faces; the database and the search index are above it.
NOT_FOR_FACES = ("identity.store", "identity.index", "psycopg", "psycopg_pool", "pgvector", "faiss")


def _namespace_packages() -> list[str]:
    """identity's folders of modules without an __init__.py. grimp does not descend into
    such a folder from its parent; named as a root of its own it is read like any package."""
    found = []
    for folder in sorted((ROOT / "identity").rglob("*")):
        if (
            folder.is_dir()
            and "__pycache__" not in folder.parts
            and not (folder / "__init__.py").exists()
            and (folder.parent / "__init__.py").exists()
            and any(folder.glob("*.py"))
        ):
            found.append(".".join(folder.relative_to(ROOT).parts))
    return found


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    # Imports under `if TYPE_CHECKING:` are annotations, not dependencies: they never run.
    return grimp.build_graph("identity", "workers", *_namespace_packages(), include_external_packages=True,
                             exclude_type_checking_imports=True)


def _part(module: str) -> str:
    """The layer-level part a module belongs to: identity.store.faces -> identity.store,
    identity.service -> identity.service, workers.tasks -> workers."""
    top = module.split(".")
    return "workers" if top[0] == "workers" else ".".join(top[:2])


def _ours(module: str) -> bool:
    return module.split(".")[0] in ("identity", "workers")


def _chains(graph: grimp.ImportGraph, importer: str, imported: str) -> list[str]:
    """Every shortest import chain from `importer` (or a module inside it) to `imported`
    (or a module inside it), as 'a -> b -> c'."""
    if importer not in graph.modules:
        pytest.fail(f"{importer} is not in the import graph: the contract would pass without checking anything")
    if imported not in graph.modules:
        if _ours(imported):
            pytest.fail(f"{imported} is not in the import graph: the contract would pass without checking anything")
        return []  # an outside package nobody imports
    return sorted(" -> ".join(chain) for chain in graph.find_shortest_chains(importer, imported, as_packages=True))


def _cycles(edges: dict[tuple[str, str], list[tuple[str, str]]]) -> list[str]:
    """The edges that lie on a cycle, each with the imports that make it."""
    successors: dict[str, set[str]] = {}
    for a, b in edges:
        successors.setdefault(a, set()).add(b)

    def reaches(start: str, goal: str) -> bool:
        seen, todo = {start}, [start]
        while todo:
            for nxt in successors.get(todo.pop(), ()):
                if nxt == goal:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return False

    return [
        f"{a} -> {b} (" + ", ".join(f"{m} imports {n}" for m, n in sorted(imports)) + ")"
        for (a, b), imports in sorted(edges.items())
        if reaches(b, a)
    ]


def test_no_import_cycles_between_identitys_parts(graph):
    """identity.store, identity.service, identity.config, … and workers, each taken as a
    whole: if a part imports another, the other must not import it back, even through
    a third part."""
    edges: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for module in filter(_ours, graph.modules):
        for imported in filter(_ours, graph.find_modules_directly_imported_by(module)):
            if _part(module) != _part(imported):
                edges.setdefault((_part(module), _part(imported)), []).append((module, imported))
    cycles = _cycles(edges)
    assert not cycles, "import cycles between parts of identity:\n" + "\n".join(cycles)


def test_no_import_cycles_between_modules_of_the_lower_layers(graph):
    """Inside faces, store, index, cluster and evaluate, module by module."""
    edges: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for module in graph.modules:
        if _part(module) not in LOWER:
            continue
        for imported in graph.find_modules_directly_imported_by(module):
            if _part(imported) in LOWER and imported != module:
                edges.setdefault((module, imported), []).append((module, imported))
    cycles = _cycles(edges)
    assert not cycles, "import cycles between modules:\n" + "\n".join(cycles)


def test_the_lower_layers_never_import_the_service_its_front_ends_or_workers(graph):
    found = [chain for low in LOWER for high in UPPER for chain in _chains(graph, low, high)]
    assert not found, "a lower layer imports an upper one:\n" + "\n".join(found)


def test_faces_knows_nothing_of_the_database_or_the_search_index(graph):
    found = [chain for other in NOT_FOR_FACES for chain in _chains(graph, "identity.faces", other)]
    assert not found, "identity.faces reaches storage or search:\n" + "\n".join(found)


def test_identity_never_imports_workers(graph):
    """workers wraps identity for Celery; identity reaches it only through the broker."""
    found = _chains(graph, "identity", "workers")
    assert not found, "identity imports workers:\n" + "\n".join(found)


def test_commands_that_never_touch_an_image_do_not_import_torch():
    """torch, torchvision and facenet-pytorch take seconds to import: the CLI, the service
    and the model registry load them only when a network or a detector is needed."""
    import subprocess
    import sys

    code = (
        "import sys, identity, identity.cli, identity.service, identity.faces.models as m; "
        "m.get_model('facenet-keras-128'); "
        "heavy = sorted(n for n in ('torch', 'torchvision', 'facenet_pytorch') if n in sys.modules); "
        "assert not heavy, heavy"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
