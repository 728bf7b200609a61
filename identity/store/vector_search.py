"""k-NN search in SQL with pgvector's HNSW: the path used while the FAISS mirror is not
ready (process start, rebuild), and the baseline the mirror is measured against.

`faces.embedding` has no declared dimension (several models share the table), and
pgvector can only index a fixed dimension, so the index is per model: a partial
expression index `((embedding::vector(dim)) vector_ip_ops) WHERE model = '<model>'`.
A query uses it only when its ORDER BY repeats the same expression and its WHERE
implies the same predicate, so both are written with literals (never bind
parameters: a generic plan could not prove `model = $1` implies the partial
predicate and would fall back to a sequential scan).

`<#>` is the *negative* inner product; vectors are L2-normalised, so similarity =
-(a <#> b) = cosine similarity.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np
from psycopg import sql

from identity.search_results import QueryResult, aggregate

DEFAULT_EF_SEARCH = 64


def hnsw_index_name(model: str) -> str:
    # Identifiers are capped at 63 bytes and model names are free text: name by digest.
    return "faces_hnsw_" + hashlib.sha256(model.encode()).hexdigest()[:16]


def _embedding(dim: int) -> sql.Composable:
    return sql.SQL("(embedding::vector({}))").format(sql.Literal(int(dim)))


def ensure_hnsw_index(store, model: str, dim: int, *, m: int = 16, ef_construction: int = 64) -> str:
    """Create the model's HNSW index if missing (CONCURRENTLY: enrollment keeps
    writing meanwhile). Returns the index name. Slow on big tables: minutes per
    million rows on a small CPU."""
    name = hnsw_index_name(model)
    statement = sql.SQL(
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON faces USING hnsw ({expr} vector_ip_ops) "
        "WITH (m = {m}, ef_construction = {efc}) WHERE model = {model}"
    ).format(
        name=sql.Identifier(name),
        expr=_embedding(dim),
        m=sql.Literal(int(m)),
        efc=sql.Literal(int(ef_construction)),
        model=sql.Literal(model),
    )
    with store.connection() as conn:  # autocommit: CONCURRENTLY refuses a transaction block
        conn.execute(statement)
    return name


def drop_hnsw_index(store, model: str) -> None:
    with store.connection() as conn:
        conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(hnsw_index_name(model))))


def _query(dim: int, model: str, k: int, restricted: bool, moving: bool = False) -> sql.Composed:
    """`moving`: the model has vectors in face_embeddings (a model move's target), which
    the partial HNSW index on faces does not cover: read the face_vectors view (exact)."""
    # The view names the face `face_id`; faces itself names it `id`.
    source, face_id = ("face_vectors", "face_id") if moving else ("faces", "id")
    expr = _embedding(dim)
    vec = sql.SQL("%(q)s::vector({})").format(sql.Literal(int(dim)))
    where = sql.SQL("model = {}").format(sql.Literal(model))
    if restricted:
        where = where + sql.SQL(" AND person_id = ANY(%(persons)s)")
    return sql.SQL(
        "SELECT {face_id}, coalesce(person_id, -1), -({expr} <#> {vec}) FROM {source} WHERE {where} "
        "ORDER BY {expr} <#> {vec} LIMIT {k}"
    ).format(face_id=sql.Identifier(face_id), source=sql.Identifier(source), expr=expr, vec=vec,
             where=where, k=sql.Literal(int(k)))


def search_faces_sql(
    store,
    model: str,
    dim: int,
    queries: np.ndarray,
    k: int,
    *,
    ef_search: int | None = None,
    persons: Iterable[int] | None = None,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per query, its top-k faces: (similarities, face ids, person ids), best first —
    the same shape as `FaceIndex.search_faces`."""
    q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    allowed = None if persons is None else sorted({int(p) for p in persons})
    out = []
    with store.connection() as conn, conn.transaction():
        moving = conn.execute("SELECT EXISTS (SELECT 1 FROM face_embeddings WHERE model = %s)", (model,)).fetchone()[0]
        statement = _query(dim, model, k, allowed is not None, moving)
        # ef_search bounds the results an HNSW scan returns; iterative scans keep
        # going when a filter (person restriction) rejects candidates.
        conn.execute(sql.SQL("SET LOCAL hnsw.ef_search = {}").format(sql.Literal(max(ef_search or DEFAULT_EF_SEARCH, k))))
        conn.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        for row in q:
            params = {"q": row.tolist()}
            if allowed is not None:
                params["persons"] = allowed
            rows = conn.execute(statement, params).fetchall()
            # relaxed_order may return slightly out of order: sort by similarity.
            rows.sort(key=lambda r: -r[2])
            out.append(
                (
                    np.array([r[2] for r in rows], np.float32),
                    np.array([r[0] for r in rows], np.int64),
                    np.array([r[1] for r in rows], np.int64),
                )
            )
    return out


def search_sql(
    store,
    model: str,
    dim: int,
    queries: np.ndarray,
    k: int,
    threshold: float,
    *,
    ef_search: int | None = None,
    persons: Iterable[int] | None = None,
    include_unassigned: bool = False,
) -> list[QueryResult]:
    """Per query, persons among its top-k faces at or above `threshold` (else unknown) —
    the same results as `IndexMirror.search`, computed by PostgreSQL."""
    rows = search_faces_sql(store, model, dim, queries, k, ef_search=ef_search, persons=persons)
    return [aggregate(s, i, p, threshold, include_unassigned=include_unassigned) for s, i, p in rows]
