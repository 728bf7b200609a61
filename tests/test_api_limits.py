"""Abuse limits: authentication is decided from the headers before a byte of the body is
read, and each key has a rate limit per scope (429 with Retry-After). No model is loaded.

The requests here are driven through the ASGI interface itself, so a test can count
how much of the body the application asked for (TestClient hands the whole body over in
one message whether it is wanted or not)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from fastapi.testclient import TestClient

from identity.api import create_app
from identity.errors import ConfigError
from identity.store.keys import create_key

MB = 1024 * 1024


def asgi(app, method: str, path: str, *, headers: dict[str, str], chunks: list[bytes]) -> tuple[int, dict, dict, int]:
    """One request; returns (status, response headers, JSON body, body chunks the app read)."""

    async def run():
        pending = list(chunks)
        read = 0
        sent: list[dict] = []

        async def receive():
            nonlocal read
            if not pending:
                await asyncio.sleep(3600)  # a client still sending: only a read would wait here
            read += 1
            return {"type": "http.request", "body": pending.pop(0), "more_body": bool(pending)}

        async def send(message):
            sent.append(message)

        raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
                 "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
                 "query_string": b"", "headers": raw, "client": ("127.0.0.1", 5000),
                 "server": ("testserver", 80), "state": {}}
        await asyncio.wait_for(app(scope, receive, send), timeout=60)
        return sent, read

    sent, read = asyncio.run(run())
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    response_headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    return start["status"], response_headers, json.loads(body), read


def upload_chunks(size: int = 19 * MB) -> tuple[dict[str, str], list[bytes]]:
    """A multipart photo upload of `size` bytes, sent in 1 MiB chunks."""
    boundary = "limitsboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"big.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode()
    body = head + bytes(size - len(head) - 64) + f"\r\n--{boundary}--\r\n".encode()
    headers = {"content-type": f"multipart/form-data; boundary={boundary}", "content-length": str(len(body))}
    return headers, [body[i:i + MB] for i in range(0, len(body), MB)]


@pytest.fixture
def app_with(store_settings):
    def make(**update):
        return create_app(store_settings.replace(**update), warm=False)

    return make


def test_a_request_without_a_key_is_refused_before_its_body_is_read(app_with):
    app = app_with()
    headers, chunks = upload_chunks()
    status, response_headers, body, read = asgi(app, "POST", "/v1/search", headers=headers, chunks=chunks)
    assert (status, body["error"]["code"], read) == (401, "unauthenticated", 0)
    assert response_headers["www-authenticate"] == "Bearer"


def test_a_wrong_key_is_refused_before_the_body_is_read_too(app_with):
    app = app_with()
    headers, chunks = upload_chunks()
    wrong = "idk_0123456789abcdef_" + "A" * 43
    for presented in ({"x-api-key": wrong}, {"authorization": f"Bearer {wrong}"}, {"x-api-key": "nonsense"}):
        status, _, body, read = asgi(app, "POST", "/v1/persons/someone/faces", headers={**headers, **presented},
                                     chunks=chunks)
        assert (status, body["error"]["code"], read) == (401, "unauthenticated", 0), presented


def test_an_admitted_request_is_read_as_before(app_with):
    app = app_with()
    key = create_key(app.state.service.store, "ok", ["enroll"])[1]
    payload = json.dumps({"external_id": "read-me"}).encode()
    status, _, body, read = asgi(app, "POST", "/v1/persons", chunks=[payload], headers={
        "x-api-key": key, "content-type": "application/json", "content-length": str(len(payload))})
    assert (status, body["external_id"]) == (201, "read-me") and read == 1


def test_a_declared_oversize_is_413_before_anything_else(app_with):
    app = app_with(max_upload_bytes=MB)
    headers, chunks = upload_chunks(2 * MB)
    status, _, body, read = asgi(app, "POST", "/v1/search", headers=headers, chunks=chunks)
    assert (status, body["error"]["code"], read) == (413, "payload_too_large", 0)


def test_each_key_has_its_scopes_rate_limit_answered_429_with_retry_after(app_with):
    app = app_with(rate_limit_read="3/minute", rate_limit_enroll="", rate_limit_admin="5/minute")
    store = app.state.service.store
    read, other, enroll, admin = (create_key(store, f"k{i}", [scope])[1]
                                  for i, scope in enumerate(["read", "read", "enroll", "admin"]))
    with TestClient(app, raise_server_exceptions=False) as client:
        for _ in range(3):
            assert client.get("/v1/persons", headers={"X-API-Key": read}).status_code == 200
        limited = client.get("/v1/persons", headers={"X-API-Key": read})
        assert limited.status_code == 429, limited.text
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        error = limited.json()["error"]
        assert error["code"] == "rate_limited" and "3 per 1 minute" in error["message"]
        assert "read-scope" in error["message"]
        # counted per key: another key of the same scope is not held back
        assert client.get("/v1/persons", headers={"Authorization": f"Bearer {other}"}).status_code == 200
        # an empty limit is no limit; each scope has its own
        assert all(client.get("/v1/persons", headers={"X-API-Key": enroll}).status_code == 200 for _ in range(8))
        codes = [client.get("/v1/persons", headers={"X-API-Key": admin}).status_code for _ in range(6)]
        assert codes == [200] * 5 + [429]
        # a limited key's upload is refused before its body is read, like a missing key
        headers, chunks = upload_chunks()
        status, response_headers, body, was_read = asgi(app, "POST", "/v1/search", chunks=chunks,
                                                        headers={**headers, "x-api-key": read})
        assert (status, body["error"]["code"], was_read) == (429, "rate_limited", 0)
        assert "retry-after" in response_headers


def test_a_limited_key_may_go_on_once_the_window_has_moved(app_with):
    app = app_with(rate_limit_read="2/second")
    key = create_key(app.state.service.store, "burst", ["read"])[1]
    with TestClient(app, raise_server_exceptions=False) as client:
        codes = [client.get("/v1/persons", headers={"X-API-Key": key}).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        time.sleep(1.1)
        assert client.get("/v1/persons", headers={"X-API-Key": key}).status_code == 200


def test_health_and_documentation_need_no_key_and_are_not_limited(app_with):
    app = app_with(rate_limit_read="1/minute")
    with TestClient(app, raise_server_exceptions=False) as client:
        assert all(client.get("/healthz").status_code == 200 for _ in range(5))
        assert client.get("/openapi.json").status_code == 200


@pytest.mark.parametrize("setting", [{"rate_limit_read": "lots"}, {"rate_limit_admin": "5 per fortnight"},
                                     {"rate_limit_storage": "nowhere://"}])
def test_a_malformed_rate_limit_setting_is_a_configuration_error_naming_it(store_settings, setting):
    with pytest.raises(ConfigError) as error:
        create_app(store_settings.replace(**setting), warm=False)
    assert next(iter(setting)) in error.value.message


def test_the_paths_decided_before_the_body_are_exactly_the_routes_that_need_a_key(app_with):
    """access.PROTECTED and the routes' own key dependencies must agree, or a route could
    read a body unauthenticated (or the middleware demand a key a route does not)."""
    from identity.api.access import protected

    for path, operations in app_with().openapi()["paths"].items():
        for method, operation in operations.items():
            needs_key = bool(operation.get("security"))
            assert needs_key == protected({"path": path}), (method.upper(), path)
