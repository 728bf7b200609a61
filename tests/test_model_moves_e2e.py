"""`identity models migrate` end to end with the real weights: lfw-dev faces enrolled with
the default model moved to w600k-mbf-512 from their chips (and, for faces without one,
from their photos), the run killed with SIGKILL mid-way and resumed, the result compared
with an uninterrupted run, the switch followed by a live service, and the finalization."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from identity import moves
from identity.enroll import EnrollItem
from tests.conftest import LFW_DIR, MODELS_DIR, ROOT

SOURCE = "facenet-keras-128-tight"  # the default
TARGET = "w600k-mbf-512"


def photos(persons: int = 16, per_person: int = 2) -> list[EnrollItem]:
    items = []
    for person in sorted(p for p in LFW_DIR.iterdir() if p.is_dir()):
        files = sorted(person.glob("*.jpg"))[:per_person]
        if len(files) == per_person:
            items += [EnrollItem(source=str(f), person=person.name) for f in files]
        if len(items) >= persons * per_person:
            break
    return items


def target_vectors(store) -> dict[int, np.ndarray]:
    with store.connection() as conn:
        rows = conn.execute("SELECT face_id, embedding::real[] FROM face_embeddings WHERE model = %s", (TARGET,)).fetchall()
    return {r[0]: np.asarray(r[1], np.float32) for r in rows}


def count_target(store) -> int:
    with store.connection() as conn:
        return conn.execute("SELECT count(*) FROM face_embeddings WHERE model = %s", (TARGET,)).fetchone()[0]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "identity.cli", *args]


@pytest.fixture
def env(store_env, model_settings):
    return {**store_env, "IDENTITY_MODELS_DIR": str(MODELS_DIR),
            "IDENTITY_CACHE_DIR": str(model_settings.pipeline.cache_dir), "IDENTITY_DEVICE": "cpu",
            "IDENTITY_TORCH_THREADS": "1"}


def test_a_move_killed_mid_way_resumes_to_the_same_vectors_and_the_service_switches_with_it(service, env):
    items = photos()
    outcomes = service.enroll_batch(items, largest_face=True)
    assert all(o.status == "enrolled" for o in outcomes), [o for o in outcomes if o.status != "enrolled"]
    store = service.store
    with store.connection() as conn:
        faces = dict(conn.execute("SELECT id, person_id FROM faces ORDER BY id").fetchall())
        # Three faces lose their chip: their new vectors come from their photos.
        photo_faces = sorted(faces)[:3]
        conn.execute("DELETE FROM face_chips WHERE face_id = ANY(%s)", (photo_faces,))
    total = len(faces)

    # The reference: one uninterrupted run (no switch), then abandoned.
    reference = moves.migrate(store, service.settings, TARGET, switch=False)
    assert (reference.embedded, reference.from_photos, reference.failed) == (total, 3, 0)
    want = target_vectors(store)
    store.abandon_move(store.open_move())
    assert count_target(store) == 0

    # Killed mid-way: a batch of 2 faces per transaction, SIGKILL once some are written.
    proc = subprocess.Popen(cli("models", "migrate", "--to", TARGET, "--batch", "2", "--json"), env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while count_target(store) < 4 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    killed_at = count_target(store)
    assert 0 < killed_at < total, f"the kill came too late or too early ({killed_at} of {total} written)"
    move = store.open_move()
    assert move.state == "running" and store.serving_model(SOURCE)[0] == SOURCE

    # During the move, `identity index status` shows both models.
    status = subprocess.run(cli("index", "status", "--json"), check=False, env=env, cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    assert shown["model"] == SOURCE and shown["count"] == total
    assert shown["moving"]["model"] == TARGET and shown["moving"]["faces_reembedded"] == killed_at

    # Resumed: finishes, builds the target's index, switches.
    done = subprocess.run(cli("models", "migrate", "--to", TARGET, "--batch", "2", "--json"), check=False, env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["resumed"] and report["switched"] and report["state"] == "switched"
    assert report["done_before"] == killed_at and report["embedded"] == total - killed_at
    assert report["index_faces"] == total and report["faces_per_second"] > 0

    # Every face has exactly one vector of the target (the key is (model, face)), equal to
    # the uninterrupted run's.
    got = target_vectors(store)
    assert count_target(store) == total and set(got) == set(faces)
    for face_id in faces:
        np.testing.assert_allclose(got[face_id], want[face_id], atol=1e-4)

    # A live service switches: its next search embeds with the target and searches its index.
    probe = items[5]
    hits = service.search_image(probe.source)
    assert service.model_info.name == TARGET and service.index.model.name == TARGET
    assert hits and hits[0].matches and hits[0].matches[0].external_id == probe.person
    moving = service.move_index_status()
    assert moving["model"] == SOURCE and moving["move_state"] == "switched"

    # Finalized: same face ids, same persons, one vector each, of the target.
    final = service.finalize_model_move()
    assert final.state == "finalized"
    with store.connection() as conn:
        after = conn.execute("SELECT id, person_id, model FROM faces ORDER BY id").fetchall()
        left = conn.execute("SELECT count(*) FROM face_embeddings").fetchone()[0]
    assert {i: p for i, p, _ in after} == faces and {m for *_, m in after} == {TARGET} and left == 0
    vectors = store.fetch_embeddings(sorted(faces), TARGET)
    np.testing.assert_allclose(vectors[2], np.stack([want[i] for i in vectors[0].tolist()]), atol=1e-4)
    service.index.sync()
    assert service.index.index.count == total
    assert service.search_image(probe.source)[0].matches[0].external_id == probe.person


def test_an_admin_api_job_moves_the_store_and_the_api_answers_with_the_new_model(service):
    from identity.store.keys import create_key
    from tests.conftest import ready_api_client

    items = photos(persons=3)
    assert all(o.status == "enrolled" for o in service.enroll_batch(items, largest_face=True))
    with ready_api_client(service.settings) as client:
        app_service = client.app.state.service
        read = create_key(app_service.store, "reader", ["read"])[1]
        admin = create_key(app_service.store, "admin", ["admin"])[1]

        def start(body: dict, key: str):
            return client.post("/v1/jobs/model-move", json=body, headers={"Authorization": f"Bearer {key}"})

        def wait(job_id: str) -> dict:
            deadline = time.monotonic() + 300
            while True:
                job = client.get(f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {admin}"}).json()
                if job["status"] in ("succeeded", "failed") or time.monotonic() > deadline:
                    return job
                time.sleep(0.3)

        assert start({"target": TARGET}, read).status_code == 403
        assert start({"target": "no-such-model"}, admin).status_code == 422  # unknown_model
        created = start({"target": TARGET}, admin)
        assert created.status_code == 202, created.text
        assert created.json()["kind"] == "model_move"
        job = wait(created.json()["job_id"])
        assert job["status"] == "succeeded", job
        assert job["result"]["switched"] and job["result"]["embedded"] == len(items) and job["progress"] == 1.0
        assert app_service.model_info.name == TARGET and app_service.index.model.name == TARGET
        from identity.faces import models

        assert app_service.thresholds() == models.load_thresholds(models.get_model(TARGET), app_service.settings)

        finalize = wait(start({"finalize": True}, admin).json()["job_id"])
        assert finalize["status"] == "succeeded" and finalize["result"]["state"] == "finalized"
        assert start({}, admin).status_code == 422


def test_a_store_of_the_previous_default_keeps_serving_it_until_moved_to_the_new_one(service, env, tmp_path):
    from identity.faces import models
    from identity.service import Service

    old = "facenet-keras-128"
    items = photos(persons=4)
    with Service(service.settings.replace(pipeline={"model": old}), store=service.store) as chosen:
        assert all(o.status == "enrolled" for o in chosen.enroll_batch(items, largest_face=True))
    probe = items[3]
    # `service` leaves the model at the default: the store's own model answers.
    assert service.configured_model == SOURCE
    hits = service.search_image(probe.source)
    assert service.model_info.name == old and hits[0].matches[0].external_id == probe.person
    # clusters matched against the store are embedded by the store's model too
    pair = [item.source for item in items if item.person == probe.person]
    done = subprocess.run(cli("cluster", *pair, "--match", "--out", str(tmp_path / "clusters"), "--json"), check=False,
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    shown = json.loads((tmp_path / "clusters" / "clusters.json").read_text())
    assert shown["params"]["threshold"] == models.get_model(old).clustering.floor  # its calibration too
    (cluster,) = shown["clusters"]
    assert cluster["person"]["external_id"] == probe.person and cluster["size"] == 2
    report = service.migrate_model(SOURCE)
    assert report.switched and (report.source, report.target) == (old, SOURCE) and report.embedded == len(items)
    hits = service.search_image(probe.source)
    assert service.model_info.name == SOURCE and service.index.model.name == SOURCE
    assert hits[0].matches[0].external_id == probe.person
