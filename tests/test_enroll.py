"""Bulk enrollment against a real PostgreSQL: layouts, idempotency, resume after a
kill, skipped files and their reasons."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from identity.enroll import EnrollItem, items_from_directory, items_from_manifest

from conftest import LFW_DIR, MISC_DIR, MODELS_DIR

LABELED = MISC_DIR / "small_labeled"


def face_count(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM faces").fetchone()[0]


def test_directory_layout_is_one_folder_per_person_and_skips_underscore_folders():
    items = list(items_from_directory(LABELED))
    assert len(items) == 17
    assert {i.person for i in items} == {
        "alex_lacamoire", "angelina_jolie", "biden", "kate_siegel", "kit_harington",
        "lin_manuel_miranda", "obama", "paul_rudd", "rose_leslie", "shea_whigham"}
    assert not any("_query" in i.source for i in items)


def test_manifest_csv_and_jsonl_with_relative_paths_and_bad_lines(tmp_path):
    (tmp_path / "m.csv").write_text(
        "path,person,display_name\n"
        f"{LABELED / 'obama' / 'obama.jpg'},obama,Barack Obama\n"
        ",nobody,\n"
    )
    rows = list(items_from_manifest(tmp_path / "m.csv"))
    assert rows[0] == EnrollItem(str(LABELED / "obama" / "obama.jpg"), "obama", "Barack Obama")
    assert rows[1].status == "invalid" and rows[1].source.endswith("m.csv:3")

    (tmp_path / "photo.jpg").write_bytes((LABELED / "biden" / "biden.jpg").read_bytes())
    (tmp_path / "m.jsonl").write_text('{"path": "photo.jpg", "person": "biden"}\n{oops\n')
    rows = list(items_from_manifest(tmp_path / "m.jsonl"))
    assert rows[0] == EnrollItem(str(tmp_path / "photo.jpg"), "biden")
    assert rows[1].status == "invalid" and "not JSON" in rows[1].reason


def test_enroll_small_labeled_then_again_adds_nothing(service, tmp_path):
    items = list(items_from_directory(LABELED))
    first = service.enroll(items, report=tmp_path / "first.csv")
    assert first.counts["enrolled"] == 17 and first.total == 17
    assert face_count(service.store.url) == 17
    assert {p.external_id: p.face_count for p in service.store.list_persons(limit=100).items}[
        "obama"] == 5

    second = service.enroll(items, report=tmp_path / "second.csv")
    assert second.counts["already_present"] == 17 and second.counts["enrolled"] == 0
    assert face_count(service.store.url) == 17


def test_photos_with_no_face_or_several_faces_are_reported_not_guessed(service, tmp_path):
    group = MISC_DIR / "group" / "fr_two_people.jpg"
    items = [
        EnrollItem(str(group), "someone"),
        EnrollItem(str(MISC_DIR / "nonface" / "skimage_coffee.png"), "coffee"),
        EnrollItem(str(tmp_path / "missing.jpg"), "ghost"),
        EnrollItem(str(LABELED / "biden" / "biden.jpg"), "biden"),
    ]
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    items.append(EnrollItem(str(tmp_path / "corrupt.jpg"), "broken"))
    report = tmp_path / "report.csv"
    summary = service.enroll(items, report=report)
    assert dict(summary.counts) == {"multiple_faces": 1, "no_face": 1, "unreadable": 2, "enrolled": 1}

    rows = list(csv.DictReader(report.open()))
    assert {r["status"] for r in rows} == {"multiple_faces", "no_face", "unreadable"}
    reasons = {Path(r["source"]).name: r["reason"] for r in rows}
    assert "2 faces found" in reasons["fr_two_people.jpg"] and "--largest-face" in reasons["fr_two_people.jpg"]
    assert "not found" in reasons["missing.jpg"]
    assert "corrupt" in reasons["corrupt.jpg"] or "truncated" in reasons["corrupt.jpg"]

    # Asked for explicitly, the largest face of the group photo is enrolled.
    again = service.enroll(items[:1], largest_face=True, report=tmp_path / "again.csv")
    assert again.counts["enrolled"] == 1


def test_an_image_enrolled_to_one_person_conflicts_for_another(service, tmp_path):
    photo = str(LABELED / "biden" / "biden.jpg")
    service.enroll([EnrollItem(photo, "biden")], report=tmp_path / "a.csv")
    summary = service.enroll([EnrollItem(photo, "not_biden")], report=tmp_path / "b.csv")
    assert summary.counts["conflict"] == 1
    assert face_count(service.store.url) == 1


def _run_enroll(manifest: Path, env: dict, report: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "identity.cli", "enroll", str(manifest), "--json", "--report", str(report)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_a_killed_enrollment_resumes_without_duplicates(store_env, store_settings, model_settings, tmp_path):
    people = sorted(p for p in LFW_DIR.iterdir() if p.is_dir())[:400]
    photos = [img for person in people for img in sorted(person.glob("*.jpg"))][:96]
    manifest = tmp_path / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "person"])
        writer.writerows([str(p), p.parent.name] for p in photos)
    env = {**store_env, "IDENTITY_MODELS_DIR": str(MODELS_DIR),
           "IDENTITY_CACHE_DIR": str(model_settings.pipeline.cache_dir), "IDENTITY_BATCH_SIZE": "8",
           "IDENTITY_DEVICE": "cpu"}
    url = str(store_settings.store.database_url)

    first = _run_enroll(manifest, env, tmp_path / "first.csv")
    deadline = time.monotonic() + 240
    while face_count(url) < 16 and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.2)
    assert first.poll() is None, "the first run finished before it could be killed"
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    partial = face_count(url)
    assert 16 <= partial < len(photos)

    second = _run_enroll(manifest, env, tmp_path / "second.csv")
    stdout, stderr = second.communicate(timeout=600)
    assert second.returncode == 0, stderr
    summary = json.loads(stdout)
    assert summary["already_present"] >= partial - 8  # the batch in flight may not have committed
    assert summary["total"] == len(photos)
    # LFW photos often show someone in the background too: reported, not guessed.
    assert summary["unreadable"] == summary["conflict"] == 0

    with psycopg.connect(url) as conn:
        faces, images = conn.execute("SELECT count(*), count(DISTINCT image_id) FROM faces").fetchone()
        orphans = conn.execute(
            "SELECT count(*) FROM images i WHERE NOT EXISTS (SELECT 1 FROM faces f WHERE f.image_id = i.id)"
        ).fetchone()[0]
    assert faces == images == summary["enrolled"] + summary["already_present"]
    assert orphans == 0  # no half-written image
