"""Export persons, faces and embeddings as Parquet with a JSON manifest.

Readable with pyarrow (or pandas) alone: no project code, no PostgreSQL. All files
come from one REPEATABLE READ snapshot, so they agree with each other and with the
watermark written in the manifest. Embeddings go to one file per model because the
dimension differs between models (a fixed_size_list<float32>[dim] column).
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from identity.store.changes import read_watermark
from identity.store.core import StoreCore
from identity.store.faces import copy_embeddings
from identity.store.types import ExportResult

FORMAT_VERSION = 1
_BATCH = 50_000

PERSONS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("external_id", pa.string(), nullable=False),
        pa.field("display_name", pa.string()),
        pa.field("aliases", pa.list_(pa.string())),
        pa.field("metadata_json", pa.string()),
        pa.field("created_at", pa.timestamp("us", tz="UTC")),
        pa.field("updated_at", pa.timestamp("us", tz="UTC")),
    ]
)

FACES_SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("person_id", pa.int64()),
        pa.field("person_external_id", pa.string()),
        pa.field("image_id", pa.int64(), nullable=False),
        pa.field("image_sha256", pa.string(), nullable=False),
        pa.field("image_source", pa.string()),
        pa.field("image_width", pa.int32()),
        pa.field("image_height", pa.int32()),
        pa.field("face_index", pa.int16()),
        pa.field("box", pa.list_(pa.float32(), 4)),
        pa.field("landmarks", pa.list_(pa.float32(), 10)),
        pa.field("det_prob", pa.float32()),
        pa.field("quality", pa.float32()),
        pa.field("model", pa.string(), nullable=False),
        pa.field("model_version", pa.string()),
        pa.field("created_at", pa.timestamp("us", tz="UTC")),
    ]
)

COLUMN_DOCS = {
    "persons.parquet": {
        "id": "person id (int64), referenced by faces.person_id",
        "external_id": "the caller's identifier for the person (unique)",
        "display_name": "human-readable name, may be null",
        "aliases": "former external ids (merged persons) that resolve to this person",
        "metadata_json": "free-form metadata, a JSON object as text",
        "created_at": "UTC timestamp",
        "updated_at": "UTC timestamp",
    },
    "faces.parquet": {
        "id": "face id (int64), referenced by the embeddings files' face_id",
        "person_id": "persons.id, null for an unassigned face",
        "person_external_id": "persons.external_id (denormalised for convenience)",
        "image_id": "image id (int64)",
        "image_sha256": "hex SHA-256 of the image file's bytes",
        "image_source": "path or URI the image was read from at enrollment",
        "image_width": "full-resolution upright width in pixels",
        "image_height": "full-resolution upright height in pixels",
        "face_index": "position of the face in the image's detection order",
        "box": "x1, y1, x2, y2 in the detector's working image pixels",
        "landmarks": "5 points (left eye, right eye, nose, mouth left, mouth right) as x, y pairs",
        "det_prob": "detector probability",
        "quality": "0..1 quality score (higher is better)",
        "model": "embedding model name (see models in this manifest)",
        "model_version": "embedding model version",
        "created_at": "UTC timestamp",
    },
    "embeddings-<model>.parquet": {
        "face_id": "faces.id",
        "person_id": "faces.person_id (null when unassigned)",
        "embedding": "L2-normalised float32 vector, fixed_size_list of the model's dimension",
    },
}


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def export(store: StoreCore, out_dir: Path) -> ExportResult:
    out_dir.mkdir(parents=True, exist_ok=True)
    files: list[str] = []
    with store.connection() as conn, conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        watermark = read_watermark(conn)
        persons = _write_persons(conn, out_dir / "persons.parquet")
        faces = _write_faces(conn, out_dir / "faces.parquet")
        files += ["persons.parquet", "faces.parquet"]
        models = []
        for name, dim, versions, count in conn.execute(
            # face_vectors: during a model move the target's vectors too (migrations/0005).
            "SELECT m.name, m.dim, array_remove(array_agg(DISTINCT f.model_version), NULL), count(f.face_id) "
            "FROM models m LEFT JOIN face_vectors f ON f.model = m.name GROUP BY m.name, m.dim ORDER BY m.name"
        ).fetchall():
            file = f"embeddings-{_safe(name)}.parquet"
            _write_embeddings(conn, out_dir / file, name, dim)
            files.append(file)
            models.append({"name": name, "dim": dim, "versions": list(versions), "faces": count, "file": file})
    manifest = {
        "format": "identity-export",
        "format_version": FORMAT_VERSION,
        "exported_at": datetime.now(timezone.utc).isoformat(),
        "watermark": watermark,
        "counts": {"persons": persons, "faces": faces},
        "models": models,
        "files": files,
        "columns": COLUMN_DOCS,
        "read_with": "pyarrow.parquet.read_table(path); embeddings: "
        "np.stack(table['embedding'].to_numpy(zero_copy_only=False))",
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return ExportResult(str(out_dir), tuple(files) + ("manifest.json",), persons, faces, watermark)


def _write_persons(conn, path: Path) -> int:
    rows = conn.execute(
        "SELECT p.id, p.external_id, p.display_name, "
        "coalesce((SELECT array_agg(a.alias ORDER BY a.alias) FROM person_aliases a WHERE a.person_id = p.id), '{}'), "
        "p.metadata::text, p.created_at, p.updated_at FROM persons p ORDER BY p.id"
    ).fetchall()
    columns = list(zip(*rows)) if rows else [[] for _ in PERSONS_SCHEMA]
    table = pa.Table.from_arrays([pa.array(c, f.type) for c, f in zip(columns, PERSONS_SCHEMA)], schema=PERSONS_SCHEMA)
    pq.write_table(table, path)
    return len(rows)


def _write_faces(conn, path: Path) -> int:
    total = 0
    with pq.ParquetWriter(path, FACES_SCHEMA) as writer:
        cursor = conn.cursor(name="export_faces")  # server-side: constant memory
        cursor.execute(
            "SELECT f.id, f.person_id, p.external_id, f.image_id, encode(i.sha256, 'hex'), i.source, "
            "i.width, i.height, f.face_index, f.box, f.landmarks, f.det_prob, f.quality, f.model, "
            "f.model_version, f.created_at "
            "FROM faces f JOIN images i ON i.id = f.image_id LEFT JOIN persons p ON p.id = f.person_id "
            "ORDER BY f.id"
        )
        while rows := cursor.fetchmany(_BATCH):
            columns = list(zip(*rows))
            writer.write_table(
                pa.Table.from_arrays([pa.array(c, f.type) for c, f in zip(columns, FACES_SCHEMA)], schema=FACES_SCHEMA)
            )
            total += len(rows)
        cursor.close()
        if total == 0:
            writer.write_table(FACES_SCHEMA.empty_table())
    return total


def _write_embeddings(conn, path: Path, model: str, dim: int) -> None:
    schema = pa.schema(
        [
            pa.field("face_id", pa.int64(), nullable=False),
            pa.field("person_id", pa.int64()),
            pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False),
        ],
        metadata={"model": model, "dim": str(dim)},
    )
    with pq.ParquetWriter(path, schema) as writer:
        wrote = False
        for ids, person_ids, vectors in copy_embeddings(conn, model, dim, batch_rows=_BATCH):
            embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim)
            persons = pa.array(person_ids, pa.int64(), mask=person_ids < 0)
            writer.write_table(pa.Table.from_arrays([pa.array(ids), persons, embedding], schema=schema))
            wrote = True
        if not wrote:
            writer.write_table(schema.empty_table())
