"""Person references cannot be hijacked: a reference of digits is a person id and only an
id, no external id may be made only of digits, names are NFC with no invisible or control
characters, searches take % and _ literally, and no reference is ever a 500.

Everything here but the last test runs without the model (the person routes need none)."""

from __future__ import annotations

import subprocess
import sys
import unicodedata

import pytest
from conftest import MISC_DIR, ROOT
from fastapi.testclient import TestClient

from identity.api import create_app
from identity.store.keys import create_key

SMALL = MISC_DIR / "small_labeled"


@pytest.fixture
def api(store_settings):
    """A TestClient (no model: persons need none) and one key per scope."""
    with TestClient(create_app(store_settings, warm=False), raise_server_exceptions=False) as client:
        store = client.app.state.service.store
        keys = {scope: {"X-API-Key": create_key(store, f"t-{scope}", [scope])[1]}
                for scope in ("read", "enroll", "admin")}
        yield client, keys


def error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text
    return response.json()["error"]


def test_an_external_id_made_only_of_digits_is_refused_so_it_cannot_shadow_an_id(api):
    client, keys = api
    biden = client.post("/v1/persons", json={"external_id": "biden"}, headers=keys["enroll"]).json()
    for digits in (str(biden["id"]), "2", "007", "²", "٢"):  # ASCII, superscript, Arabic-Indic
        message = error(client.post("/v1/persons", json={"external_id": digits}, headers=keys["enroll"]), 422)
        assert "only digits" in message["message"], message
        error(client.patch(f"/v1/persons/{biden['id']}", json={"external_id": digits},
                           headers=keys["enroll"]), 422)
    # digits reach the id, and nothing else
    got = client.get(f"/v1/persons/{biden['id']}", headers=keys["read"]).json()
    assert (got["id"], got["external_id"]) == (biden["id"], "biden")


def test_digits_reach_only_the_id_even_where_an_older_version_stored_a_digit_external_id(api):
    client, keys = api
    store = client.app.state.service.store
    first = client.post("/v1/persons", json={"external_id": "first"}, headers=keys["enroll"]).json()
    with store.connection() as conn:  # what the hijack left behind before this rule existed
        (legacy,) = conn.execute("INSERT INTO persons (external_id) VALUES (%s) RETURNING id",
                                 (str(first["id"]),)).fetchone()
    got = client.get(f"/v1/persons/{first['id']}", headers=keys["read"]).json()
    assert got["external_id"] == "first"  # not the person whose external id is those digits
    assert client.get(f"/v1/persons/{legacy}", headers=keys["read"]).json()["id"] == legacy
    # delete and merge read references the same way
    deleted = client.delete(f"/v1/persons/{legacy}", headers=keys["admin"]).json()
    assert (deleted["person_id"], deleted["external_id"]) == (legacy, str(first["id"]))


def test_an_upload_to_digits_of_no_person_is_404_not_a_new_person_named_by_them(api):
    client, keys = api
    photo = SMALL / "obama" / "obama2.jpg"
    response = client.post("/v1/persons/424242/faces", headers=keys["enroll"],
                           files=[("images", (photo.name, photo.read_bytes(), "image/jpeg"))])
    assert error(response, 404)["message"] == "no person id 424242"
    assert client.get("/v1/persons", params={"q": "424242"}, headers=keys["read"]).json()["items"] == []


@pytest.mark.parametrize("ref", ["²", "٢", "%00", "a%00b", "%E2%80%8Bx", "99999999999999999999999", "0"])
def test_a_reference_no_person_can_have_is_422_never_500(api, ref):
    client, keys = api
    for method in ("get", "delete"):
        response = getattr(client, method)(f"/v1/persons/{ref}", headers=keys["admin"])
        assert response.status_code == 422, (ref, method, response.text)
    merge = client.post("/v1/persons/someone/merge", json={"other": ref.replace("%00", "\x00")},
                        headers=keys["admin"])
    assert merge.status_code in (404, 422), merge.text  # 404: `someone` is checked first when valid


def test_an_unknown_reference_is_404_naming_what_was_looked_for(api):
    client, keys = api
    assert error(client.get("/v1/persons/123456", headers=keys["read"]), 404)["message"] == "no person id 123456"
    assert "external id 'nobody'" in error(client.get("/v1/persons/nobody", headers=keys["read"]), 404)["message"]


@pytest.mark.parametrize("bad", ["a\x00b", "a\u200bb", "\u200d", "a\u202eb", "tab\there", "   ", "\u00a0",
                                 " padded", "padded "])
def test_external_ids_with_control_invisible_or_only_whitespace_characters_are_422(api, bad):
    client, keys = api
    response = client.post("/v1/persons", json={"external_id": bad}, headers=keys["enroll"])
    assert response.status_code == 422, (bad, response.text)


@pytest.mark.parametrize("bad", ["a\x00b", "zero\u200bwidth", "\u2029", "  "])
def test_display_names_with_control_invisible_or_only_whitespace_characters_are_422(api, bad):
    client, keys = api
    response = client.post("/v1/persons", json={"external_id": "named", "display_name": bad},
                           headers=keys["enroll"])
    assert response.status_code == 422, (bad, response.text)
    client.post("/v1/persons", json={"external_id": "named"}, headers=keys["enroll"])
    assert client.patch("/v1/persons/named", json={"display_name": bad},
                        headers=keys["enroll"]).status_code == 422


def test_names_are_nfc_so_a_decomposed_spelling_reaches_the_same_person(api):
    client, keys = api
    decomposed = "Zoe\u0301"  # e + combining acute, as macOS spells file names
    created = client.post("/v1/persons", json={"external_id": decomposed, "display_name": "Zoe\u0301 Z."},
                          headers=keys["enroll"]).json()
    assert created["external_id"] == unicodedata.normalize("NFC", decomposed) == "Zoé"
    assert created["display_name"] == "Zoé Z."
    assert client.get(f"/v1/persons/{decomposed}", headers=keys["read"]).json()["id"] == created["id"]
    again = client.post("/v1/persons", json={"external_id": "Zoé"}, headers=keys["enroll"])
    assert again.status_code == 409  # the same name, however it was typed


def test_metadata_that_postgresql_cannot_store_is_422(api):
    client, keys = api
    response = client.post("/v1/persons", json={"external_id": "meta", "metadata": {"k": "a\x00b"}},
                           headers=keys["enroll"])
    assert error(response, 422)["message"] == "metadata may not contain the NUL character"
    client.post("/v1/persons", json={"external_id": "meta"}, headers=keys["enroll"])
    error(client.patch("/v1/persons/meta", json={"metadata": {"a\x00": 1}}, headers=keys["enroll"]), 422)


def test_search_takes_percent_and_underscore_literally(api):
    client, keys = api
    for ext in ("plain", "100%", "snake_case", "back\\slash"):
        assert client.post("/v1/persons", json={"external_id": ext}, headers=keys["enroll"]).status_code == 201

    def found(q: str) -> list[str]:
        response = client.get("/v1/persons", params={"q": q}, headers=keys["read"])
        assert response.status_code == 200, response.text
        return [p["external_id"] for p in response.json()["items"]]

    assert found("%") == ["100%"]
    assert found("_") == ["snake_case"]
    assert found("\\") == ["back\\slash"]
    assert found("e_c") == ["snake_case"] and found("ec") == []
    assert error(client.get("/v1/persons", params={"q": "a\x00"}, headers=keys["read"]), 422)


def test_responses_that_act_on_a_person_name_its_id_and_external_id(api):
    client, keys = api
    keep = client.post("/v1/persons", json={"external_id": "keep"}, headers=keys["enroll"]).json()
    gone = client.post("/v1/persons", json={"external_id": "gone"}, headers=keys["enroll"]).json()
    merged = client.post(f"/v1/persons/{keep['id']}/merge", json={"other": str(gone["id"])},
                         headers=keys["admin"]).json()
    assert (merged["person"]["id"], merged["person"]["external_id"]) == (keep["id"], "keep")
    assert (merged["merged_person_id"], merged["merged_external_id"]) == (gone["id"], "gone")
    renamed = client.patch("/v1/persons/gone", json={"display_name": "Kept"}, headers=keys["enroll"]).json()
    assert (renamed["id"], renamed["external_id"]) == (keep["id"], "keep")  # `gone` is an alias now
    deleted = client.delete(f"/v1/persons/{keep['id']}", headers=keys["admin"]).json()
    assert (deleted["person_id"], deleted["external_id"]) == (keep["id"], "keep")


@pytest.mark.slow  # runs the CLI as subprocesses
def test_the_cli_reads_references_by_the_same_rule(store, store_env):
    person = store.create_person("cli-person")
    with store.connection() as conn:  # a legacy digit external id naming another person's id
        conn.execute("INSERT INTO persons (external_id) VALUES (%s)", (str(person.id),))

    def identity(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "identity.cli", *args], env=store_env, cwd=ROOT,
                              capture_output=True, text=True, timeout=120)

    shown = identity("persons", "show", str(person.id), "--json")
    assert shown.returncode == 0, shown.stderr
    assert '"external_id": "cli-person"' in shown.stdout
    bad = identity("persons", "show", "²")
    assert bad.returncode == 2 and "digits 0-9" in bad.stderr + bad.stdout


def test_verify_against_person_2_is_not_hijacked_by_an_enroll_key(service, store_settings):
    """The issue's reproduction: person 2 is Biden; an enroll-scope key tries to create a
    person with external id "2" and enroll Obama to it; verifying Obama against `person=2`
    must still compare with Biden, and say so."""
    settings = service.settings
    with TestClient(create_app(settings, service=service, warm=False), raise_server_exceptions=False) as client:
        store = service.store
        enroll = {"X-API-Key": create_key(store, "enroll", ["enroll"])[1]}

        def upload(path, field="images"):
            return (field, (path.name, path.read_bytes(), "image/jpeg"))

        lacamoire = client.post("/v1/persons/lacamoire/faces", headers=enroll,
                                files=[upload(SMALL / "alex_lacamoire" / "img1.jpg")]).json()
        biden = client.post("/v1/persons/biden/faces", headers=enroll,
                            files=[upload(SMALL / "biden" / "biden.jpg")]).json()
        assert lacamoire["person_id"] == 1 and biden["person_id"] == 2, (lacamoire, biden)
        assert biden["person"] == "biden" and biden["outcomes"][0]["source"] == "biden.jpg"

        assert client.post("/v1/persons", json={"external_id": "2"}, headers=enroll).status_code == 422
        assert client.post("/v1/persons/3/faces", headers=enroll,
                           files=[upload(SMALL / "obama" / "obama2.jpg")]).status_code == 404
        service.index.wait_for(store.watermark(), timeout=30)
        verdict = client.post("/v1/verify", headers=enroll, data={"person": "2"},
                              files=[upload(SMALL / "obama" / "obama.jpg", "a")]).json()
        assert verdict["same"] is False, verdict
        assert verdict["person"] == {"id": 2, "external_id": "biden"}
