"""Image bytes → upright RGB pixels at working resolution.

Everything a photo library throws at us ends here as either a `DecodedImage` or an
`ImageDecodeError`/`ImageTooLargeError` naming the file. Large JPEGs are decoded in
draft mode (libjpeg's DCT scaling), so a 12-megapixel photo costs a fraction of a full
decode when we only need ~1600 px to find faces.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from identity.errors import ImageDecodeError, ImageTooLargeError

try:  # HEIC/HEIF (iPhone photos) when the maintained decoder is installed.
    from pillow_heif import register_heif_opener

    register_heif_opener()
    HEIF_SUPPORTED = True
except ImportError:  # pragma: no cover - depends on the environment
    HEIF_SUPPORTED = False

# We enforce our own, explicit pixel limit before decoding; Pillow's global guard would
# otherwise raise its own error type for some images and only warn for others.
Image.MAX_IMAGE_PIXELS = None

_EXIF_ORIENTATION = 0x0112
_ROTATED_ORIENTATIONS = {5, 6, 7, 8}  # these swap width and height


@dataclass(frozen=True)
class DecodedImage:
    source: str
    pixels: np.ndarray  # uint8 H×W×3 RGB, upright, long side ≤ max_side
    width: int  # full-resolution upright width
    height: int
    scale: float  # working size / full size (≤ 1)
    sha256: str  # hex digest of the encoded bytes


def read_bytes(source: str | Path) -> bytes:
    try:
        return Path(source).read_bytes()
    except IsADirectoryError:
        raise ImageDecodeError("is a directory, not an image file", path=str(source)) from None
    except FileNotFoundError:
        raise ImageDecodeError("file not found", path=str(source)) from None
    except OSError as exc:
        raise ImageDecodeError(f"cannot read file: {exc.strerror or exc}", path=str(source)) from None


def decode_image(data: bytes, *, source: str, max_pixels: int, max_side: int) -> DecodedImage:
    if not data:
        raise ImageDecodeError("empty file (0 bytes)", path=source)
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns on odd EXIF; the outcome is what matters
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageTooLargeError(
                    f"{width}×{height} = {width * height:,} pixels exceeds the limit of "
                    f"{max_pixels:,} (IDENTITY_MAX_IMAGE_PIXELS)",
                    path=source,
                )
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
            if image.format == "JPEG":
                # draft() picks the smallest DCT scale (1/2, 1/4, 1/8) still ≥ the requested size.
                ratio = min(1.0, max_side / max(width, height))
                image.draft("RGB", (max(1, int(width * ratio)), max(1, int(height * ratio))))
            image.load()
            image = ImageOps.exif_transpose(image)
            pixels = _to_rgb(image)
    except (ImageTooLargeError, ImageDecodeError):
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError("not a recognised image format", path=source) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError(f"corrupt or truncated image: {exc}", path=source) from None
    except Image.DecompressionBombError as exc:  # pragma: no cover - guarded above
        raise ImageTooLargeError(str(exc), path=source) from None

    full_w, full_h = (height, width) if orientation in _ROTATED_ORIENTATIONS else (width, height)
    pixels = _fit(pixels, max_side)
    return DecodedImage(
        source=source,
        pixels=pixels,
        width=full_w,
        height=full_h,
        scale=pixels.shape[1] / full_w,
        sha256=sha256,
    )


def _to_rgb(image: Image.Image) -> np.ndarray:
    """Any Pillow mode → uint8 RGB. Deep (16/32-bit) images are rescaled, not clipped,
    and transparent areas are composited onto white (what a viewer shows)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        deep = np.asarray(image, dtype=np.float64)
        peak = deep.max() if deep.size else 0.0
        divisor = 257.0 if peak > 255 else 1.0  # 16-bit range → 8-bit
        grey = np.clip(deep / divisor, 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode != "RGB":
        image = image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV
    return np.asarray(image, dtype=np.uint8).copy()


def _fit(pixels: np.ndarray, max_side: int) -> np.ndarray:
    h, w = pixels.shape[:2]
    if max(h, w) <= max_side:
        return pixels
    ratio = max_side / max(h, w)
    size = (max(1, round(w * ratio)), max(1, round(h * ratio)))
    return np.asarray(Image.fromarray(pixels).resize(size, Image.BILINEAR, reducing_gap=2.0))
