"""The page as a person uses it: real headless Chromium (Debian's ``chromium``, driven by
Playwright for Python) against the real daemon with the real model.

Each test opens a fresh browser context (so a fresh sessionStorage: the page asks for
the token once, as it would for a new visitor), types the token into the page's own
form, and then only clicks, drops and reads what is on the screen. Screenshots of the
overview and of a finished job are saved under the test's temp folder (the copies in
docs/ come from them).
"""

from __future__ import annotations

import os
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser_support import CHROMIUM, launch
from tests.http_support import base_url, http_daemon, wait_job
from tests.support import DaemonProcess, wait_for
from watchd.models import ModelStore

playwright_api = pytest.importorskip("playwright.sync_api")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not os.access(CHROMIUM, os.X_OK),
        reason=f"no Chromium at {CHROMIUM} (.ci/run installs Debian's chromium package)",
    ),
]
expect = playwright_api.expect

ADMIN = "page-admin-token-0123456789ab"
SUBMIT = "page-submit-token-0123456789a"
READ = "page-read-token-0123456789abc"
#: Deadlines for what the daemon does (the model on a busy machine) and for the page.
JOB_MS = 180_000
PAGE_MS = 30_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as driver:
        browser = launch(driver)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, model_store: ModelStore
) -> Iterator[tuple[DaemonProcess, str]]:
    root = tmp_path_factory.mktemp("page-browser")
    tokens = root / "tokens"
    tokens.write_text(f"ops admin {ADMIN}\nshop submit {SUBMIT}\nviewer read {READ}\n")
    daemon = http_daemon(root, model_store, {"tokens_file": str(tokens)}).start()
    yield daemon, base_url(daemon)
    daemon.stop()


@pytest.fixture
def admin(served: tuple[DaemonProcess, str]) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {ADMIN}"}
    with httpx.Client(base_url=served[1], headers=headers, timeout=60) as client:
        yield client
        client.post("/queue/resume")


def open_page(browser: Any, url: str, token: str = SUBMIT, **context: Any) -> tuple[Any, list[str]]:
    """A new visitor: a fresh context, the page, the token typed into its form. Returns the
    page and the list of dialogs (alert, confirm…) it opened, which should stay empty."""
    context.setdefault("viewport", {"width": 1280, "height": 1600})  # thumbnails load when seen
    page = browser.new_context(accept_downloads=True, **context).new_page()
    page.set_default_timeout(PAGE_MS)
    dialogs: list[str] = []

    def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.goto(url)
    expect(page.locator("#token-form")).to_be_visible()
    expect(page.locator("#token-reason")).to_have_text("This daemon needs a token.")
    page.get_by_label("Token (kept for this browser tab only)").fill(token)
    page.get_by_role("button", name="Use this token").click()
    return page, dialogs


def test_upload_two_photos_watch_progress_thumbnails_and_zip(
    browser: Any, served: tuple[DaemonProcess, str], photos: dict[str, Path], tmp_path: Path
) -> None:
    _daemon, url = served
    page, dialogs = open_page(browser, url + "/#/upload")
    expect(page.locator("#who")).to_have_text("Signed in as shop (submit)")
    page.locator("#upload-files").set_input_files([photos["astronaut.jpg"], photos["coffee.png"]])
    expect(page.get_by_text("2 file(s) chosen.")).to_be_visible()
    page.get_by_role("button", name="Upload").click()
    page.wait_for_url(lambda url: "#/job/" in url)
    bar = page.get_by_role("progressbar", name="progress of the job")
    expect(bar).to_have_attribute("aria-valuenow", "100", timeout=JOB_MS)
    expect(page.locator(".percent")).to_have_text("100 %")
    expect(page.locator(".cards")).to_contain_text("completed")
    images = page.locator(".thumb img")
    expect(images).to_have_count(4)  # before and after of both photos
    for i in range(4):
        expect(images.nth(i)).to_have_js_property("complete", True)
        assert (
            images.nth(i).evaluate("img => img.naturalWidth") == 320
            or images.nth(i).evaluate("img => img.naturalHeight") == 320
        )
    expect(page.get_by_role("img", name="After: astronaut.jpg")).to_be_visible()
    page.screenshot(path=tmp_path / "page-job.png", full_page=True)

    with page.expect_download() as download:
        page.get_by_role("button", name="Download all (zip)").click()
    saved = tmp_path / "results.zip"
    download.value.save_as(saved)
    with zipfile.ZipFile(saved) as archive:
        names = sorted(archive.namelist())
        assert names == ["astronaut.png", "coffee.png"]
        for name in names:
            assert archive.read(name).startswith(b"\x89PNG\r\n\x1a\n")

    page.get_by_role("link", name="Overview").click()
    expect(page.locator(".cards")).to_contain_text("running")
    expect(page.locator(".chart-figure figcaption")).to_contain_text("(2 in all)")
    page.screenshot(path=tmp_path / "page-overview.png", full_page=True)
    assert dialogs == []

    # a phone-sized screen: nothing wider than the screen, the job list still readable
    phone, _ = open_page(browser, url + "/#/jobs", viewport={"width": 390, "height": 844})
    expect(phone.locator(".jobs-table")).to_contain_text("completed")
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390
    phone.screenshot(path=tmp_path / "page-phone.png", full_page=True)


def test_cancel_a_queued_job(
    browser: Any, served: tuple[DaemonProcess, str], admin: httpx.Client, photos: dict[str, Path]
) -> None:
    assert admin.post("/queue/pause").status_code == 200  # so the job stays queued
    files = [("images", ("rocket.jpg", photos["rocket.jpg"].read_bytes(), "image/jpeg"))]
    job_id = admin.post("/queue/submit", files=files).json()["job_id"]
    page, dialogs = open_page(browser, f"{served[1]}/#/job/{job_id}")
    expect(page.locator(".cards")).to_contain_text("queued")
    page.get_by_role("button", name="Cancel job").click()
    expect(page.locator("#message")).to_have_text("Cancelled: files not yet started will not run.")
    expect(page.locator(".cards")).to_contain_text("cancelled", timeout=JOB_MS)
    expect(page.get_by_role("button", name="Cancel job")).to_have_count(0)
    assert admin.get(f"/queue/job/{job_id}").json()["status"] == "cancelled"
    assert dialogs == []


def test_a_read_token_sees_no_cancel_button_and_may_not_upload(
    browser: Any, served: tuple[DaemonProcess, str], admin: httpx.Client, photos: dict[str, Path]
) -> None:
    _daemon, url = served
    assert admin.post("/queue/pause").status_code == 200
    files = [("images", ("cat.png", photos["cat.png"].read_bytes(), "image/png"))]
    job_id = admin.post("/queue/submit", files=files).json()["job_id"]
    page, _ = open_page(browser, f"{url}/#/job/{job_id}", token=READ)
    expect(page.locator("#who")).to_have_text("Signed in as viewer (read)")
    expect(page.locator(".cards")).to_contain_text("queued")
    expect(page.get_by_role("button", name="Cancel job")).to_have_count(0)
    page.get_by_role("link", name="Upload").click()
    page.locator("#upload-files").set_input_files([photos["cat.png"]])
    page.get_by_role("button", name="Upload").click()
    expect(page.locator("#message")).to_contain_text("Your token may not do this: ")
    expect(page.locator("#message")).to_contain_text("has scope 'read'")
    admin.post(f"/queue/job/{job_id}/cancel")


def test_a_bad_file_shows_its_reason_and_a_hostile_name_stays_text(
    browser: Any,
    served: tuple[DaemonProcess, str],
    admin: httpx.Client,
    photos: dict[str, Path],
) -> None:
    daemon, url = served
    hostile = "<img src=x onerror=alert(1)>.jpg"
    files = [
        ("images", (hostile, photos["astronaut.jpg"].read_bytes(), "image/jpeg")),
        ("images", ("notes.jpg", b"these are notes, not a photo", "image/jpeg")),
    ]
    job_id = admin.post(
        "/queue/submit", files=files, params={"name": "<b onmouseover=alert(2)>bold job"}
    ).json()["job_id"]
    finished = wait_job(admin, job_id, timeout=JOB_MS / 1000)
    reason = next(f["error"] for f in finished["files"] if f["name"] == "notes.jpg")
    assert reason
    note = wait_for(
        lambda: next(iter((daemon.root / "failed").rglob("notes.jpg.error.txt")), None),
        what="notes.jpg's error note",
    )
    assert reason in note.read_text(encoding="utf-8")

    page, dialogs = open_page(browser, f"{url}/#/job/{job_id}")
    expect(page.get_by_role("heading", name="<b onmouseover=alert(2)>bold job")).to_be_visible()
    expect(page.get_by_role("heading", name=hostile)).to_be_visible()
    bad = page.locator("li.file", has=page.get_by_role("heading", name="notes.jpg"))
    expect(bad.locator(".error")).to_have_text(reason)
    expect(page.locator(".thumb img")).to_have_count(2)  # notes.jpg: no picture either side
    expect(bad.locator(".thumb").first).to_contain_text("cannot make a thumbnail")
    expect(bad.locator(".thumb").last).to_have_text("no cutout")
    page.get_by_role("link", name="Jobs").click()
    expect(page.get_by_role("link", name="<b onmouseover=alert(2)>bold job")).to_be_visible()
    assert page.locator("b").count() == 0  # the name was not made into markup
    assert page.locator("img[src='x']").count() == 0
    assert dialogs == []


def test_a_folder_dropped_into_the_inbox_appears_and_finishes_without_reload(
    browser: Any, served: tuple[DaemonProcess, str], photos: dict[str, Path], tmp_path: Path
) -> None:
    daemon, url = served
    page, dialogs = open_page(browser, url + "/#/jobs")
    expect(page.get_by_role("heading", name="Jobs")).to_be_visible()
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    folder = tmp_path / "holiday"
    folder.mkdir()
    shutil.copy(photos["chelsea.webp"], folder / "chelsea.webp")
    shutil.copy(photos["coffee.png"], folder / "coffee.png")
    shutil.move(folder, daemon.root / "inbox" / "holiday")  # one rename: a complete drop
    row = page.locator("tr", has=page.get_by_role("link", name="holiday"))
    expect(row).to_be_visible(timeout=JOB_MS)
    expect(row).to_contain_text("completed", timeout=JOB_MS)
    expect(row.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "100")
    assert navigations == []  # updated in place, never reloaded
    assert dialogs == []


def test_upload_a_folder_with_the_folder_picker(
    browser: Any, served: tuple[DaemonProcess, str], photos: dict[str, Path], tmp_path: Path
) -> None:
    _daemon, url = served
    folder = tmp_path / "shoot"
    folder.mkdir()
    shutil.copy(photos["cat.png"], folder / "cat.png")
    page, _ = open_page(browser, url + "/#/upload")
    page.locator("#upload-folder").set_input_files(folder)
    expect(page.get_by_text("1 file(s) chosen.")).to_be_visible()
    page.get_by_label("Format").select_option("webp")
    page.get_by_role("button", name="Upload").click()
    page.wait_for_url(lambda url: "#/job/" in url)
    expect(page.get_by_role("heading", name="shoot", exact=True)).to_be_visible()
    expect(page.locator(".cards")).to_contain_text("completed", timeout=JOB_MS)


def test_a_wrong_token_says_so(browser: Any, served: tuple[DaemonProcess, str]) -> None:
    page, _ = open_page(browser, served[1] + "/", token="not-the-right-token-at-all")
    expect(page.locator("#token-form")).to_be_visible()
    expect(page.locator("#token-reason")).to_contain_text("The token was not accepted")
    expect(page.locator("#message")).to_contain_text("The token was not accepted: unknown token")
    page.get_by_label("Token (kept for this browser tab only)").fill(SUBMIT)
    page.get_by_role("button", name="Use this token").click()
    expect(page.locator("#token-form")).to_be_hidden()
    expect(page.locator(".cards")).to_contain_text("Workers busy")


def test_an_upload_over_the_limit_and_a_stopped_daemon_say_so(
    browser: Any, tmp_path: Path, model_store: ModelStore, photos: dict[str, Path]
) -> None:
    daemon = http_daemon(tmp_path, model_store, {"max_upload_bytes": 20_000}).start()
    try:
        url = base_url(daemon)
        page = browser.new_context().new_page()
        page.set_default_timeout(PAGE_MS)
        page.goto(url + "/#/upload")
        expect(page.locator("#who")).to_have_text("No token needed (admin)")
        page.locator("#upload-files").set_input_files([photos["astronaut.jpg"]])
        page.get_by_role("button", name="Upload").click()
        expect(page.locator("#message")).to_contain_text("Too large: ")
        expect(page.locator("#message")).to_contain_text("larger than 20000 bytes")

        page.get_by_role("link", name="Overview").click()
        expect(page.locator(".cards")).to_contain_text("running")
    finally:
        daemon.stop()
    expect(page.locator("#message")).to_contain_text(
        "The watchd daemon cannot be reached. Is it running?"
    )


#: Makes the page believe it is hidden or visible again, and tells it so.
SET_VISIBILITY = """state => {
    Object.defineProperty(document, "visibilityState", {value: state, configurable: true});
    document.dispatchEvent(new Event("visibilitychange"));
}"""


def test_a_hidden_page_sends_no_requests(browser: Any, served: tuple[DaemonProcess, str]) -> None:
    page, _ = open_page(browser, served[1] + "/#/")
    expect(page.locator(".cards")).to_contain_text("Workers busy")
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    for _ in range(2):  # it polls while visible
        with page.expect_request(lambda request: request.url.endswith("/queue/stats")):
            pass
    # the tab goes to the background, as when the person switches tabs or locks the phone
    page.evaluate(SET_VISIBILITY, "hidden")
    requests.clear()
    # an absence can only be watched for a while: three poll periods (2 s each)
    page.wait_for_timeout(6_000)
    assert requests == []
    with page.expect_request(lambda request: request.url.endswith("/queue/stats")):
        page.evaluate(SET_VISIBILITY, "visible")
