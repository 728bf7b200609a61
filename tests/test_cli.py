"""The `identity` command line, run as a user runs it: real files, exit codes checked.

Each command that computes (detect, embed, verify, evaluate, calibrate, cluster) runs at
least once as a subprocess, the executable itself. Its further runs, and the tests that run
many commands in a row (persons, keys, saving clusters, what calibrating changed), run in
this process through `main`, the function the executable runs (the same exit codes and
output), which spares each command a Python start and a torch import.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import MISC_DIR, MODELS_DIR

LABELED = MISC_DIR / "small_labeled"


@pytest.fixture(scope="module")
def env(model_settings, tmp_path_factory) -> dict[str, str]:
    return {**os.environ, "IDENTITY_MODELS_DIR": str(MODELS_DIR),
            "IDENTITY_CACHE_DIR": str(model_settings.pipeline.cache_dir), "IDENTITY_DEVICE": "cpu",
            "IDENTITY_DATA_DIR": str(tmp_path_factory.mktemp("cli-data"))}


def identity(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "identity.cli", *args], env=env,
                          capture_output=True, text=True, timeout=600)


def test_help_lists_the_commands(env):
    result = identity("--help", env=env)
    assert result.returncode == 0
    for command in ("detect", "embed", "verify", "enroll", "search", "persons", "models"):
        assert command in result.stdout


def test_verify_same_person_exits_0_and_different_exits_1(env, in_process):
    same = identity("verify", str(LABELED / "biden" / "biden.jpg"),
                    str(LABELED / "biden" / "biden2.jpg"), "--json", env=env)
    assert same.returncode == 0, same.stderr
    body = json.loads(same.stdout)
    assert body["same"] is True and body["similarity"] > body["threshold"]
    assert body["distance"] == pytest.approx(np.sqrt(2 - 2 * body["similarity"]), abs=1e-3)

    different = in_process("verify", str(LABELED / "biden" / "biden.jpg"),
                           str(LABELED / "obama" / "obama2.jpg"), env=env)
    assert different.returncode == 1, different.stderr
    assert "DIFFERENT" in different.stdout


def test_verify_bad_input_exits_2_naming_the_file(env, in_process, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    result = identity("verify", str(broken), str(LABELED / "biden" / "biden.jpg"), env=env)
    assert result.returncode == 2
    assert "broken.jpg" in result.stderr and "not a recognised image" in result.stderr

    no_face = in_process("verify", str(MISC_DIR / "nonface" / "skimage_coffee.png"),
                         str(LABELED / "biden" / "biden.jpg"), env=env)
    assert no_face.returncode == 2 and "no face" in no_face.stderr


def test_missing_weights_exit_3_and_say_how_to_get_them(env, tmp_path):
    result = identity("verify", str(LABELED / "biden" / "biden.jpg"),
                      str(LABELED / "biden" / "biden2.jpg"),
                      env={**env, "IDENTITY_MODELS_DIR": str(tmp_path)})
    assert result.returncode == 3
    assert "identity models fetch facenet-keras-128-tight" in result.stderr


def test_detect_reports_faces_and_draws_them(env, tmp_path):
    target = tmp_path / "annotated.png"
    photo = MISC_DIR / "group" / "fr_kit_with_rose.jpg"
    result = identity("detect", str(photo), "--json", "--draw", str(target), env=env)
    assert result.returncode == 0, result.stderr
    (record,) = json.loads(result.stdout)
    assert len(record["faces"]) == 2
    assert all(len(f["landmarks"]) == 5 and f["probability"] > 0.95 for f in record["faces"])
    drawn = np.asarray(Image.open(target).convert("RGB"))
    original = np.asarray(Image.open(photo).convert("RGB"))
    assert drawn.shape == original.shape and (drawn != original).any()


def test_detect_skips_unreadable_files_and_goes_on(env, tmp_path):
    (tmp_path / "zero.jpg").write_bytes(b"")
    result = identity("detect", str(tmp_path / "zero.jpg"),
                      str(MISC_DIR / "single_face" / "skimage_astronaut.png"), "--json", env=env)
    assert result.returncode == 0
    records = json.loads(result.stdout)
    assert records[0]["error"]["code"] == "unreadable_image"
    assert len(records[1]["faces"]) == 1


def test_embed_writes_vectors_and_a_row_description(env, tmp_path):
    target = tmp_path / "vectors.npy"
    result = identity("embed", str(MISC_DIR / "group"), "--out", str(target), env=env)
    assert result.returncode == 0, result.stderr
    vectors = np.load(target)
    rows = json.loads(target.with_suffix(".json").read_text())
    assert vectors.shape == (13, 128) and len(rows["rows"]) == 13  # 6 + 2 + 3 + 2 faces
    assert rows["model"] == "facenet-keras-128-tight"
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


def test_models_list_shows_the_default_and_its_weights(env):
    result = identity("models", "list", "--json", env=env)
    assert result.returncode == 0, result.stderr
    models = {m["name"]: m for m in json.loads(result.stdout)}
    assert models["facenet-keras-128-tight"]["default"] is True
    assert models["facenet-keras-128-tight"]["dim"] == 128
    assert set(models["facenet-keras-128-tight"]["thresholds"]) == {"loose", "normal", "strict"}
    assert models["facenet-keras-128"]["default"] is False
    assert {"facenet-vggface2-512", "facenet-casia-512"} <= set(models)


def test_persons_commands_and_export_work_on_an_enrolled_collection(env, store_env, in_process, tmp_path):
    import pyarrow.parquet as pq

    env = {**env, "IDENTITY_DATABASE_URL": store_env["IDENTITY_DATABASE_URL"]}
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "path,person,display_name\n"
        f"{LABELED / 'biden' / 'biden.jpg'},biden,Joe Biden\n"
        f"{LABELED / 'biden' / 'biden2.jpg'},joe,\n"
        f"{LABELED / 'obama' / 'obama2.jpg'},obama,\n"
    )
    enrolled = in_process("enroll", str(manifest), "--json", env=env)
    assert enrolled.returncode == 0, enrolled.stderr
    assert json.loads(enrolled.stdout)["enrolled"] == 3

    assert in_process("persons", "rename", "obama", "Barack Obama", env=env).returncode == 0
    refused = in_process("persons", "merge", "biden", "joe", env=env)  # asks first; no answer is no
    assert refused.returncode == 130 and "merge joe" in refused.stdout
    merged = in_process("persons", "merge", "biden", "joe", "--yes", env=env)
    assert merged.returncode == 0 and "1 face(s) moved" in merged.stdout
    shown = json.loads(in_process("persons", "show", "joe", "--json", env=env).stdout)
    assert shown["external_id"] == "biden" and shown["aliases"] == ["joe"] and shown["face_count"] == 2

    listed = json.loads(in_process("persons", "list", "--json", env=env).stdout)["items"]
    assert {p["external_id"]: p["display_name"] for p in listed} == {
        "biden": "Joe Biden", "obama": "Barack Obama"}

    missing = in_process("persons", "show", "nobody", env=env)
    assert missing.returncode == 5 and "nobody" in missing.stderr

    deleted = in_process("persons", "delete", "obama", "--yes", env=env)
    assert deleted.returncode == 0 and "1 face(s)" in deleted.stdout

    exported = in_process("export", "--out", str(tmp_path / "dump"), env=env)
    assert exported.returncode == 0, exported.stderr
    faces = pq.read_table(next((tmp_path / "dump").glob("faces*.parquet"))).to_pylist()
    assert len(faces) == 2


def test_api_keys_are_created_listed_and_revoked(env, store_env, in_process):
    env = {**env, "IDENTITY_DATABASE_URL": store_env["IDENTITY_DATABASE_URL"]}
    created = in_process("keys", "create", "ci", "--scope", "enroll", "--json", env=env)
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)
    assert key["key"].startswith(f"idk_{key['key_id']}_")
    listed = json.loads(in_process("keys", "list", "--json", env=env).stdout)
    assert [(k["key_id"], k["scopes"], k["revoked_at"]) for k in listed] == [
        (key["key_id"], ["enroll"], None)]
    assert key["key"] not in in_process("keys", "list", env=env).stdout
    assert in_process("keys", "revoke", key["key_id"], env=env).returncode == 0
    assert json.loads(in_process("keys", "list", "--json", env=env).stdout)[0]["revoked_at"]


def small_pairs_file(tmp_path, per_kind: int = 12):
    """The first `per_kind` same and different pairs of lfw-dev's View 1 list."""
    from conftest import LFW_DIR

    lines = (LFW_DIR / "pairsDevTrain.txt").read_text().splitlines()
    same, different = lines[1:1101], lines[1101:2201]
    target = tmp_path / "pairs.txt"
    target.write_text("\n".join([str(per_kind)] + same[:per_kind] + different[:per_kind]) + "\n")
    return target


def test_evaluate_lfw_reports_accuracy_and_writes_the_roc_curve(env, tmp_path):
    from conftest import LFW_DIR

    result = identity("evaluate", "lfw", "--dir", str(LFW_DIR), "--pairs", str(small_pairs_file(tmp_path)),
                      "--out", str(tmp_path / "report"), "--json", env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["metrics"]["n_pairs"] == 24
    assert report["metrics"]["accuracy_mean"] >= 0.9
    assert report["n_no_face"] == 0
    assert (tmp_path / "report" / "lfw_roc.png").stat().st_size > 1000
    assert json.loads((tmp_path / "report" / "lfw_report.json").read_text())["model"] == "facenet-keras-128-tight"


def test_calibrate_stores_thresholds_that_verify_then_uses(env, in_process, tmp_path):
    from conftest import LFW_DIR

    env = {**env, "IDENTITY_DATA_DIR": str(tmp_path / "data")}
    result = identity("calibrate", "--dir", str(LFW_DIR), "--pairs", str(small_pairs_file(tmp_path)),
                      "--json", env=env)
    assert result.returncode == 0, result.stderr
    levels = {name: level["similarity"] for name, level in json.loads(result.stdout)["levels"].items()}
    assert levels["loose"] <= levels["normal"] <= levels["strict"]
    listed = json.loads(in_process("models", "list", "--json", env=env).stdout)
    (default,) = [m for m in listed if m["default"]]
    assert default["thresholds"] == pytest.approx(levels, abs=1e-6)
    verified = json.loads(in_process("verify", str(LABELED / "biden" / "biden.jpg"),
                                     str(LABELED / "biden" / "biden2.jpg"), "--json", env=env).stdout)
    assert verified["threshold"] == pytest.approx(levels["normal"], abs=1e-5)  # printed to 5 places


def test_cluster_writes_json_folders_and_sheets_and_keeps_photo_mates_apart(env, tmp_path):
    out_dir = tmp_path / "clusters"
    result = identity("cluster", str(MISC_DIR / "group"), str(LABELED / "obama"), str(LABELED / "biden"),
                      "--out", str(out_dir), "--json", env=env)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["faces"] == 13 + 5 + 2 and summary["clusters"] >= 2
    report = json.loads((out_dir / "clusters.json").read_text())
    for members in report["clusters"]:
        photos = [face["image"] for face in members["faces"]]
        assert len(photos) == len(set(photos)), "two faces of one photo share a cluster"
    obama = [c for c in report["clusters"]
             if any("/obama/" in face["image"] for face in c["faces"])]
    assert obama and all("/biden/" not in face["image"] for c in obama for face in c["faces"])
    assert len(list((out_dir / "sheets").glob("cluster_*.png"))) == summary["clusters"]
    assert (out_dir / "sheets" / "unclustered.png").exists() == (summary["unclustered"] > 0)
    assert len([p for p in out_dir.iterdir() if p.is_dir() and p.name.startswith("cluster_")]) == summary["clusters"]


def test_evaluate_clusters_scores_against_folder_names(env, in_process):
    result = identity("evaluate", "clusters", str(LABELED), "--algorithm", "chinese_whispers", "--json", env=env)
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert metrics["algorithm"] == "chinese_whispers"
    for key in ("bcubed_precision", "bcubed_recall", "bcubed_f1", "pairwise_f1"):
        assert 0.0 <= metrics[key] <= 1.0
    assert (metrics["n_faces"], metrics["n_identities"]) == (17, 10)  # one subject face per photo
    assert metrics["n_clusters"] >= 1
    assert metrics["hubness"] is True  # the model's calibration, unless --no-hubness
    plain = in_process("evaluate", "clusters", str(LABELED), "--no-hubness", "--json", env=env)
    assert plain.returncode == 0, plain.stderr
    assert json.loads(plain.stdout)["hubness"] is False


def test_cluster_matches_enrolled_persons_and_saves_the_rest_as_unnamed(env, store_env, in_process, tmp_path):
    env = {**env, "IDENTITY_DATABASE_URL": store_env["IDENTITY_DATABASE_URL"],
           "IDENTITY_CLUSTER_ALGORITHM": "chinese_whispers"}
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,person\n{LABELED / 'obama' / 'obama2.jpg'},obama\n")
    assert in_process("enroll", str(manifest), env=env).returncode == 0

    args = ["cluster", str(LABELED / "obama"), str(LABELED / "rose_leslie"), "--out", str(tmp_path / "c"),
            "--folders", "none", "--no-sheets", "--save", "--json"]
    first = in_process(*args, env=env)
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    assert "obama" in summary["matched"].values()
    assert "obama" in summary["saved"]["persons"]
    unnamed = [p for p in summary["saved"]["persons"] if p.startswith("unnamed-")]
    assert len(unnamed) == 1  # Rose Leslie's two photos: one new, unnamed person

    persons = {p["external_id"]: p["face_count"] for p in
               json.loads(in_process("persons", "list", "--json", env=env).stdout)["items"]}
    assert persons["obama"] == 5 and persons[unnamed[0]] == 2  # obama2 was enrolled already

    report = json.loads((tmp_path / "c" / "clusters.json").read_text())
    saved_as = {c["saved_as"]["external_id"] for c in report["clusters"]}
    assert saved_as == set(summary["saved"]["persons"])  # which person each cluster became
    assert all(c["saved_as"]["person_id"] for c in report["clusters"])

    mixed = in_process(*args, env=env)  # the same --out again: refused, two runs never mix
    assert mixed.returncode == 5 and "--force" in mixed.stderr
    again = json.loads(in_process(*args, "--force", env=env).stdout)  # saving the same clustering adds nothing
    assert set(again["saved"]["images"]) == {"already_present"}
