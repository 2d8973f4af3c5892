"""`cnnviz serve`: the explorer page driven in headless Chromium against the real server.

One walk through the page as a new user would click it: pick the coffee photo, read its
predictions, explain another class, switch methods and layers, compare two maps and score one,
open a layer's channels and one channel's details, read the structure tab, export the map and its
manifest, and upload a file the server refuses. No console error may appear on the way (the page
runs under the server's content-security policy, so a policy violation would show as one).

Screenshots of the four tabs go to the test's tmp_path and, when CNNVIZ_SCREENSHOTS names a
folder, there as explorer-explain.png, explorer-compare.png, explorer-activations.png and
explorer-structure.png (the README's screenshot comes from this test).
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

pytestmark = [pytest.mark.browser, pytest.mark.slow]

VIEWPORT = {"width": 1280, "height": 860}
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
]
TIMEOUT_MS = 30_000  # one map or grid on a slow CPU
FEATUREVIS_TIMEOUT_MS = 60_000  # a feature visualisation is optimised on first request


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def explorer() -> Iterator[Any]:
    """The explorer over EfficientNet-Lite0 and the two bundled photos, on a free port."""
    if _chromium() is None:
        pytest.skip(
            "Chromium is not installed and could not be installed (make test tries apt-get)"
        )
    pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright")
    import cnnviz
    from cnnviz.data.samples import bundled_samples

    model = cnnviz.load_model("efficientnet_lite0")
    server = cnnviz.explore(model, bundled_samples(), port=0)
    try:
        yield server
    finally:
        server.stop()


def _loaded(selector: str) -> str:
    """A predicate (for wait_for_function) true once the <img> has decoded a picture."""
    return (
        f"() => {{ const i = document.querySelector({json.dumps(selector)});"
        " return !!i && i.complete && i.naturalWidth > 0; }"
    )


def _shoot(page: Any, name: str, tmp_path: Path) -> None:
    page.screenshot(path=str(tmp_path / f"explorer-{name}.png"), full_page=False)
    folder = os.environ.get("CNNVIZ_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp_path / f"explorer-{name}.png", Path(folder) / f"explorer-{name}.png")


def _api(page: Any, path: str) -> Any:
    """GET an API endpoint from inside the page (its cookie carries the token)."""
    return page.evaluate("async (p) => (await fetch(p)).json()", path)


def test_explorer_page_in_headless_chromium(explorer: Any, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.on(
                "console",
                lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None,
            )
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            # offline by construction: every request the page makes goes to the explorer itself
            origin = explorer.url.split("/?token=")[0] + "/"
            foreign: list[str] = []
            page.on(
                "request",
                lambda r: (
                    None if r.url.startswith((origin, "data:", "blob:")) else foreign.append(r.url)
                ),
            )
            page.goto(explorer.url)
            _walk(page, tmp_path, problems)
        finally:
            browser.close()
    assert foreign == []


def _walk(page: Any, tmp_path: Path, problems: list[str]) -> None:
    # --- pick the coffee photo: its predictions, the input picture, the map --------------------
    page.wait_for_selector("#image-list [data-id]")
    assert page.locator("#image-list [data-id]").count() == 2
    page.locator("#image-list [data-id]", has_text="coffee").click()
    coffee = page.locator("#image-list [data-id]", has_text="coffee").get_attribute("data-id")
    predicted = _api(page, f"api/images/{coffee}/predictions?k=5")["predictions"]
    assert "espresso" in predicted[0]["label"]
    page.wait_for_function(
        "(label) => { const li = document.querySelector('#predictions li');"
        " return !!li && li.textContent.includes(label); }",
        arg=predicted[0]["label"],
    )
    assert page.locator("#predictions li").count() == 5
    page.wait_for_function(_loaded("#input-image"))
    page.wait_for_function(
        "(label) => document.querySelector('#target').textContent.includes(label)",
        arg=predicted[0]["label"],
    )
    page.wait_for_function(_loaded("#map-image"))
    page.wait_for_function(_loaded("#colorbar"))
    assert page.text_content("#legend").strip()
    assert page.input_value("#command").startswith("cnnviz ")
    _shoot(page, "explain", tmp_path)  # the predicted class at the automatic layer

    # --- another class through the type-ahead input --------------------------------------------
    classes = _api(page, "api/classes")["classes"]
    cup = classes.index("cup")
    assert cup != predicted[0]["index"]
    first_src = page.get_attribute("#map-image", "src")
    page.fill("#class-input", "cup")
    page.press("#class-input", "Enter")
    _wait_new_map(page, first_src)
    assert "cup" in page.text_content("#legend").lower()
    assert f"class {cup} cup" in page.text_content("#target")

    # --- methods in turn: the layer control follows needs_layer --------------------------------
    methods = {m["name"]: m for m in _api(page, "api/info")["methods"]}
    for name in ("gradcam++", "saliency", "gradcam"):
        before = page.get_attribute("#map-image", "src")
        page.select_option("#method-select", name)
        _wait_new_map(page, before)
        assert page.is_disabled("#layer-select") == (not methods[name]["needs_layer"])
        assert methods[name]["title"] in page.text_content("#target")

    # --- a layer from the layer table (spatial layers only, with their shape) -------------------
    layers = _api(page, "api/layers")["layers"]
    spatial = [layer["name"] for layer in layers if layer["spatial"]]
    offered = page.eval_on_selector_all("#layer-select option", "os => os.map(o => o.value)")
    assert offered[0] == "" and offered[1:] == spatial
    layer = spatial[len(spatial) // 2]
    before = page.get_attribute("#map-image", "src")
    page.select_option("#layer-select", layer)
    _wait_new_map(page, before)
    assert layer in page.text_content("#target")

    # --- export: the map PNG, the manifest, the command -----------------------------------------
    with page.expect_download() as download:
        page.click("#export-png")
    png = Path(download.value.path())
    assert download.value.suggested_filename.endswith(".png")
    assert Image.open(io.BytesIO(png.read_bytes())).size[0] > 0
    with page.expect_download() as download:
        page.click("#export-manifest")
    assert download.value.suggested_filename.endswith(".json")
    manifest = json.loads(Path(download.value.path()).read_text(encoding="utf-8"))
    assert manifest
    page.click("#copy-command")
    page.wait_for_function(
        "() => document.querySelector('#status').textContent.includes('command')"
    )
    assert page.is_visible("#command")

    # --- compare: two (method, class) cards side by side, one scored ----------------------------
    page.click("#tab-compare")
    page.click("#compare-add")
    page.select_option("#method-select", "saliency")
    page.click("#predictions li:first-child button")  # back to the predicted class
    page.click("#compare-add")
    page.wait_for_function(
        "() => { const imgs = [...document.querySelectorAll('#compare-cards .card-map')];"
        " return imgs.length === 2 && imgs.every(i => i.complete && i.naturalWidth > 0); }"
    )
    cards = page.locator("#compare-cards .card")
    assert "cup" in cards.nth(0).text_content()
    assert predicted[0]["label"] in cards.nth(1).text_content()
    cards.nth(0).locator(".scores").click()
    page.wait_for_function(
        "() => /insertion/.test(document.querySelector('#compare-cards .scores-text').textContent)"
    )
    assert "deletion" in cards.nth(0).locator(".scores-text").text_content()
    _shoot(page, "compare", tmp_path)

    # --- activations: a convolution's channels, one channel's details ---------------------------
    page.click("#tab-activations")
    # A convolution (so the channel has a filter) with more channels than the grid's limit of 64.
    convs = [layer for layer in layers if layer["spatial"] and layer["conv"]]
    conv = next((layer for layer in convs if layer["shape"][0] > 64), convs[0])
    total = int(conv["shape"][0])
    page.select_option("#activation-layer", conv["name"])
    expected = min(64, total)
    page.wait_for_function(
        "(n) => document.querySelectorAll('#activation-grid .channel').length === n",
        arg=expected,
    )
    page.wait_for_function(
        "(text) => document.querySelector('#channel-count').textContent === text",
        arg=f"{expected} of {total} channels",
    )
    channel = page.locator("#activation-grid .channel").nth(1)
    index = channel.get_attribute("data-channel")
    assert index is not None and channel.text_content().strip() == index
    channel.click()
    page.wait_for_selector("#channel-detail", state="visible")
    page.wait_for_function(_loaded("#channel-overlay"))
    page.wait_for_function(_loaded("#channel-filter"))
    page.wait_for_function(_loaded("#channel-exemplars"))
    assert f"channel {index}" in page.text_content("#channel-title")
    page.wait_for_function(_loaded("#channel-featurevis"), timeout=FEATUREVIS_TIMEOUT_MS)
    assert "computing" not in page.text_content("#channel-featurevis-caption")
    _shoot(page, "activations", tmp_path)

    # --- structure: the summary table and a convolution's filters -------------------------------
    page.click("#tab-structure")
    summary = _api(page, "api/summary")
    page.wait_for_function(
        "(n) => document.querySelectorAll('#summary-table tbody tr').length === n",
        arg=len(summary["rows"]),
    )
    page.wait_for_function(_loaded("#filters-image"))
    convs = [layer["name"] for layer in layers if layer["conv"]]
    # Another convolution, then back to the first one (its RGB filters make the screenshot).
    for name in (convs[1], convs[0]):
        page.select_option("#filters-layer", name)
        page.wait_for_function(
            "(name) => { const i = document.querySelector('#filters-image');"
            " return new URL(i.src).searchParams.get('layer') === name"
            " && i.complete && i.naturalWidth > 0; }",
            arg=name,
        )
    _shoot(page, "structure", tmp_path)

    assert problems == []

    # --- uploads: a refused file's message in the status line, then a real photo ---------------
    page.set_input_files(
        "#upload-input",
        files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not an image"}],
    )
    page.wait_for_selector("#status.error")
    assert page.text_content("#status").strip()
    # The browser logs the refused request itself ("Failed to load resource ... 415"): expected.
    assert all("415" in problem for problem in problems), problems
    problems.clear()
    photo = io.BytesIO()
    Image.new("RGB", (96, 64), (200, 120, 40)).save(photo, "PNG")
    page.set_input_files(
        "#upload-input",
        files=[{"name": "orange.png", "mimeType": "image/png", "buffer": photo.getvalue()}],
    )
    page.wait_for_function("() => document.querySelectorAll('#image-list [data-id]').length === 3")
    page.wait_for_function(
        "() => document.querySelector('#image-list .selected').textContent.includes('orange')"
    )
    uploaded = page.locator("#image-list .selected").get_attribute("data-id")
    page.wait_for_function(
        "(id) => document.querySelector('#input-image').src.includes(id)"
        " && document.querySelectorAll('#predictions li').length === 5",
        arg=uploaded,
    )
    page.wait_for_function(_loaded("#input-image"))
    page.wait_for_function(_loaded("#map-image"))
    assert problems == []


def _wait_new_map(page: Any, before: str | None) -> None:
    """Wait until #map-image shows another picture than `before`, decoded, and settled."""
    page.wait_for_function(
        "(before) => { const i = document.querySelector('#map-image');"
        " return i.getAttribute('src') !== before && i.complete && i.naturalWidth > 0"
        " && !document.querySelector('#map-figure').classList.contains('busy'); }",
        arg=before,
    )


def test_the_page_works_without_its_cookie(explorer: Any) -> None:
    """Inside a notebook's frame on another site the browser sends no cookie: the page must work
    from the token in its address alone. The cookie is cleared once the page has loaded; every
    request after that (the other image, its predictions and map, a channel grid) must pass."""
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    refused: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport=VIEWPORT)
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.on("response", lambda r: refused.append(r.url) if r.status == 403 else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.goto(explorer.url)
            page.wait_for_function(_loaded("#map-image"))
            context.clear_cookies()
            assert context.cookies() == []
            before = page.locator("#map-image").get_attribute("src")
            page.locator("#image-list [data-id]", has_text="coffee").click()  # chelsea is first
            page.wait_for_function(
                "(b) => { const i = document.querySelector('#map-image');"
                " return i.getAttribute('src') !== b && i.complete && i.naturalWidth > 0; }",
                arg=before,
            )
            assert "espresso" in page.locator("#predictions li").first.inner_text()
            page.click("#tab-activations")
            page.wait_for_selector("#activation-grid .channel")
        finally:
            browser.close()
    assert refused == [] and problems == []
