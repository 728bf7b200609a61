"""One rule for bad input across commands (see `identity --help`): a missing path or a
folder without images stops with exit 2 naming it; inside a batch, unusable images are
reported and skipped; exit 2 only when nothing could be used."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import MISC_DIR, MODELS_DIR
from identity.cli import main
from identity.cli.index import human_age, readable_status
from identity.cli.cluster import saved_sentence
from identity.enroll import EnrollItem, ItemOutcome, items_from_directory


def run(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.mark.parametrize("command", [["detect"], ["search"], ["embed", "--out", "x.npy"],
                                     ["cluster", "--out", "clusters"]])
def test_a_missing_path_exits_2_naming_it_before_any_work(command, capsys, tmp_path):
    missing = tmp_path / "no-such-photo.jpg"
    code, out, err = run([*command, missing], capsys)
    assert code == 2, err
    assert err.strip() == f"error (invalid_input): {missing}: no such file or directory"
    assert not (tmp_path / "x.npy").exists()


def test_a_folder_without_images_names_itself(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    code, _, err = run(["detect", tmp_path], capsys)
    assert code == 2 and str(tmp_path) in err and "no image files" in err


def test_enroll_of_a_file_that_is_neither_folder_nor_manifest_says_there_is_nothing_to_enroll(capsys, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not photos")
    code, _, err = run(["enroll", notes], capsys)
    assert code == 2 and "no image to enroll" in err and str(notes) in err
    code, _, err = run(["enroll", tmp_path / "missing"], capsys)
    assert code == 2 and f"{tmp_path / 'missing'}: no such file or directory" in err


def test_enroll_of_a_folder_with_no_person_folders_says_so(capsys, tmp_path):
    (tmp_path / "_query").mkdir()
    code, _, err = run(["enroll", tmp_path], capsys)
    assert code == 2 and "no image to enroll" in err


def test_files_that_are_not_images_become_outcomes_for_the_report(tmp_path):
    person = tmp_path / "ada"
    person.mkdir()
    (person / "ada.jpg").write_bytes(b"decoded later")
    (person / "notes.txt").write_text("x")
    (person / ".DS_Store").write_bytes(b"")
    items = list(items_from_directory(tmp_path))
    assert items == [EnrollItem(str(person / "ada.jpg"), "ada"),
                     ItemOutcome(str(person / "notes.txt"), "ada", "not_an_image",
                                 "not an image file (extension .txt)")]


def test_index_status_reads_as_dates_and_ages():
    import time

    shown = readable_status({"count": 3, "last_sync_at": time.time() - 7200, "snapshot_age_s": None,
                             "db_watermark": None, "memory_estimate_mb": 612.4, "memory_budget_mb": 12052})
    assert shown["count"] == "3" and shown["snapshot written"] == "never"
    assert shown["last sync"].endswith("(2.0 h ago)") and shown["last sync"][:2] == "20"
    assert shown["db watermark"] == "unknown"
    assert shown["memory"] == "about 612 MiB of a 12,052 MiB budget"
    assert [human_age(s) for s in (5, 600, 7200, 3 * 86400)] == ["5 s", "10 min", "2.0 h", "3.0 days"]


def test_cluster_save_is_reported_as_a_sentence():
    assert saved_sentence({"persons": ["a", "b"], "images": {"added": 5, "already_present": 1}}) == (
        "saved the clustered faces to 2 person(s): 5 added, 1 already present")


# --- with the model ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def env(model_settings, tmp_path_factory) -> dict[str, str]:
    return {**os.environ, "IDENTITY_MODELS_DIR": str(MODELS_DIR),
            "IDENTITY_CACHE_DIR": str(model_settings.pipeline.cache_dir), "IDENTITY_DEVICE": "cpu",
            "IDENTITY_DATA_DIR": str(tmp_path_factory.mktemp("cli-input-data"))}


def identity(*args, env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "identity.cli", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=600)


def test_embed_of_photos_without_faces_writes_nothing_and_says_so(env, tmp_path):
    target = tmp_path / "vectors.npy"
    result = identity("embed", MISC_DIR / "nonface" / "skimage_coffee.png", "--out", target, env=env)
    assert result.returncode == 2
    assert "no face found in any of the 1 image(s)" in result.stderr and "not written" in result.stderr
    assert not target.exists() and not target.with_suffix(".json").exists()


def test_verify_prints_the_similarity_beside_a_similarity_threshold(env):
    labeled = MISC_DIR / "small_labeled"
    result = identity("verify", labeled / "biden" / "biden.jpg", labeled / "obama" / "obama2.jpg", env=env)
    assert result.returncode == 1
    line = result.stdout.strip()
    assert line.startswith("DIFFERENT person: similarity ") and " < threshold " in line
    assert "distance" not in line


def test_search_draw_labels_every_face(env, tmp_path):
    target = tmp_path / "named.png"
    result = identity("search", MISC_DIR / "small_labeled" / "_query" / "obama1.jpg", "--draw", target,
                      "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)[0]["faces"]) >= 1
    assert Image.open(target).size == Image.open(MISC_DIR / "small_labeled" / "_query" / "obama1.jpg").size


def test_detect_draw_takes_a_folder_for_several_images(env, tmp_path):
    group = sorted((MISC_DIR / "group").iterdir())[:2]
    result = identity("detect", *group, "--draw", tmp_path / "drawn", env=env)
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "drawn").glob("*.png"))) == 2
    first = sorted((tmp_path / "drawn").glob("*.png"))[0]
    assert np.asarray(Image.open(first)).shape[:2] == np.asarray(Image.open(group[0])).shape[:2]


def test_models_list_shows_each_licence_and_fetch_refuses_a_restricted_one_without_acceptance(capsys, tmp_path,
                                                                                            monkeypatch):
    monkeypatch.setenv("IDENTITY_MODELS_DIR", str(tmp_path))
    code, out, _ = run(["models", "list", "--json"], capsys)
    models = {m["name"]: m for m in json.loads(out)}
    assert code == 0
    assert models["facenet-keras-128"]["license"]["commercial_use"] is True
    assert models["w600k-mbf-512"]["license"]["commercial_use"] is False
    code, _, err = run(["models", "fetch", "w600k-mbf-512"], capsys)
    assert code == 3 and "--accept-license" in err and "commercially" in err
    assert not list(tmp_path.iterdir())  # nothing downloaded
