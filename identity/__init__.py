"""identity: who is this face? Enrollment, 1:N search, 1:1 verification, clustering, evaluation.

The Python API is `identity.open()` → `Gallery` (identity/gallery.py); it is imported on
first use, so `import identity` stays cheap (no torch, no database driver).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["Gallery", "open", "__version__"]

if TYPE_CHECKING:
    from identity.gallery import Gallery, open


def __getattr__(name: str):
    if name in ("Gallery", "open"):
        from identity import gallery

        return getattr(gallery, name)
    raise AttributeError(f"module 'identity' has no attribute {name!r}")
