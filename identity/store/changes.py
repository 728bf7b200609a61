"""What changed, in commit order: the `change_log` table and its NOTIFY channel, which
the search index follows.

Rows are written by triggers (migrations/0001), never by this code: no write path can
forget one. See docs/ARCHITECTURE.md, "Store contract", for why seq order is commit order.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from identity.errors import StoreError
from identity.store.core import StoreCore
from identity.store.embedded import redact
from identity.store.types import Change

CHANNEL = "identity_changes"


def read_watermark(conn: psycopg.Connection, model: str | None = None) -> int:
    """The largest change_log.seq visible to `conn` (0 when empty): inside a snapshot
    transaction, the watermark that snapshot's reads agree with."""
    if model is None:
        row = conn.execute("SELECT coalesce(max(seq), 0) FROM change_log").fetchone()
    else:
        row = conn.execute("SELECT coalesce(max(seq), 0) FROM change_log WHERE model = %s", (model,)).fetchone()
    return int(row[0])


class ChangesMixin(StoreCore):
    def watermark(self, model: str | None = None) -> int:
        """The largest committed change_log.seq (0 when empty)."""
        with self.connection() as conn:
            return read_watermark(conn, model)

    def changes_since(self, seq: int, model: str, *, limit: int = 10_000) -> list[Change]:
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT seq, op, face_id, person_id FROM change_log WHERE model = %s AND seq > %s "
                "ORDER BY seq LIMIT %s",
                (model, seq, limit),
            ).fetchall()
        return [Change(*r) for r in rows]

    def listen(self, channel: str = CHANNEL) -> psycopg.Connection:
        """A dedicated connection LISTENing on `channel` (the caller closes it). Read with
        `conn.notifies(timeout=...)`; each payload is the last seq of a committed statement."""
        try:
            conn = psycopg.connect(self.url, autocommit=True)
        except psycopg.OperationalError as exc:
            raise StoreError(f"cannot connect to PostgreSQL at {redact(self.url)}: {exc}") from exc
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        return conn
