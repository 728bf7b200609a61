"""Decoding: every image a photo library holds becomes upright RGB, and every bad file
becomes a typed error that names it."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from identity.errors import ImageDecodeError, ImageTooLargeError, InputError
from identity.faces.decode import HEIF_SUPPORTED, decode_image, read_bytes

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ASTRONAUT = DATA / "misc" / "single_face" / "skimage_astronaut.png"
LFW_IMAGE = DATA / "lfw-dev" / "Fidel_Castro" / "Fidel_Castro_0004.jpg"


def decode(data: bytes, name: str = "img", max_side: int = 1600):
    return decode_image(data, source=name, max_pixels=64_000_000, max_side=max_side)


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.open(ASTRONAUT).convert("RGB")


# --- bad input ------------------------------------------------------------------------


def test_zero_byte_file_is_a_named_decode_error():
    with pytest.raises(ImageDecodeError, match="empty") as info:
        decode(b"", "empty.jpg")
    assert info.value.path == "empty.jpg"


def test_text_file_named_jpg_is_not_an_image():
    with pytest.raises(ImageDecodeError, match="not a recognised image") as info:
        decode(b"this is a text file, not a photo\n" * 10, "notes.jpg")
    assert "notes.jpg" in str(info.value)


def test_truncated_jpeg_is_reported_not_decoded_as_garbage():
    data = LFW_IMAGE.read_bytes()
    with pytest.raises(ImageDecodeError, match="corrupt or truncated"):
        decode(data[: len(data) // 2], "half.jpg")


def test_truncated_png_is_reported(astronaut):
    data = encode(astronaut, "PNG")
    with pytest.raises(ImageDecodeError):
        decode(data[:5000], "half.png")


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_decompression_bomb_header_is_refused_before_decoding():
    with pytest.raises(ImageTooLargeError, match="400,000,000 pixels") as info:
        decode(_png_header_only(20000, 20000), "bomb.png")
    assert isinstance(info.value, InputError)


def test_missing_file_and_directory_are_named_errors(tmp_path):
    with pytest.raises(ImageDecodeError, match="not found"):
        read_bytes(tmp_path / "nope.jpg")
    with pytest.raises(ImageDecodeError, match="directory"):
        read_bytes(tmp_path)


# --- every mode becomes RGB uint8 ----------------------------------------------------------


def test_rgba_png_is_composited_onto_white(astronaut):
    rgba = astronaut.convert("RGBA")
    alpha = np.full(rgba.size[::-1], 255, np.uint8)
    alpha[:10, :10] = 0  # a fully transparent corner
    rgba.putalpha(Image.fromarray(alpha))
    image = decode(encode(rgba, "PNG"))
    assert image.pixels.dtype == np.uint8 and image.pixels.shape == (512, 512, 3)
    assert (image.pixels[:10, :10] == 255).all()
    assert np.abs(image.pixels[100:, 100:].astype(int) - np.asarray(astronaut)[100:, 100:]).max() <= 1


def test_cmyk_jpeg_decodes_to_rgb(astronaut):
    image = decode(encode(astronaut.convert("CMYK"), "JPEG", quality=95))
    assert image.pixels.shape == (512, 512, 3)
    # Colours survive the round trip (mean absolute error of a few levels).
    assert np.abs(image.pixels.astype(int) - np.asarray(astronaut).astype(int)).mean() < 12


def test_greyscale_and_palette_images_become_rgb(astronaut):
    for mode in ("L", "P", "1"):
        image = decode(encode(astronaut.convert(mode), "PNG"))
        assert image.pixels.shape == (512, 512, 3), mode


def test_16_bit_png_is_rescaled_not_clipped(astronaut):
    grey8 = np.asarray(astronaut.convert("L"), dtype=np.uint16)
    deep = Image.fromarray(grey8 * 257)  # uint16 → mode I;16
    image = decode(encode(deep, "PNG"))
    assert np.abs(image.pixels[..., 0].astype(int) - grey8.astype(int)).max() <= 1


def test_webp_decodes(astronaut):
    image = decode(encode(astronaut, "WEBP", quality=90))
    assert image.pixels.shape == (512, 512, 3)


@pytest.mark.skipif(not HEIF_SUPPORTED, reason="pillow-heif not installed")
def test_heic_decodes(astronaut):
    try:
        data = encode(astronaut, "HEIF", quality=90)
    except (KeyError, OSError) as exc:  # a libheif build without an encoder
        pytest.skip(f"this libheif cannot encode HEIF: {exc}")
    image = decode(data)
    assert image.pixels.shape == (512, 512, 3)


def test_exif_orientation_is_applied(astronaut):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated; a viewer turns it 90° clockwise
    wide = astronaut.resize((400, 200))
    image = decode(encode(wide, "JPEG", exif=exif.tobytes()))
    assert (image.width, image.height) == (200, 400)
    assert image.pixels.shape == (400, 200, 3)


def test_large_jpeg_is_decoded_at_working_size(astronaut):
    big = astronaut.resize((4000, 3000))
    image = decode(encode(big, "JPEG", quality=90), max_side=1600)
    assert (image.width, image.height) == (4000, 3000)  # reported at full resolution
    assert max(image.pixels.shape[:2]) == 1600
    assert image.scale == pytest.approx(0.4)


def test_sha256_is_of_the_file_bytes():
    import hashlib

    data = LFW_IMAGE.read_bytes()
    assert decode(data).sha256 == hashlib.sha256(data).hexdigest()
