"""The HTTP API, end to end in one process: a real PostgreSQL (pgserver), the real model,
real photos; no broker (jobs run in the API process). Workers: tests/test_workers.py."""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path

import pytest
from conftest import LFW_DIR, MISC_DIR, ready_api_client
from fastapi.testclient import TestClient

from identity.api import create_app
from identity.config import Settings
from identity.store.keys import create_key, list_keys, revoke_key

PERSON_A = LFW_DIR / "Andy_Roddick"
PERSON_B = LFW_DIR / "Amelia_Vega"


def photos(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.jpg"))


def upload(path: Path, field: str = "image") -> tuple:
    return (field, (path.name, path.read_bytes(), "image/jpeg"))


@pytest.fixture(scope="module")
def api_settings(pg_server, model_settings, tmp_path_factory) -> Settings:
    url = pg_server.new_database("api")
    root = tmp_path_factory.mktemp("allowed")
    yield model_settings.replace(
        database_url=url,
        data_dir=tmp_path_factory.mktemp("api-data"),
        allowed_roots=[root],
        job_batch_size=2,
    )
    pg_server.drop_database(url)


@pytest.fixture(scope="module")
def client(api_settings):
    with ready_api_client(api_settings) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def keys(client) -> dict[str, str]:
    """One key per scope, made the way `identity keys create` makes them."""
    store = client.app.state.service.store
    return {scope: create_key(store, f"test-{scope}", [scope])[1] for scope in ("read", "enroll", "admin")}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert "Traceback" not in response.text
    return body["error"]


# --- health ------------------------------------------------------------------------------------


def test_health_needs_no_key_and_readiness_reports_every_check(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["ready"] is True
    assert {"database", "migrations", "model", "index"} <= set(ready["checks"])
    assert ready["checks"]["migrations"]["pending"] == []


def test_metrics_expose_latency_faces_and_index(client, keys):
    client.get("/v1/persons", headers=auth(keys["read"]))
    text = client.get("/metrics", headers=auth(keys["read"])).text
    assert 'identity_request_seconds_bucket{le="0.005",method="GET",route="/v1/persons",status="200"}' in text
    assert "identity_faces_embedded_total" in text
    assert "identity_index_faces" in text and "identity_index_lag" in text


# --- security ----------------------------------------------------------------------------------


def test_every_route_but_health_refuses_a_request_without_a_key(client):
    for method, path in [("get", "/v1/persons"), ("post", "/v1/search"), ("get", "/metrics"),
                         ("get", "/v1/jobs/00000000-0000-0000-0000-000000000000")]:
        error = assert_error(getattr(client, method)(path), 401, "unauthenticated")
        assert "API key" in error["message"]


def test_a_wrong_or_malformed_key_is_refused(client, keys):
    wrong = keys["admin"][:-4] + "AAAA"
    assert_error(client.get("/v1/persons", headers=auth(wrong)), 401, "unauthenticated")
    assert_error(client.get("/v1/persons", headers={"X-API-Key": "nonsense"}), 401, "unauthenticated")


def test_scopes_admin_includes_enroll_includes_read(client, keys):
    body = {"external_id": "scope-check"}
    assert_error(client.post("/v1/persons", json=body, headers=auth(keys["read"])), 403, "forbidden")
    assert client.post("/v1/persons", json=body, headers=auth(keys["enroll"])).status_code == 201
    assert client.get("/v1/persons/scope-check", headers={"X-API-Key": keys["enroll"]}).status_code == 200
    assert_error(client.delete("/v1/persons/scope-check", headers=auth(keys["enroll"])), 403, "forbidden")
    assert client.delete("/v1/persons/scope-check", headers=auth(keys["admin"])).status_code == 200


def test_revocation_takes_effect_within_a_second(client):
    # Keys are cached in memory; the database announces the revocation on commit
    # (tests/test_serving_cache.py tests the cache itself).
    store = client.app.state.service.store
    key_id, key = create_key(store, "short-lived", ["read"])
    assert client.get("/v1/persons", headers=auth(key)).status_code == 200
    revoke_key(store, key_id)
    deadline = time.monotonic() + 1.0
    while (response := client.get("/v1/persons", headers=auth(key))).status_code == 200:
        assert time.monotonic() < deadline, "a revoked key still worked a second later"
        time.sleep(0.01)
    assert_error(response, 401, "unauthenticated")
    listed = {k.key_id: k for k in list_keys(store)}
    assert listed[key_id].revoked_at is not None and listed[key_id].last_used_at is not None


def test_keys_are_stored_hashed(client):
    store = client.app.state.service.store
    key_id, key = create_key(store, "hashed", ["read"])
    with store.connection() as conn:
        (stored,) = conn.execute("SELECT secret_hash FROM api_keys WHERE key_id = %s", (key_id,)).fetchone()
    secret = key.rsplit("_", 1)[1]
    assert secret.encode() not in bytes(stored) and len(bytes(stored)) == 32


def test_oversized_upload_is_refused_with_413_before_anything_reads_it(api_settings):
    small = create_app(api_settings.replace(max_upload_bytes=10_000), warm=False)
    with TestClient(small, raise_server_exceptions=False) as c:
        big = PERSON_A / "Andy_Roddick_0001.jpg"
        assert big.stat().st_size > 10_000
        assert_error(c.post("/v1/search", files=[upload(big)]), 413, "payload_too_large")


def test_too_many_images_in_one_request_is_refused(api_settings, keys):
    few = create_app(api_settings.replace(max_images_per_request=2), warm=False)
    with TestClient(few, raise_server_exceptions=False) as c:
        files = [upload(p, "images") for p in photos(PERSON_A)[:3]]
        error = assert_error(c.post("/v1/detect", files=files, headers=auth(keys["read"])), 413, "payload_too_large")
        assert "limit is 2" in error["message"]


def test_a_corrupt_image_is_a_422_naming_the_file(client, keys):
    files = [("image", ("broken.jpg", b"\xff\xd8\xff\xe0 not really a jpeg", "image/jpeg"))]
    error = assert_error(client.post("/v1/search", files=files, headers=auth(keys["read"])), 422, "unreadable_image")
    assert error["path"] == "broken.jpg"


def test_server_side_paths_are_confined_to_the_allowed_roots(client, keys, api_settings, tmp_path):
    root = api_settings.api.allowed_roots[0]
    outside = tmp_path / "outside"
    (outside / "someone").mkdir(parents=True)
    escape = root / "escape"
    if not escape.exists():
        escape.symlink_to(outside, target_is_directory=True)
    for directory in (str(outside), f"{root}/../{outside.name}", str(escape), "/etc"):
        response = client.post("/v1/jobs/enroll/directory", json={"directory": directory},
                               headers=auth(keys["enroll"]))
        assert_error(response, 403, "path_not_allowed")


# --- persons -----------------------------------------------------------------------------------


def test_persons_create_list_update_merge_delete(client, keys):
    h = auth(keys["admin"])
    for name in ("p-one", "p-two", "p-three"):
        assert client.post("/v1/persons", json={"external_id": name, "display_name": name.upper()}, headers=h).status_code == 201
    assert_error(client.post("/v1/persons", json={"external_id": "p-one"}, headers=h), 409, "conflict")
    first = client.get("/v1/persons", params={"limit": 2, "q": "p-"}, headers=h).json()
    assert len(first["items"]) == 2 and first["next_after"] is not None
    rest = client.get("/v1/persons", params={"limit": 2, "q": "p-", "after": first["next_after"]}, headers=h).json()
    assert [p["external_id"] for p in first["items"] + rest["items"]] == ["p-one", "p-two", "p-three"]
    updated = client.patch("/v1/persons/p-two", json={"display_name": "Two", "metadata": {"team": "x"}}, headers=h).json()
    assert updated["display_name"] == "Two" and updated["metadata"] == {"team": "x"}
    merged = client.post("/v1/persons/p-one/merge", json={"other": "p-two"}, headers=h).json()
    assert merged["merged_external_id"] == "p-two" and "p-two" in merged["person"]["aliases"]
    assert client.get("/v1/persons/p-two", headers=h).json()["external_id"] == "p-one"
    assert client.delete("/v1/persons/p-three", headers=h).json()["external_id"] == "p-three"
    assert_error(client.get("/v1/persons/p-three", headers=h), 404, "not_found")


# --- recognition ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def enrolled(client, keys) -> dict:
    """Andy_Roddick enrolled from three photos through the API; the fourth is a probe."""
    files = [upload(p, "images") for p in photos(PERSON_A)[:3]]
    response = client.post("/v1/persons/roddick/faces", files=files,
                           data={"display_name": "Andy Roddick"}, headers=auth(keys["enroll"]))
    assert response.status_code == 200, response.text
    body = response.json()
    index = client.app.state.service.index
    index.wait_for(index.store.watermark(), timeout=10)
    return body


def test_enrollment_upload_reports_one_outcome_per_photo(enrolled, client, keys):
    assert [o["status"] for o in enrolled["outcomes"]] == ["enrolled"] * 3
    assert [o["source"] for o in enrolled["outcomes"]] == [p.name for p in photos(PERSON_A)[:3]]
    again = client.post("/v1/persons/roddick/faces", files=[upload(photos(PERSON_A)[0], "images")],
                        headers=auth(keys["enroll"])).json()
    assert again["outcomes"][0]["status"] == "already_present"
    assert client.get("/v1/persons/roddick", headers=auth(keys["read"])).json()["face_count"] == 3


def test_search_finds_the_enrolled_person_and_not_a_stranger(enrolled, client, keys):
    probe = photos(PERSON_A)[3]
    body = client.post("/v1/search", files=[upload(probe)], headers=auth(keys["read"])).json()
    assert body["source"] == probe.name and len(body["faces"]) == 1
    face = body["faces"][0]
    assert face["known"] and face["matches"][0]["external_id"] == "roddick"
    assert len(face["face"]["box"]) == 4 and len(face["face"]["landmarks"]) == 5
    stranger = client.post("/v1/search", files=[upload(photos(PERSON_B)[0])], headers=auth(keys["read"])).json()
    assert stranger["faces"] and not any(m["external_id"] == "roddick" for m in stranger["faces"][0]["matches"])


def test_search_by_embedding(enrolled, client, keys):
    service = client.app.state.service
    result = service.pipeline.embed_image(photos(PERSON_A)[3])
    vector = result.faces[0].embedding.tolist()
    body = client.post("/v1/search/embedding", json={"vectors": [vector], "k": 3}, headers=auth(keys["read"])).json()
    assert body["results"][0]["matches"][0]["external_id"] == "roddick"
    assert_error(client.post("/v1/search/embedding", json={"vectors": [[1.0, 2.0]]}, headers=auth(keys["read"])),
                 422, "invalid_input")


def test_verify_two_photos_and_a_photo_against_a_person(enrolled, client, keys):
    h = auth(keys["read"])
    a, b = photos(PERSON_A)[3], photos(PERSON_B)[0]
    same = client.post("/v1/verify", files=[upload(a, "a"), upload(photos(PERSON_A)[0], "b")], headers=h).json()
    different = client.post("/v1/verify", files=[upload(a, "a"), upload(b, "b")], headers=h).json()
    assert same["same"] is True and different["same"] is False
    assert same["similarity"] > different["similarity"]
    person = client.post("/v1/verify", files=[upload(a, "a")], data={"person": "roddick"}, headers=h).json()
    assert person["same"] is True and person["faces_in_b"] == 3
    assert_error(client.post("/v1/verify", files=[upload(a, "a")], headers=h), 422, "invalid_input")


def test_detect_returns_every_face_and_names_unreadable_files(client, keys):
    group = MISC_DIR / "group" / "fr_two_people.jpg"
    files = [upload(group, "images"), ("images", ("junk.png", b"junk", "image/png"))]
    body = client.post("/v1/detect", files=files, headers=auth(keys["read"])).json()
    assert len(body["images"][0]["faces"]) == 2
    assert body["images"][1]["error"]["code"] == "unreadable_image" and body["images"][1]["source"] == "junk.png"


# --- jobs --------------------------------------------------------------------------------------------


def wait_job(client, job_id: str, key: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}", headers=auth(key)).json()
        if job["status"] in ("succeeded", "failed") or time.monotonic() > deadline:
            return job
        time.sleep(0.3)


def test_directory_job_under_an_allowed_root_reports_progress_and_outcomes(client, keys, api_settings):
    root = api_settings.api.allowed_roots[0]
    people = root / "people"
    (people / "vega").mkdir(parents=True, exist_ok=True)
    for p in photos(PERSON_B)[:2]:
        target = people / "vega" / p.name
        if not target.exists():
            target.symlink_to(p)  # a link to a file outside the root is refused, not read
    (people / "vega" / "bad.jpg").write_bytes(b"not an image")
    (people / "vega" / "inside.jpg").write_bytes(photos(PERSON_B)[2].read_bytes())
    created = client.post("/v1/jobs/enroll/directory", json={"directory": "people"}, headers=auth(keys["enroll"]))
    assert created.status_code == 202, created.text
    job = wait_job(client, created.json()["job_id"], keys["read"])
    assert job["status"] == "succeeded" and job["progress"] == 1.0
    by_name = {Path(o["source"]).name: o for o in job["outcomes"]}
    assert by_name["inside.jpg"]["status"] == "enrolled"
    assert by_name["bad.jpg"]["status"] == "unreadable"
    assert all(by_name[p.name]["status"] == "invalid" for p in photos(PERSON_B)[:2])
    assert job["counts"] == {"enrolled": 1, "unreadable": 1, "invalid": 2}


def test_archive_job_enrolls_folder_per_person(client, keys):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("../../evil/x.jpg", b"skipped: a path escaping the archive")
        for p in photos(PERSON_B)[3:5]:
            archive.write(p, f"amelia/{p.name}")
    files = [("archive", ("people.zip", buffer.getvalue(), "application/zip"))]
    created = client.post("/v1/jobs/enroll/archive", files=files, headers=auth(keys["enroll"])).json()
    job = wait_job(client, created["job_id"], keys["read"])
    assert job["status"] == "succeeded", job
    assert [o["status"] for o in job["outcomes"]] == ["enrolled", "enrolled"]
    assert all(o["person"] == "amelia" for o in job["outcomes"])


def test_unknown_job_is_404(client, keys):
    assert_error(client.get("/v1/jobs/not-a-uuid", headers=auth(keys["read"])), 404, "not_found")


def test_cluster_job_over_an_uploaded_collection(client, keys):
    images = photos(PERSON_A)[:2] + photos(PERSON_B)[:2]
    created = client.post("/v1/jobs/cluster/upload", files=[upload(p, "images") for p in images],
                          headers=auth(keys["read"])).json()
    job = wait_job(client, created["job_id"], keys["read"])
    assert job["status"] == "succeeded", job
    assert job["items_done"] == job["total_items"] == 4 and job["progress"] == 1.0
    groups = sorted(sorted(Path(m["source"]).name.rsplit("_", 1)[0] for m in c) for c in job["result"]["clusters"])
    assert all(len(set(g)) == 1 for g in groups)  # no cluster mixes the two people


def test_cluster_job_over_the_stored_unassigned_faces(client, keys):
    from identity.store import FacesToAdd

    service = client.app.state.service
    # Photos no other test stores (a stored photo keeps its person: it would not be unassigned).
    images = photos(LFW_DIR / "Alec_Baldwin")[:2] + photos(LFW_DIR / "Anders_Fogh_Rasmussen")[:2]
    results = list(service.pipeline.process(images, select="largest"))
    assert all(len(r.faces) == 1 for r in results)
    stored = service.store.add_faces([FacesToAdd(image=r) for r in results], model=service.model_info)
    assert [o.status for o in stored] == ["added"] * 4
    face_person = {o.face_ids[0]: Path(r.source).parent.name for o, r in zip(stored, results)}
    created = client.post("/v1/jobs/cluster", json={}, headers=auth(keys["admin"]))
    assert created.status_code == 202, created.text
    job = wait_job(client, created.json()["job_id"], keys["read"])
    assert job["status"] == "succeeded", job
    assert job["items_done"] == job["total_items"] >= 4  # the stored faces it clustered
    clustered = [m["face_id"] for c in job["result"]["clusters"] for m in c]
    assert set(clustered) | {m["face_id"] for m in job["result"]["unclustered"]} == set(face_person)
    for cluster in job["result"]["clusters"]:
        assert len({face_person[m["face_id"]] for m in cluster}) == 1
    assert job["result"]["hubness"] is True  # the model's calibration
    created = client.post("/v1/jobs/cluster", json={"hubness": False}, headers=auth(keys["admin"]))
    job = wait_job(client, created.json()["job_id"], keys["read"])
    assert job["status"] == "succeeded" and job["result"]["hubness"] is False, job
    assert_error(client.post("/v1/jobs/cluster", json={"hubness": "maybe"}, headers=auth(keys["admin"])),
                 422, "invalid_request")


# --- errors -------------------------------------------------------------------------------------------


def test_validation_and_unknown_routes_use_the_one_error_shape(client, keys):
    h = auth(keys["admin"])
    assert_error(client.post("/v1/persons", json={"external_id": ""}, headers=h), 422, "invalid_request")
    assert_error(client.get("/v1/nowhere", headers=h), 404, "not_found")
    assert_error(client.put("/v1/persons", headers=h), 405, "method_not_allowed")
