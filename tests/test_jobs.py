"""Recorded jobs without the model: owners and what happens when they are gone, the write
guard of ended jobs, listing and cancelling over HTTP. A real PostgreSQL throughout; the
end-to-end cases (a killed `identity serve` resuming its job, workers refusing to write
for a cancelled job) are in tests/test_serve.py and tests/test_workers.py."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict

import pytest
from fastapi.testclient import TestClient

from identity.api import create_app
from identity.enroll import EnrollItem
from identity.errors import ConflictError, JobEndedError, NotFoundError
from identity.jobs import owner_gone, process_owner, recover_jobs
from identity.service import Service
from identity.store import jobs as job_store
from identity.store.keys import create_key


def dead_owner() -> str:
    """The owner string of a process of this machine that has exited."""
    code = "from identity.jobs import process_owner; print(process_owner())"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def plan_of(n_batches: int) -> list[list[dict]]:
    return [[{"source": f"/nowhere/{b}-{i}.jpg", "person": "p"} for i in range(2)] for b in range(n_batches)]


@pytest.fixture
def service(store_settings):
    with Service(store_settings.replace(job_max_resumes=2)) as svc:
        yield svc


def test_an_owner_is_gone_when_its_pid_died_here_or_its_heartbeat_is_old():
    me = process_owner()
    assert owner_gone(me, 0.0, 60) is None
    assert owner_gone(dead_owner(), 0.0, 60) == "its process exited"
    host, pid, node, _ = me.split(":")
    assert owner_gone(f"{host}:{pid}:{node}:0ther", 0.0, 60) is not None  # our pid, an earlier process
    assert "not been heard from for 61 s" in owner_gone("elsewhere:1:0123456789ab:tok", 61.0, 60)
    assert owner_gone("elsewhere:1:0123456789ab:tok", 5.0, 60) is None  # another machine, still beating


def test_a_job_whose_process_died_too_often_or_kept_no_plan_is_failed_with_the_reason(service):
    store = service.store
    gone = dead_owner()
    looping = job_store.create_job(store, "enroll", params={"planned": []}, total_items=4, total_batches=2,
                                   owner=gone, plan=plan_of(2))
    with store.connection() as conn:
        conn.execute("UPDATE jobs SET resumes = 2, status = 'running' WHERE id = %s", (looping,))
    client_job = job_store.create_job(store, "enroll", params={"client": "identity enroll", "planned": []},
                                      total_items=4, total_batches=2, owner=gone)
    alive = job_store.create_job(store, "enroll", params={"planned": []}, total_items=2, total_batches=1,
                                 owner=process_owner(), plan=plan_of(1))

    taken = dict(recover_jobs(service))

    assert taken == {looping: "failed", client_job: "failed"}
    failed = service.job(looping)
    assert failed.status == "failed" and "resumed 2 time(s) already" in failed.error
    assert "cannot be resumed from here" in service.job(client_job).error
    assert service.job(alive).status == "queued"  # its owner (this process) is alive
    assert recover_jobs(service) == []  # nothing left to take


def test_a_job_whose_batches_are_all_recorded_is_finished_by_the_recovery(service):
    store = service.store
    job_id = job_store.create_job(store, "enroll", params={"planned": []}, total_items=2, total_batches=1,
                                  owner=dead_owner(), plan=plan_of(1))
    # The outcome row is there, the status update was lost (a kill between two statements
    # cannot do this, but a job of an older version can look like it).
    with store.connection() as conn:
        conn.execute("INSERT INTO job_batches (job_id, batch_no, outcomes) VALUES (%s, 0, '[]')", (job_id,))
    assert recover_jobs(service) == [(job_id, "resumed")]
    job = service.job(job_id)
    assert job.status == "succeeded" and job.resumes == 1 and job.owner == process_owner()


def test_two_processes_cannot_both_take_over_one_job(service):
    store = service.store
    gone = dead_owner()
    job_id = job_store.create_job(store, "enroll", params={"planned": []}, total_items=2, total_batches=1,
                                  owner=gone, plan=plan_of(1))
    assert job_store.claim(store, job_id, previous=gone, owner="a:1:x:y")
    assert not job_store.claim(store, job_id, previous=gone, owner="b:2:x:y")
    assert job_store.remaining_plan(store, job_id) == [(0, plan_of(1)[0])]


def test_an_ended_job_refuses_writes_inside_the_transaction(service):
    store = service.store
    job_id = job_store.create_job(store, "enroll", params={"planned": []}, total_items=2, total_batches=1)
    with store._write() as conn:
        job_store.lock_active(conn, job_id)  # active: goes on
    assert service.cancel_job(job_id).status == "cancelled"
    with pytest.raises(JobEndedError, match="cancelled"), store._write() as conn:
        job_store.lock_active(conn, job_id)
    # A late batch records what it did, but does not revive the job.
    assert job_store.record_batch(store, job_id, 0, []) is False
    assert not job_store.set_status(store, job_id, "succeeded")
    assert service.job(job_id).status == "cancelled"


def test_a_batch_delivered_again_after_its_job_ended_answers_with_its_recorded_outcomes(service):
    """Seen in CI: a worker killed after writing the job's last batch but before Celery
    stored the result; the redelivery found the job succeeded, answered no outcomes, and
    `identity enroll` reported 28 of 32 photos."""
    store = service.store
    job_id = job_store.create_job(store, "enroll", params={"planned": []}, total_items=2, total_batches=1)
    recorded = [{"source": "/nowhere/a.jpg", "person": "p", "status": "enrolled", "reason": None,
                 "face_id": 7, "person_id": 3},
                {"source": "/nowhere/b.jpg", "person": "p", "status": "no_face", "reason": "no face found",
                 "face_id": None, "person_id": None}]
    assert job_store.record_batch(store, job_id, 0, recorded)  # the job's last batch: succeeded
    batch = [EnrollItem(source=o["source"], person="p") for o in recorded]

    again = service.enroll_job_batch(job_id, 0, batch, largest_face=False)

    assert [asdict(o) for o in again] == recorded  # not run again: /nowhere has no photos
    with pytest.raises(JobEndedError, match="succeeded; batch 1 not run"):
        service.enroll_job_batch(job_id, 1, batch, largest_face=False)


def test_cancel_is_repeatable_and_an_ended_job_is_a_conflict(service):
    store = service.store
    job_id = job_store.create_job(store, "enroll", params={"planned": []}, total_items=2, total_batches=1)
    assert job_store.record_batch(store, job_id, 0, [{"source": "a", "person": "p", "status": "enrolled"}])
    with pytest.raises(ConflictError, match="already succeeded"):
        service.cancel_job(job_id)
    other = job_store.create_job(store, "cluster", params={}, total_items=0, total_batches=1)
    assert service.cancel_job(other).status == "cancelled"
    assert service.cancel_job(other).status == "cancelled"
    with pytest.raises(NotFoundError):
        service.cancel_job("00000000-0000-0000-0000-000000000000")


# --- over HTTP ------------------------------------------------------------------------------------


@pytest.fixture
def client(store_settings):
    app = create_app(store_settings, warm=False)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def test_jobs_are_listed_by_status_and_kind_in_pages_and_cancelled_over_http(client):
    store = client.app.state.service.store
    read = {"X-API-Key": create_key(store, "reader", ["read"])[1]}
    enroll = {"X-API-Key": create_key(store, "enroller", ["enroll"])[1]}
    ids = [job_store.create_job(store, "enroll", params={"planned": [{"source": "x", "person": "p",
                                                                       "status": "not_an_image"}]},
                                total_items=3, total_batches=1) for _ in range(3)]
    cluster = job_store.create_job(store, "cluster", params={}, total_items=5, total_batches=1)
    job_store.record_batch(store, ids[0], 0, [{"source": "a", "person": "p", "status": "enrolled"}] * 2)

    listed = client.get("/v1/jobs", headers=read).json()
    assert [j["id"] for j in listed["jobs"]] == [cluster, *reversed(ids)]  # newest first
    done = next(j for j in listed["jobs"] if j["id"] == ids[0])
    assert (done["status"], done["items_done"], done["batches_done"]) == ("succeeded", 3, 1)

    queued = client.get("/v1/jobs", params={"status": "queued", "kind": "enroll"}, headers=read).json()
    assert {j["id"] for j in queued["jobs"]} == {ids[1], ids[2]}
    first = client.get("/v1/jobs", params={"limit": 2}, headers=read).json()
    rest = client.get("/v1/jobs", params={"limit": 2, "after": first["next"]}, headers=read).json()
    assert [j["id"] for j in first["jobs"] + rest["jobs"]] == [cluster, *reversed(ids)] and rest["next"] is None
    assert client.get("/v1/jobs", params={"status": "stuck"}, headers=read).status_code == 422

    assert client.delete(f"/v1/jobs/{ids[1]}", headers=read).status_code == 403
    cancelled = client.delete(f"/v1/jobs/{ids[1]}", headers=enroll)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert client.delete(f"/v1/jobs/{ids[0]}", headers=enroll).json()["error"]["code"] == "conflict"
    assert client.delete("/v1/jobs/nope", headers=enroll).status_code == 404
    assert client.get(f"/v1/jobs/{ids[1]}", headers=read).json()["error"] == "cancelled by request"


def test_job_status_is_an_enum_in_the_openapi_schema(client):
    schema = client.get("/openapi.json").json()
    statuses = ["queued", "running", "succeeded", "failed", "cancelled"]
    assert schema["components"]["schemas"]["JobStatus"]["enum"] == statuses
    for model in ("JobOut", "JobSummary", "JobCreated"):
        assert schema["components"]["schemas"][model]["properties"]["status"] == {"$ref": "#/components/schemas/JobStatus"}
    parameters = {p["name"]: p for p in schema["paths"]["/v1/jobs"]["get"]["parameters"]}
    assert "JobStatus" in json.dumps(parameters["status"]["schema"]) and "JobKind" in json.dumps(parameters["kind"]["schema"])
    assert "202" in schema["paths"]["/v1/persons/{person}/faces"]["post"]["responses"]
