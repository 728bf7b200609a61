"""Corrections (move, assign, unassign, remove, split, undo a merge) and the person audit
log, against a real PostgreSQL (pgserver). No model: faces are synthetic, as in
tests/test_store.py. The API and CLI faces of these operations are tested at the end."""

from __future__ import annotations

import pytest
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
