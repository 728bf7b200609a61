"""The serving path's in-memory caches (identity/store/readcache.py): API keys and the
names of persons in search results, invalidated by the database's announcements, bounded
by a time to live, and never serving from memory while they cannot hear of a change.

Changes are made through a second connection pool (the `store` fixture), as `identity
keys revoke` or another API process would make them: the service under test only hears
of them through PostgreSQL."""

from __future__ import annotations

import hashlib
import itertools
import time

import numpy as np
import psycopg
import pytest
from fastapi.testclient import TestClient

from identity.api import create_app
from identity.errors import AuthenticationError
from identity.faces.types import Face, ImageResult
from identity.service import Service
from identity.store import FacesToAdd
from identity.store.keys import create_key, revoke_key
from identity.store.readcache import KeyCache, ServingCaches, _TtlCache

_names = itertools.count()


def _image(vector: np.ndarray) -> ImageResult:
    name = f"cache-{next(_names)}-{time.monotonic_ns()}"
    face = Face((10.0, 20.0, 110.0, 140.0), np.full((5, 2), 50.0, np.float32), 0.99,
                embedding=vector.astype(np.float32), quality=0.8)
    return ImageResult(f"/photos/{name}.jpg", hashlib.sha256(name.encode()).hexdigest(), 250, 250, (face,))


def _unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(128).astype(np.float32)
    return v / np.linalg.norm(v)


def eventually(check, timeout: float = 1.0, what: str = "") -> float:
    """Seconds until `check()` held; fails after `timeout`."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, f"not within {timeout} s: {what}"
        time.sleep(0.005)
    return time.monotonic() - start


@pytest.fixture
def service(store_settings):
    svc = Service(store_settings.replace(index_poll_seconds=0.2, index_use_gpu=False, cache_seconds=60.0))
    yield svc
    svc.close()


def _listening(service: Service) -> ServingCaches:
    caches = service.serving_caches()
    assert caches.listener.connected.wait(10), "the cache listener did not connect"
    return caches


# --- API keys -------------------------------------------------------------------------------


def test_a_cached_key_answers_without_the_database_and_a_revocation_elsewhere_ends_it_within_a_second(
    service, store
):
    key_id, key = create_key(store, "cached", ["read"])
    caches = _listening(service)
    assert service.authenticate(key).key_id == key_id
    assert service.cached_key(key).key_id == key_id  # from memory: no I/O at all
    with pytest.raises(AuthenticationError):  # a wrong secret for a cached id is still refused
        service.cached_key(key[:-4] + "AAAA")
    revoke_key(store, key_id)  # another connection, as `identity keys revoke` would
    eventually(lambda: service.cached_key(key) is None, what="the cached key dropped")
    with pytest.raises(AuthenticationError):
        service.authenticate(key)
    assert len(caches.keys.cache) == 0


def test_a_lost_announcement_is_bounded_by_the_time_to_live(store_settings, store):
    svc = Service(store_settings.replace(cache_seconds=0.5))
    try:
        _listening(svc)
        key_id, key = create_key(store, "ttl", ["read"])
        svc.authenticate(key)
        with store.connection() as conn:  # the announcement never comes
            conn.execute("ALTER TABLE api_keys DISABLE TRIGGER api_keys_notify")
        try:
            revoke_key(store, key_id)
            assert svc.cached_key(key) is not None  # stale, as the cache cannot know
            eventually(lambda: _refused(svc, key), timeout=1.5, what="the key expired from the cache")
        finally:
            with store.connection() as conn:
                conn.execute("ALTER TABLE api_keys ENABLE TRIGGER api_keys_notify")
    finally:
        svc.close()


def _refused(svc: Service, key: str) -> bool:
    try:
        svc.authenticate(key)
        return False
    except AuthenticationError:
        return True


def test_without_its_listen_connection_the_cache_serves_nothing_from_memory(service, store):
    key_id, key = create_key(store, "gap", ["read"])
    caches = _listening(service)
    service.authenticate(key)
    assert service.cached_key(key) is not None
    pid = caches.listener  # terminate the listener's backend: its connection breaks
    with store.connection() as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE query LIKE 'LISTEN%%identity_persons%%' AND pid <> pg_backend_pid()")
    eventually(lambda: not pid.connected.is_set(), timeout=5, what="the listener noticed")
    assert service.cached_key(key) is None  # emptied, and not filled while deaf
    revoke_key(store, key_id)  # announced while nobody listens
    with pytest.raises(AuthenticationError):
        service.authenticate(key)  # read from the database
    assert caches.listener.connected.wait(10), "the listener did not reconnect"


def test_a_read_that_races_an_invalidation_is_not_stored():
    cache = _TtlCache(ttl=60, max_entries=10)
    generation = cache.generation  # a reader starts
    cache.invalidate("k")  # the change is announced while it reads
    cache.put_many([("k", "old")], generation)
    assert cache.get("k") is None
    cache.put_many([("k", "new")], cache.generation)
    assert cache.get("k") == "new"


def test_the_cache_is_bounded():
    cache = _TtlCache(ttl=60, max_entries=10)
    cache.put_many([(i, i) for i in range(25)], cache.generation)
    assert len(cache) <= 10 and cache.get(24) == 24


def test_unknown_key_ids_are_not_cached(service, store):
    _listening(service)
    cache: KeyCache = service.serving_caches().keys
    for _ in range(3):
        with pytest.raises(AuthenticationError):
            service.authenticate("idk_0123456789abcdef_" + "A" * 43)
    assert len(cache.cache) == 0


def test_the_api_refuses_a_revoked_key_within_a_second_and_answers_401_not_500(store_settings, store):
    settings = store_settings.replace(cache_seconds=60.0)
    key_id, key = create_key(store, "api", ["read"])
    with TestClient(create_app(settings, warm=False), raise_server_exceptions=False) as client:
        headers = {"X-API-Key": key}
        assert client.get("/v1/persons", headers=headers).status_code == 200
        _listening(client.app.state.service)
        assert client.get("/v1/persons", headers=headers).status_code == 200
        assert client.app.state.service.cached_key(key) is not None
        revoke_key(store, key_id)
        eventually(lambda: client.get("/v1/persons", headers=headers).status_code == 401,
                   what="the revoked key refused")


# --- person names -----------------------------------------------------------------------------


def _enroll(store, model, external_id: str, vector: np.ndarray, display_name: str | None = None) -> None:
    [outcome] = store.add_faces([FacesToAdd(_image(vector), external_id=external_id, display_name=display_name)],
                                model=model)
    assert outcome.status == "added", outcome


def _top(service: Service, vector: np.ndarray):
    [found] = service.search_embeddings(vector[None, :], k=3, level="loose")
    return found.matches[0] if found.matches else None


def test_a_rename_elsewhere_shows_in_search_results_within_a_second(service, store):
    a = _unit(1)
    _enroll(store, service.model_info, "cache-alice", a, "Alice")
    _listening(service)
    eventually(lambda: _top(service, a) is not None, timeout=5, what="indexed")
    assert _top(service, a).display_name == "Alice"
    assert _top(service, a).display_name == "Alice"  # the second one from memory
    assert service.serving_caches().names.cache.hits >= 1
    store.rename_person("cache-alice", "Alice B.")
    eventually(lambda: _top(service, a).display_name == "Alice B.", what="the rename shown")
    store.set_external_id(store.get_person("cache-alice").id, "cache-alice-2")
    eventually(lambda: _top(service, a).external_id == "cache-alice-2", what="the new external id shown")


def test_a_merge_elsewhere_shows_the_survivor_within_a_second(service, store):
    a, b = _unit(2), _unit(3)
    _enroll(store, service.model_info, "cache-keep", a, "Keep")
    _enroll(store, service.model_info, "cache-gone", b, "Gone")
    _listening(service)
    eventually(lambda: _top(service, b) is not None, timeout=5, what="indexed")
    assert _top(service, b).external_id == "cache-gone"
    store.merge_persons("cache-keep", "cache-gone")
    # (For the few milliseconds between the person's deletion and the index applying
    # the moved faces, the face names nobody, as it did without a cache.)
    eventually(lambda: _names_of(_top(service, b)) == ("cache-keep", "Keep"),
               what="the merged face named by the survivor")


def _names_of(hit) -> tuple | None:
    return None if hit is None else (hit.external_id, hit.display_name)


def test_this_process_reads_its_own_rename_at_once(service, store):
    a = _unit(4)
    _enroll(store, service.model_info, "cache-self", a, "Before")
    _listening(service)
    eventually(lambda: _top(service, a) is not None, timeout=5, what="indexed")
    assert _top(service, a).display_name == "Before"
    service.rename_person("cache-self", "After")
    assert _top(service, a).display_name == "After"  # no wait for the announcement


def test_with_cache_seconds_0_nothing_is_cached(store_settings, store):
    svc = Service(store_settings.replace(cache_seconds=0))
    try:
        key_id, key = create_key(store, "nocache", ["read"])
        svc.authenticate(key)
        assert svc.serving_caches() is None and svc.cached_key(key) is None
        revoke_key(store, key_id)
        with pytest.raises(AuthenticationError):
            svc.authenticate(key)
    finally:
        svc.close()


def test_the_triggers_announce_keys_and_persons_on_commit(store_settings, store):
    key_id, _ = create_key(store, "notify", ["read"])
    store.create_person("notify-p", "P")
    pid = store.get_person("notify-p").id
    with psycopg.connect(store.url, autocommit=True) as listener:
        listener.execute("LISTEN identity_keys")
        listener.execute("LISTEN identity_persons")
        revoke_key(store, key_id)
        store.rename_person("notify-p", "Q")
        store.delete_person("notify-p")
        got = [(n.channel, n.payload) for n in listener.notifies(timeout=2, stop_after=3)]
    assert got == [("identity_keys", key_id), ("identity_persons", str(pid)), ("identity_persons", str(pid))]


# --- the hot path of POST /v1/search/embedding --------------------------------------------


def test_search_by_embedding_runs_on_the_event_loop_for_an_approximate_index_and_in_a_thread_otherwise(
    store_settings, store, monkeypatch
):
    from identity.api.routes import vision

    settings = store_settings.replace(index_type="hnsw", index_use_gpu=False)
    model = Service(settings).model_info
    a = _unit(11)
    _enroll(store, model, "loop-a", a, "Loop")
    headers = {"X-API-Key": create_key(store, "loop", ["read"])[1]}
    body = {"vectors": [a.tolist()], "k": 3, "level": "loose"}
    with TestClient(create_app(settings, warm=False), raise_server_exceptions=False) as client:
        first = client.post("/v1/search/embedding", json=body, headers=headers)  # opens the index
        assert first.status_code == 200, first.text
        assert client.app.state.service.index.index.spec.kind == "hnsw"
        threaded = []
        original = vision.run_in_threadpool

        async def counting(fn, *args, **kwargs):
            threaded.append(fn)
            return await original(fn, *args, **kwargs)

        monkeypatch.setattr(vision, "run_in_threadpool", counting)
        inline = client.post("/v1/search/embedding", json=body, headers=headers)
        assert inline.status_code == 200 and threaded == []
        assert inline.json() == first.json()
        assert inline.json()["results"][0]["matches"][0]["display_name"] == "Loop"
        # A person filter reads the database: a thread. So do many queries at once.
        filtered = client.post("/v1/search/embedding", json={**body, "persons": ["loop-a"]}, headers=headers)
        assert filtered.status_code == 200 and len(threaded) == 1
        many = client.post("/v1/search/embedding", json={**body, "vectors": [a.tolist()] * 9}, headers=headers)
        assert many.status_code == 200 and len(threaded) == 2
        bad = client.post("/v1/search/embedding", json={**body, "vectors": [[0.0] * 128]}, headers=headers)
        assert bad.status_code == 422, bad.text  # an error on the loop is still the error shape, not a 500


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_passes_the_access_log_setting_to_uvicorn(monkeypatch, workers):
    import uvicorn

    from identity.api import app as app_module
    from identity.api import server
    from identity.config import Settings

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: seen.update(kwargs))
    monkeypatch.setattr(app_module, "create_app", lambda settings: object())
    monkeypatch.setattr(server, "_exit_on_sigterm", lambda: None)  # not in the test process
    server.serve(Settings(api_workers=workers))
    assert seen["access_log"] is False
    server.serve(Settings(api_workers=workers, access_log=True))
    assert seen["access_log"] is True


def test_the_process_supervising_several_workers_does_not_import_the_app():
    """With api_workers > 1 the `identity serve` process only runs uvicorn's supervisor:
    importing the app there would hold torch (~700 MB) beside every worker's own copy."""
    import subprocess
    import sys

    code = ("import sys, uvicorn\n"
            "uvicorn.run = lambda *a, **k: print(sorted(m for m in ('torch', 'faiss', 'identity.service') if m in sys.modules))\n"
            "from identity.api import serve\n"
            "from identity.api import server\n"
            "server._exit_on_sigterm = lambda: None\n"
            "from identity.config import Settings\n"
            "serve(Settings(api_workers=2))\n")
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
