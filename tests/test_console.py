"""The web console without a browser or a model: sign-in and its cookie, the guards on
state changes, paging at scale, scopes, and that every asset is served from the package
(the browser tests, tests/test_console_browser.py, drive the pages themselves)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from identity.api import create_app
from identity.config import Settings

CONSOLE = Path(__file__).resolve().parents[1] / "identity" / "api" / "console"
HX = {"HX-Request": "true"}


@pytest.fixture(scope="module")
def client(pg_server, tmp_path_factory):
    url = pg_server.new_database("console_fast")
    settings = Settings(database_url=url, data_dir=tmp_path_factory.mktemp("console-fast"))
    with TestClient(create_app(settings, warm=False), base_url="http://console.test") as test_client:
        yield test_client
    pg_server.drop_database(url)


@pytest.fixture(scope="module")
def service(client):
    return client.app.state.service


@pytest.fixture(scope="module")
def keys(service) -> dict[str, str]:
    return {scope: service.create_key(f"fast-{scope}", [scope])[1] for scope in ("read", "enroll", "admin")}


def signed_in(client, key: str) -> dict[str, str]:
    """The cookie a sign-in sets, as a header (TestClient's cookie jar is per client)."""
    answer = client.post("/sign-in", data={"key": key, "next": "/people"}, headers=HX)
    assert answer.status_code == 204, answer.text
    cookie = answer.headers["set-cookie"].split(";")[0]
    return {"Cookie": cookie}


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("src", "href", "hx-get", "hx-post", "action") and value:
                self.urls.append(value)


def links(html: str) -> list[str]:
    parser = _Links()
    parser.feed(html)
    return parser.urls


def test_pages_send_a_visitor_without_a_key_to_sign_in(client):
    answer = client.get("/people/7?x=1", follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/sign-in?next=/people/7%3Fx%3D1"
    # from htmx: a full navigation, back to the page the request came from
    answer = client.get("/people/grid", headers={**HX, "HX-Current-URL": "http://console.test/people?q=a"})
    assert answer.status_code == 204 and answer.headers["hx-redirect"] == "/sign-in?next=/people"
    assert client.get("/", follow_redirects=False).headers["location"] == "/people"


def test_sign_in_sets_a_strict_http_only_cookie_the_api_ignores(client, keys):
    answer = client.post("/sign-in", data={"key": keys["read"], "next": "/search"}, headers=HX)
    assert answer.status_code == 204 and answer.headers["hx-redirect"] == "/search"
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert client.post("/sign-in", data={"key": keys["read"], "next": "//evil.example/"},
                       headers=HX).headers["hx-redirect"] == "/people"  # no open redirect
    # The cookie is the console's: the JSON API still wants its header.
    api = client.get("/v1/persons", headers={"Cookie": cookie.split(";")[0]})
    assert api.status_code == 401
    wrong = client.post("/sign-in", data={"key": "idk_nope_nope"}, headers=HX)
    assert wrong.status_code == 401 and "not valid" in wrong.text
    assert wrong.headers["content-type"].startswith("text/plain")  # shown as text by console.js


def test_state_changes_only_come_from_the_consoles_own_pages(client, keys, service):
    person = service.create_person("guarded")
    cookie = signed_in(client, keys["admin"])
    # a plain form post (what another site could make a browser send) is refused
    plain = client.post(f"/people/{person.id}/rename", data={"display_name": "x"}, headers=cookie)
    assert plain.status_code == 403
    cross = client.post(f"/people/{person.id}/rename", data={"display_name": "x"},
                        headers={**cookie, **HX, "Origin": "http://evil.example"})
    assert cross.status_code == 403
    same = client.post(f"/people/{person.id}/rename", data={"display_name": "Guarded"},
                       headers={**cookie, **HX, "Origin": "http://console.test"})
    assert same.status_code == 204 and same.headers["hx-redirect"] == f"/people/{person.id}"
    assert service.person(person.id).display_name == "Guarded"


def test_pages_have_a_strict_csp_and_ask_for_nothing_elsewhere(client, keys):
    cookie = signed_in(client, keys["admin"])
    for path in ("/people", "/search", "/enroll", "/clusters", "/sign-in"):
        answer = client.get(path, headers=cookie)
        assert answer.status_code == 200, (path, answer.text)
        csp = answer.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert answer.headers["cache-control"] == "no-store"
        for url in links(answer.text):
            assert url.startswith("/"), (path, url)
        for url in links(answer.text):
            if url.startswith("/static/"):
                assert client.get(url).status_code == 200, url
    # No template names a URL off the server, nor an inline script or style.
    for template in (CONSOLE / "templates").glob("*.html"):
        text = template.read_text()
        assert not re.search(r"(src|href)=\"(https?:)?//", text), template.name
        assert "<script>" not in text and "<style" not in text and " style=" not in text, template.name


def test_api_docs_come_from_the_vendored_swagger_ui(client):
    page = client.get("/docs")
    assert page.status_code == 200
    assets = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", page.text)
    assert {a.rsplit("/", 1)[-1] for a in assets} >= {"swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"}
    for asset in assets:
        assert asset.startswith("/static/vendor/swagger-ui/"), asset
        assert client.get(asset).status_code == 200
    assert "cdn" not in page.text and "https://" not in page.text
    assert client.get("/redoc").status_code in (303, 404)  # FastAPI's CDN page is not served
    assert "/v1/search" in client.get("/openapi.json").json()["paths"]
    for path in client.get("/openapi.json").json()["paths"]:
        assert path.startswith(("/v1/", "/healthz", "/readyz", "/metrics")), path  # no console route


def test_the_people_grid_pages_by_keyset_and_finds_by_id(client, keys, service):
    made = [service.create_person(f"crowd-{i:03d}") for i in range(60)]
    cookie = signed_in(client, keys["read"])
    first = client.get("/people?q=crowd-", headers=cookie).text
    assert first.count('class="card"') == 48
    more = re.search(r'hx-get="(/people/grid\?after=\d+&amp;q=crowd-)"', first)
    assert more, "a 'More people' button carrying the keyset cursor"
    second = client.get(more.group(1).replace("&amp;", "&"), headers={**cookie, **HX}).text
    assert second.count('class="card"') == 12 and "More people" not in second
    # an id finds its person first, though no name contains the digits
    by_id = client.get(f"/people/grid?q={made[5].id}", headers={**cookie, **HX}).text
    assert re.search(r'class="card" href="/people/(\d+)"', by_id).group(1) == str(made[5].id)
    options = client.get("/people/options?other=crowd-00", headers={**cookie, **HX}).text
    assert options.count("<option") == 10


def test_a_read_key_sees_no_edit_controls_and_cannot_edit(client, keys, service):
    person = service.create_person("read-only-target")
    cookie = signed_in(client, keys["read"])
    page = client.get(f"/people/{person.id}", headers=cookie).text
    for control in ("/rename", "/merge", "/delete", "/split", "/move", "/unassign", "/remove", "/undo"):
        assert control not in page, control
    assert ">Enroll<" not in page
    refused = client.post(f"/people/{person.id}/rename", data={"display_name": "x"}, headers={**cookie, **HX})
    assert refused.status_code == 403 and "lacks the 'enroll' scope" in refused.text
    assert client.get("/enroll", headers=cookie).status_code == 403


def test_rename_merge_and_undo_through_the_console(client, keys, service):
    keep, other = service.create_person("twin-a"), service.create_person("twin-b")
    cookie = {**signed_in(client, keys["admin"]), **HX}
    assert client.post(f"/people/{keep.id}/rename", data={"display_name": "Twin"}, headers=cookie).status_code == 204
    merged = client.post(f"/people/{keep.id}/merge", data={"other": "twin-b"}, headers=cookie)
    assert merged.status_code == 204
    page = client.get(f"/people/{keep.id}", headers=cookie).text
    assert "merged twin-b in (0 faces)" in page and "name changed from “—” to “Twin”" in page
    entry = re.search(rf'hx-post="/people/{keep.id}/undo/(\d+)"', page).group(1)
    undone = client.post(f"/people/{keep.id}/undo/{entry}", headers=cookie)
    assert undone.status_code == 204 and undone.headers["hx-redirect"] == f"/people/{other.id}"
    assert service.person("twin-b").id == other.id
    again = client.post(f"/people/{keep.id}/undo/{entry}", headers=cookie)
    assert again.status_code == 409 and "already undone" in again.text
    missing = client.get("/people/no-such-person", headers={k: v for k, v in cookie.items() if k == "Cookie"})
    assert missing.status_code == 404 and "no-such-person" in missing.text


def test_a_form_post_is_admitted_from_its_cookie_before_its_body_and_rate_limited(client, keys, pg_server):
    # No cookie: sent to sign in, whatever the body (the gate answers from the headers).
    client.cookies.clear()
    refused = client.post("/search", files={"image": ("a.jpg", b"x" * 100_000, "image/jpeg")}, headers=HX)
    assert refused.status_code == 204 and refused.headers["hx-redirect"] == "/sign-in", refused.text
    # Form posts count against the key's rate limit; page views and chips do not.
    url = client.app.state.service.settings.store.database_url
    limited = Settings(database_url=url, data_dir=client.app.state.service.settings.data_dir,
                       rate_limit_read="2/minute")
    with TestClient(create_app(limited, warm=False), base_url="http://console.test") as other:
        cookie = {**signed_in(other, keys["read"]), **HX}
        for _ in range(3):
            assert other.get("/people", headers=cookie).status_code == 200
        answers = [other.post("/search", headers=cookie).status_code for _ in range(3)]
        assert answers[:2] == [422, 422] and answers[2] == 429  # no photo; then the limit


def test_a_persons_faces_come_in_pages_and_move_unassign_and_remove_from_the_page(client, keys, service):
    from test_store import enroll, image

    enroll(service.store, *[(image(f"console-many-{i}"), "many-faces") for i in range(125)])
    enroll(service.store, (image("console-other"), "other-person"))
    person = service.person("many-faces")
    cookie = {**signed_in(client, keys["admin"]), **HX}
    page = client.get(f"/people/{person.id}", headers={"Cookie": cookie["Cookie"]}).text
    shown = [int(i) for i in re.findall(r'name="face" value="(\d+)"', page)]
    assert len(shown) == 120 and shown == sorted(shown)
    more = re.search(r'hx-get="(/people/\d+/faces\?after=\d+)"', page).group(1)
    rest = [int(i) for i in re.findall(r'name="face" value="(\d+)"', client.get(more, headers=cookie).text)]
    assert len(rest) == 5 and rest[0] > shown[-1]
    a, b, c = shown[:3]
    moved = client.post(f"/people/{person.id}/move", data={"face": [a], "to": "other-person"}, headers=cookie)
    assert moved.status_code == 204, moved.text
    assert client.post(f"/people/{person.id}/unassign", data={"face": [b]}, headers=cookie).status_code == 204
    assert client.post(f"/people/{person.id}/remove", data={"face": [c]}, headers=cookie).status_code == 204
    assert service.face(a).external_id == "other-person" and service.face(b).person_id is None
    assert service.person(person.id).face_count == 122
    history = client.get(f"/people/{person.id}", headers={"Cookie": cookie["Cookie"]}).text
    for line in ("1 face moved to other-person", "1 face unassigned", "1 face deleted"):
        assert line in history, line
    nothing = client.post(f"/people/{person.id}/move", data={"to": "other-person"}, headers=cookie)
    assert nothing.status_code == 422 and "select at least one face" in nothing.text
