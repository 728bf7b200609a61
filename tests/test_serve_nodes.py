"""Two API nodes (separate `identity serve` processes, each with its own index mirror and
its own caches) following one PostgreSQL give the same answers within a second of a
commit: an enrollment, a rename, a change of external id, a merge and a deletion, each
made through a third connection (as `identity enroll` or another node would)."""

from __future__ import annotations

import hashlib
import itertools
import time

import numpy as np
import pytest
from test_serve import Serve, serve_env

from identity.faces import models
from identity.faces.types import Face, ImageResult
from identity.store import FacesToAdd, ModelInfo
from identity.store.keys import create_key

pytestmark = pytest.mark.slow

_names = itertools.count()


def _unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(128).astype(np.float32)
    return v / np.linalg.norm(v)


def _enroll(store, model: ModelInfo, external_id: str, vector: np.ndarray, display_name: str | None = None) -> None:
    name = f"node-{next(_names)}-{time.monotonic_ns()}"
    face = Face((10.0, 20.0, 110.0, 140.0), np.full((5, 2), 50.0, np.float32), 0.99,
                embedding=vector.astype(np.float32), quality=0.8)
    image = ImageResult(f"/photos/{name}.jpg", hashlib.sha256(name.encode()).hexdigest(), 250, 250, (face,))
    [outcome] = store.add_faces([FacesToAdd(image, external_id=external_id, display_name=display_name)], model=model)
    assert outcome.status == "added", outcome


def test_two_nodes_on_one_database_agree_within_a_second_of_each_commit(store_settings, store, tmp_path):
    spec = models.get_model("facenet-keras-128")
    model = ModelInfo(spec.name, spec.version, spec.dim)
    a, b, c = _unit(1), _unit(2), _unit(3)
    _enroll(store, model, "node-a", a, "Alpha")
    _enroll(store, model, "node-a", (a + 0.05 * _unit(4)) / np.linalg.norm(a + 0.05 * _unit(4)), "Alpha")
    _enroll(store, model, "node-b", b, "Beta")
    headers = {"X-API-Key": create_key(store, "nodes", ["read"])[1]}
    queries = {"vectors": [a.tolist(), b.tolist(), c.tolist()], "k": 3, "level": "loose"}

    nodes = []
    try:
        for n in (1, 2):  # no model: unready for photos, but search by embedding works
            env = serve_env(tmp_path / f"node-{n}", database_url=store_settings.store.database_url,
                            models_dir=str(tmp_path / "no-models"), cache_dir=str(tmp_path / "cache"), device="cpu")
            nodes.append(Serve(env, tmp_path / f"node-{n}.log"))

        def answer(node: Serve) -> list | None:
            response = node.http.post("/v1/search/embedding", json=queries, headers=headers)
            assert response.status_code in (200, 503), response.text  # 503: its index is still loading
            if response.status_code != 200:
                return None
            return [[(m["external_id"], m["display_name"], m["faces"], round(m["similarity"], 4))
                     for m in result["matches"]] for result in response.json()["results"]]

        def top(found: list, query: int) -> tuple | None:
            return found[query][0][:2] if found and found[query] else None

        for node in nodes:
            node.wait(lambda node=node: answer(node) is not None and top(answer(node), 1) == ("node-b", "Beta"),
                      timeout=120, what="the first answer")
        assert answer(nodes[0]) == answer(nodes[1])

        steps = [
            ("enroll node-c", lambda: _enroll(store, model, "node-c", c, "Gamma"),
             lambda found: top(found, 2) == ("node-c", "Gamma")),
            ("rename node-a", lambda: store.rename_person("node-a", "Alpha II"),
             lambda found: top(found, 0) == ("node-a", "Alpha II")),
            ("new external id for node-c", lambda: store.set_external_id("node-c", "node-c2"),
             lambda found: top(found, 2) == ("node-c2", "Gamma")),
            ("merge node-b into node-a", lambda: store.merge_persons("node-a", "node-b"),
             lambda found: top(found, 1) == ("node-a", "Alpha II")),
            ("delete node-c2", lambda: store.delete_person("node-c2"),
             lambda found: all(m[0] != "node-c2" for m in found[2])),
        ]
        for what, commit, holds in steps:
            commit()
            committed = time.monotonic()
            lags = []
            for node in nodes:
                while not holds(found := answer(node)):
                    assert time.monotonic() - committed < 1.0, f"{what}: node {node.port} still answers {found}"
                    time.sleep(0.01)
                lags.append(time.monotonic() - committed)
            first, second = answer(nodes[0]), answer(nodes[1])
            assert first == second, f"{what}: the nodes disagree after {lags}: {first} != {second}"
    finally:
        for node in nodes:
            node.kill()
