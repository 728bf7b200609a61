"""The web console in a real browser: Debian's Chromium, headless, driven by Playwright,
against a real `identity` server (uvicorn in a thread, the real model, a database of its
own). One server and one browser for the module; each test gets a fresh browser context
(its own cookies) and signs in through the page.

Every request the pages make must go to the server itself (the console works offline:
no CDN), and no page may log a script error or a CSP violation. A failing test leaves a
screenshot (and the page's HTML) in test-artifacts/console/ (every test does with
CONSOLE_SCREENSHOTS=1).

Chromium: `apt-get install -y chromium` (scripts/test.sh does it). `playwright install`
is never needed: the tests start the system's browser.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import LFW_DIR, MISC_DIR, ROOT, _free_port

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

PHOTOS = MISC_DIR / "small_labeled"
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS_DIR", ROOT / "test-artifacts")) / "console"
# Headless with nothing of Chromium's own talking to the network (updates, sync, metrics).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage"]
TIMEOUT_MS = 30_000  # one photo through the model on a loaded 2-core machine stays well under
expect.set_options(timeout=TIMEOUT_MS)


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("Chromium is not installed (apt-get install -y chromium; scripts/test.sh does it)")


# --- one server, one browser -----------------------------------------------------------------


@pytest.fixture(scope="module")
def console_settings(pg_server, model_settings, tmp_path_factory):
    url = pg_server.new_database("console")
    root = tmp_path_factory.mktemp("console-allowed")
    yield model_settings.replace(
        database_url=url,
        data_dir=tmp_path_factory.mktemp("console-data"),
        allowed_roots=[root],
        job_batch_size=2,
    )
    pg_server.drop_database(url)


@pytest.fixture(scope="module")
def server(console_settings):
    """`identity serve`'s app under uvicorn on a free port, once /readyz says ready."""
    import httpx
    import uvicorn

    from identity.api import create_app

    app = create_app(console_settings)
    port = _free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, name="console-server", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    while True:
        try:
            if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not become ready"
        time.sleep(0.3)
    yield base, app.state.service
    uv.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def base_url(server) -> str:
    return server[0]


@pytest.fixture(scope="module")
def service(server):
    return server[1]


@pytest.fixture(scope="module")
def keys(service) -> dict[str, str]:
    return {scope: service.create_key(f"console-{scope}", [scope])[1] for scope in ("read", "enroll", "admin")}


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=_chromium(), args=CHROMIUM_ARGS, headless=True)
        yield launched
        launched.close()


@pytest.fixture
def page(browser, base_url, request):
    """A fresh context (no cookies) whose requests may only reach the server; a script
    error, a CSP violation or a request elsewhere fails the test. On failure: screenshot."""
    context = browser.new_context(base_url=base_url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    outside: list[str] = []

    def gate(route):
        if route.request.url.startswith(base_url) or route.request.url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", gate)
    tab = context.new_page()
    problems: list[str] = []
    tab.on("pageerror", lambda exc: problems.append(f"script error: {exc}"))
    tab.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}")
           if msg.type == "error" and not _expected_console_error(msg.text) else None)
    failed_before = request.session.testsfailed
    yield tab
    if request.session.testsfailed > failed_before or os.environ.get("CONSOLE_SCREENSHOTS"):
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        stem = ARTIFACTS / re.sub(r"[^\w.-]", "_", request.node.name)
        try:
            tab.screenshot(path=f"{stem}.png", full_page=True)
            Path(f"{stem}.html").write_text(tab.content())
            request.node.add_report_section("teardown", "screenshot", f"{stem}.png")
        except playwright_api.Error:
            pass
    context.close()
    assert not outside, f"the console asked for something off the server: {outside}"
    assert not problems, "\n".join(problems)


def _expected_console_error(text: str) -> bool:
    # Chromium and htmx log every 4xx answer; the tests that cause one check the message
    # the page shows instead.
    return text.startswith(("Failed to load resource: the server responded with a status of 4",
                            "Response Status Error Code 4"))


def sign_in(page, key: str, then: str = "/people") -> None:
    """Sign in and return once `then` has loaded, its (deferred) scripts with it."""
    page.goto(f"/sign-in?next={then}")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    # By path: the sign-in page's own URL (/sign-in?next=/enroll) ends with `then` too, and
    # wait_for_url returns at once for a URL that already matches.
    page.wait_for_url(lambda url: urlsplit(url).path == then)


def enroll(service, person: str, *photos: Path) -> None:
    """Set-up through the service (the enrollment page has its own test)."""
    from identity.enroll import EnrollItem

    outcomes = service.enroll_now([EnrollItem(str(p), person) for p in photos])
    assert all(o.status == "enrolled" for o in outcomes), outcomes


def chips(page):
    return page.locator("#faces .chip")


# --- the tests ---------------------------------------------------------------------------------


def test_sign_in_shows_the_key_and_a_wrong_key_is_refused(page, keys):
    page.goto("/people")
    page.wait_for_url(re.compile(r"/sign-in\?next=/people$"))  # not signed in: sent to sign in
    page.get_by_label("API key").fill("idk_nope_nope")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#flash")).to_contain_text("not valid")
    sign_in(page, keys["admin"])
    expect(page.locator("header .who")).to_contain_text("console-admin")
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r"/sign-in"))
    page.goto("/people")
    page.wait_for_url(re.compile(r"/sign-in"))


def test_enroll_by_upload_then_see_the_person(page, keys):
    sign_in(page, keys["enroll"], "/enroll")
    form = page.locator("#photos-form")
    form.get_by_label("Person").fill("obama")
    form.get_by_label("Display name").fill("Barack Obama")
    form.locator("input[type=file]").set_input_files([PHOTOS / "obama" / "obama.jpg", PHOTOS / "obama" / "obama2.jpg"])
    form.get_by_role("button", name="Enroll").click()
    expect(page.locator("#photos-result .summary")).to_contain_text("2 of 2 photos enrolled")
    page.locator("#photos-result a.person-link").click()
    expect(page.locator("#person-name")).to_have_text("Barack Obama")
    expect(chips(page)).to_have_count(2)
    first = chips(page).first.locator("img")
    expect(first).to_have_js_property("complete", True)
    assert first.evaluate("img => img.naturalWidth") > 0  # a real chip, served with the cookie
    page.get_by_role("link", name="People").first.click()
    page.get_by_label("Search people").fill("Barack")
    expect(page.locator("#grid .card")).to_have_count(1)
    expect(page.locator("#grid .card")).to_contain_text("2 faces")


def test_enroll_an_archive_as_a_job_with_live_progress_and_per_file_outcomes(page, keys, tmp_path):
    import zipfile

    archive = tmp_path / "people.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name in ("Amelia_Vega_0002.jpg", "Amelia_Vega_0004.jpg"):
            z.write(LFW_DIR / "Amelia_Vega" / name, f"Amelia_Vega/{name}")
        z.writestr("Amelia_Vega/notes.jpg", b"not a photo")
    sign_in(page, keys["enroll"], "/enroll")
    form = page.locator("#archive-form")
    form.locator("input[type=file]").set_input_files(archive)
    expect(form.locator("[data-files]")).to_have_text("people.zip")
    form.get_by_role("button", name="Start the job").click()
    page.wait_for_url(re.compile(r"/jobs/[0-9a-f-]{36}$"))
    expect(page.locator(".job-status")).to_have_text("succeeded")  # followed live, no reload
    expect(page.locator(".counts")).to_contain_text("2 enrolled")
    rows = page.locator("table.outcomes tbody tr")
    expect(rows).to_have_count(3)
    expect(rows.first).to_contain_text("Amelia_Vega/notes.jpg")  # problems first, with the reason
    expect(rows.first).not_to_have_attribute("data-status", "enrolled")
    rows.last.get_by_role("link", name="Amelia_Vega").click()
    expect(chips(page)).to_have_count(2)


def test_a_file_chosen_before_the_script_ran_is_named_once_it_runs(page, keys, tmp_path):
    """On a slow connection the form shows before console.js (deferred) has run: a file
    chosen then fires its change event unheard, and must still be named."""
    archive = tmp_path / "early.zip"
    archive.write_bytes(b"PK\x05\x06" + bytes(18))  # an empty zip: only its name matters here
    sign_in(page, keys["enroll"])
    held = []
    page.route("**/static/console.js", lambda route: held.append(route))  # held back until continued
    page.goto("/enroll", wait_until="commit")
    shown = page.locator("#archive-form [data-files]")
    page.locator("#archive-form input[type=file]").set_input_files(archive)
    assert len(held) == 1  # asked for (in <head>, before the form), not yet run
    expect(shown).to_have_text("")
    held[0].continue_()
    expect(shown).to_have_text("early.zip")


def test_search_by_photo_names_known_faces_and_gives_the_nearest_for_unknown(page, keys, service):
    enroll(service, "kit_harington", PHOTOS / "kit_harington" / "john1.jpeg", PHOTOS / "kit_harington" / "john2.jpeg")
    sign_in(page, keys["read"], "/search")
    page.locator("#search-file").set_input_files(PHOTOS / "_query" / "johnsnow_test1.jpg")
    found = page.locator(".faces-found li")
    expect(found).to_have_count(1)
    expect(found.first).to_have_class(re.compile("known"))
    expect(found.first.locator(".who")).to_have_text("kit_harington")
    expect(page.locator(".photo svg rect")).to_have_count(1)
    # someone never enrolled: unknown, with the nearest person and the similarity
    page.locator("#search-file").set_input_files(PHOTOS / "paul_rudd" / "fpt_1.jpg")
    expect(page.locator(".faces-found li.unknown")).to_have_count(1)
    expect(page.locator(".faces-found li.unknown")).to_contain_text(re.compile(r"nearest: .+, similarity -?0\.\d\d"))


def test_merge_two_persons_then_undo_from_the_history(page, keys, service):
    enroll(service, "rose-a", PHOTOS / "rose_leslie" / "img1.jpg")
    enroll(service, "rose-b", PHOTOS / "rose_leslie" / "img2.jpg")
    keep = service.person("rose-a").id
    sign_in(page, keys["admin"], f"/people/{keep}")
    page.get_by_text("Merge", exact=True).click()
    page.get_by_placeholder("Person to merge into this one").fill("rose-b")
    page.get_by_role("button", name="Merge in").click()
    expect(page.locator("#face-count")).to_have_text("2")
    expect(chips(page)).to_have_count(2)
    entry = page.locator("#history .entry[data-action=merge]")
    expect(entry).to_contain_text("merged rose-b in (1 face)")
    page.once("dialog", lambda dialog: dialog.accept())
    entry.get_by_role("button", name="Undo").click()
    expect(page.locator("#person-name")).to_have_text("rose-b")  # the merged-away person, back
    expect(chips(page)).to_have_count(1)
    page.goto(f"/people/{keep}")
    expect(page.locator("#face-count")).to_have_text("1")
    expect(page.locator("#history .entry[data-action=merge] .undone")).to_have_count(1)


def test_split_a_person(page, keys, service):
    enroll(service, "mixed", PHOTOS / "alex_lacamoire" / "img1.jpg")
    enroll(service, "mixed", PHOTOS / "angelina_jolie" / "fpt_1.jpg")
    mixed = service.person("mixed")
    angelina = service.faces(person=mixed.id).items[-1].id  # enrolled second
    sign_in(page, keys["enroll"], f"/people/{mixed.id}")
    expect(chips(page)).to_have_count(2)
    page.locator(f"#faces input[value='{angelina}']").check()
    expect(page.locator(".selection .count")).to_have_text("(1 selected)")
    page.get_by_placeholder("New person's external id").fill("angelina_jolie")
    page.get_by_role("button", name="Split off").click()
    expect(page.locator("#person-name")).to_have_text("angelina_jolie")
    expect(chips(page)).to_have_count(1)
    expect(page.locator("#history")).to_contain_text("split off from mixed with 1 face")
    page.goto(f"/people/{mixed.id}")
    expect(chips(page)).to_have_count(1)
    expect(page.locator("#history")).to_contain_text("1 face split off into angelina_jolie")


def _unassigned_only(service, person: str, *photos: Path) -> list[int]:
    """These photos' faces, stored without a person, and no other unassigned face (what
    earlier tests left), so the clusters are known in advance."""
    leftovers = [f.id for f in service.faces(unassigned=True, limit=1000).items]
    if leftovers:
        service.remove_faces(leftovers)
    enroll(service, person, *photos)
    faces = [f.id for f in service.faces(person=service.person(person).id).items]
    service.unassign_faces(faces)
    return faces


def _cluster_unassigned(page) -> None:
    page.locator("#cluster-unassigned").get_by_role("button", name="Cluster").click()
    page.wait_for_url(re.compile(r"/clusters/[0-9a-f-]{36}$"))


def test_run_a_cluster_job_on_a_collection_and_name_a_cluster(page, keys, service):
    # Two photos of one man, one each of two others: one cluster, two faces left over.
    collection = [PHOTOS / "biden" / "biden.jpg", PHOTOS / "biden" / "biden2.jpg",
                  PHOTOS / "lin_manuel_miranda" / "lin-manuel-miranda.png", PHOTOS / "kate_siegel" / "fpt_1.jpg"]
    sign_in(page, keys["enroll"], "/clusters")
    form = page.locator("#cluster-upload")
    form.locator("input[type=file]").set_input_files(collection)
    form.get_by_role("button", name="Cluster").click()
    page.wait_for_url(re.compile(r"/clusters/[0-9a-f-]{36}$"))
    expect(page.locator(".status")).to_contain_text("1 cluster of 2 faces, 2 unclustered")
    cluster = page.locator("form.cluster").first
    expect(cluster.locator(".chip")).to_have_count(2)
    expect(page.locator("#unclustered-faces .chip")).to_have_count(2)
    cluster.get_by_placeholder(re.compile("^Name")).fill("joe_biden")
    cluster.get_by_role("button", name="Name").click()
    named = page.locator(".cluster.named")
    expect(named).to_contain_text("2 faces given to the new person joe_biden")
    named.get_by_role("link", name="joe_biden").click()
    expect(chips(page)).to_have_count(2)
    assert service.person("joe_biden").face_count == 2
    assert {f.source for f in service.faces(person="joe_biden").items} == {"biden.jpg", "biden2.jpg"}


def test_drop_a_wrong_face_then_name_a_cluster_after_an_existing_person(page, keys, service):
    enroll(service, "barack", PHOTOS / "obama" / "obama3.jpg")
    _unassigned_only(service, "unsorted-2", PHOTOS / "obama" / "obama_partial_face.jpg",
                     PHOTOS / "obama" / "obama_partial_face2.jpg")
    sign_in(page, keys["admin"], "/clusters")
    _cluster_unassigned(page)
    cluster = page.locator("form.cluster").first
    expect(cluster.locator(".chip")).to_have_count(2)
    wrong = cluster.locator(".chip").last
    dropped = wrong.get_attribute("data-face")
    wrong.get_by_role("button").click()
    expect(cluster.locator(".chip")).to_have_count(1)
    expect(page.locator(f"#unclustered-faces .chip[data-face='{dropped}']")).to_have_count(1)
    cluster.get_by_placeholder(re.compile("^Name")).fill("barack")  # an existing person: joins it
    cluster.get_by_role("button", name="Name").click()
    expect(page.locator(".cluster.named")).to_contain_text("1 face added to barack (1 dropped)")
    assert service.person("barack").face_count == 2
    assert service.face(int(dropped)).person_id is None


def test_a_read_key_is_offered_no_edits(page, keys, service):
    enroll(service, "shea_whigham", PHOTOS / "shea_whigham" / "fpt_1.jpg")
    person = service.person("shea_whigham")
    sign_in(page, keys["read"], f"/people/{person.id}")
    expect(page.locator("#person-name")).to_have_text("shea_whigham")
    expect(chips(page)).to_have_count(1)
    for action in ("Rename", "Merge", "Delete person", "Split off", "Move", "Unassign", "Delete faces", "Undo"):
        expect(page.get_by_text(action, exact=True)).to_have_count(0)
    expect(page.locator("#faces input[type=checkbox]")).to_have_count(0)
    expect(page.locator("header nav")).not_to_contain_text("Enroll")
    page.goto("/clusters")
    expect(page.locator("#cluster-unassigned")).to_have_count(0)
    page.goto("/enroll")
    expect(page.locator("main")).to_contain_text("lacks the 'enroll' scope")


def test_api_docs_render_offline(page, base_url):
    page.goto("/docs")
    expect(page.locator(".swagger-ui .information-container")).to_contain_text("identity")
    expect(page.locator(".opblock-summary-path", has_text="/v1/search").first).to_be_visible()
