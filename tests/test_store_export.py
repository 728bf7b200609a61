"""`export`: persons, faces and embeddings as Parquet + manifest.json, readable with
pyarrow alone (checked in a separate interpreter that cannot import this project)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from test_store import image

from identity.store import FacesToAdd, ModelInfo

MODEL = ModelInfo("facenet-test", "v1", 128)
OTHER = ModelInfo("vggface2-test", "v2", 512)

_READER = """
import json, sys
import numpy as np, pyarrow.parquet as pq
out = sys.argv[1]
manifest = json.load(open(f"{out}/manifest.json"))
persons = pq.read_table(f"{out}/persons.parquet").to_pylist()
faces = pq.read_table(f"{out}/faces.parquet").to_pylist()
embeddings = {}
for model in manifest["models"]:
    table = pq.read_table(f"{out}/{model['file']}")
    vectors = np.stack(table["embedding"].to_numpy(zero_copy_only=False)).astype(np.float32)
    embeddings[model["name"]] = dict(zip(table["face_id"].to_pylist(), vectors.tolist()))
print(json.dumps({"manifest": manifest, "persons": persons, "faces": faces, "embeddings": embeddings}, default=str))
"""


def test_export_round_trip_is_readable_with_pyarrow_alone(store, tmp_path):
    images = [image(f"x{i}") for i in range(5)]
    added = store.add_faces(
        [FacesToAdd(img, external_id=f"person-{i % 2}", display_name=f"P{i % 2}") for i, img in enumerate(images)]
        + [FacesToAdd(image("nobody"))],
        model=MODEL,
    )
    wide = image("wide", dim=512)
    store.add_faces([FacesToAdd(wide, external_id="person-0")], model=OTHER)
    store.update_metadata("person-1", {"team": "blue"})
    store.merge_persons("person-0", store.create_person("person-9").external_id)

    result = store.export(tmp_path / "out")
    assert (result.persons, result.faces) == (2, 7)

    # -I: isolated mode, no PYTHONPATH, no current directory: the project is unreachable
    read = subprocess.run(
        [sys.executable, "-I", "-c", _READER, str(tmp_path / "out")],
        capture_output=True, text=True, check=True, cwd=tmp_path,
    )
    data = json.loads(read.stdout)
    manifest = data["manifest"]
    assert {m["name"]: m["dim"] for m in manifest["models"]} == {MODEL.name: 128, OTHER.name: 512}
    assert manifest["watermark"] == store.watermark()
    assert "embedding" in manifest["columns"]["embeddings-<model>.parquet"]

    persons = {p["external_id"]: p for p in data["persons"]}
    assert persons["person-0"]["aliases"] == ["person-9"]
    assert json.loads(persons["person-1"]["metadata_json"]) == {"team": "blue"}

    faces = {f["id"]: f for f in data["faces"]}
    for img, outcome in zip(images, added):
        row = faces[outcome.face_ids[0]]
        assert row["image_sha256"] == img.sha256 and row["image_source"] == img.source
        assert row["person_external_id"] == ("person-0" if img.source.endswith(("x0.jpg", "x2.jpg", "x4.jpg")) else "person-1")
        assert row["box"] == list(img.faces[0].box)
        exported = np.array(data["embeddings"][MODEL.name][str(outcome.face_ids[0])], np.float32)
        np.testing.assert_array_equal(exported, img.faces[0].embedding)
    assert faces[added[-1].face_ids[0]]["person_id"] is None
    (wide_vector,) = data["embeddings"][OTHER.name].values()
    np.testing.assert_array_equal(np.array(wide_vector, np.float32), wide.faces[0].embedding)
