"""1:N search through the service: real photos, real database, the FAISS mirror."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from identity.enroll import EnrollItem, items_from_directory

from conftest import MISC_DIR

LABELED = MISC_DIR / "small_labeled"
QUERIES = {"johnsnow_test1.jpg": "kit_harington", "obama1.jpg": "obama",
           "alex_lacamoire1.jpg": "alex_lacamoire"}


def test_one_enrolled_photo_per_person_finds_the_others_and_the_queries(service, tmp_path):
    items = list(items_from_directory(LABELED))
    first_per_person: dict[str, EnrollItem] = {}
    for item in items:
        first_per_person.setdefault(item.person, item)
    summary = service.enroll(list(first_per_person.values()), report=tmp_path / "r.csv")
    assert summary.counts["enrolled"] == 10

    probes = [(i.source, i.person) for i in items if i not in first_per_person.values()]
    probes += [(str(LABELED / "_query" / name), person) for name, person in QUERIES.items()]
    for source, person in probes:
        (hit,) = service.search_image(source, k=5)
        assert hit.known, f"{source}: unknown (nearest {hit.nearest_similarity:.3f})"
        assert hit.matches[0].external_id == person, source


def test_every_face_of_a_group_photo_is_searched_and_strangers_are_unknown(service, tmp_path):
    service.enroll(
        [EnrollItem(str(LABELED / "obama" / "obama2.jpg"), "obama"),
         EnrollItem(str(LABELED / "biden" / "biden2.jpg"), "biden")],
        report=tmp_path / "r.csv",
    )
    hits = service.search_image(MISC_DIR / "group" / "fr_obama_and_biden.jpg")
    names = [h.matches[0].external_id if h.known else None for h in hits]
    assert names == ["biden", "obama", None]  # left to right; the child is nobody enrolled


def test_search_can_be_restricted_to_some_persons(service, tmp_path):
    service.enroll(
        [EnrollItem(str(LABELED / "obama" / "obama2.jpg"), "obama"),
         EnrollItem(str(LABELED / "biden" / "biden2.jpg"), "biden")],
        report=tmp_path / "r.csv",
    )
    query = service.pipeline.embed_image(LABELED / "obama" / "obama3.jpg").faces[0].embedding
    (anyone,) = service.search_embeddings(query[None, :])
    (only_biden,) = service.search_embeddings(query[None, :], persons=["biden"])
    assert anyone.matches[0].external_id == "obama"
    assert not only_biden.known  # Obama's face is not Biden's, and Obama was excluded


def test_a_face_enrolled_now_is_searchable_at_once(service, tmp_path):
    query = service.pipeline.embed_image(LABELED / "rose_leslie" / "img2.jpg").faces[0].embedding
    assert not service.search_embeddings(query[None, :])[0].known  # the index is open and empty
    service.enroll([EnrollItem(str(LABELED / "rose_leslie" / "img1.jpg"), "rose_leslie")],
                   report=tmp_path / "r.csv")
    assert service.index.wait_for(service.store.watermark(service.model_info.name), timeout=5)
    (hit,) = service.search_embeddings(np.asarray([query]))
    assert hit.known and hit.matches[0].external_id == "rose_leslie"
    assert Path(service.store.person_faces("rose_leslie")[0].source).name == "img1.jpg"
