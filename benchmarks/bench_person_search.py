"""Person search by name (`Store.list_persons(query=...)`, the ILIKE '%...%' of
`identity persons list --query` and `GET /v1/persons?q=`) with and without the trigram
indexes of migration 0007, in the same run, alternated, on one fresh embedded PostgreSQL.

    nice python -m benchmarks.bench_person_search --persons 100000

Two databases hold the same persons (external ids `emp-000001`..., display names drawn
from a fixed vocabulary of synthetic first and last names); in one the two trigram indexes
are dropped. Each query runs through the store's own code (one page of 50, as the CLI and
the API ask), alternating between the two databases, --rounds times; the median is
reported with the plan PostgreSQL chose.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from identity.store import Store
from identity.store.persons import list_persons_query
from identity.store.testing import PgTestServer, server_directory

SYLLABLES = ["an", "bel", "car", "dor", "el", "fin", "gar", "hal", "is", "jo", "ka", "lin", "mar",
             "nor", "os", "per", "quin", "ros", "sam", "tor", "ul", "ver", "wen", "yas", "zor"]


def vocabulary(n: int, syllables: int, rng: np.random.Generator) -> list[str]:
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(SYLLABLES, syllables)).capitalize())
    return sorted(words)


def populate(url: str, persons: int, first: list[str], last: list[str]) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO persons (external_id, display_name) "
            "SELECT 'emp-' || lpad(g::text, 6, '0'), "
            "       (%s::text[])[1 + (g::bigint * 7919) %% cardinality(%s::text[])] || ' ' || "
            "       (%s::text[])[1 + (g::bigint * 104729) %% cardinality(%s::text[])] "
            "FROM generate_series(1, %s) g",
            (first, first, last, last, persons),
        )
        conn.execute("VACUUM ANALYZE persons")


def plan(url: str, query: str) -> str:
    """The scan nodes of the plan for the store's statement (one page of 50)."""
    statement, params = list_persons_query(limit=51, query=query)
    with psycopg.connect(url) as conn:
        lines = [r[0] for r in conn.execute("EXPLAIN " + statement, params)]
    nodes = [line.strip().lstrip("-> ").split("  ")[0] for line in lines
             if "Scan" in line and "faces" not in line and "person_aliases" not in line]
    return "; ".join(nodes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--persons", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    rng = np.random.default_rng(7)
    first, last = vocabulary(150, 2, rng), vocabulary(600, 3, rng)
    queries = {
        "external id fragment (10 hits)": "emp-04217",
        "last name": last[17].lower(),
        "common first name": first[3].upper(),
        "no match": "zzqx",
        "two letters (no trigram)": "xq",
    }
    print(f"# {platform.machine()}, {platform.python_version()}, {args.persons:,} persons, "
          f"{args.rounds} rounds, page of 50", flush=True)
    with server_directory() as directory:
        server = PgTestServer.start(directory)
        try:
            indexed, plain = server.new_database("indexed"), server.new_database("plain")
            started = time.perf_counter()
            for url in (indexed, plain):
                populate(url, args.persons, first, last)
            with psycopg.connect(plain, autocommit=True) as conn:
                conn.execute("DROP INDEX persons_external_id_trgm, persons_display_name_trgm")
            print(f"# populated both in {time.perf_counter() - started:.1f} s", flush=True)
            stores = {"trigram": Store(indexed).connect(), "seq scan": Store(plain).connect()}
            try:
                times: dict[tuple[str, str], list[float]] = {}
                hits: dict[tuple[str, str], tuple[int, ...]] = {}
                for _ in range(args.rounds):
                    for label, text in queries.items():
                        for kind, store in stores.items():  # alternated, query by query
                            t0 = time.perf_counter()
                            page = store.list_persons(limit=50, query=text)
                            times.setdefault((label, kind), []).append(time.perf_counter() - t0)
                            hits[(label, kind)] = tuple(p.id for p in page.items)
            finally:
                for store in stores.values():
                    store.close()
            print("| query | text | rows on the page | without index (ms) | with trigram index (ms) | plan with index |")
            print("| --- | --- | ---: | ---: | ---: | --- |")
            for label, text in queries.items():
                same = hits[(label, "trigram")] == hits[(label, "seq scan")]
                without = statistics.median(times[(label, "seq scan")]) * 1e3
                with_ = statistics.median(times[(label, "trigram")]) * 1e3
                print(f"| {label} | `{text}` | {len(hits[(label, 'trigram')])}{'' if same else ' (DIFFERENT)'} "
                      f"| {without:.1f} | {with_:.1f} | {plan(indexed, text)} |", flush=True)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
