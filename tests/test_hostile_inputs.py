"""Every route, fed the hostile corpus (tests/hostile.py): no response is a 5xx, every
error has the one error shape, and no request hangs. Then the service still works."""

from __future__ import annotations

import json
import time
from urllib.parse import quote

import pytest

import hostile
from conftest import MISC_DIR, ready_api_client

SLOW_REQUEST_S = 60.0  # a request slower than this counts as a hang


@pytest.fixture(scope="module")
def client(pg_server, model_settings, tmp_path_factory):
    url = pg_server.new_database("hostile")
    settings = model_settings.replace(
        database_url=url, data_dir=tmp_path_factory.mktemp("hostile-data"),
        allowed_roots=[tmp_path_factory.mktemp("hostile-root")],
    )
    with ready_api_client(settings) as test_client:
        yield test_client
    pg_server.drop_database(url)


@pytest.fixture(scope="module")
def headers(client) -> dict[str, str]:
    _, secret = client.app.state.service.create_key("hostile", ["admin"])
    return {"Authorization": f"Bearer {secret}"}


class Tally:
    def __init__(self) -> None:
        self.sent, self.failures = 0, []

    def check(self, label: str, response, started: float) -> None:
        self.sent += 1
        elapsed = time.monotonic() - started
        problem = None
        if response.status_code >= 500:
            problem = f"{response.status_code}: {response.text[:200]}"
        elif elapsed > SLOW_REQUEST_S:
            problem = f"took {elapsed:.0f} s"
        elif response.status_code >= 400:
            body = response.json()
            if set(body) != {"error"} or not {"code", "message"} <= set(body["error"]):
                problem = f"error shape {body}"
        if problem:
            self.failures.append(f"{label}: {problem}")


def raw(text: str) -> str:
    """Percent-encoded as a client may send it: lone surrogates as their (invalid) UTF-8;
    cut to 4,000 characters, since HTTP clients refuse longer URLs (bodies carry the rest)."""
    return quote(text[:4000].encode("utf-8", "surrogatepass"), safe="")


def _send(client, tally, label, method, url, **kwargs):
    started = time.monotonic()
    tally.check(label, client.request(method, url, **kwargs), started)


def test_no_bad_input_makes_a_route_fail_or_hang(client, headers):
    tally = Tally()
    as_json = {**headers, "Content-Type": "application/json"}
    for kind, data in hostile.bad_images():
        image = ("x.jpg", data, "image/jpeg")
        _send(client, tally, f"{kind} → search", "POST", "/v1/search", headers=headers, files={"image": image})
        _send(client, tally, f"{kind} → detect", "POST", "/v1/detect", headers=headers, files={"images": image})
        _send(client, tally, f"{kind} → verify", "POST", "/v1/verify", headers=headers,
              files={"a": image, "b": image})
        _send(client, tally, f"{kind} → enroll", "POST", "/v1/persons/hostile-person/faces", headers=headers,
              files={"images": image})
        _send(client, tally, f"{kind} → cluster upload", "POST", "/v1/jobs/cluster/upload", headers=headers,
              files={"images": image})
    for kind, data in hostile.bad_archives():
        _send(client, tally, f"{kind} → enroll archive", "POST", "/v1/jobs/enroll/archive", headers=headers,
              files={"archive": ("a.zip", data, "application/zip")})
    for kind, text in hostile.BAD_STRINGS:
        safe = text  # json.dumps escapes lone surrogates, so they reach the server as sent
        _send(client, tally, f"{kind} → create person", "POST", "/v1/persons", headers=as_json,
              content=json.dumps({"external_id": safe, "display_name": safe}).encode())
        _send(client, tally, f"{kind} → list persons", "GET", f"/v1/persons?q={raw(text)}", headers=headers)
        for method in ("GET", "DELETE"):
            _send(client, tally, f"{kind} → {method} person", method, f"/v1/persons/{raw(text)}",
                  headers=headers)
        _send(client, tally, f"{kind} → merge", "POST", "/v1/persons/hostile-person/merge", headers=as_json,
              content=json.dumps({"other": safe}).encode())
        _send(client, tally, f"{kind} → directory job", "POST", "/v1/jobs/enroll/directory", headers=as_json,
              content=json.dumps({"directory": safe}).encode())
        _send(client, tally, f"{kind} → job", "GET", f"/v1/jobs/{raw(text)}", headers=headers)
    for kind, number in hostile.BAD_NUMBERS:
        body = json.dumps({"vectors": [[0.1] * 128], "k": number}).replace('"NaN"', "NaN") \
            .replace('"Infinity"', "Infinity").replace('"-Infinity"', "-Infinity")
        _send(client, tally, f"{kind} → search/embedding k", "POST", "/v1/search/embedding", headers=as_json,
              content=body.encode())
        _send(client, tally, f"{kind} → list limit", "GET", "/v1/persons", headers=headers,
              params={"limit": str(number), "after": str(number)})
        _send(client, tally, f"{kind} → search k", "POST", "/v1/search", headers=headers,
              files={"image": ("q.jpg", (MISC_DIR / "small_labeled" / "_query" / "obama1.jpg").read_bytes())},
              data={"k": str(number)})
        _send(client, tally, f"{kind} → cluster threshold", "POST", "/v1/jobs/cluster", headers=as_json,
              content=body.replace('"vectors"', '"ignored"').replace('"k"', '"threshold"').encode())
        vector = json.dumps({"vectors": [[0.1] * 127 + [0.0]]}).replace("0.0]", f"{json.dumps(number)}]")
        _send(client, tally, f"{kind} inside a vector → search/embedding", "POST", "/v1/search/embedding",
              headers=as_json, content=vector.replace('"NaN"', "NaN").replace('"Infinity"', "Infinity")
              .replace('"-Infinity"', "-Infinity").encode())
    for kind, vectors in hostile.BAD_VECTORS:
        _send(client, tally, f"{kind} → search/embedding", "POST", "/v1/search/embedding", headers=as_json,
              content=json.dumps({"vectors": vectors}).encode())
    print(f"\nhostile corpus: {hostile.count()} kinds of bad input, {tally.sent} requests, "
          f"{len(tally.failures)} failures")
    assert hostile.count() >= 40
    assert not tally.failures, "\n".join(tally.failures)

    # And the service still answers a good request.
    probe = MISC_DIR / "small_labeled" / "_query" / "obama1.jpg"
    response = client.post("/v1/detect", headers=headers, files={"images": ("ok.jpg", probe.read_bytes())})
    assert response.status_code == 200 and len(response.json()["images"][0]["faces"]) == 1
