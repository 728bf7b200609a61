"""The Python API, called as a library user calls it: `identity.open()` and a gallery."""

from __future__ import annotations

import subprocess
import sys

import pytest

import identity
from conftest import MISC_DIR
from identity.errors import ImageDecodeError, InputError

LABELED = MISC_DIR / "small_labeled"


@pytest.fixture
def gallery(store_settings, model_settings):
    with identity.open(database_url=store_settings.store.database_url, data_dir=store_settings.data_dir,
                       models_dir=model_settings.pipeline.models_dir, cache_dir=model_settings.pipeline.cache_dir,
                       device="cpu") as opened:
        yield opened


def test_enroll_then_search_verify_detect_and_cluster(gallery, tmp_path):
    summary = gallery.enroll(LABELED, report=tmp_path / "report.csv")
    assert summary.counts["enrolled"] == 17 and summary.skipped == 0

    (obama,) = gallery.search(LABELED / "_query" / "obama1.jpg")
    assert obama.known and obama.matches[0].external_id == "obama"

    same = gallery.verify(LABELED / "biden" / "biden.jpg", LABELED / "biden" / "biden2.jpg")
    assert same.same and same.similarity >= same.threshold
    against_person = gallery.verify(LABELED / "_query" / "obama1.jpg", person="obama", level="strict")
    assert against_person.same and against_person.level == "strict"

    detections = gallery.detect(MISC_DIR / "group")
    assert [len(d.faces) for d in detections] == [6, 2, 3, 2]

    clustering = gallery.cluster([LABELED / "obama", LABELED / "biden"])
    assert clustering.result.n_clusters >= 2
    assert gallery.person("obama").face_count >= 1


def test_enroll_photos_of_one_named_person_is_idempotent(gallery):
    first = gallery.enroll(LABELED / "biden", person="joe")
    again = gallery.enroll(LABELED / "biden", person="joe")
    assert first.counts["enrolled"] == again.counts["already_present"] > 0


def test_wrong_calls_raise_typed_errors(gallery, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    with pytest.raises(ImageDecodeError):
        gallery.detect(broken)
    with pytest.raises(InputError):
        gallery.verify(broken)  # neither b nor person
    with pytest.raises(InputError, match="level must be one of loose, normal, strict"):
        gallery.search(LABELED / "_query" / "obama1.jpg", level="bogus")


def test_import_identity_is_cheap():
    code = "import sys, identity; print(sorted(m for m in ('torch', 'psycopg') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stderr
