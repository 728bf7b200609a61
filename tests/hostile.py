"""A generated corpus of bad input: what a hostile or careless client sends.

Each case is (kind, payload). Images are made from a real photo (truncated, corrupted,
relabelled) or crafted headers (decompression bombs declared in the header or built from
real pixels); archives are zips malformed in every way `zipfile` can meet; strings and
numbers are the classic poison values. Used by tests/test_hostile_inputs.py; the counts
are recorded in BENCHMARKS.md.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

from PIL import Image

from conftest import MISC_DIR

PHOTO = MISC_DIR / "small_labeled" / "biden" / "biden.jpg"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width × height and holds almost no data (a bomb by header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) \
        + _png_chunk(b"IEND", b"")


def _png_bomb_by_content() -> bytes:
    """Real, fully valid pixels: 12,000 × 12,000 of one colour compress to a few hundred kB."""
    row = b"\0" + b"\x7f" * (12_000 * 3)
    raw = zlib.compress(row * 12_000, 9)
    ihdr = struct.pack(">IIBBBBB", 12_000, 12_000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", raw) + _png_chunk(b"IEND", b"")


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def bad_images() -> list[tuple[str, bytes]]:
    jpeg = PHOTO.read_bytes()
    small = Image.open(PHOTO).convert("RGB").resize((64, 64))
    png = _encoded(small, "PNG")
    corrupt = bytearray(jpeg)
    for i in range(len(corrupt) // 3, len(corrupt) // 3 + 2000):
        corrupt[i] ^= 0xA5
    bad_crc = bytearray(png)
    bad_crc[29] ^= 0xFF  # inside IHDR's CRC
    return [
        ("image: empty", b""),
        ("image: one byte", b"\xff"),
        ("image: JPEG magic only", b"\xff\xd8\xff"),
        ("image: truncated JPEG", jpeg[: len(jpeg) // 2]),
        ("image: corrupted JPEG body", bytes(corrupt)),
        ("image: truncated PNG", png[: len(png) // 2]),
        ("image: PNG with a bad CRC", bytes(bad_crc)),
        ("image: bomb by header (100k × 100k PNG)", _png_header_only(100_000, 100_000)),
        ("image: bomb by header (zero-size PNG)", _png_header_only(0, 0)),
        ("image: bomb by content (12k × 12k real pixels)", _png_bomb_by_content()),
        ("image: text named .jpg", b"hello, this is not a photo\n" * 10),
        ("image: HTML", b"<!doctype html><html><script>alert(1)</script></html>"),
        ("image: SVG", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'),
        ("image: PDF", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF"),
        ("image: a zip", _zip({"a/b.jpg": jpeg[:100]})),
        ("image: 1 × 1 pixel", _encoded(Image.new("RGB", (1, 1)), "PNG")),
        ("image: truncated WebP", _encoded(small, "WEBP")[:40]),
        ("image: garbage TIFF", b"II*\x00" + b"\xff" * 64),
        ("image: BMP declaring 60k × 60k", b"BM" + struct.pack("<IHHI", 0, 0, 0, 54)
         + struct.pack("<IiiHHIIiiII", 40, 60_000, 60_000, 1, 24, 0, 0, 0, 0, 0, 0)),
        ("image: NUL bytes", b"\0" * 4096),
    ]


def _zip(entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _patched(data: bytes, offset_of, patch: bytes) -> bytes:
    raw = bytearray(data)
    at = offset_of(bytes(raw))
    raw[at: at + len(patch)] = patch
    return bytes(raw)


def bad_archives() -> list[tuple[str, bytes]]:
    jpeg = PHOTO.read_bytes()
    good = _zip({"ada/1.jpg": jpeg})
    # The local header's CRC sits 14 bytes into it; the data follows the 30-byte header + name.
    bad_crc = _patched(good, lambda b: b.index(b"PK\x03\x04") + 14, b"\0\0\0\0")
    central_crc = _patched(bad_crc, lambda b: b.index(b"PK\x01\x02") + 16, b"\0\0\0\0")
    name_len = len("ada/1.jpg")
    corrupt_deflate = _patched(good, lambda b: b.index(b"PK\x03\x04") + 30 + name_len + 10, b"\xff" * 64)
    lying_sizes = _patched(good, lambda b: b.index(b"PK\x01\x02") + 24, struct.pack("<I", 10))
    encrypted = _patched(good, lambda b: b.index(b"PK\x01\x02") + 8, struct.pack("<H", 1))
    unsupported = _patched(_patched(good, lambda b: b.index(b"PK\x01\x02") + 10, struct.pack("<H", 99)),
                           lambda b: b.index(b"PK\x03\x04") + 8, struct.pack("<H", 99))
    return [
        ("archive: not a zip", b"this is not an archive"),
        ("archive: empty zip", _zip({})),
        ("archive: zip-slip names", _zip({"../../etc/evil/1.jpg": jpeg, "/abs/olute.jpg": jpeg})),
        ("archive: a zip inside a zip", _zip({"ada/inner.zip": good})),
        ("archive: 5,000 tiny files", _zip({f"p{i % 50}/{i}.jpg": b"x" for i in range(5_000)})),
        ("archive: bad CRC", central_crc),
        ("archive: corrupt deflate stream", corrupt_deflate),
        ("archive: sizes that lie", lying_sizes),
        ("archive: encrypted entry", encrypted),
        ("archive: unsupported compression", unsupported),
        ("archive: truncated", good[: len(good) // 2]),
        ("archive: only folders", _zip({"ada/": b"", "bob/": b""})),
        ("archive: names with NUL and control characters", _zip({"a\x01da/1.jpg": jpeg})),
        ("archive: 300-character names", _zip({("n" * 300) + "/1.jpg": jpeg})),
    ]


BAD_STRINGS: list[tuple[str, str]] = [
    ("string: empty", ""),
    ("string: whitespace only", "   \t "),
    ("string: NUL", "ada\x00"),
    ("string: control characters", "a\x07d\x1ba"),
    ("string: zero-width", "a\u200bda"),
    ("string: right-to-left override", "\u202eada"),
    ("string: lone surrogate", "ada\ud800"),
    ("string: 100,000 characters", "a" * 100_000),
    ("string: SQL", "'; DROP TABLE persons; --"),
    ("string: LIKE wildcards", "%_%"),
    ("string: digits only", "2"),
    ("string: superscript digit", "²"),
    ("string: path traversal", "../../etc/passwd"),
]

BAD_NUMBERS: list[tuple[str, object]] = [
    ("number: NaN", "NaN"),
    ("number: infinity", "Infinity"),
    ("number: -infinity", "-Infinity"),
    ("number: 1e308", 1e308),
    ("number: 2**64", 2**64),
    ("number: negative", -5),
    ("number: zero", 0),
    ("number: a fraction where an integer goes", 2.5),
    ("number: a string", "five"),
]

BAD_VECTORS: list[tuple[str, object]] = [
    ("embedding: wrong dimension (127)", [[0.1] * 127]),
    ("embedding: wrong dimension (129)", [[0.1] * 129]),
    ("embedding: empty", []),
    ("embedding: ragged rows", [[0.1] * 128, [0.1] * 5]),
    ("embedding: zero vector", [[0.0] * 128]),
    ("embedding: strings inside", [["a"] * 128]),
    ("embedding: null", None),
    ("embedding: nested too deep", [[[0.1] * 128]]),
    ("embedding: 10,001 rows", [[0.1] * 128] * 10_001),
]


def count() -> int:
    return len(bad_images()) + len(bad_archives()) + len(BAD_STRINGS) + len(BAD_NUMBERS) + len(BAD_VECTORS)
