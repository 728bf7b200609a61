"""PostgreSQL binary COPY, encoded and decoded with numpy.

Face rows have a fixed layout once the model (name, version, dimension) and the
presence of a person id are fixed, so a whole batch is one numpy structured array
written with a single `tobytes()`: no per-row Python, which is what makes COPY of a
million embeddings take seconds. Reading uses the same trick for (id, person id,
embedding) rows. Format: https://www.postgresql.org/docs/current/sql-copy.html
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator

import numpy as np

from identity.errors import StoreError

SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
HEADER = SIGNATURE + struct.pack(">ii", 0, 0)
TRAILER = struct.pack(">h", -1)
_FLOAT4_OID = 700


def _float4_array(n: int) -> list[tuple]:
    """A one-dimensional real[] of n non-null elements, with its field length prefix."""
    return [
        ("len", ">i4"),
        ("ndim", ">i4"),
        ("has_null", ">i4"),
        ("elem_oid", ">i4"),
        ("dim", ">i4"),
        ("lower", ">i4"),
        ("items", [("len", ">i4"), ("value", ">f4")], (n,)),
    ]


def _field(name: str, dtype: str) -> list[tuple]:
    return [(f"{name}_len", ">i4"), (name, dtype)]


FACE_COLUMNS = (
    "image_id, person_id, face_index, box, landmarks, det_prob, quality, model, model_version, embedding"
)


def face_rows_dtype(*, with_person: bool, model: bytes, version: bytes, dim: int) -> np.dtype:
    fields: list[tuple] = [("nfields", ">i2")]
    fields += _field("image_id", ">i8")
    fields += _field("person_id", ">i8") if with_person else [("person_id_len", ">i4")]
    fields += _field("face_index", ">i2")
    fields += [("box", _float4_array(4)), ("landmarks", _float4_array(10))]
    fields += _field("det_prob", ">f4") + _field("quality", ">f4")
    fields += _field("model", f"S{len(model)}")
    fields += _field("model_version", f"S{len(version)}") if version else [("model_version_len", ">i4")]
    fields += [("embedding_len", ">i4"), ("dim", ">u2"), ("unused", ">u2"), ("embedding", ">f4", (dim,))]
    return np.dtype(fields)


def _fill_array(target: np.ndarray, values: np.ndarray) -> None:
    n = values.shape[1]
    target["len"] = 20 + 8 * n
    target["ndim"] = 1
    target["has_null"] = 0
    target["elem_oid"] = _FLOAT4_OID
    target["dim"] = n
    target["lower"] = 1
    target["items"]["len"] = 4
    target["items"]["value"] = values


def encode_face_rows(
    *,
    image_ids: np.ndarray,
    person_ids: np.ndarray | None,
    face_indexes: np.ndarray,
    boxes: np.ndarray,
    landmarks: np.ndarray,
    det_probs: np.ndarray,
    qualities: np.ndarray,
    model: str,
    model_version: str,
    embeddings: np.ndarray,
) -> bytes:
    """The COPY ... FROM STDIN (FORMAT BINARY) payload for faces (FACE_COLUMNS order).

    `person_ids` None writes NULL person ids; rows with and without a person need
    separate calls (a NULL has no value bytes, so the row layout differs).
    """
    model_b, version_b = model.encode(), model_version.encode()
    n, dim = embeddings.shape
    rows = np.zeros(n, face_rows_dtype(with_person=person_ids is not None, model=model_b, version=version_b, dim=dim))
    rows["nfields"] = 10
    rows["image_id_len"], rows["image_id"] = 8, image_ids
    if person_ids is None:
        rows["person_id_len"] = -1
    else:
        rows["person_id_len"], rows["person_id"] = 8, person_ids
    rows["face_index_len"], rows["face_index"] = 2, face_indexes
    _fill_array(rows["box"], np.asarray(boxes, np.float32).reshape(n, 4))
    _fill_array(rows["landmarks"], np.asarray(landmarks, np.float32).reshape(n, 10))
    rows["det_prob_len"], rows["det_prob"] = 4, det_probs
    rows["quality_len"], rows["quality"] = 4, qualities
    rows["model_len"], rows["model"] = len(model_b), model_b
    rows["model_version_len"] = len(version_b)
    if version_b:
        rows["model_version"] = version_b
    rows["embedding_len"], rows["dim"], rows["embedding"] = 4 + 4 * dim, dim, embeddings
    return HEADER + rows.tobytes() + TRAILER


def embedding_rows_dtype(dim: int) -> np.dtype:
    """Rows of `COPY (SELECT id, coalesce(person_id, -1), embedding ...) TO STDOUT (FORMAT BINARY)`."""
    return np.dtype(
        [("nfields", ">i2")]
        + _field("id", ">i8")
        + _field("person_id", ">i8")
        + [("embedding_len", ">i4"), ("dim", ">u2"), ("unused", ">u2"), ("embedding", ">f4", (dim,))]
    )


def _header_length(buf: bytes | bytearray) -> int:
    if bytes(buf[:11]) != SIGNATURE:
        raise StoreError("unexpected COPY stream from PostgreSQL (bad binary signature)")
    (extension,) = struct.unpack_from(">i", buf, 15)
    return 19 + extension


def _decode(raw: bytes | bytearray, dtype: np.dtype, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = np.frombuffer(raw, dtype)
    if len(rows) and (
        (rows["nfields"] != 3).any() or (rows["dim"] != dim).any() or (rows["person_id_len"] != 8).any()
    ):
        raise StoreError(f"unexpected embedding rows from PostgreSQL (expected dimension {dim})")
    return (
        rows["id"].astype(np.int64),
        rows["person_id"].astype(np.int64),
        rows["embedding"].astype(np.float32),
    )


def decode_embedding_stream(
    chunks: Iterable[bytes | memoryview], dim: int, batch_rows: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Parse a binary COPY stream of (id, person_id, embedding) into batches of arrays."""
    dtype = embedding_rows_dtype(dim)
    batch_bytes = dtype.itemsize * max(1, batch_rows)
    buf = bytearray()
    header_done = False
    for chunk in chunks:
        buf += chunk
        if not header_done:
            if len(buf) < 19:
                continue
            del buf[: _header_length(buf)]
            header_done = True
        while len(buf) >= batch_bytes + len(TRAILER):
            yield _decode(bytes(buf[:batch_bytes]), dtype, dim)
            del buf[:batch_bytes]
    if not header_done:
        return
    if bytes(buf[-2:]) != TRAILER or (len(buf) - 2) % dtype.itemsize:
        raise StoreError("truncated COPY stream from PostgreSQL")
    if len(buf) > 2:
        yield _decode(bytes(buf[:-2]), dtype, dim)
