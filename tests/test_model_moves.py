"""Moving a store to another embedding model, at the store level (no network): target
vectors beside the source's, the change log a target mirror follows, the atomic switch,
finalization keeping face ids, and the refusals. The end-to-end move with real weights,
killed with SIGKILL and resumed, is in test_model_moves_e2e.py."""

from __future__ import annotations

import numpy as np
import pytest

from identity.errors import ModelMismatchError, ModelMoveError
from identity.index import IndexMirror
from identity.store import FacesToAdd, ModelInfo
from tests.test_store import image, unit

SOURCE = ModelInfo("move-source", "v1", 128)
TARGET = ModelInfo("move-target", "t1", 64)


def enroll(store, name: str, person: str | None, n: int = 1, model: ModelInfo = SOURCE):
    return store.add_faces([FacesToAdd(image(name, n, dim=model.dim), external_id=person)], model=model)[0]


def embed_missing(store, move, *, limit: int = 1000) -> dict[int, np.ndarray]:
    rows = store.faces_to_move(move, limit=limit)
    vectors = {r.face_id: unit(TARGET.dim) for r in rows}
    store.add_move_embeddings(move, list(vectors), np.stack(list(vectors.values())) if vectors else
                              np.zeros((0, TARGET.dim), np.float32), from_chips=len(vectors))
    return vectors


def index_rows(store, model: str) -> dict[int, int]:
    """face id -> person id (-1 none), as a fresh build of that model's index would read it."""
    _, batches = store.snapshot_embeddings(model)
    out = {}
    for ids, persons, _ in batches:
        out.update(zip(ids.tolist(), persons.tolist()))
    return out


@pytest.fixture
def mirror_settings(store_settings):
    return store_settings.replace(index_poll_seconds=0.2, index_use_gpu=False)


def test_a_move_adds_target_vectors_beside_the_source_and_a_target_mirror_follows_them(store, mirror_settings):
    a = enroll(store, "a1", "alice", 2)
    enroll(store, "b1", "bob")
    move, resumed = store.begin_move(SOURCE.name, TARGET)
    assert not resumed and move.state == "running" and move.faces_total == 3
    target_mirror = IndexMirror.from_settings(store, mirror_settings, TARGET)
    target_mirror.open()
    assert target_mirror.index.count == 0

    vectors = embed_missing(store, move)
    assert len(vectors) == 3 and store.faces_to_move(move) == []
    # the source keeps its vectors; the target has one per face, same face ids
    assert set(index_rows(store, SOURCE.name)) == set(index_rows(store, TARGET.name)) == set(vectors)
    # a second write of the same faces (a resumed run redoing its batch) adds nothing
    assert store.add_move_embeddings(move, list(vectors), np.stack(list(vectors.values()))) == 0

    target_mirror.sync()
    assert target_mirror.index.count == 3
    # person changes reach the target's mirror too (the faces trigger logs them per model)
    store.merge_persons("alice", "bob")
    store.create_person("carol")
    store.move_faces([a.face_ids[0]], "carol")
    target_mirror.sync()
    ids = sorted(vectors)
    want = index_rows(store, SOURCE.name)
    assert index_rows(store, TARGET.name) == want
    assert target_mirror.index.persons.lookup(np.array(ids, np.int64)).tolist() == [want[i] for i in ids]
    # deleting a face removes both vectors, and the target's mirror sees it
    store.remove_faces([ids[-1]])
    target_mirror.sync()
    assert target_mirror.index.count == 2
    assert set(index_rows(store, TARGET.name)) == set(ids[:-1])


def test_the_switch_is_refused_while_a_face_lacks_a_target_vector_and_faces_enrolled_meanwhile_are_picked_up(store):
    enroll(store, "a1", "alice")
    move, _ = store.begin_move(SOURCE.name, TARGET)
    embed_missing(store, move)
    late = enroll(store, "late", "alice")  # enrolled with the source while the move runs
    assert store.switch_move(move) == list(late.face_ids)
    assert store.serving_model(SOURCE.name)[0] == SOURCE.name
    embed_missing(store, move)
    switched = store.switch_move(move)
    assert switched.state == "switched"
    assert store.serving_model(SOURCE.name) == (TARGET.name, store.model_move(move.id))


def test_finalize_keeps_face_ids_drops_the_source_vectors_and_retires_the_source(store, mirror_settings):
    alice = enroll(store, "a1", "alice", 2)
    move, _ = store.begin_move(SOURCE.name, TARGET)
    with pytest.raises(ModelMoveError):
        store.finalize_move(move)  # not switched yet
    vectors = embed_missing(store, move)
    store.switch_move(move)
    mirror = IndexMirror.from_settings(store, mirror_settings, TARGET)
    mirror.open()
    # after the switch, enrolling the same photo with the target is not a second face
    again = store.add_faces([FacesToAdd(image("a1", 2, dim=TARGET.dim), external_id="alice")], model=TARGET)[0]
    assert again.status == "already_present" and again.face_ids == alice.face_ids
    new = enroll(store, "n1", "nina", model=TARGET)  # a new photo, enrolled with the target

    done = store.finalize_move(move)
    assert done.state == "finalized"
    with store.connection() as conn:
        rows = dict(conn.execute("SELECT id, model FROM faces").fetchall())
        left = conn.execute("SELECT count(*) FROM face_embeddings").fetchone()[0]
    assert rows == {**{i: TARGET.name for i in alice.face_ids}, new.face_ids[0]: TARGET.name} and left == 0
    got = store.fetch_embeddings(list(vectors), TARGET.name)
    np.testing.assert_allclose(got[2], np.stack([vectors[i] for i in got[0].tolist()]), atol=1e-6)
    assert index_rows(store, SOURCE.name) == {}
    # the target's mirror saw only updates: same faces, same count
    mirror.sync()
    assert mirror.index.count == 3
    # a process still embedding with the retired model is refused, with the fix
    with pytest.raises(ModelMismatchError, match="retired"):
        enroll(store, "old", "olga")


def test_one_move_at_a_time_and_abandoning_a_running_move_deletes_its_vectors(store):
    enroll(store, "a1", "alice")
    move, _ = store.begin_move(SOURCE.name, TARGET)
    again, resumed = store.begin_move(SOURCE.name, TARGET)
    assert resumed and again.id == move.id and again.runs == 2
    with pytest.raises(ModelMoveError, match="finalize or abandon"):
        store.begin_move(SOURCE.name, ModelInfo("other", "1", 32))
    embed_missing(store, move)
    abandoned = store.abandon_move(move)
    assert abandoned.state == "abandoned" and index_rows(store, TARGET.name) == {}
    assert store.serving_model(SOURCE.name)[0] == SOURCE.name


def test_a_target_vector_of_the_wrong_dimension_is_refused(store):
    enroll(store, "a1", "alice")
    move, _ = store.begin_move(SOURCE.name, TARGET)
    face_id = store.faces_to_move(move)[0].face_id
    with pytest.raises(ModelMismatchError):
        store.add_move_embeddings(move, [face_id], np.stack([unit(32)]))


def registered(name: str) -> ModelInfo:
    from identity.faces import models

    spec = models.get_model(name)
    return ModelInfo(spec.name, spec.version, spec.dim)


class FakeEmbedder:
    device = "cpu"

    def embed(self, crops):
        return np.stack([unit(TARGET.dim) for _ in crops])


class FakeReembedder:
    """Stands in for the target's network: these tests are about the store's bookkeeping."""

    embedder = FakeEmbedder()
    spec = TARGET  # name, version, dim: all migrate reads of a spec

    def crop(self, row):
        return np.zeros((4, 4, 3), np.uint8), "photo"


def test_migrate_with_the_model_left_at_the_default_moves_the_model_the_store_holds(store, store_settings):
    from identity import moves

    enroll(store, "a1", "alice", model=registered("w600k-mbf-512"))
    report = moves.migrate(store, store_settings, TARGET.name, reembedder=FakeReembedder())
    assert report.source == "w600k-mbf-512" and report.switched and report.embedded == 1


def test_running_migrate_again_after_the_switch_picks_up_faces_written_with_the_old_model(store, store_settings):
    from identity import moves

    enroll(store, "a1", "alice")
    move, _ = store.begin_move(SOURCE.name, TARGET)
    embed_missing(store, move)
    assert store.switch_move(move).state == "switched"
    late = enroll(store, "late", "alice")  # a process that had not switched yet
    settings = store_settings.replace(pipeline={"model": SOURCE.name})
    report = moves.migrate(store, settings, TARGET.name, reembedder=FakeReembedder())
    assert report.resumed and report.switched and report.embedded == 1 and report.source == SOURCE.name
    assert set(index_rows(store, TARGET.name)) >= set(late.face_ids)


def test_doctor_says_which_model_the_store_serves_when_the_setting_names_another(store, store_settings):
    from identity.doctor import diagnose

    def database_check():
        settings = store_settings.replace(model=SOURCE.name)
        return next(c for c in diagnose(settings) if c.name == "database")

    enroll(store, "a1", "alice")
    assert database_check().ok and database_check().facts["serving_model"] == SOURCE.name
    move, _ = store.begin_move(SOURCE.name, TARGET)
    embed_missing(store, move)
    store.switch_move(move)
    switched = database_check()
    assert switched.ok and switched.facts["serving_model"] == TARGET.name
    assert f"IDENTITY_MODEL={TARGET.name}" in switched.detail
    store.finalize_move(move)
    finalized = database_check()  # the configured model's enrollments are refused now
    assert not finalized.ok and finalized.exit_code == 3 and "refused" in finalized.detail


KNOWN = {SOURCE.name, TARGET.name, "new-default"}  # the models a default may give way to


def test_a_default_model_the_store_never_held_gives_way_to_the_model_of_its_faces(store):
    default = "new-default"
    assert store.serving_model(default, adoptable=KNOWN) == (default, None)  # an empty store takes the default
    enroll(store, "a1", "alice")
    assert store.serving_model(default, adoptable=KNOWN) == (SOURCE.name, None)
    assert store.serving_model(default) == (default, None)  # a model the user chose is served as chosen
    # a model the registry no longer lists is not adopted: nothing could embed a query for it
    assert store.serving_model(default, adoptable={TARGET.name}) == (default, None)
    # moving the store to the default: the source serves until the switch, then the move decides
    move, _ = store.begin_move(SOURCE.name, ModelInfo(default, "d1", 128))
    rows = store.faces_to_move(move)
    store.add_move_embeddings(move, [r.face_id for r in rows], np.stack([unit(128) for _ in rows]))
    assert store.serving_model(default, adoptable=KNOWN)[0] == SOURCE.name
    switched = store.switch_move(move)
    assert store.serving_model(default, adoptable=KNOWN) == (default, switched)
    store.finalize_move(switched)
    assert store.serving_model(default, adoptable=KNOWN)[0] == default


def test_a_store_holding_faces_of_two_models_serves_the_default_as_configured(store):
    enroll(store, "a1", "alice")
    enroll(store, "t1", "tom", model=TARGET)
    assert store.serving_model("new-default", adoptable=KNOWN) == ("new-default", None)
    assert store.serving_model(TARGET.name, adoptable=KNOWN) == (TARGET.name, None)


def test_the_service_serves_the_model_a_store_was_built_with_unless_the_settings_name_one(store, store_settings):
    from identity.service import Service

    own = registered("w600k-mbf-512")  # not the default: a store built with another model
    enroll(store, "a1", "alice", model=own)
    assert store_settings.pipeline.model != own.name
    with Service(store_settings, store=store) as svc:
        assert svc.follow_moves(force=True) == own.name
        assert svc.settings.pipeline.model == own.name and svc.model_info == own
        assert svc.configured_model == store_settings.pipeline.model
    chosen = store_settings.replace(pipeline={"model": "facenet-keras-128"})
    with Service(chosen, store=store) as svc:
        assert svc.follow_moves(force=True) == "facenet-keras-128"


def test_doctor_says_the_store_keeps_its_model_and_how_to_move_it_to_the_default(store, store_settings):
    from identity.doctor import diagnose

    enroll(store, "a1", "alice", model=registered("w600k-mbf-512"))
    check = next(c for c in diagnose(store_settings) if c.name == "database")
    assert check.ok and check.facts["serving_model"] == "w600k-mbf-512"
    assert f"identity models migrate --to {store_settings.pipeline.model}" in check.detail


def test_a_store_whose_only_model_left_the_registry_serves_the_configured_one(store, store_settings):
    from identity.service import Service

    enroll(store, "a1", "alice")  # move-source: no such model in the manifest
    with Service(store_settings, store=store) as svc:
        assert svc.follow_moves(force=True) == store_settings.pipeline.model
