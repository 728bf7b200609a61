"""Uploads never fill the disk: spooled files live per request or job and go when it
ends; the spool has a quota (507); archives are kept whole and read entry by entry with
caps counted while reading; a malformed archive is a 422 naming the entry; outcomes name
the user's files, never a spool path. All but the last test run without the model."""

from __future__ import annotations

import io
import os
import time
import zipfile
from pathlib import Path

import pytest
from conftest import LFW_DIR
from fastapi.testclient import TestClient

from identity import archives, spool
from identity.api import create_app
from identity.errors import InputError, PayloadTooLargeError
from identity.service import Service
from identity.store import jobs as job_store
from identity.store.keys import create_key

PHOTOS = sorted((LFW_DIR / "Amelia_Vega").glob("*.jpg"))


def zip_of(entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def photo_zip() -> bytes:
    return zip_of({f"vega/{p.name}": p.read_bytes() for p in PHOTOS[:2]})


def central_header(data: bytes) -> int:
    return data.index(b"PK\x01\x02")


def patched(data: bytes, offset: int, new: bytes) -> bytes:
    return data[:offset] + new + data[offset + len(new):]


def spooled(data_dir: Path) -> list[str]:
    root = spool.root(data_dir)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.name != spool.LOCK_NAME) \
        if root.exists() else []


# --- archives, read entry by entry --------------------------------------------------------------

LIMITS = {"max_entries": 100, "max_total": 10_000_000, "max_entry": 1_000_000}


def test_scan_lists_photo_entries_by_their_real_size_and_skips_the_rest():
    data = zip_of({"vega/a.jpg": b"x" * 10, "vega/sub/b.png": b"y" * 5, "top.jpg": b"z",
                   "vega/notes.txt": b"t", "../../evil/c.jpg": b"e", "_query/d.jpg": b"q", "vega/.e.jpg": b"h"})
    entries = archives.scan(io.BytesIO(data), **LIMITS)
    assert [(e.name, e.person, e.size) for e in entries] == [("vega/a.jpg", "vega", 10), ("vega/sub/b.png", "vega", 5)]


def test_a_bad_crc_is_422_naming_the_entry():
    data = zip_of({"vega/a.jpg": b"A" * 100}, zipfile.ZIP_STORED)
    start = 30 + len("vega/a.jpg")
    with pytest.raises(InputError) as error:
        archives.scan(io.BytesIO(patched(data, start + 50, b"B")), **LIMITS)
    assert error.value.path == "vega/a.jpg" and "CRC" in error.value.message


def test_a_corrupt_deflate_stream_is_422_naming_the_entry():
    data = zip_of({"vega/a.jpg": b"face " * 2000})
    start = 30 + len("vega/a.jpg")
    assert data.index(b"PK\x01\x02") > start + 20  # the damage stays inside the entry's data
    with pytest.raises(InputError) as error:
        archives.scan(io.BytesIO(patched(data, start, b"\xff" * 16)), **LIMITS)
    assert error.value.path == "vega/a.jpg" and "corrupt entry" in error.value.message


def test_encrypted_entries_are_422_naming_the_entry():
    data = zip_of({"vega/a.jpg": b"secret"})
    flags = central_header(data) + 8
    with pytest.raises(InputError) as error:
        archives.scan(io.BytesIO(patched(data, flags, b"\x01\x00")), **LIMITS)
    assert error.value.path == "vega/a.jpg" and "encrypted" in error.value.message


def test_an_unsupported_compression_method_is_422_naming_the_entry():
    data = zip_of({"vega/a.jpg": b"bz" * 100}, zipfile.ZIP_BZIP2)
    with pytest.raises(InputError) as error:
        archives.scan(io.BytesIO(data), **LIMITS)
    assert error.value.path == "vega/a.jpg" and "unsupported compression method 12" in error.value.message


@pytest.mark.parametrize("declared", [200, 40])  # the entry really holds 100 bytes
def test_a_size_header_that_lies_is_422_naming_the_entry(declared):
    data = zip_of({"vega/a.jpg": b"A" * 100}, zipfile.ZIP_STORED)
    size_field = central_header(data) + 24
    with pytest.raises(InputError) as error:
        archives.scan(io.BytesIO(patched(data, size_field, declared.to_bytes(4, "little"))), **LIMITS)
    assert error.value.path == "vega/a.jpg", error.value


def test_a_header_that_understates_a_bomb_does_not_get_it_past_the_limit():
    """509 kB of zip once left 501 MB on disk: the bytes are counted as they come out, so
    the header's claim of a small entry changes nothing."""
    data = zip_of({"vega/bomb.jpg": bytes(50_000_000)})
    assert len(data) < 100_000
    size_field = central_header(data) + 24
    small = patched(data, size_field, (1000).to_bytes(4, "little"))
    with pytest.raises(InputError):
        archives.scan(io.BytesIO(small), max_entries=10, max_total=10_000_000, max_entry=20_000_000)
    with pytest.raises(PayloadTooLargeError) as error:
        archives.scan(io.BytesIO(data), max_entries=10, max_total=10_000_000, max_entry=20_000_000)
    assert "expands to more than 10000000 bytes" in error.value.message
    with pytest.raises(PayloadTooLargeError) as error:
        archives.scan(io.BytesIO(data), max_entries=10, max_total=100_000_000, max_entry=1_000_000)
    assert error.value.path == "vega/bomb.jpg" and "larger than 1000000" in error.value.message


def test_too_many_entries_and_duplicate_names_are_refused():
    many = zip_of({f"p/{i}.jpg": b"" for i in range(101)})
    with pytest.raises(PayloadTooLargeError, match="101 entries; the limit is 100"):
        archives.scan(io.BytesIO(many), **LIMITS)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("vega/a.jpg", b"one")
        with pytest.warns(UserWarning, match="Duplicate name"):
            archive.writestr("vega/a.jpg", b"two")
    with pytest.raises(InputError) as error:
        archives.scan(io.BytesIO(buffer.getvalue()), **LIMITS)
    assert error.value.path == "vega/a.jpg"
    with pytest.raises(InputError, match="not a readable zip archive"):
        archives.scan(io.BytesIO(b"PK\x03\x04 not really"), **LIMITS)


def test_an_entry_is_read_back_from_the_kept_archive(tmp_path):
    path = tmp_path / "a.zip"
    path.write_bytes(photo_zip())
    (entry, _) = archives.scan(path, **{**LIMITS, "max_entry": 10_000_000})
    with archives.ArchiveReader(path) as reader:
        assert reader.read(entry.member, name=entry.name, max_bytes=10_000_000) == PHOTOS[0].read_bytes()
        with pytest.raises(InputError, match="no such entry"):
            reader.read("vega/missing.jpg", name="vega/missing.jpg", max_bytes=100)


# --- the API ----------------------------------------------------------------------------------------


@pytest.fixture
def api(store_settings):
    def make(**update):
        settings = store_settings.replace(**update)
        client = TestClient(create_app(settings, warm=False), raise_server_exceptions=False)
        client.__enter__()
        made.append(client)
        key = create_key(client.app.state.service.store, "uploads", ["admin"])[1]
        return client, {"X-API-Key": key}, settings.data_dir

    made: list[TestClient] = []
    yield make
    for client in made:
        client.__exit__(None, None, None)


def post_archive(client, headers, data: bytes, name: str = "people.zip"):
    return client.post("/v1/jobs/enroll/archive", headers=headers,
                       files=[("archive", (name, data, "application/zip"))])


def test_a_malformed_archive_is_422_naming_the_entry_and_leaves_nothing_behind(api):
    client, headers, data_dir = api()
    data = zip_of({"vega/a.jpg": b"A" * 100}, zipfile.ZIP_STORED)
    response = post_archive(client, headers, patched(data, 30 + len("vega/a.jpg") + 50, b"B"))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["path"] == "vega/a.jpg"
    bomb = post_archive(client, headers, zip_of({"vega/bomb.jpg": bytes(30_000_000)}))
    assert bomb.status_code == 413 and bomb.json()["error"]["path"] == "vega/bomb.jpg", bomb.text
    assert spooled(data_dir) == []


def test_a_full_spool_is_507_with_a_clear_message_and_no_job(api):
    client, headers, data_dir = api(spool_quota_bytes=10_000)
    response = post_archive(client, headers, photo_zip())
    assert response.status_code == 507, response.text
    error = response.json()["error"]
    assert error["code"] == "insufficient_storage" and "spool is full" in error["message"]
    photo = PHOTOS[0]
    cluster = client.post("/v1/jobs/cluster/upload", headers=headers,
                          files=[("images", (photo.name, photo.read_bytes(), "image/jpeg"))])
    assert cluster.status_code == 507, cluster.text
    assert spooled(data_dir) == []
    with client.app.state.service.store.connection() as conn:
        assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 0


def test_an_archive_job_keeps_one_file_while_it_waits_and_none_once_cancelled(api, redis_url):
    """20,000 entries once made 20,000 spool files. With a broker and no worker the job
    waits, holding exactly the one archive; cancelling it releases that."""
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    client, headers, data_dir = api(broker_url=redis_url, max_archive_entries=30_000)
    many = zip_of({f"p{i % 50}/{i}.jpg": b"" for i in range(20_000)})
    response = post_archive(client, headers, many)
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    files = spooled(data_dir)  # the job's folder and the one archive in it
    assert len(files) == 2 and files[0] == job_id and files[1].startswith(job_id + "/"), files
    client.app.state.service.cancel_job(job_id)
    assert spooled(data_dir) == []
    defaults, headers, _ = api()
    refused = post_archive(defaults, headers, zip_of({f"p/{i}.jpg": b"" for i in range(10_001)}))
    assert refused.status_code == 413, refused.text  # the default cap, max_archive_entries
    assert "10001 entries; the limit is 10000" in refused.json()["error"]["message"]


def test_leftovers_of_ended_and_orphaned_jobs_are_swept_at_start(store_settings, store):
    service = Service(store_settings, store=store)
    data_dir = store_settings.data_dir

    def job(status: str | None) -> str:
        job_id = job_store.create_job(store, "enroll", params={}, total_items=1, total_batches=1)
        if status:
            job_store.set_status(store, job_id, status)
        spool.write(data_dir, job_id, [(b"photo", ".jpg")], quota=10**9)
        return job_id

    ended, failed, running, queued = job("succeeded"), job("failed"), job("running"), job(None)
    old_orphan, new_orphan = spool.new_owner(), spool.new_owner()
    for owner in (old_orphan, new_orphan):
        spool.write(data_dir, owner, [(b"photo", ".jpg")], quota=10**9)
    legacy = spool.root(data_dir) / ("ab" * 32 + ".jpg")  # the old content-addressed spool
    legacy.write_bytes(b"photo")
    day_ago = time.time() - 86_400
    for path in (spool.root(data_dir) / old_orphan, legacy):
        os.utime(path, (day_ago, day_ago))

    removed = service.sweep_spool()
    assert sorted(removed) == sorted([ended, failed, old_orphan, legacy.name])
    assert {p.split("/")[0] for p in spooled(data_dir)} == {running, queued, new_orphan}


def test_uploads_are_released_when_their_request_or_job_ends_and_outcomes_name_the_users_files(
        service, tmp_path):
    settings = service.settings
    data_dir = settings.data_dir
    with TestClient(create_app(settings, service=service, warm=False), raise_server_exceptions=False) as client:
        headers = {"X-API-Key": create_key(service.store, "uploads", ["admin"])[1]}

        # a synchronous upload: spooled for the request only
        photo = PHOTOS[2]
        now = client.post("/v1/persons/vega/faces", headers=headers,
                          files=[("images", (photo.name, photo.read_bytes(), "image/jpeg"))])
        assert now.status_code == 200 and now.json()["outcomes"][0]["source"] == photo.name, now.text
        assert spooled(data_dir) == []

        # an archive job: outcomes name the entries; nothing is left once it ends
        data = zip_of({"vega/a/one.jpg": PHOTOS[0].read_bytes(), "vega/two.jpg": PHOTOS[1].read_bytes(),
                       "vega/broken.jpg": b"not a photo"})
        created = post_archive(client, headers, data)
        assert created.status_code == 202, created.text
        job = wait(client, headers, created.json()["job_id"])
        assert job["status"] == "succeeded", job
        assert sorted((o["source"], o["status"]) for o in job["outcomes"]) == [
            ("vega/a/one.jpg", "enrolled"), ("vega/broken.jpg", "unreadable"), ("vega/two.jpg", "enrolled")]
        assert str(data_dir) not in str(job)
        with service.store.connection() as conn:
            sources = {r[0] for r in conn.execute("SELECT source FROM images").fetchall()}
        assert sources == {photo.name, "vega/a/one.jpg", "vega/two.jpg"}

        # a cluster upload: the job's folder goes when the job ends
        images = [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in PHOTOS[:2]]
        cluster = client.post("/v1/jobs/cluster/upload", headers=headers, files=images)
        assert cluster.status_code == 202, cluster.text
        done = wait(client, headers, cluster.json()["job_id"])
        assert done["status"] == "succeeded", done
        assert str(data_dir) not in str(done)
        assert spooled(data_dir) == []


def wait(client, headers, job_id: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
        if job["status"] in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
            return job
        time.sleep(0.3)
