"""Settings: one group per component, each setting reachable by a flat and a grouped name."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from identity.config import FLAT_NAMES, GROUPS, Settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    import os

    for name in list(os.environ):
        if name.startswith("IDENTITY_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no identity.toml or .env from the checkout


def test_every_field_has_exactly_one_flat_name():
    fields = sum(len(model.model_fields) for model in GROUPS.values())
    assert len(FLAT_NAMES) == fields
    assert not set(FLAT_NAMES) & set(Settings.model_fields)


def test_flat_and_grouped_keyword_arguments_mean_the_same_field():
    flat = Settings(index_type="hnsw", batch_size=4, database_url="postgresql://h/db", api_port=9000)
    grouped = Settings(index={"type": "hnsw"}, pipeline={"batch_size": 4},
                       store={"database_url": "postgresql://h/db"}, api={"port": 9000})
    for settings in (flat, grouped):
        assert settings.index.type == "hnsw"
        assert settings.pipeline.batch_size == 4
        assert settings.store.database_url == "postgresql://h/db"
        assert settings.api.port == 9000


def test_flat_environment_variables_keep_working(monkeypatch):
    monkeypatch.setenv("IDENTITY_CLUSTER_THRESHOLD", "0.5")
    monkeypatch.setenv("IDENTITY_ALLOWED_ROOTS", '["/srv/photos"]')
    monkeypatch.setenv("IDENTITY_DETECTION_THRESHOLDS", "[0.5, 0.6, 0.7]")
    monkeypatch.setenv("IDENTITY_DATA_DIR", "/var/lib/identity")
    settings = Settings()
    assert settings.cluster.threshold == 0.5
    assert settings.api.allowed_roots == [Path("/srv/photos")]
    assert settings.pipeline.detection_thresholds == (0.5, 0.6, 0.7)
    assert settings.data_dir == Path("/var/lib/identity")


def test_grouped_environment_variables_win_over_flat_ones(monkeypatch):
    monkeypatch.setenv("IDENTITY_INDEX_TYPE", "flat")
    monkeypatch.setenv("IDENTITY_INDEX__TYPE", "hnsw")
    monkeypatch.setenv("IDENTITY_INDEX__NPROBE", "7")
    settings = Settings()
    assert (settings.index.type, settings.index.nprobe) == ("hnsw", 7)


def test_keyword_arguments_win_over_the_environment(monkeypatch):
    monkeypatch.setenv("IDENTITY_INDEX__TYPE", "hnsw")
    assert Settings(index_type="ivf").index.type == "ivf"


def test_the_config_file_takes_tables_per_group_and_flat_names(monkeypatch, tmp_path):
    config = tmp_path / "identity.toml"
    config.write_text('batch_size = 8\n[index]\ntype = "hnsw"\n[cluster]\nalgorithm = "dbscan"\n')
    settings = Settings()
    assert settings.pipeline.batch_size == 8
    assert settings.index.type == "hnsw"
    assert settings.cluster.algorithm == "dbscan"
    monkeypatch.setenv("IDENTITY_BATCH_SIZE", "2")  # the environment outranks the file
    assert Settings().pipeline.batch_size == 2


def test_a_dotenv_file_takes_both_spellings(tmp_path):
    (tmp_path / ".env").write_text("IDENTITY_BROKER_URL=redis://h:6379/0\nIDENTITY_API__WORKERS=3\n")
    settings = Settings()
    assert settings.workers.broker_url == "redis://h:6379/0"
    assert settings.api.workers == 3


@pytest.mark.parametrize("arguments", [{"batch_size": 0}, {"pipeline": {"batch_size": 0}},
                                       {"index_type": "lsh"}, {"detector": "haar"}])
def test_bad_values_are_refused_in_either_spelling(arguments):
    with pytest.raises(ValidationError):
        Settings(**arguments)


def test_replace_validates_and_keeps_what_was_set_explicitly():
    base = Settings(cluster_threshold=0.6, data_dir="/a")
    changed = base.replace(index_type="hnsw", data_dir="/b", cluster={"min_size": 3})
    assert changed.index.type == "hnsw" and changed.data_dir == Path("/b")
    assert changed.cluster.threshold == 0.6 and changed.cluster.min_size == 3
    # a setting left at its default defers to the model: it must not become "explicit"
    assert changed.pipeline.model_fields_set == set()
    assert changed.cluster.model_fields_set == {"threshold", "min_size"}
    assert base.index.type == "auto"  # the original is untouched
    with pytest.raises(ValidationError):
        base.replace(batch_size=-1)
    with pytest.raises(TypeError, match="unknown setting 'batchsize'"):
        base.replace(batchsize=4)
