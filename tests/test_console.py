"""What the command line writes while it runs: one line per image explained, log records that
never land inside a progress bar, and ``-q`` that silences other libraries too."""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from tqdm import tqdm

from cnnviz.cli import main
from cnnviz.cli.console import THIRD_PARTY_LOGGERS, cli_logging, image_line
from cnnviz.data.samples import bundled_samples
from terminal import Terminal

COFFEE = next(p for p in bundled_samples() if p.name == "coffee.jpg")


def rendered(text: str) -> list[str]:
    """The lines a terminal shows for ``text``: ``\\r`` returns to the start of the line and
    what follows overwrites it (a progress bar redraws itself, and is cleared, that way)."""
    lines = []
    for line in text.split("\n"):
        shown: list[str] = []
        for segment in line.split("\r"):
            shown[: len(segment)] = segment
        lines.append("".join(shown).rstrip())
    return [line for line in lines if line]


def _is_bar(line: str) -> bool:
    return "img/s" in line or "it/s" in line or "%|" in line


def test_rendered_overwrites_like_a_terminal() -> None:
    assert rendered("bar 0%|\r      \rcnnviz: hi\nok\n") == ["cnnviz: hi", "ok"]
    assert rendered("bar 0%|cnnviz: hi\n") == ["bar 0%|cnnviz: hi"]


def _item(method: str, layer: str | None, rank: int, name: str, p: float | None) -> dict[str, Any]:
    stem = f"coffee.{method}.{rank}-{name}"
    return {
        "input": "photos/coffee.jpg",
        "method": method,
        "layer": layer,
        "target_rank": rank,
        "target_name": name,
        "probability": p,
        "files": {"overlay": f"{stem}.png", "raw_layer": f"{stem}.layer.npy"},
    }


def test_image_line_for_one_target_several_targets_and_all_methods() -> None:
    out = Path("out")
    one = [_item("gradcam", "bn2", 0, "espresso", 0.9041)]
    assert image_line(one, out) == (
        "coffee.jpg → espresso 90.4 % · Grad-CAM @ bn2 → out/coffee.gradcam.0-espresso.png"
    )
    saliency = [_item("saliency", None, 0, "espresso", 0.9041)]
    assert image_line(saliency, out).endswith(" · Saliency → out/coffee.saliency.0-espresso.png")
    names = ["espresso", "cup", "eggnog", "mortar", "ladle"]
    top5 = [_item("gradcam", "bn2", r, n, 0.5 / (r + 1)) for r, n in enumerate(names)]
    assert image_line(top5, out) == (
        "coffee.jpg → espresso 50.0 %, cup 25.0 %, eggnog 16.7 % (+2 more) · Grad-CAM @ bn2 → "
        "out/coffee.gradcam.0-espresso.png (+4 more)"
    )
    every = [
        _item(m, layer, 0, "espresso", 0.9)
        for m, layer in [("gradcam", "bn2"), ("saliency", None), ("scorecam", "bn2")]
    ]
    for item in every:
        item["files"]["grid"] = "coffee.grid.png"
    assert image_line(every, out) == (
        "coffee.jpg → espresso 90.0 % · 3 methods (CAMs @ bn2) → out/coffee.grid.png"
    )
    no_probability = [_item("gradcam", "bn2", 0, "score", None)]
    assert image_line(no_probability, out).startswith("coffee.jpg → score · Grad-CAM @ bn2 → ")
    with pytest.raises(ValueError, match="got none"):
        image_line([], out)


def test_log_records_are_written_around_a_live_bar_and_everything_is_restored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ours, root = logging.getLogger("cnnviz"), logging.getLogger()
    before = (ours.handlers[:], ours.level, ours.propagate, root.handlers[:])
    levels = {name: logging.getLogger(name).level for name in THIRD_PARTY_LOGGERS}
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    for quiet in (False, True):
        buffer = io.StringIO()
        with cli_logging(quiet, stream=buffer):
            bar = tqdm(total=3, desc="explain", unit="img", file=buffer)
            bar.update(1)
            logging.getLogger("cnnviz.runs.explain").info("an info line")
            logging.getLogger("cnnviz.runs.explain").warning("a warning line")
            bar.update(1)
            logging.getLogger("huggingface_hub.utils._http").warning("Retrying in 1s [Retry 1/5]")
            logging.getLogger("timm.models").error("a timm error")
            progress_bars_off = os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS")
            bar.close()
        lines = [line for line in rendered(buffer.getvalue()) if not _is_bar(line)]
        expected = ["cnnviz: a warning line", "cnnviz: timm: a timm error"]
        if not quiet:
            expected[1:1] = ["cnnviz: huggingface_hub: Retrying in 1s [Retry 1/5]"]
            expected[:0] = ["cnnviz: an info line"]
        assert lines == expected, quiet
        assert progress_bars_off == ("1" if quiet else None)
        assert "img/s" in buffer.getvalue()  # the bar was drawn, and redrawn after each record
    assert (ours.handlers, ours.level, ours.propagate, root.handlers) == before
    assert {name: logging.getLogger(name).level for name in THIRD_PARTY_LOGGERS} == levels
    assert "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ


def test_explain_prints_a_line_per_image_and_logs_outside_the_bar(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stdout and stderr into one terminal: the bar (on, without -q) is drawn,
    the automatic layer is said before it starts, and the skipped file and each image's line
    stand on lines of their own."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.jpg", "c.jpg"):
        (folder / name).write_bytes(COFFEE.read_bytes())
    (folder / "b.jpg").write_text("text, not a JPEG")
    out = tmp_path / "out"
    terminal = Terminal()
    monkeypatch.setattr("sys.stdout", terminal)
    monkeypatch.setattr("sys.stderr", terminal)
    argv = ["gradcam", str(folder), "--out", str(out), "--batch-size", "1", "--workers", "0"]
    assert main(argv) == 1
    raw = terminal.getvalue()
    assert raw.index("cnnviz: Automatic CAM layer: bn2\n") < raw.index("gradcam:")
    assert "img/s" in raw
    items = json.loads((out / "manifest.json").read_text())["items"]
    per_image = [
        f"{Path(i['input']).name} → espresso {100 * i['probability']:.1f} % · Grad-CAM @ bn2 → "
        f"{out}/{i['files']['overlay']}"
        for i in items
    ]
    skipped = (
        f"cnnviz: skipped {folder / 'b.jpg'}: Cannot read {folder / 'b.jpg'}: it is not an image "
        "file Pillow recognises; convert it to PNG or JPEG (.bmp, .gif, .jpeg, .jpg, .png, .tif, "
        ".tiff, .webp)."
    )
    lines = [line for line in rendered(raw) if not _is_bar(line)]
    assert lines[0].startswith("cnnviz: loaded efficientnet_lite0 ")
    assert lines[1] == "cnnviz: Automatic CAM layer: bn2"
    assert sorted(lines[2:5]) == sorted([*per_image, skipped])  # as the images finish
    assert lines[5:] == [
        f"Wrote 2 result(s) to {out}/ (manifest.json); 1 input(s) failed, listed there"
    ]
    for line in rendered(raw):
        assert not (_is_bar(line) and ("cnnviz:" in line or "→" in line)), line


def test_image_lines_with_quiet_and_pure_json_with_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``-q`` silences stderr (no log line, no bar) but keeps the line per image: it says what
    was written. ``--json`` keeps stdout for the JSON alone."""
    out = tmp_path / "q"
    assert main(["-q", "saliency", str(COFFEE), "--out", str(out)]) == 0
    quiet = capsys.readouterr()
    assert quiet.out == (
        f"coffee.jpg → espresso 95.4 % · Saliency → {out}/coffee.saliency.0-espresso.png\n"
        f"Wrote 1 result(s) to {out}/ (manifest.json)\n"
    )
    assert (out / "coffee.saliency.0-espresso.png").is_file()
    assert quiet.err == ""
    assert main(["saliency", str(COFFEE), "--out", str(tmp_path / "j"), "--json"]) == 0
    printed = capsys.readouterr()
    assert json.loads(printed.out)["items"][0]["method"] == "saliency"
    assert "→" not in printed.err
