"""`cnnviz report`: structure, escaping, offline-ness, and a real render in headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from PIL import Image

from cnnviz.cli import main
from cnnviz.data.samples import bundled_samples

SECTIONS = (
    "predictions",
    "grad-cam",
    "saliency",
    "activations",
    "filters",
    "summary",
    "layers",
    "manifest",
)


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.images: list[str] = []
        self.links: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.append(str(a["id"]))
        if tag == "img":
            self.images.append(str(a.get("src")))
        if tag in ("a", "link") and a.get("href"):
            self.links.append(str(a["href"]))
        if tag == "script":
            self.scripts += 1


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A report over the two bundled photos plus a hostile file name and a broken file."""
    folder = tmp_path_factory.mktemp("inputs")
    for sample in bundled_samples():
        shutil.copy(sample, folder / sample.name)
    shutil.copy(bundled_samples()[0], folder / "<img src=x onerror=alert(1)> & ü.jpg")
    (folder / "broken.jpg").write_text("not an image")
    out = tmp_path_factory.mktemp("report")
    code = main(
        ["--quiet", "report", str(folder), "--out", str(out), "--methods", "layercam,gradxinput"]
    )
    assert code == 1  # finished, but one input failed
    return out


def _parse(path: Path) -> _Collector:
    collector = _Collector()
    collector.feed(path.read_text(encoding="utf-8"))
    return collector


def test_pages_have_every_section_and_decodable_images(report_dir: Path) -> None:
    pages = sorted(p for p in report_dir.glob("*.html") if p.name != "index.html")
    assert len(pages) == 3
    for page in pages:
        parsed = _parse(page)
        assert set(SECTIONS) <= set(parsed.ids), page.name
        assert parsed.scripts == 0
        # top-3 Grad-CAM, saliency overlay + map, input, 3 activation grids, filters
        assert len(parsed.images) >= 10
        for src in parsed.images:
            assert src.startswith("data:image/png;base64,")
            picture = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
            assert picture.width > 0 and picture.height > 0
        for href in parsed.links:
            assert not re.match(r"^(https?:)?//", href), href  # nothing from the network
            if not href.startswith("#"):
                assert (report_dir / href).exists()


def test_predictions_and_manifest_data(report_dir: Path) -> None:
    manifest = json.loads((report_dir / "manifest.json").read_text())
    assert manifest["schema_version"] == 1
    by_name = {Path(item["input"]).name: item for item in manifest["items"]}
    assert by_name["coffee.jpg"]["predictions"][0]["name"] == "espresso"
    probs = [p["probability"] for p in by_name["coffee.jpg"]["predictions"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6
    assert by_name["coffee.jpg"]["gradcam_layer"] == "bn2"
    assert [f["input"].endswith("broken.jpg") for f in manifest["failures"]] == [True]


def test_text_from_file_names_is_escaped(report_dir: Path) -> None:
    hostile = [p for p in report_dir.glob("*.html") if "alert" in p.name]
    assert len(hostile) == 1
    html = hostile[0].read_text(encoding="utf-8")
    assert "<img src=x" not in html
    assert "&lt;img src=x onerror=alert(1)&gt; &amp; ü.jpg" in html
    index = (report_dir / "index.html").read_text(encoding="utf-8")
    assert "<img src=x" not in index and "broken.jpg" in index


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


PROBE = """<script>
var errs = [];
window.addEventListener('error', function (e) { errs.push(String(e.message || e.type)); }, true);
document.addEventListener('securitypolicyviolation', function (e) {
  errs.push('csp ' + e.blockedURI);
});
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).length;
  var probe = {total: imgs.length, broken: broken, errors: errs};
  document.body.setAttribute('data-probe', JSON.stringify(probe));
});
</script>"""


@pytest.mark.browser
def test_report_renders_in_headless_chromium(report_dir: Path, tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip(
            "Chromium is not installed and could not be installed (make test tries apt-get)"
        )
    page = next(p for p in report_dir.glob("coffee*.html"))
    html = page.read_text(encoding="utf-8")
    # Same CSP plus permission for the probe script only: any network load is still blocked.
    html = html.replace(
        "style-src 'unsafe-inline'", "style-src 'unsafe-inline'; script-src 'unsafe-inline'"
    )
    probe_page = tmp_path / "probe.html"
    probe_page.write_text(html.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    result = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=5000",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
            probe_page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    match = re.search(r"data-probe=\"([^\"]*)\"", result.stdout)
    assert match, result.stderr[-2000:]
    probe = json.loads(match.group(1).replace("&quot;", '"'))
    assert probe["total"] >= 10
    assert probe["broken"] == 0
    assert probe["errors"] == []
    assert "Uncaught" not in result.stderr


def test_integrated_gradients_states_its_completeness_on_the_page(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """In the report, IG's completeness gap is printed under its picture rather than as a
    warning on stderr: 0.8 % for chelsea.jpg at 64 adaptive steps on lite0 (measured; 16.6 %
    with Gauss-Legendre)."""
    chelsea = next(p for p in bundled_samples() if p.name == "chelsea.jpg")
    argv = ["report", str(chelsea), "--out", str(tmp_path), "--methods", "integrated-gradients"]
    assert main(argv) == 0
    assert "Integrated Gradients" not in capsys.readouterr().err
    page = (tmp_path / "chelsea.html").read_text(encoding="utf-8")
    found = re.search(r"sum to the score change within (\d+\.\d) %", page)
    assert found is not None
    assert float(found.group(1)) < 1.0
    assert "more steps would tighten it" not in page


def test_method_note_by_hand() -> None:
    from cnnviz.capture.targets import Targets
    from cnnviz.methods.base import Explanation
    from cnnviz.methods.postprocess import Display
    from cnnviz.runs.report import method_note

    def explanation(gap: float, delta_f: float) -> Explanation:
        extras = {"completeness_gap": torch.tensor([[gap]]), "delta_f": torch.tensor([[delta_f]])}
        return Explanation(
            method="integrated-gradients",
            maps=torch.zeros(1, 1, 2, 2),
            layer=None,
            targets=Targets(indices=torch.tensor([[0]]), labels=(("a",),)),
            scores=torch.zeros(1, 1),
            probabilities=None,
            input_size=(2, 2),
            display=Display.SIGNED,
            extras=extras,
        )

    assert (
        method_note(explanation(0.02, -1.0)) == "attributions sum to the score change within 2.0 %"
    )
    assert "tighten" in str(method_note(explanation(0.5, 4.0)))
    assert method_note(explanation(0.0, 0.0)) == "attributions sum to the score change within 0.0 %"


def test_maps_carry_legends_and_the_page_ends_without_a_manifest_dump(report_dir: Path) -> None:
    page = next(p for p in report_dir.glob("coffee*.html")).read_text(encoding="utf-8")
    # Grad-CAM of the best class, saliency (on the image and alone, in gray), methods compared.
    assert page.count("red: more evidence for espresso · blue: none") >= 1
    assert "red: more influence on espresso, for or against · blue: none" in page
    assert "white: more influence on espresso, for or against · black: none" in page
    assert "red: for espresso · blue: against · white: neither" in page  # gradxinput, signed
    assert page.count('class="legend"') >= 3 + 2 + 2  # 3 Grad-CAMs, 2 saliency, 2 compared
    assert "gradient maps with their brightest 2 % saturated" in page
    # The manifest record is collapsed and manifest.json linked; nothing follows it.
    tail = page[page.index('id="manifest"') :]
    assert '<a href="manifest.json">manifest.json</a>' in tail
    assert re.search(r"<details><summary>[^<]*</summary>\s*<pre>", tail)
    assert "<pre>" not in page[: page.index('id="manifest"')]
    # No figure title repeated as its caption: activations and filters have none.
    for caption in re.findall(r"<figcaption>(.*?)</figcaption>", page, flags=re.S):
        assert not re.match(r"(conv_stem|blocks\.|bn2)", caption), caption
    manifest = json.loads((report_dir / "manifest.json").read_text())
    assert manifest["extra"] == {
        "cmap": "jet",
        "alpha": 0.5,
        "sign": "auto",
        "style": "overlay",
        "outlier_percent": "auto",
    }


def test_report_drawing_options_reach_the_page(tmp_path: Path) -> None:
    from cnnviz.runs.report import ReportSettings, drawing_note

    coffee = next(p for p in bundled_samples() if p.name == "coffee.jpg")
    argv = ["-q", "report", str(coffee), "--out", str(tmp_path), "--methods", "none"]
    argv += ["--sign", "negative", "--style", "alpha", "--outlier-percent", "5", "--cmap", "gray"]
    assert main(argv) == 0
    page = (tmp_path / "coffee.html").read_text(encoding="utf-8")
    assert "white: more evidence against espresso · black: none" in page
    settings = ReportSettings(sign="negative", style="alpha", outlier_percent=5.0, cmap="gray")
    note = "Maps showing the negative evidence, with their brightest 5 % saturated; drawn as "
    assert drawing_note(settings.drawing) == note + "alpha at opacity 0.5 in gray."
    assert drawing_note(settings.drawing) in page
    extra = json.loads((tmp_path / "manifest.json").read_text())["extra"]
    assert (extra["sign"], extra["style"], extra["outlier_percent"]) == ("negative", "alpha", 5.0)
