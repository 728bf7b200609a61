"""Locate the files that live at the repository's top level (`models/manifest.toml`,
`migrations/`) both in a source checkout and in an installed wheel."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _find(relative: str, packaged: str) -> Path:
    checkout = _PACKAGE.parent / relative
    if checkout.exists():
        return checkout
    return _PACKAGE / "_data" / packaged


def manifest_path() -> Path:
    return _find("models/manifest.toml", "manifest.toml")


def migrations_dir() -> Path:
    return _find("migrations", "migrations")
