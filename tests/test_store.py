"""The store against a real PostgreSQL + pgvector (pgserver): schema, enrollment writes,
idempotency, change log ordering and NOTIFY, persons operations, index reads."""

from __future__ import annotations

import hashlib
import threading

import numpy as np
import psycopg
import pytest

from identity.config import Settings
from identity.errors import ConflictError, InputError, ModelMismatchError, NotFoundError, StoreError
from identity.faces.types import Face, ImageResult
from identity.resources import migrations_dir
from identity.store import FacesToAdd, ModelInfo, Store, upgrade
from identity.store.migrate import pending_url

MODEL = ModelInfo("facenet-test", "v1", 128)
ALL_MIGRATIONS = sorted(p.stem for p in migrations_dir().glob("*.sql") if not p.name.endswith(".rollback.sql"))
_rng = np.random.default_rng(1234)


def unit(dim: int = 128) -> np.ndarray:
    v = _rng.normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


def face(dim: int = 128) -> Face:
    return Face(
        box=(10.0, 20.0, 110.0, 140.0),
        landmarks=_rng.uniform(20, 100, size=(5, 2)).astype(np.float32),
        probability=0.998,
        embedding=unit(dim),
        quality=0.75,
    )


def image(name: str, n_faces: int = 1, dim: int = 128) -> ImageResult:
    return ImageResult(
        source=f"/photos/{name}.jpg",
        sha256=hashlib.sha256(name.encode()).hexdigest(),
        width=250,
        height=250,
        faces=tuple(face(dim) for _ in range(n_faces)),
    )


def enroll(store: Store, *pairs: tuple[ImageResult, str | None]) -> list:
    return store.add_faces([FacesToAdd(img, external_id=ext) for img, ext in pairs], model=MODEL)


def count(store: Store, table: str) -> int:
    with store.connection() as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


# --- schema --------------------------------------------------------------------------


def test_schema_is_created_by_yoyo_and_upgrade_is_idempotent(store, store_settings):
    with store.connection() as conn:
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        applied = [r[0] for r in conn.execute("SELECT migration_id FROM _yoyo_migration")]
        vector = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
    assert {"persons", "person_aliases", "images", "faces", "change_log", "models"} <= tables
    assert sorted(applied) == ALL_MIGRATIONS and ALL_MIGRATIONS[0] == "0001.initial-schema"
    assert vector is not None
    assert upgrade(store_settings) == []
    assert pending_url(str(store_settings.store.database_url)) == []


def test_an_unmigrated_database_is_refused_with_a_hint_then_upgraded(pg_server, tmp_path):
    settings = Settings(database_url=pg_server.new_database(migrated=False), data_dir=tmp_path)
    with pytest.raises(StoreError, match="identity db upgrade"):
        Store.open(settings)
    assert upgrade(settings) == ALL_MIGRATIONS
    with Store.open(settings) as store:
        assert store.watermark() == 0


def test_an_unreachable_server_is_a_store_error_naming_it(tmp_path):
    url = f"postgresql://nobody:secret@/identity?host={tmp_path}/no-such-socket-dir"
    with pytest.raises(StoreError, match="cannot connect to PostgreSQL") as caught:
        Store.open(Settings(database_url=url, data_dir=tmp_path))
    assert "secret" not in str(caught.value)
    assert caught.value.exit_code == 4


def test_a_server_lost_while_the_schema_is_read_is_a_store_error_naming_it(store_settings):
    from identity.store.migrate import _backend, _migrations

    url = str(store_settings.store.database_url)
    with pytest.raises(StoreError, match="lost the connection to PostgreSQL") as caught, _backend(url) as backend:
        pid = backend.connection.info.backend_pid
        with psycopg.connect(url, autocommit=True) as other:  # the server drops this session
            other.execute("SELECT pg_terminate_backend(%s)", (pid,))
        backend.to_apply(_migrations())
    assert caught.value.exit_code == 4


def test_a_store_is_constructed_without_connecting_and_used_once_connected(store_settings, tmp_path):
    nowhere = Store(f"postgresql://nobody:secret@/identity?host={tmp_path}/no-such-socket-dir", pool_min=2)
    with pytest.raises(StoreError, match="not open") as caught:
        nowhere.watermark()
    assert "secret" not in str(caught.value)
    nowhere.close()

    with Store(str(store_settings.store.database_url)).connect() as store:
        assert store.watermark() == 0 and store.list_persons().items == ()


# --- add_faces ------------------------------------------------------------------------


def test_add_faces_writes_persons_images_and_faces_in_one_batch(store):
    a, b, group = image("alice-1"), image("bob-1"), image("group", n_faces=3)
    outcomes = store.add_faces(
        [
            FacesToAdd(a, external_id="alice", display_name="Alice A."),
            FacesToAdd(b, external_id="bob"),
            FacesToAdd(group, face_indexes=(0, 2)),  # unassigned faces, a selection
        ],
        model=MODEL,
    )
    assert [o.status for o in outcomes] == ["added", "added", "added"]
    assert [len(o.face_ids) for o in outcomes] == [1, 1, 2]
    alice = store.get_person("alice")
    assert alice.display_name == "Alice A." and alice.face_count == 1
    assert outcomes[0].person_id == alice.id and outcomes[2].person_id is None
    assert (count(store, "images"), count(store, "faces"), count(store, "persons")) == (3, 4, 2)

    ids, persons, vectors = store.fetch_embeddings(outcomes[2].face_ids + outcomes[0].face_ids, MODEL.name)
    assert list(ids) == sorted(outcomes[0].face_ids + outcomes[2].face_ids)
    assert list(persons) == [alice.id, -1, -1]
    np.testing.assert_array_equal(vectors, np.stack([a.faces[0].embedding, group.faces[0].embedding, group.faces[2].embedding]))

    known = store.known_images([a.sha256, image("never-seen").sha256], model=MODEL.name)
    assert list(known) == [a.sha256]
    assert known[a.sha256].face(MODEL.name, 0).person_external_id == "alice"
    assert known[a.sha256].source == a.source


def test_the_same_batch_twice_adds_nothing_the_second_time(store):
    batch = [(image(f"p{i}"), f"person-{i % 3}") for i in range(9)]
    first = enroll(store, *batch)
    seq = store.watermark()
    again = enroll(store, *batch)
    assert {o.status for o in first} == {"added"}
    assert {o.status for o in again} == {"already_present"}
    assert [o.face_ids for o in again] == [o.face_ids for o in first]
    assert store.watermark() == seq
    assert (count(store, "faces"), count(store, "images"), count(store, "persons")) == (9, 9, 3)


def test_a_duplicate_file_inside_one_batch_is_stored_once(store):
    img = image("dup")
    copy = ImageResult(source="/elsewhere/dup.jpg", sha256=img.sha256, width=250, height=250, faces=img.faces)
    outcomes = enroll(store, (img, "carol"), (copy, "carol"))
    assert [o.status for o in outcomes] == ["added", "already_present"]
    assert outcomes[0].face_ids == outcomes[1].face_ids
    assert count(store, "faces") == 1


def test_the_same_face_enrolled_to_another_person_is_a_conflict_and_writes_nothing(store):
    img = image("who")
    enroll(store, (img, "dave"))
    seq = store.watermark()
    (outcome,) = enroll(store, (img, "erin"))
    assert outcome.status == "conflict" and "'dave'" in outcome.detail
    assert store.watermark() == seq
    with pytest.raises(NotFoundError):
        store.get_person("erin")  # no trace of the refused enrollment


def test_new_faces_of_a_known_image_are_added(store):
    img = image("pair", n_faces=2)
    store.add_faces([FacesToAdd(img, external_id="fay", face_indexes=(0,))], model=MODEL)
    (outcome,) = store.add_faces([FacesToAdd(img, external_id="gus", face_indexes=(1,))], model=MODEL)
    assert outcome.status == "added"
    assert count(store, "images") == 1 and count(store, "faces") == 2


def test_an_image_with_nothing_selected_writes_nothing(store):
    (outcome,) = enroll(store, (image("empty", n_faces=0), "hal"))
    assert outcome.status == "no_face" and outcome.face_ids == ()
    assert count(store, "images") == 0 and count(store, "persons") == 0


def test_unreadable_images_and_bad_indexes_are_refused(store):
    with pytest.raises(InputError):
        enroll(store, (ImageResult(source="/bad.jpg", error=InputError("unreadable")), "x"))
    with pytest.raises(InputError, match="out of range"):
        store.add_faces([FacesToAdd(image("one"), external_id="x", face_indexes=(1,))], model=MODEL)


def test_a_dimension_mismatch_is_refused_by_the_store_and_by_the_database(store):
    with pytest.raises(ModelMismatchError):
        enroll(store, (image("short", dim=64), "ivy"))  # embedding vs declared model
    enroll(store, (image("ok"), "ivy"))
    with pytest.raises(ModelMismatchError, match="dimension 128"):
        store.add_faces([FacesToAdd(image("wide", dim=512))], model=ModelInfo(MODEL.name, "v1", 512))
    # the trigger is the backstop for any writer, not only this code
    with store.connection() as conn, pytest.raises(psycopg.errors.CheckViolation, match="dimension"):
        conn.execute(
            "INSERT INTO faces (image_id, face_index, box, landmarks, det_prob, quality, model, "
            "model_version, embedding) SELECT id, 5, '{1,2,3,4}', %s, 0.9, 0.5, %s, 'v1', %s FROM images",
            ([0.0] * 10, MODEL.name, unit(64)),
        )
    assert count(store, "faces") == 1


def test_a_person_merged_away_keeps_receiving_enrollments_through_the_alias(store):
    enroll(store, (image("k1"), "keep"), (image("o1"), "other"))
    store.merge_persons("keep", "other")
    (outcome,) = enroll(store, (image("o2"), "other"))
    assert outcome.person_id == store.get_person("keep").id
    with pytest.raises(NotFoundError):
        store.get_person(outcome.person_id + 1000)


# --- change log --------------------------------------------------------------------------


def _raw_face_insert(conn: psycopg.Connection, name: str) -> int:
    """A face written by another client in an open transaction; returns its change seq."""
    digest = hashlib.sha256(name.encode()).digest()
    conn.execute("INSERT INTO models (name, dim) VALUES (%s, 128) ON CONFLICT DO NOTHING", (MODEL.name,))
    (image_id,) = conn.execute(
        "INSERT INTO images (sha256, width, height) VALUES (%s, 1, 1) RETURNING id", (digest,)
    ).fetchone()
    (face_id,) = conn.execute(
        "INSERT INTO faces (image_id, face_index, box, landmarks, det_prob, quality, model, model_version, "
        "embedding) VALUES (%s, 0, '{1,2,3,4}', %s, 0.9, 0.5, %s, 'v1', %s) RETURNING id",
        (image_id, [0.0] * 10, MODEL.name, unit()),
    ).fetchone()
    return conn.execute("SELECT seq FROM change_log WHERE face_id = %s", (face_id,)).fetchone()[0]


def test_change_log_seqs_follow_commit_order(store):
    """A writer that allocated seq N holds the lock until it commits, so a later writer
    can only get a larger seq, and commits after it: a follower can never skip a seq."""
    holder = psycopg.connect(store.url)
    from pgvector.psycopg import register_vector

    register_vector(holder)
    first_seq = _raw_face_insert(holder, "held")  # transaction left open
    result: list = []
    writer = threading.Thread(target=lambda: result.extend(enroll(store, (image("later"), "late"))))
    writer.start()
    writer.join(timeout=1.0)
    assert writer.is_alive(), "the second writer must wait for the first to commit"
    assert store.watermark() == 0  # nothing committed yet
    holder.commit()
    holder.close()
    writer.join(timeout=10)
    changes = store.changes_since(0, MODEL.name)
    assert changes[0].seq == first_seq
    assert changes[1].face_id == result[0].face_ids[0] and changes[1].seq > first_seq


def test_a_follower_polling_during_concurrent_writes_sees_every_change_once(store):
    done = threading.Event()
    seen: list[int] = []

    def follow() -> None:
        last = 0
        while True:
            finished = done.is_set()
            for change in store.changes_since(last, MODEL.name, limit=50):
                seen.append(change.seq)
                last = change.seq
            if finished and last == store.watermark(MODEL.name):
                return

    def write(tag: str) -> None:
        for i in range(15):
            enroll(store, *[(image(f"{tag}-{i}-{j}"), f"{tag}-{j}") for j in range(4)])

    follower = threading.Thread(target=follow)
    writers = [threading.Thread(target=write, args=(t,)) for t in ("a", "b")]
    follower.start()
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    done.set()
    follower.join(timeout=30)
    with store.connection() as conn:
        logged = [r[0] for r in conn.execute("SELECT seq FROM change_log ORDER BY seq")]
    assert len(logged) == 2 * 15 * 4
    assert seen == logged  # nothing skipped, nothing twice, in order


def test_notify_arrives_after_commit_and_not_before(store):
    listener = store.listen()
    writer = psycopg.connect(store.url)
    from pgvector.psycopg import register_vector

    register_vector(writer)
    try:
        seq = _raw_face_insert(writer, "notified")
        assert list(listener.notifies(timeout=0.5)) == []
        writer.commit()
        note = next(listener.notifies(timeout=5))
        assert (note.channel, note.payload) == ("identity_changes", str(seq))
    finally:
        writer.close()
        listener.close()


# --- persons -------------------------------------------------------------------------------


def test_delete_person_removes_faces_and_orphan_images_in_one_transaction(store):
    shared = image("shared", n_faces=2)
    store.add_faces(
        [
            FacesToAdd(image("jo-1"), external_id="jo"),
            FacesToAdd(image("jo-2"), external_id="jo"),
            FacesToAdd(shared, external_id="jo", face_indexes=(0,)),
            FacesToAdd(shared, external_id="kim", face_indexes=(1,)),
        ],
        model=MODEL,
    )
    jo = store.get_person("jo")
    result = store.delete_person("jo")
    assert (result.faces_deleted, result.images_deleted) == (3, 2)
    assert count(store, "images") == 1  # the shared image stays: kim's face is on it
    assert store.get_person("kim").face_count == 1
    deletes = [c for c in store.changes_since(0, MODEL.name) if c.op == "delete"]
    assert len(deletes) == 3 and {c.person_id for c in deletes} == {jo.id}
    with pytest.raises(NotFoundError):
        store.get_person("jo")
    with pytest.raises(NotFoundError):
        store.delete_person("jo")


def test_merge_moves_faces_and_keeps_the_other_external_id_as_an_alias(store):
    enroll(store, (image("m1"), "lee"), (image("m2"), "lee-duplicate"), (image("m3"), "lee-duplicate"))
    store.update_metadata("lee", {"team": "a"})
    store.update_metadata("lee-duplicate", {"team": "b", "city": "Oslo"})
    moved_from = store.get_person("lee-duplicate").id
    merged = store.merge_persons("lee", "lee-duplicate")
    assert merged.faces_moved == 2 and merged.person.face_count == 3
    assert merged.person.aliases == ("lee-duplicate",)
    assert merged.person.metadata == {"team": "a", "city": "Oslo"}
    assert store.get_person("lee-duplicate").id == merged.person.id
    with pytest.raises(NotFoundError):
        store.get_person(moved_from)  # the merged-away row is gone; its name lives on as an alias
    updates = [c for c in store.changes_since(0, MODEL.name) if c.op == "update"]
    assert len(updates) == 2 and {c.person_id for c in updates} == {merged.person.id}
    with pytest.raises(ConflictError):
        store.merge_persons("lee", "lee-duplicate")  # the alias is lee now


def test_persons_create_rename_metadata_external_id_and_pages(store):
    for i in range(5):
        store.create_person(f"p{i}", display_name=f"Person {i}")
    with pytest.raises(ConflictError):
        store.create_person("p0")
    renamed = store.rename_person("p1", "Someone Else")
    assert renamed.display_name == "Someone Else" and renamed.updated_at >= renamed.created_at
    assert store.update_metadata("p2", {"a": 1, "b": 2}).metadata == {"a": 1, "b": 2}
    assert store.update_metadata("p2", {"a": None, "c": 3}).metadata == {"b": 2, "c": 3}
    assert store.update_metadata("p2", {"z": 0}, replace=True).metadata == {"z": 0}
    moved = store.set_external_id("p3", "p3-new")
    assert moved.external_id == "p3-new" and moved.aliases == ("p3",)
    assert store.get_person("p3").id == moved.id
    with pytest.raises(ConflictError):
        store.set_external_id("p4", "p3")  # an alias of someone else

    first = store.list_persons(limit=2)
    second = store.list_persons(limit=2, after=first.next_after)
    third = store.list_persons(limit=2, after=second.next_after)
    names = [p.external_id for page in (first, second, third) for p in page.items]
    assert names == ["p0", "p1", "p2", "p3-new", "p4"] and third.next_after is None
    assert [p.external_id for p in store.list_persons(query="else").items] == ["p1"]
    assert store.get_person(str(first.items[0].id)).external_id == "p0"  # digits fall back to the id


# --- what the index reads --------------------------------------------------------------------


def test_iter_embeddings_streams_every_face_in_batches(store):
    images = [image(f"it-{i}") for i in range(25)]
    enroll(store, *[(img, f"it-{i % 4}") for i, img in enumerate(images)])
    enroll(store, (image("unassigned"), None))
    batches = list(store.iter_embeddings(MODEL.name, batch_rows=10))
    assert [len(b[0]) for b in batches] == [10, 10, 6]
    ids, persons, vectors = (np.concatenate(x) for x in zip(*batches))
    assert vectors.dtype == np.float32 and vectors.shape == (26, 128)
    assert (persons == -1).sum() == 1
    by_id = dict(zip(ids.tolist(), vectors))
    _, _, fetched = store.fetch_embeddings(ids[:3].tolist(), MODEL.name)
    np.testing.assert_array_equal(fetched, np.stack([by_id[i] for i in ids[:3].tolist()]))
    assert list(store.iter_embeddings("no-such-model")) == []


def test_snapshot_and_changes_since_reconstruct_the_current_state(store):
    enroll(store, *[(image(f"s{i}"), "snap") for i in range(3)])
    watermark, batches = store.snapshot_embeddings(MODEL.name)
    late = enroll(store, (image("late"), "snap"))  # committed after the snapshot began
    store.delete_person("snap")
    snapshot_ids = np.concatenate([b[0] for b in batches])
    assert len(snapshot_ids) == 3 and watermark == 3
    tail = store.changes_since(watermark, MODEL.name)
    assert [c.op for c in tail] == ["insert"] + ["delete"] * 4
    assert tail[0].face_id == late[0].face_ids[0]
    assert store.fetch_embeddings(snapshot_ids.tolist(), MODEL.name)[0].size == 0
