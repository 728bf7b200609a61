"""Face chips (`face_chips`): a small JPEG of every face, written with its face and read
back by the API, the CLI and the backfill that gives older faces theirs.

Chips live in PostgreSQL beside their faces, not in the data directory: they are
written in the enrollment's transaction (a face never exists half-stored), deleted with
their face (ON DELETE CASCADE), copied by the same backup, and any API replica can serve
them. At the default 224 px and quality 85 a chip is about 9 kB of JPEG and 10 kB stored
(BENCHMARKS.md, "Face chips"), so a million faces add about 10 GB, in a table of its own
whose JPEGs TOAST keeps out of line.
"""

from __future__ import annotations

from collections.abc import Iterable

import psycopg

from identity.errors import NotFoundError
from identity.faces.types import FaceChip
from identity.store.core import StoreCore
from identity.store.types import Chip, ChipInfo

_COLUMNS = "face_id, size, landmarks, region, jpeg"


def _row(face_id: int, chip: FaceChip) -> tuple:
    return (int(face_id), int(chip.size), [float(v) for v in chip.landmarks.reshape(10)],
            [float(v) for v in chip.region], chip.jpeg)


def insert_chips(conn: psycopg.Connection, chips: Iterable[tuple[int, FaceChip]]) -> int:
    """New faces' chips, in the caller's transaction (enrollment: the faces were just
    COPYed, so none has a chip yet)."""
    rows = [_row(face_id, chip) for face_id, chip in chips]
    if rows:
        with conn.cursor().copy(f"COPY face_chips ({_COLUMNS}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
    return len(rows)


class ChipsMixin(StoreCore):
    def chip(self, face_id: int) -> Chip:
        """A face's chip; NotFoundError when the face does not exist or has none."""
        if not 0 < int(face_id) < 2**63:
            raise NotFoundError(f"no face {face_id}")
        with self.connection() as conn:
            row = conn.execute(
                "SELECT f.id, c.size, c.landmarks, c.region, c.jpeg FROM faces f "
                "LEFT JOIN face_chips c ON c.face_id = f.id WHERE f.id = %s", (int(face_id),)).fetchone()
        if row is None:
            raise NotFoundError(f"no face {face_id}")
        if row[1] is None:
            raise NotFoundError(f"face {face_id} has no chip (`identity faces backfill-chips` makes "
                                "chips for faces whose photos are still readable)")
        values = [float(v) for v in row[2]]
        info = ChipInfo(size=row[1], landmarks=tuple(zip(values[0::2], values[1::2])),
                        region=tuple(float(v) for v in row[3]), bytes=len(row[4]))  # type: ignore[arg-type]
        return Chip(face_id=row[0], jpeg=bytes(row[4]), info=info)

    def add_chips(self, chips: Iterable[tuple[int, FaceChip]]) -> int:
        """Chips for existing faces (the backfill). A face that has one already, or was
        deleted meanwhile, is passed over. Returns how many were written."""
        rows = [_row(face_id, chip) for face_id, chip in chips]
        if not rows:
            return 0
        with self.connection() as conn, conn.transaction():
            # One statement: landmarks and regions travel as flat arrays sliced per row
            # (unnest would flatten a two-dimensional array into single numbers).
            written = conn.execute(
                f"INSERT INTO face_chips ({_COLUMNS}) "
                "SELECT t.face_id, t.size, (%(landmarks)s::real[])[10 * t.n - 9 : 10 * t.n], "
                "       (%(regions)s::real[])[3 * t.n - 2 : 3 * t.n], t.jpeg "
                "FROM unnest(%(ids)s::bigint[], %(sizes)s::smallint[], %(jpegs)s::bytea[]) "
                "     WITH ORDINALITY AS t(face_id, size, jpeg, n) "
                "WHERE EXISTS (SELECT 1 FROM faces f WHERE f.id = t.face_id) "
                "ON CONFLICT (face_id) DO NOTHING",
                {"ids": [r[0] for r in rows], "sizes": [r[1] for r in rows], "jpegs": [r[4] for r in rows],
                 "landmarks": [v for r in rows for v in r[2]], "regions": [v for r in rows for v in r[3]]},
            ).rowcount
        return written

    def faces_without_chips(self, *, after_image: int = 0, images: int = 64) -> list[tuple]:
        """The next `images` images (by id, after `after_image`) that have faces without a
        chip, as rows (image id, sha256 hex, source, face id, box, landmarks), image by
        image, so a backfill decodes each photo once."""
        with self.connection() as conn:
            return conn.execute(
                "WITH next AS (SELECT DISTINCT f.image_id FROM faces f "
                "  WHERE f.image_id > %s AND NOT EXISTS (SELECT 1 FROM face_chips c WHERE c.face_id = f.id) "
                "  ORDER BY f.image_id LIMIT %s) "
                "SELECT i.id, encode(i.sha256, 'hex'), i.source, f.id, f.box, f.landmarks "
                "FROM next JOIN images i ON i.id = next.image_id JOIN faces f ON f.image_id = i.id "
                "WHERE NOT EXISTS (SELECT 1 FROM face_chips c WHERE c.face_id = f.id) ORDER BY i.id, f.id",
                (after_image, images),
            ).fetchall()

    def chip_stats(self) -> dict[str, int]:
        """Faces, faces with a chip, and the chips' bytes (JPEG payload)."""
        with self.connection() as conn:
            faces, chips, payload = conn.execute(
                "SELECT (SELECT count(*) FROM faces), count(*), coalesce(sum(octet_length(jpeg)), 0) "
                "FROM face_chips").fetchone()
        return {"faces": faces, "chips": chips, "chip_bytes": int(payload)}
