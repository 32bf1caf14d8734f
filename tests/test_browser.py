"""The search page in headless Chromium, over the real app without Ray: in-process extractors
(phash, colour, EfficientNet-Lite0 tags, thumbnails) and indexes, served by uvicorn in a
thread; the page is driven as a person would (file chooser, keyboard, clicks).

Needs Debian's ``chromium`` (``make test`` installs it) and the ``playwright`` package (its
driver only; the browser is Debian's). ``IMGSEARCH_SCREENSHOT=docs/screenshot.png`` also
saves the README's screenshot (``scripts/screenshot.py`` runs just that)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import reencode

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium; make test does)"
)
sync_api = pytest.importorskip("playwright.sync_api")

PHOTOS = Path(__file__).parent / "photos"
BRIDGE = "Bridge_by_Sander_Klootwijk.jpg"
WINE = "Wine_by_Jakkub_Mede.jpg"
UMANG = "umang_by_Abhishek_Mudgal.jpg"
COPY = "umang-copy.jpg"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 375, "height": 812}
#: How long the page may take to show what a test waits for: uploads compute the features
#: (tags run a network) on 2 shared cores.
WAIT_MS = 30_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serving(data: Path, features: dict[str, Any], **settings: Any) -> Iterator[str]:
    """The app (``create_app`` over an in-process engine) on a free port; yields its URL."""
    import uvicorn

    from deployments.config import AppArgs
    from deployments.engine import Engine
    from deployments.ingress import create_app
    from deployments.ports import LocalExtractor
    from index_actors.client import IndexClient

    settings = {"name": "browser", "data_dir": str(data), "features": features, **settings}
    args = AppArgs.model_validate({"max_upload_mb": 2, **settings})
    extractors = {n: LocalExtractor.build(n, args.extractor_options(n)) for n in args.enabled}
    client = IndexClient.local(data, args.index_specs())
    app = create_app(Engine(args, extractors, client), int(args.max_upload_mb * 1024 * 1024))
    port = _free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    uv.should_exit = True
    thread.join(10)
    for shards in client.shards.values():
        for actor in shards:
            with contextlib.suppress(Exception):
                actor._obj.index.close()


#: The page's app: phash, colour, tags and thumbnails, no API keys.
FEATURES: dict[str, Any] = {
    "phash": {},
    "color": {"weight": 0.5},
    "tags": {"options": {"model": "efficientnet_lite0", "threads": 1}},
    "thumbnail": {},
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app holding the test photos (added through the API: the tests run in any order;
    adding through the page is a test of its own, on an empty app)."""
    with serving(tmp_path_factory.mktemp("browser-data"), FEATURES) as url:
        for photo in sorted(PHOTOS.glob("*.jpg")):
            r = httpx.post(f"{url}/images", files={"image": (photo.name, photo.read_bytes())})
            assert r.status_code == 200, r.text
        yield url


@pytest.fixture
def empty_tab(browser: Any, tmp_path: Path, shots: Path) -> Iterator[Tab]:
    """A page of an app of its own, with nothing stored yet."""
    with serving(tmp_path / "data", FEATURES) as url, new_tab(browser, url, shots) as opened:
        yield opened


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium, headless (Playwright's own browser builds are not downloaded)."""
    with sync_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the screenshots of this run go (printed at the end of each test that takes one)."""
    return tmp_path_factory.mktemp("screenshots")


@dataclass
class Tab:
    """A page and the console errors it logged; ``allow`` names the expected ones."""

    page: Any
    url: str
    shots: Path
    errors: list[str] = field(default_factory=list)
    allowed: list[re.Pattern[str]] = field(default_factory=list)

    def go(self, route: str) -> None:
        """Open a route of the page (``#/add``) or of the app (``/docs``)."""
        target = self.url + (route if route.startswith("/") else "/" + route)
        self.page.goto(target)

    def allow(self, pattern: str) -> None:
        """A console error this test causes on purpose (the browser logs every 4xx)."""
        self.allowed.append(re.compile(pattern))

    def unexpected(self) -> list[str]:
        return [e for e in self.errors if not any(p.search(e) for p in self.allowed)]

    def shot(self, name: str) -> Path:
        """A full-page screenshot under this run's screenshot folder."""
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@contextlib.contextmanager
def new_tab(browser: Any, url: str, shots: Path) -> Iterator[Tab]:
    """A fresh desktop-sized page of the app at ``url``; at the end, no console error but
    the allowed ones."""
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    opened = Tab(page, url, shots)
    page.on(
        "console", lambda m: opened.errors.append(m.text) if m.type in ("error", "assert") else None
    )
    page.on("pageerror", lambda exc: opened.errors.append(f"uncaught: {exc}"))
    yield opened
    context.close()
    assert opened.unexpected() == [], f"console errors: {opened.unexpected()}"


@pytest.fixture
def tab(browser: Any, server: str, shots: Path) -> Iterator[Tab]:
    """A fresh page of the app without keys."""
    with new_tab(browser, server, shots) as opened:
        yield opened


def expect(locator: Any, message: str | None = None) -> Any:
    return sync_api.expect(locator, message)


def card(page: Any, name: str) -> Any:
    """The result card of a file name (in the visible results panel)."""
    return page.locator("[role=tabpanel] .card").filter(has_text=name)


def add_files(tab: Tab, files: list[Any]) -> None:
    """Add files through the add view's file chooser; wait until every upload has ended."""
    tab.go("#/add")
    before = tab.page.locator(".upload").count()
    with tab.page.expect_file_chooser() as chooser:
        tab.page.get_by_label("Images to add").click()
    chooser.value.set_files(files)
    rows = tab.page.locator(".upload")
    expect(rows).to_have_count(before + len(files))
    for i in range(before, before + len(files)):
        expect(rows.nth(i)).to_have_attribute("data-state", re.compile("ok|error"))


# --- the tests, in the order a person meets the page (they run in any order) -------------


def test_empty_collection_says_how_to_add_images(empty_tab: Tab) -> None:
    tab = empty_tab
    tab.go("")
    expect(tab.page.get_by_role("heading", name="Search", level=1)).to_be_visible()
    expect(tab.page.locator(".note")).to_contain_text("No images yet")
    tab.page.get_by_role("link", name="Add images").first.click()
    expect(tab.page.get_by_role("heading", name="Add images")).to_be_visible()


def test_add_images_through_the_file_chooser(empty_tab: Tab) -> None:
    tab = empty_tab
    photos = sorted(PHOTOS.glob("*.jpg"))
    add_files(tab, [str(p) for p in photos])
    rows = tab.page.locator(".upload")
    expect(rows.filter(has_text="added as image")).to_have_count(len(photos))
    expect(tab.page.get_by_role("status")).to_have_text(f"{len(photos)} of {len(photos)} done.")
    tab.shot("add-desktop")
    assert httpx.get(f"{tab.url}/health").json()["images"] == len(photos)


def test_a_non_image_upload_shows_the_api_message_beside_that_file(tab: Tab) -> None:
    tab.allow(r"status of 415")  # the browser logs the refused upload
    text = b"not an image at all"
    expected = httpx.post(f"{tab.url}/images", files={"image": ("x.txt", text)})
    assert expected.status_code == 415
    files = [{"name": "notes.txt", "mimeType": "text/plain", "buffer": text}]
    add_files(tab, files)
    row = tab.page.locator(".upload").filter(has_text="notes.txt")
    expect(row).to_have_attribute("data-state", "error")
    expect(row.locator(".error")).to_have_text(expected.json()["detail"])
    tab.shot("add-error")
    # The same file as a search query: the message stands beside the file chooser.
    tab.go("")
    with tab.page.expect_file_chooser() as chooser:
        tab.page.get_by_label("Image to search by").click()
    chooser.value.set_files(files)
    form = tab.page.locator("form").filter(has=tab.page.get_by_label("Image to search by"))
    expect(form.locator('[data-error=""]')).to_have_text(expected.json()["detail"])


def test_search_by_image_finds_the_original_first(tab: Tab) -> None:
    tab.go("")
    expect(tab.page.locator(".note")).to_have_count(0)  # images now: no "No images yet"
    with tab.page.expect_file_chooser() as chooser:
        tab.page.get_by_label("Image to search by").click()
    chooser.value.set_files(str(PHOTOS / BRIDGE))
    first = tab.page.locator("[role=tabpanel] .card").first
    expect(first).to_contain_text(BRIDGE)
    expect(first.locator(".badge")).to_have_text("near-duplicate")
    expect(first.locator(".chip").filter(has_text="phash #1")).to_be_visible()
    expect(tab.page.get_by_role("status")).to_contain_text(f"for {BRIDGE}")
    # Each feature's own list is a tab; arrow keys move between tabs.
    tab.page.get_by_role("tab", name=re.compile(r"^phash")).click()
    expect(tab.page.locator("[role=tabpanel] .card").first).to_contain_text("distance 0")
    tab.page.keyboard.press("ArrowRight")
    expect(tab.page.get_by_role("tab", name=re.compile(r"^color"))).to_be_focused()
    tab.page.get_by_role("tab", name=re.compile(r"^Fused")).click()
    path = tab.shot("search-by-image-desktop")
    readme = os.environ.get("IMGSEARCH_SCREENSHOT")
    if readme:  # the README's screenshot: the first screen of results
        tab.page.screenshot(path=readme)
    print(f"screenshot: {path}")


def test_paste_or_drop_an_image_to_search(tab: Tab) -> None:
    """A pasted image (Ctrl+V anywhere on the view) and one dropped on the zone search too."""
    tab.go("")
    expect(tab.page.get_by_role("heading", name="By image")).to_be_visible()
    send = """([kind, name, bytes]) => {
        const data = new DataTransfer();
        data.items.add(new File([new Uint8Array(bytes)], name, {type: "image/jpeg"}));
        if (kind === "paste") {
            document.dispatchEvent(new ClipboardEvent("paste", {clipboardData: data}));
        } else {
            const zone = document.querySelector(".drop");
            zone.dispatchEvent(new DragEvent("dragover", {dataTransfer: data, cancelable: true}));
            zone.dispatchEvent(new DragEvent("drop", {dataTransfer: data, cancelable: true}));
        }
    }"""
    first = tab.page.locator("[role=tabpanel] .card").first
    for kind, name in (("paste", WINE), ("drop", BRIDGE)):
        data = list(reencode((PHOTOS / name).read_bytes(), scale=0.5))
        tab.page.evaluate(send, [kind, f"{kind}.jpg", data])
        expect(tab.page.get_by_role("status")).to_contain_text(f"for {kind}.jpg")
        expect(first).to_contain_text(name)
        expect(first.locator(".badge")).to_have_text("near-duplicate")


def test_result_page_shows_tags_and_more_like_this(tab: Tab) -> None:
    bridge = httpx.get(f"{tab.url}/images", params={"file_name": BRIDGE}).json()
    labels = [t["label"] for t in bridge["tags"]]
    assert labels, "the bridge photo has tags"
    tab.go("")
    tab.page.get_by_label("Words to search for").fill("bridge")
    tab.page.keyboard.press("Enter")
    card(tab.page, BRIDGE).click()
    expect(tab.page.get_by_role("heading", level=1)).to_have_text(BRIDGE)
    tags = tab.page.locator(".tags .chip")
    expect(tags).to_have_count(len(labels))
    expect(tags.first).to_contain_text(labels[0])
    # More like this: per feature, the other stored images.
    expect(tab.page.get_by_role("tab", name="phash")).to_be_visible()
    tab.page.get_by_role("tab", name="color").click()
    expect(tab.page.locator("[role=tabpanel] .card").first).to_contain_text("distance")
    expect(card(tab.page, BRIDGE)).to_have_count(0)  # the image itself is not "like" it
    tab.shot("image-page-desktop")


def test_text_search_by_a_tag_finds_its_photo(tab: Tab) -> None:
    bridge = httpx.get(f"{tab.url}/images", params={"file_name": BRIDGE}).json()
    word = bridge["tags"][0]["label"].split()[-1]  # "suspension bridge" -> "bridge"
    tab.go("")
    box = tab.page.get_by_label("Words to search for")
    box.fill(word)
    box.press("Enter")
    expect(tab.page).to_have_url(re.compile(rf"#/\?q={word}"))
    expect(tab.page.locator("[role=tabpanel] .card").first).to_contain_text(BRIDGE)
    expect(tab.page.get_by_role("tab", name=re.compile(r"^tags"))).to_be_visible()
    # A word no photo has: the page says so.
    box = tab.page.get_by_label("Words to search for")
    box.fill("xylophonequartz")
    box.press("Enter")
    expect(tab.page.get_by_role("status")).to_have_text(re.compile("^No results"))
    tab.shot("text-no-results")


def test_keyboard_reaches_a_result_and_opens_it(tab: Tab) -> None:
    tab.go("#/?q=bridge")
    expect(card(tab.page, BRIDGE)).to_be_visible()
    tab.page.get_by_role("tab", name=re.compile("^Fused")).focus()
    for _ in range(3):  # the tab, the panel, the first card
        tab.page.keyboard.press("Tab")
        if tab.page.evaluate("document.activeElement.classList.contains('card')"):
            break
    focused = tab.page.evaluate("document.activeElement.getAttribute('href')")
    assert focused and focused.startswith("#/image/")
    outline = tab.page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none", "focus is visible"
    tab.page.keyboard.press("Enter")
    expect(tab.page.get_by_role("heading", level=1)).to_be_focused()


def test_thumbnails_load_in_fixed_boxes(tab: Tab) -> None:
    """Result cards show the stored thumbnails (GET /images/{id}/thumbnail) in boxes of a
    fixed size, so nothing moves while they load."""
    health = httpx.get(f"{tab.url}/health").json()
    assert "thumbnail" in health["extractors"], "the app has no thumbnail feature yet"
    tab.go("#/?q=bridge")
    img = card(tab.page, BRIDGE).locator("img")
    expect(img).to_be_visible()
    tab.page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=img.element_handle()
    )
    natural = img.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    assert 0 < max(natural) <= 320
    box = card(tab.page, BRIDGE).locator(".thumb").bounding_box()
    assert box and abs(box["width"] - box["height"]) < 1  # a square, whatever the photo


def test_unknown_thumbnail_shows_the_file_name(tab: Tab) -> None:
    """A thumbnail that answers 404 (an image stored before thumbnails) becomes a placeholder
    with the file name in the same box."""
    tab.allow(r"status of 404")
    tab.page.route(re.compile(r"/images/\d+/thumbnail$"), lambda r: r.fulfill(status=404))
    tab.go("#/?q=bridge")
    placeholder = card(tab.page, BRIDGE).locator(".thumb .placeholder")
    expect(placeholder).to_have_text(BRIDGE)


def test_without_the_thumbnail_feature_file_names_stand_in(tab: Tab) -> None:
    """An app without thumbnails (its /health lists no such extractor): names, no images."""
    real = httpx.get(f"{tab.url}/health").json()
    real["extractors"].pop("thumbnail", None)
    real["indexes"].pop("thumbnail", None)
    tab.page.route("**/health", lambda r: r.fulfill(json=real))
    asked: list[str] = []
    tab.page.on("request", lambda r: asked.append(r.url) if "/thumbnail" in r.url else None)
    tab.go("#/?q=bridge")
    expect(card(tab.page, BRIDGE).locator(".thumb .placeholder")).to_have_text(BRIDGE)
    expect(tab.page.locator(".thumb img")).to_have_count(0)
    assert asked == []


def test_duplicates_found_and_one_deleted(tab: Tab) -> None:
    """A smaller, mirrored copy is grouped with its original; deleting it from the group,
    after the confirmation, removes it and keeps the original."""
    copy = reencode((PHOTOS / WINE).read_bytes(), scale=0.6, quality=70, mirror=True)
    add_files(tab, [{"name": "wine-copy.jpg", "mimeType": "image/jpeg", "buffer": copy}])
    copy_id = httpx.get(f"{tab.url}/images", params={"file_name": "wine-copy.jpg"}).json()
    tab.go("#/duplicates")
    group = tab.page.locator(".group").filter(has_text="wine-copy.jpg")
    expect(group).to_contain_text(WINE, timeout=WAIT_MS)  # a grouping may take seconds
    tab.shot("duplicates-desktop")
    # Keep the original, delete the copy: tick the copy off, the original on.
    group.locator("li").filter(has_text=WINE).get_by_label("Keep").check()
    group.locator("li").filter(has_text="wine-copy.jpg").get_by_label("Keep").uncheck()
    group.get_by_role("button", name="Delete 1 other").click()
    dialog = tab.page.get_by_role("dialog")
    expect(dialog).to_contain_text("wine-copy.jpg")
    dialog.get_by_role("button", name="Delete").click()
    expect(tab.page.locator(".group").filter(has_text="wine-copy.jpg")).to_have_count(0)
    assert httpx.get(f"{tab.url}/images/{copy_id['image_id']}").status_code == 404
    assert httpx.get(f"{tab.url}/images", params={"file_name": WINE}).status_code == 200


def test_a_bad_threshold_shows_the_api_message_beside_it(tab: Tab) -> None:
    tab.allow(r"status of 422")
    expected = httpx.get(f"{tab.url}/duplicates", params={"threshold": 5000})
    assert expected.status_code == 422
    tab.go("#/duplicates")
    threshold = tab.page.get_by_label("Threshold")
    # The app's default, as the answer says (once the grouping answered).
    expect(threshold).not_to_have_value("", timeout=WAIT_MS)
    threshold.fill("5000")
    tab.page.get_by_role("button", name="Find duplicates").click()
    expect(tab.page.locator('[data-error="threshold"]')).to_have_text(expected.json()["detail"])


def test_delete_from_the_image_page_asks_first(tab: Tab) -> None:
    # A copy of its own to delete: the other tests search the photos.
    copy = {"image": (COPY, (PHOTOS / UMANG).read_bytes())}
    umang = httpx.post(f"{tab.url}/images", files=copy).json()["image_id"]
    tab.go(f"#/image/{umang}")
    expect(tab.page.get_by_role("heading", level=1)).to_have_text(COPY)
    tab.page.get_by_role("button", name="Delete image").click()
    dialog = tab.page.get_by_role("dialog")
    expect(dialog).to_contain_text(COPY)
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    assert httpx.get(f"{tab.url}/images/{umang}").status_code == 200
    tab.page.get_by_role("button", name="Delete image").click()
    tab.page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    expect(tab.page.get_by_role("heading", name="Search", level=1)).to_be_visible()
    assert httpx.get(f"{tab.url}/images/{umang}").status_code == 404
    tab.allow(r"status of 404")
    tab.go(f"#/image/{umang}")
    expect(tab.page.locator(".error")).to_have_text(f"no image with id {umang}")


def test_status_lists_counts_and_extractors(tab: Tab) -> None:
    health = httpx.get(f"{tab.url}/health").json()
    tab.go("#/status")
    expect(tab.page.locator(".big")).to_contain_text(f"{health['images']} images")
    for name, index in health["indexes"].items():
        row = tab.page.get_by_role("row").filter(has=tab.page.get_by_role("rowheader", name=name))
        expect(row.first).to_contain_text(str(index.get("count", "")))
    expect(tab.page.get_by_text("Every extractor is available.")).to_be_visible()
    tab.shot("status-desktop")


def test_status_shows_why_an_extractor_is_unavailable_and_the_fix(tab: Tab) -> None:
    """/health of an app whose CLIP has no weights (answered here: this app has no CLIP)."""
    real = httpx.get(f"{tab.url}/health").json()
    fix = "python scripts/fetch_models.py clip"
    real["extractors"]["clip"] = {
        "name": "clip",
        "kind": "vector",
        "available": False,
        "reason": f"clip weights are not cached: {fix}",
    }
    real["indexes"]["clip"] = {"error": f"no index: clip weights are not cached: {fix}"}
    tab.page.route("**/health", lambda r: r.fulfill(json=real))
    tab.go("#/status")
    expect(tab.page.locator(".unavailable")).to_contain_text(fix)
    # Its index waits for the model: no error of its own.
    row = tab.page.get_by_role("row").filter(has=tab.page.get_by_role("rowheader", name="clip"))
    expect(row.first).to_contain_text("opens with its model")
    expect(tab.page.locator("td .error")).to_have_count(0)
    tab.shot("status-unavailable")
    # The search page lists CLIP unticked and says why.
    tab.go("")
    tab.page.get_by_text("Options").last.click()
    clip = tab.page.get_by_role("checkbox", name=re.compile("clip"))
    expect(clip).to_be_disabled()


def test_the_page_and_its_files_are_no_api_routes(server: str) -> None:
    page = httpx.get(f"{server}/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert page.headers["cache-control"] == "no-cache" and 'src="web/app.js"' in page.text
    script = httpx.get(f"{server}/web/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert httpx.get(f"{server}/web/missing.js").status_code == 404
    paths = httpx.get(f"{server}/openapi.json").json()["paths"]
    assert "/" not in paths and not any(p.startswith("/web") for p in paths)
    assert httpx.get(f"{server}/health").json()["status"] == "ok"


def test_docs_open_and_list_the_routes(tab: Tab) -> None:
    tab.go("")
    with tab.page.expect_navigation():
        tab.page.get_by_role("link", name="API").click()
    routes = tab.page.locator(".opblock-summary-path")
    unreadable = tab.page.get_by_text("Unable to render this definition")
    expect(routes.first.or_(unreadable)).to_be_visible()  # whichever Swagger UI shows
    expect(unreadable, "Swagger UI cannot read the app's OpenAPI version").to_have_count(0)
    paths = tab.page.locator(".opblock-summary-path").all_inner_texts()
    assert {"/images", "/search/image", "/search/text", "/health"} <= {
        p.replace("\u200b", "") for p in paths
    }
    assert "/" not in paths  # the page itself is not an API route


@pytest.mark.parametrize(
    "route", ["", "#/?q=bridge", "#/image/1", "#/add", "#/duplicates", "#/status"]
)
def test_phone_width_fits_without_sideways_scrolling(tab: Tab, route: str) -> None:
    tab.page.set_viewport_size(PHONE)
    tab.go(route)
    expect(tab.page.get_by_role("heading", level=1)).to_be_visible()
    tab.page.wait_for_load_state("networkidle")
    width = tab.page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"{route or '#/'} is {width} px wide"
    name = route.strip("#/").split("?")[0].replace("/", "-") or "search"
    tab.shot(f"phone-{name}{'-results' if '?' in route else ''}")


# --- an app with API keys -------------------------------------------------------------------

READ_KEY = "r-browser-7c1d2e90"
WRITE_KEY = "w-browser-93ab41f5"


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An app with a read and a write key (phash and thumbnails only: light)."""
    data = tmp_path_factory.mktemp("keyed-data")
    keys = data / "api-keys"
    keys.write_text(f"read:{READ_KEY}\nwrite:{WRITE_KEY}\n")
    features: dict[str, Any] = {"phash": {}, "thumbnail": {}}
    with serving(data / "store", features, api_keys_file=str(keys)) as url:
        yield url


def test_the_page_asks_for_a_key_once_and_sends_it_everywhere(
    browser: Any, keyed_server: str, shots: Path
) -> None:
    """The page asks for a key (again after a wrong one), asks for a write key when a read
    key may not add, keeps the key for the tab's session (a reload asks nothing) and sends
    it with every API request, thumbnails included."""
    with new_tab(browser, keyed_server, shots) as tab:
        tab.allow(r"status of 40[13]")  # the browser logs each refused request
        page = tab.page
        dialog = page.get_by_role("dialog", name="API key")

        def answer(key: str) -> None:
            dialog.get_by_label("Key").fill(key)
            dialog.get_by_role("button", name="Use key").click()

        tab.go("")
        expect(dialog).to_contain_text("asks for an API key")
        answer("not-a-key")
        expect(dialog).to_contain_text("did not accept")
        answer(READ_KEY)
        expect(page.get_by_role("heading", name="Search", level=1)).to_be_visible()
        expect(dialog).to_be_hidden()

        tab.go("#/add")
        with page.expect_file_chooser() as chooser:
            page.get_by_label("Images to add").click()
        chooser.value.set_files([str(PHOTOS / WINE)])
        expect(dialog).to_contain_text("needs a write key")
        tab.shot("api-key-dialog")
        answer(WRITE_KEY)
        row = page.locator(".upload")
        expect(row).to_have_attribute("data-state", "ok")
        added = row.get_by_role("link").get_attribute("href")
        assert added and added.startswith("#/image/")

        sent: list[tuple[str, str | None]] = []
        page.on("request", lambda r: sent.append((r.url, r.headers.get("authorization"))))
        page.reload()
        tab.go(added)
        expect(page.get_by_role("heading", level=1)).to_have_text(WINE)
        image = page.locator(".thumb.large img")
        expect(image).to_have_attribute("src", re.compile(r"^blob:"))
        # The blob's bytes load after its URL is set: wait for the decoded picture.
        page.wait_for_function(
            "img => img.complete && img.naturalWidth > 0", arg=image.element_handle()
        )
        expect(dialog).to_be_hidden()
        shell = (keyed_server, f"{keyed_server}/")  # the page itself and its files need none
        api = [
            (u, a)
            for u, a in sent
            if u.startswith(keyed_server) and u not in shell and "/web/" not in u
        ]
        assert any(u.endswith("/thumbnail") for u, _ in api), api
        assert all(a == f"Bearer {WRITE_KEY}" for _, a in api), api
