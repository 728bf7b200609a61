"""Corrections (move, assign, unassign, remove, split, undo a merge) and the person audit
log, against a real PostgreSQL (pgserver). No model: faces are synthetic, as in
tests/test_store.py. The API and CLI faces of these operations are tested at the end."""

from __future__ import annotations

import pytest
from PIL import Image
from test_store import MODEL, count, enroll, image

from identity.errors import ConflictError, InputError, NotFoundError
from identity.store import FacesToAdd


def face_ids(store, ref) -> list[int]:
    return [f.id for f in store.person_faces(ref)]


def updates_for(store, ids) -> list:
    return [c for c in store.changes_since(0, MODEL.name) if c.op == "update" and c.face_id in ids]


# --- moving faces ---------------------------------------------------------------------------


def test_moving_faces_changes_their_person_logs_updates_and_records_who_did_it(store):
    enroll(store, (image("a1"), "ann"), (image("a2"), "ann"), (image("b1"), "bob"))
    ann, bob = store.get_person("ann"), store.get_person("bob")
    wrong = face_ids(store, "ann")[1]
    moved = store.move_faces([wrong], "bob", actor="user:tester")
    assert moved.moved == (wrong,) and moved.previous == {wrong: ann.id}
    assert moved.person.id == bob.id and moved.person.face_count == 2
    assert store.get_person("ann").face_count == 1
    assert [c.person_id for c in updates_for(store, {wrong})] == [bob.id]  # the index follows
    entry = store.audit_entry(moved.audit_id)
    assert (entry.action, entry.actor, entry.person_id) == ("move", "user:tester", bob.id)
    assert set(entry.persons) == {ann.id, bob.id} and entry.details["face_ids"] == [wrong]
    # Both persons' histories show it.
    assert moved.audit_id in [e.id for e in store.person_history("ann").items]
    assert moved.audit_id in [e.id for e in store.person_history("bob").items]
    # Moving again to the same person changes nothing and records nothing.
    again = store.move_faces([wrong], "bob")
    assert again.moved == () and again.audit_id is None


def test_unknown_faces_and_persons_are_not_found_and_nothing_moves(store):
    enroll(store, (image("c1"), "cat"))
    (face,) = face_ids(store, "cat")
    with pytest.raises(NotFoundError, match="999999"):
        store.move_faces([face, 999999], "cat")
    with pytest.raises(NotFoundError):
        store.move_faces([face], "nobody")
    with pytest.raises(InputError):
        store.move_faces([], "cat")
    assert store.get_person("cat").face_count == 1


def test_assign_takes_unassigned_faces_and_refuses_anyone_elses(store):
    outcomes = store.add_faces([FacesToAdd(image("u1")), FacesToAdd(image("u2"))], model=MODEL)
    loose = [o.face_ids[0] for o in outcomes]
    enroll(store, (image("d1"), "dan"), (image("e1"), "eve"))
    assert [f.id for f in store.list_faces(unassigned=True).items] == loose
    eves = face_ids(store, "eve")
    with pytest.raises(ConflictError, match="move it"):
        store.move_faces([loose[0], eves[0]], "dan", only_unassigned=True)
    assert store.get_person("dan").face_count == 1  # nothing moved
    assigned = store.move_faces(loose, "dan", only_unassigned=True, actor="user:tester")
    assert set(assigned.moved) == set(loose) and assigned.person.face_count == 3
    assert store.audit_entry(assigned.audit_id).action == "assign"
    assert store.list_faces(unassigned=True).items == ()


def test_unassign_leaves_the_faces_stored_without_a_person(store):
    enroll(store, (image("f1"), "fay"), (image("f2"), "fay"))
    ids = face_ids(store, "fay")
    result = store.unassign_faces(ids[:1], actor="user:tester")
    assert result.moved == (ids[0],) and result.person is None
    assert store.face(ids[0]).person_id is None and store.get_person("fay").face_count == 1
    entry = store.audit_entry(result.audit_id)
    assert entry.action == "unassign" and entry.external_id == "fay"


def test_removing_faces_deletes_them_their_orphan_images_and_records_it(store):
    shared = image("g-shared", n_faces=2)
    store.add_faces([FacesToAdd(shared, external_id="gus", face_indexes=(0,)),
                     FacesToAdd(shared, external_id="hal", face_indexes=(1,)),
                     FacesToAdd(image("g2"), external_id="gus")], model=MODEL)
    gus = face_ids(store, "gus")
    images_before = count(store, "images")
    removed = store.remove_faces(gus, actor="user:tester")
    assert removed.images_deleted == 1 and count(store, "images") == images_before - 1  # the shared photo stays
    assert store.get_person("gus").face_count == 0  # the person stays
    deletes = {c.face_id for c in store.changes_since(0, MODEL.name) if c.op == "delete"}
    assert set(gus) <= deletes
    with pytest.raises(NotFoundError):
        store.face(gus[0])
    assert store.audit_entry(removed.audit_id).action == "remove"


# --- splitting ---------------------------------------------------------------------------


def test_split_turns_chosen_faces_into_a_new_person(store):
    enroll(store, (image("s1"), "sam"), (image("s2"), "sam"), (image("s3"), "sam"), (image("t1"), "tom"))
    sam = face_ids(store, "sam")
    with pytest.raises(ConflictError, match="does not belong"):
        store.split_person("sam", [sam[0], face_ids(store, "tom")[0]], "sam-2")
    split = store.split_person("sam", sam[1:], "sam-2", display_name="The other Sam", actor="user:tester")
    assert split.faces_moved == 2 and split.person.face_count == 1
    assert split.new_person.external_id == "sam-2" and split.new_person.face_count == 2
    assert split.new_person.display_name == "The other Sam"
    assert {c.person_id for c in updates_for(store, set(sam[1:]))} == {split.new_person.id}
    assert split.audit_id in [e.id for e in store.person_history("sam-2").items]
    with pytest.raises(ConflictError, match="already exists"):
        store.split_person("sam", sam[:1], "tom")


# --- merges: recorded, resolvable, undoable ---------------------------------------------------


def test_a_merged_away_external_id_resolves_to_the_survivor_and_cannot_be_created_again(store):
    enroll(store, (image("m1"), "mia"), (image("m2"), "mia-dup"))
    result = store.merge_persons("mia", "mia-dup", actor="user:tester")
    assert store.get_person("mia-dup").id == result.person.id
    with pytest.raises(ConflictError) as refused:
        store.create_person("mia-dup")
    assert "merged into person 'mia'" in refused.value.message and f"id {result.person.id}" in refused.value.message
    with pytest.raises(ConflictError, match="merged into person 'mia'"):
        store.split_person("mia", face_ids(store, "mia")[:1], "mia-dup")
    # An enrollment under the old id reaches the survivor.
    enroll(store, (image("m3"), "mia-dup"))
    assert store.get_person("mia").face_count == 3


def test_undoing_a_merge_brings_the_person_back_as_it_was(store):
    enroll(store, (image("n1"), "ned"), (image("n2"), "ned-2"), (image("n3"), "ned-2"))
    store.update_metadata("ned", {"team": "a"})
    store.update_metadata("ned-2", {"team": "b", "city": "Oslo"})
    store.rename_person("ned-2", "Ned Two")
    store.set_external_id("ned-2", "ned-two")  # so "ned-2" is an alias that must come back too
    before = store.get_person("ned-two")
    their_faces = face_ids(store, "ned-two")
    merged = store.merge_persons("ned", "ned-two", actor="user:tester")
    merge_entry = store.person_history("ned").items[0]
    assert merge_entry.action == "merge" and merge_entry.undoable and merge_entry.actor == "user:tester"
    assert merged.person.metadata == {"team": "a", "city": "Oslo"} and merged.person.display_name == "Ned Two"

    undone = store.undo_merge(merge_entry.id, actor="user:undoer")
    back = undone.person
    assert (back.id, back.external_id, back.display_name, back.metadata, back.aliases) == (
        before.id, "ned-two", "Ned Two", {"team": "b", "city": "Oslo"}, ("ned-2",))
    assert back.created_at == before.created_at
    assert face_ids(store, "ned-two") == their_faces and undone.faces_moved == 2
    assert undone.survivor.metadata == {"team": "a"} and undone.survivor.display_name is None
    assert undone.survivor.aliases == () and not undone.kept_survivor_changes
    assert {c.person_id for c in updates_for(store, set(their_faces))} == {merged.person.id, before.id}
    assert store.audit_entry(merge_entry.id).undone_by == undone.audit_id
    with pytest.raises(ConflictError, match="already undone"):
        store.undo_merge(merge_entry.id)
    with pytest.raises(ConflictError, match="only merges"):
        store.undo_merge(undone.audit_id)


def test_a_merge_cannot_be_undone_once_one_of_its_faces_is_gone(store):
    enroll(store, (image("o1"), "ola"), (image("o2"), "ola-2"), (image("o3"), "ola-2"))
    moved = face_ids(store, "ola-2")
    store.merge_persons("ola", "ola-2")
    entry = store.person_history("ola").items[0].id
    store.remove_faces(moved[:1])
    with pytest.raises(ConflictError, match="no longer exist"):
        store.undo_merge(entry)
    assert store.get_person("ola-2").external_id == "ola"  # nothing changed


def test_undo_leaves_survivor_edits_made_after_the_merge(store):
    enroll(store, (image("p1"), "pia"), (image("p2"), "pia-2"))
    store.merge_persons("pia", "pia-2")
    store.rename_person("pia", "Pia, renamed after the merge")
    entry = next(e for e in store.person_history("pia").items if e.action == "merge")
    undone = store.undo_merge(entry.id)
    assert undone.kept_survivor_changes and undone.survivor.display_name == "Pia, renamed after the merge"


# --- the audit log ------------------------------------------------------------------------------


def test_every_person_operation_is_recorded_with_its_actor(store):
    store.create_person("q", display_name="Q", actor="user:alice")
    store.rename_person("q", "Queue", actor="key:0123456789abcdef (console)")
    store.update_metadata("q", {"k": 1}, actor="user:alice")
    store.set_external_id("q", "q2", actor="user:alice")
    enroll(store, (image("q1"), "r"))  # created on demand by an enrollment
    store.merge_persons("q2", "r", actor="user:alice")
    store.delete_person("q2", actor="user:bob")
    history = store.person_history("q2").items  # a deleted person's history, by its last external id
    assert [e.action for e in history] == ["delete", "merge", "create", "rename", "update", "rename", "create"]
    assert history[0].actor == "user:bob" and history[5].actor == "key:0123456789abcdef (console)"
    assert history[3].details["external_id"] == ["q", "q2"]
    assert history[4].details["metadata"] == [{}, {"k": 1}]
    created_by_enrollment = history[2]
    assert created_by_enrollment.external_id == "r" and created_by_enrollment.details["by"] == "enrollment"
    assert created_by_enrollment.actor.startswith("user:")  # this process's user
    page = store.person_history("q2", limit=3)
    rest = store.person_history("q2", limit=10, before=page.next_before)
    assert [e.id for e in page.items + rest.items] == [e.id for e in history]
    assert [e.action for e in store.audit_log(action="delete").items] == ["delete"]
    with pytest.raises(NotFoundError):
        store.person_history("never-existed")


# --- through the API ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(pg_server, model_settings, tmp_path_factory):
    from conftest import ready_api_client

    from identity.store.keys import create_key

    url = pg_server.new_database("corrections")
    settings = model_settings.replace(database_url=url, data_dir=tmp_path_factory.mktemp("c-data"))
    with ready_api_client(settings) as client:
        store = client.app.state.service.store
        keys = {scope: create_key(store, f"c-{scope}", [scope]) for scope in ("read", "enroll", "admin")}
        yield client, {scope: {"Authorization": f"Bearer {secret}"} for scope, (_, secret) in keys.items()}, \
            {scope: key_id for scope, (key_id, _) in keys.items()}
    pg_server.drop_database(url)


def test_corrections_through_the_api_are_recorded_under_the_calling_key(api):
    from conftest import LFW_DIR

    client, h, key_ids = api
    photos = sorted((LFW_DIR / "Andy_Roddick").glob("*.jpg"))[:3]
    files = [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in photos]
    enrolled = client.post("/v1/persons/andy/faces", files=files, headers=h["enroll"])
    assert enrolled.status_code == 200, enrolled.text
    faces = client.get("/v1/persons/andy/faces", headers=h["read"]).json()["items"]
    assert len(faces) == 3 and all(f["chip"]["size"] == 224 for f in faces)
    first = faces[0]["id"]
    assert client.get(f"/v1/faces/{first}", headers=h["read"]).json()["external_id"] == "andy"

    chip = client.get(f"/v1/faces/{first}/chip", headers=h["read"])
    assert chip.status_code == 200 and chip.headers["content-type"] == "image/jpeg"
    assert chip.content[:2] == b"\xff\xd8" and len(chip.content) == faces[0]["chip"]["bytes"]
    cached = client.get(f"/v1/faces/{first}/chip", headers={**h["read"], "If-None-Match": chip.headers["etag"]})
    assert cached.status_code == 304
    assert client.get("/v1/faces/999999/chip", headers=h["read"]).status_code == 404
    assert client.get(f"/v1/faces/{first}/chip").status_code == 401

    # split off one face, move it back, unassign it, assign it again
    assert client.post("/v1/faces/move", json={"face_ids": [first], "person": "andy"},
                       headers=h["read"]).status_code == 403
    split = client.post("/v1/persons/andy/split", json={"face_ids": [first], "external_id": "andy-2"},
                        headers=h["enroll"])
    assert split.status_code == 201, split.text
    assert split.json()["new_person"]["face_count"] == 1 and split.json()["person"]["face_count"] == 2
    moved = client.post("/v1/faces/move", json={"face_ids": [first], "person": "andy"}, headers=h["enroll"]).json()
    assert moved["moved"] == [first] and moved["person"]["face_count"] == 3
    assert client.post("/v1/faces/unassign", json={"face_ids": [first]}, headers=h["enroll"]).json()["moved"] == [first]
    assert [f["id"] for f in client.get("/v1/faces", params={"unassigned": True}, headers=h["read"]).json()["items"]] == [first]
    assigned = client.post("/v1/faces/assign", json={"face_ids": [first], "person": "andy-2"}, headers=h["enroll"])
    assert assigned.json()["person"]["external_id"] == "andy-2"
    refused = client.post("/v1/faces/assign", json={"face_ids": [first], "person": "andy"}, headers=h["enroll"])
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "conflict"
    service = client.app.state.service  # the search index follows: the face is andy-2's there too
    _, _, vector = service.store.fetch_embeddings([first], service.model_info.name)

    def nearest():
        service.index.wait_for(service.store.watermark(), timeout=10)
        return service.index.search(vector, 1, -1.0)[0].nearest

    assert (nearest().face_id, nearest().person_id) == (first, assigned.json()["person"]["id"])

    # merge, which an undo reverses; the merged-away id resolves to the survivor meanwhile
    merged = client.post("/v1/persons/andy/merge", json={"other": "andy-2"}, headers=h["admin"]).json()
    assert client.get("/v1/persons/andy-2", headers=h["read"]).json()["external_id"] == "andy"
    taken = client.post("/v1/persons", json={"external_id": "andy-2"}, headers=h["enroll"])
    assert taken.status_code == 409 and "merged into person 'andy'" in taken.json()["error"]["message"]
    assert client.post(f"/v1/audit/{merged['audit_id']}/undo", headers=h["enroll"]).status_code == 403
    undone = client.post(f"/v1/audit/{merged['audit_id']}/undo", headers=h["admin"]).json()
    assert undone["person"]["external_id"] == "andy-2" and undone["person"]["id"] == merged["merged_person_id"]
    assert undone["faces_moved"] == 1 and undone["survivor"]["face_count"] == 2

    removed = client.delete(f"/v1/faces/{first}", headers=h["admin"]).json()
    assert removed["face_ids"] == [first]
    assert client.get(f"/v1/faces/{first}", headers=h["read"]).status_code == 404
    assert nearest().face_id != first

    history = client.get("/v1/persons/andy/history", headers=h["read"]).json()["items"]
    actions = [e["action"] for e in history]
    # andy-2's own entries (its assign, the removal) left andy's history with the undo
    assert actions == ["unmerge", "merge", "unassign", "move", "split", "create"], actions
    assert [e["action"] for e in client.get("/v1/persons/andy-2/history", headers=h["read"]).json()["items"]] == [
        "remove", "unmerge", "merge", "assign", "move", "split"]
    assert history[1]["undone_by"] == history[0]["id"] and not history[1]["undoable"]
    assert history[0]["actor"] == f"key:{key_ids['admin']} (c-admin)"
    assert history[-1]["actor"] == f"key:{key_ids['enroll']} (c-enroll)"  # created by its enrollment
    removals = client.get("/v1/audit", params={"action": "remove"}, headers=h["read"]).json()["items"]
    assert [e["details"]["face_ids"] for e in removals] == [[first]]


# --- through the CLI -----------------------------------------------------------------------------------


def test_cli_corrections_history_undo_and_chips(model_settings, store_env, in_process, tmp_path):
    import json

    from conftest import MISC_DIR, MODELS_DIR

    labeled = MISC_DIR / "small_labeled"
    env = {"IDENTITY_MODELS_DIR": str(MODELS_DIR), "IDENTITY_CACHE_DIR": str(model_settings.pipeline.cache_dir),
           "IDENTITY_DEVICE": "cpu", "IDENTITY_DATA_DIR": store_env["IDENTITY_DATA_DIR"],
           "IDENTITY_DATABASE_URL": store_env["IDENTITY_DATABASE_URL"], "IDENTITY_CHIPS": "false"}

    def identity(*args: str):
        # The commands, not the process, are what this checks (test_cli.py runs the executable).
        return in_process(*args, env=env)

    manifest = tmp_path / "m.csv"
    manifest.write_text("path,person\n"
                        f"{labeled / 'biden' / 'biden.jpg'},biden\n{labeled / 'biden' / 'biden2.jpg'},biden\n"
                        f"{labeled / 'obama' / 'obama2.jpg'},obama\n")
    assert identity("enroll", str(manifest)).returncode == 0
    faces = json.loads(identity("faces", "list", "--person", "biden", "--json").stdout)["items"]
    assert len(faces) == 2 and all(f["chip"] is None for f in faces)  # enrolled with IDENTITY_CHIPS=false

    backfilled = json.loads(identity("faces", "backfill-chips", "--json").stdout)
    assert backfilled["chips"] == 3 and backfilled["unreadable"] == backfilled["changed"] == 0
    written = identity("faces", "chip", str(faces[0]["id"]), "--out", str(tmp_path / "chip.jpg"))
    assert written.returncode == 0 and Image.open(tmp_path / "chip.jpg").size == (224, 224)

    split = json.loads(identity("persons", "split", "biden", str(faces[1]["id"]), "--into", "joe", "--json").stdout)
    assert split["new_person"]["external_id"] == "joe"
    merged = identity("persons", "merge", "biden", "joe", "--yes")
    assert merged.returncode == 0 and "identity persons undo" in merged.stdout
    history = json.loads(identity("persons", "history", "biden", "--json").stdout)["items"]
    assert [e["action"] for e in history] == ["merge", "split", "create"]
    assert all(e["actor"].startswith("user:") for e in history)
    table = identity("persons", "history", "biden").stdout
    assert f"identity persons undo {history[0]['id']}" in table

    undone = identity("persons", "undo", str(history[0]["id"]))
    assert undone.returncode == 0 and "restored joe" in undone.stdout
    again = identity("persons", "undo", str(history[0]["id"]))
    assert again.returncode == 5 and "already undone" in again.stderr

    moved = identity("faces", "move", str(faces[0]["id"]), "--to", "obama")
    assert moved.returncode == 0 and "moved 1 face(s) to obama" in moved.stdout
    removed = identity("faces", "remove", str(faces[0]["id"]), "--yes", "--json")
    assert json.loads(removed.stdout)["face_ids"] == [faces[0]["id"]]
