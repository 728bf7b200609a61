"""Shared fixtures. Real weights from ../shared/models, real images from ../shared/data;
nothing from there is copied into the repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from identity.config import Settings

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MODELS_DIR = SHARED / "models"
DATA_DIR = SHARED / "data"
LFW_DIR = DATA_DIR / "lfw-dev"
MISC_DIR = DATA_DIR / "misc"

# A developer's own IDENTITY_* settings must not leak into the suite.
for _name in [n for n in os.environ if n.startswith("IDENTITY_")]:
    del os.environ[_name]


@pytest.fixture(scope="session")
def weights_cache(pytestconfig) -> Path:
    """Converted weights are cached across test runs (in .pytest_cache), never in ../shared."""
    return Path(pytestconfig.cache.mkdir("identity-weights"))


@pytest.fixture(scope="session")
def model_settings(weights_cache, tmp_path_factory) -> Settings:
    """Settings for the real default model, with a throwaway data directory."""
    return Settings(
        models_dir=MODELS_DIR,
        cache_dir=weights_cache,
        data_dir=tmp_path_factory.mktemp("identity-data"),
        device="cpu",
    )


@pytest.fixture(scope="session")
def pipeline(model_settings):
    """One loaded face pipeline for the whole session (the network loads once)."""
    from identity.faces.pipeline import FacePipeline

    return FacePipeline(model_settings)
