"""`identity doctor`: one report of what an installation has and what is broken, with the
exit code of the first problem."""

from __future__ import annotations

import json

import pytest

from identity.cli import main


def doctor(capsys, monkeypatch, **env) -> tuple[int, dict]:
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    with pytest.raises(SystemExit) as exit_info:
        main(["doctor", "--json"])
    return exit_info.value.code, json.loads(capsys.readouterr().out)


def checks(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"]}


def test_a_healthy_installation_reports_every_part(capsys, monkeypatch, store_settings, model_settings):
    code, report = doctor(capsys, monkeypatch, IDENTITY_DATABASE_URL=store_settings.store.database_url,
                          IDENTITY_MODELS_DIR=model_settings.pipeline.models_dir,
                          IDENTITY_DATA_DIR=store_settings.data_dir)
    found = checks(report)
    assert code == 0 and report["ok"], report
    assert found["packages"]["facts"]["torch"] and found["packages"]["facts"]["facenet-pytorch"]
    assert found["faiss"]["facts"]["gpu_build"] in (True, False)
    assert found["device"]["facts"]["device"] in ("cpu", "cuda", "cuda:0")
    assert found["device"]["facts"]["precision_setting"] == "auto"
    assert found["device"]["facts"]["precision"] == _expected_precision("auto")
    assert found["weights"]["facts"]["facenet-keras-128-tight"]["status"] == "verified"
    assert found["database"]["facts"]["postgresql"].startswith("18")
    assert found["database"]["facts"]["pgvector"] and found["database"]["facts"]["pending_migrations"] == []
    assert found["broker"]["facts"] == {"configured": False}


def _expected_precision(setting: str) -> str:
    import torch

    from identity.faces.embed import resolve_device, resolve_precision

    return "bf16" if resolve_precision(setting, resolve_device("auto")) == torch.bfloat16 else "fp32"


@pytest.mark.parametrize("setting", ["auto", "fp32", "bf16"])
def test_the_device_check_says_what_the_embedding_network_computes_in(capsys, monkeypatch, setting, tmp_path):
    code, report = doctor(capsys, monkeypatch, IDENTITY_PRECISION=setting, IDENTITY_MODELS_DIR=tmp_path,
                          IDENTITY_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none", IDENTITY_DATA_DIR=tmp_path)
    device = checks(report)["device"]
    assert device["ok"] and device["facts"]["precision_setting"] == setting
    assert device["facts"]["precision"] == _expected_precision(setting)
    assert f"embeddings in {_expected_precision(setting)}" in device["detail"]
    assert ("(auto: this CPU" in device["detail"]) == (setting == "auto" and device["facts"]["device"] == "cpu")


def test_missing_weights_are_a_configuration_problem_naming_the_fetch_command(
        capsys, monkeypatch, store_settings, tmp_path):
    code, report = doctor(capsys, monkeypatch, IDENTITY_DATABASE_URL=store_settings.store.database_url,
                          IDENTITY_MODELS_DIR=tmp_path, IDENTITY_DATA_DIR=store_settings.data_dir)
    weights = checks(report)["weights"]
    assert code == 3 and not report["ok"]
    assert not weights["ok"] and "identity models fetch facenet-keras-128-tight" in weights["detail"]
    assert checks(report)["database"]["ok"]  # one problem does not hide the other checks


def test_an_unreachable_database_and_a_broker_without_workers_are_service_problems(
        capsys, monkeypatch, redis_url, tmp_path):
    code, report = doctor(capsys, monkeypatch, IDENTITY_MODELS_DIR=tmp_path / "none",
                          IDENTITY_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none",
                          IDENTITY_BROKER_URL=redis_url, IDENTITY_DATA_DIR=tmp_path)
    found = checks(report)
    assert code == 3  # configuration (the weights) is reported first: fix it first
    assert not found["database"]["ok"] and found["database"]["detail"].startswith("unreachable")
    assert not found["broker"]["ok"] and "no worker answered" in found["broker"]["detail"]
    assert found["database"]["exit_code"] == found["broker"]["exit_code"] == 4
