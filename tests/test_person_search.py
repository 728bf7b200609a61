"""Searching persons by name (`Store.list_persons(query=...)`: `identity persons list
--query`, `GET /v1/persons?q=`) reads the trigram indexes of migration 0007 instead of every
person, and finds exactly what the sequential scan finds; on a server where pg_trgm cannot
be created the migrations still apply and search still works, unindexed."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from identity.resources import migrations_dir
from identity.store import Store
from identity.store.migrate import upgrade_url
from identity.store.persons import list_persons_query

ALL_MIGRATIONS = sorted(p.stem for p in migrations_dir().glob("*.sql") if not p.name.endswith(".rollback.sql"))

INDEXES = {"persons_external_id_trgm", "persons_display_name_trgm"}
SPECIAL = ("100%", "snake_case", "back\\slash", "plain")
QUERIES = ("emp-0042", "1742", "ck\\sl", "wenmar", "ROSEL", "zzqx", "%", "_", "\\", "e_c", "ec", "ke_c", "xq")


def _fill(url: str, persons: int) -> None:
    """`persons` persons with external ids emp-000001... and names from a small vocabulary,
    plus a few whose ids hold LIKE's special characters; vacuumed and analysed, as autovacuum
    would."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO persons (external_id, display_name) "
            "SELECT 'emp-' || lpad(g::text, 6, '0'), "
            "       (ARRAY['Anna', 'Rosel', 'Wenmar', 'Doris', 'Ulf'])[1 + g %% 5] || ' ' || "
            "       (ARRAY['Kar', 'Linwen', 'Osper', 'Tor', 'Sam', 'Belquin', 'Ver'])[1 + (g / 5) %% 7] || g %% 97 "
            "FROM generate_series(1, %s) g", (persons,))
        for ext in SPECIAL:
            conn.execute("INSERT INTO persons (external_id) VALUES (%s)", (ext,))
        conn.execute("VACUUM ANALYZE persons")  # also merges the GIN indexes' pending lists


def _plan(conn: psycopg.Connection, query: str) -> str:
    statement, params = list_persons_query(limit=51, query=query)
    return "\n".join(row[0] for row in conn.execute("EXPLAIN " + statement, params))


def _all_ids(conn: psycopg.Connection, query: str) -> list[int]:
    statement, params = list_persons_query(limit=100_000, query=query)
    return [row[0] for row in conn.execute(statement, params, prepare=False)]


def test_the_migration_creates_the_trigram_indexes(store):
    with store.connection() as conn:
        assert conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'").fetchone()
        found = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'persons'")}
    assert INDEXES <= found


def test_search_reads_the_trigram_indexes_and_finds_what_a_sequential_scan_finds(store, store_settings):
    _fill(str(store_settings.store.database_url), 20_000)
    with psycopg.connect(str(store_settings.store.database_url)) as conn:
        for query in ("1742", "zzqx", "ke_c", "ck\\sl"):  # selective: the planner prefers the index
            plan = _plan(conn, query)
            assert all(f"Bitmap Index Scan on {index}" in plan for index in INDEXES), plan
            assert "Seq Scan on persons" not in plan, plan
        indexed = {q: _all_ids(conn, q) for q in QUERIES}
        with conn.transaction():  # the same statement, without the indexes
            conn.execute("SET LOCAL enable_bitmapscan = off")
            conn.execute("SET LOCAL enable_indexscan = off")
            assert "Seq Scan on persons" in _plan(conn, "emp-0042")
            scanned = {q: _all_ids(conn, q) for q in QUERIES}
    assert indexed == scanned
    assert len(indexed["emp-0042"]) == 100 and len(indexed["zzqx"]) == 0 and len(indexed["wenmar"]) == 4_000
    # through the store, in pages: the same persons, and %, _ and \ literal
    def every(query: str) -> list[int]:
        ids, after = [], None
        while True:
            page = store.list_persons(limit=700, after=after, query=query)
            ids += [p.id for p in page.items]
            if (after := page.next_after) is None:
                return ids

    assert every("WENMAR") == indexed["wenmar"]
    names = {q: [p.external_id for p in store.list_persons(query=q).items] for q in ("%", "_", "\\", "e_c", "ec")}
    assert names == {"%": ["100%"], "_": ["snake_case"], "\\": ["back\\slash"], "e_c": ["snake_case"], "ec": []}


@pytest.fixture
def limited_url(pg_server):
    """A database whose owner may create tables but not extensions (pgvector is created for it
    beforehand, as an administrator would): pg_trgm cannot be created there, as on a server
    that lacks it."""
    url = pg_server.new_database("limited", migrated=False)
    database = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    role = f"{database}_owner"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION vector")
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT CREATE, USAGE ON SCHEMA public TO {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("REVOKE CREATE ON DATABASE {} FROM PUBLIC").format(sql.Identifier(database)))
    assert url.startswith("postgresql://postgres:@")
    yield url.replace("postgresql://postgres:@", f"postgresql://{role}:@", 1)
    with psycopg.connect(pg_server.url("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def test_without_pg_trgm_the_migrations_apply_and_search_still_works(limited_url):
    assert upgrade_url(limited_url) == ALL_MIGRATIONS
    with psycopg.connect(limited_url, autocommit=True) as conn:
        assert conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'").fetchone() is None
        assert not {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'persons'")} & INDEXES
    _fill(limited_url, 2_000)
    with Store(limited_url).connect() as store:
        assert [p.external_id for p in store.list_persons(query="%").items] == ["100%"]
        assert len(store.list_persons(limit=100, query="emp-00012").items) == 10
        with store.connection() as conn:
            assert "Seq Scan on persons" in _plan(conn, "emp-00012")
