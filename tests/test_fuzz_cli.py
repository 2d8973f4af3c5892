"""Property: whatever argv it gets, ``main(argv)`` returns a documented exit code, no traceback.

Exit 70 (an internal error: an exception that is not a ``CnnvizError``) fails the test: a bad
value must be refused at the boundary with a usage error, never reach the code as a stray
``ValueError``. Every exit 2 prints exactly one ``cnnviz: error:`` line, argparse's own errors
(an unknown flag, a malformed number) included, and no usage text.

Argument lists are built from the parser's real commands and option names, with values drawn
from pools of good, bad and random strings. Every run is kept cheap and local: models are
``shapes_vgg11`` (random weights or a bad file, never anything to train or download) or an
unknown name, images are tiny files, output goes to a temporary folder. Excluded: ``--debug``
(it re-raises on purpose), ``--method all`` and the ``report``/``evaluate``/``sanity`` commands
(slow by design; each has its own tests).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cnnviz.cli import ExitCode, build_parser, main

COMMANDS = ("models", "methods", "layers", "summary", "filters", "activations", "saliency",
            "gradcam", "explain")  # fmt: skip
DOCUMENTED_EXIT_CODES = set(ExitCode) - {ExitCode.INTERNAL}  # 70 would be a bug


def _options() -> dict[str, list[tuple[str, bool]]]:
    """Each command's option strings, and whether the option takes a value."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    found = {}
    for name in COMMANDS:
        found[name] = [
            (option, action.nargs != 0)
            for action in sub.choices[name]._actions
            if not isinstance(action, argparse._HelpAction)
            for option in action.option_strings
        ]
    return found


OPTIONS = _options()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("fuzz cli")
    Image.new("RGB", (8, 8), (200, 30, 30)).save(root / "tiny.png")
    (root / "text.jpg").write_text("not an image")
    folder = root / "two images"
    folder.mkdir()
    Image.new("RGB", (6, 9), (0, 90, 0)).save(folder / "a.png")
    Image.new("L", (9, 6), 128).save(folder / "b.jpg")
    (root / "empty").mkdir()
    (root / "evil.pth").write_bytes(b"\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00lsq\x01\x85R.")
    return {
        "tiny": str(root / "tiny.png"),
        "text": str(root / "text.jpg"),
        "folder": str(folder),
        "empty": str(root / "empty"),
        "missing": str(root / "missing.png"),
        "evil": str(root / "evil.pth"),
        "out": str(root / "out"),
        "deep": str(root / "deep" / "er" / "out"),
    }


JUNK = st.text(max_size=6)


def _pools(files: dict[str, str]) -> dict[str, tuple[list[str], list[str]]]:
    """Option: (good values, bad values)."""
    return {
        "--model": (["shapes_vgg11"], ["shapes_vgg", "nope", ""]),
        "-m": (["shapes_vgg11"], ["vgg1"]),
        "--weights": (["random"], [files["missing"], files["evil"], files["text"], files["empty"]]),
        "--device": (["cpu"], ["cuda", "cuda:7", "meta", "bogus"]),
        "--out": ([files["out"], files["deep"]], [files["tiny"]]),
        "-o": ([files["out"]], [files["tiny"]]),
        "--target": (["circle", "0", "5"], ["6", "-1", "1.5", "hexagon", ""]),
        "-t": (["star"], ["99"]),
        "--top-k": (["1", "2"], ["0", "-3", "7", "x"]),
        "--layer": (["conv5_2", "bn1", "backbone.conv3_1"], ["backbone", "conv9", ""]),
        "-l": (["conv1"], ["nope"]),
        "--layers": (["conv1", "conv1,bn5_2"], ["nope", ",", ""]),
        "--batch-size": (["1", "2"], ["0", "-1", "x"]),
        "--workers": (["0", "1", "2"], ["-1", "x"]),
        "--alpha": (["0", "0.3", "1"], ["1.5", "-0.1", "nan", "inf", "x"]),
        "--cmap": (["jet", "viridis"], ["jett", ""]),
        "--method": (["gradcam", "saliency", "gradcam++", "eigencam"], ["cam", "nope", ""]),
        "--channels": (["1", "4"], ["0", "-2", "100000"]),
        "--order": (["first", "top"], ["middle"]),
        "--depth": (["1", "2"], ["0", "-1", "x"]),
        "--scale": (["per-filter", "global"], ["none"]),
        "--view": (["mean", "per-input"], ["x"]),
    }


def _value(option: str, files: dict[str, str]) -> st.SearchStrategy[str]:
    """Mostly good values (so runs get deep), some bad ones, some junk."""
    good, bad = _pools(files).get(option, (["1"], ["-1"]))
    return st.one_of(*[st.sampled_from(good)] * 3, st.sampled_from(bad), JUNK)


@st.composite
def argvs(draw: st.DrawFn, files: dict[str, str]) -> list[str]:
    command = draw(st.sampled_from([*COMMANDS, "nope"]))
    argv = ["-q"] if draw(st.integers(0, 9)) else [draw(st.sampled_from(["--version", "-h"]))]
    argv.append(command)
    if command in ("layers", "summary", "filters"):
        argv.append(draw(st.sampled_from(["shapes_vgg11", "shapes_vgg11", "shapes_vgg"])))
    elif command in ("activations", "saliency", "gradcam", "explain"):
        images = ["tiny", "tiny", "folder", "folder", "text", "empty", "missing"]
        chosen = draw(st.lists(st.sampled_from(images), min_size=1, max_size=2))
        argv.extend(files[name] for name in chosen)
    options = OPTIONS.get(command, [("--json", False)])
    for option, takes_value in draw(st.lists(st.sampled_from(options), max_size=4)):
        argv.append(option)
        if takes_value:
            argv.append(draw(_value(option, files)))
    # Whatever was drawn: never the default model, never weights that need training.
    names = {option for option, _ in options}
    if "--weights" in names:
        argv += ["--weights", draw(_value("--weights", files).filter(bool))]
    if "--model" in names:
        argv += ["--model", draw(st.sampled_from(["shapes_vgg11", "shapes_vgg11", "nope"]))]
    if "--out" in names and "--out" not in argv and "-o" not in argv:
        argv += ["--out", files["out"]]
    if command == "explain" and "all" in argv:
        argv += ["--method", "gradcam"]
    return argv


@settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_any_argv_gives_an_exit_code_and_no_traceback(
    data: st.DataObject,
    files: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(Path(files["out"]).parent)  # relative junk paths land in the temp folder
    argv = data.draw(argvs(files))
    _check(argv, main(argv), capsys.readouterr())


def _check(argv: list[str], code: int, captured: pytest.CaptureResult[str]) -> None:
    assert isinstance(code, int)
    assert code in DOCUMENTED_EXIT_CODES, (argv, captured.err)
    assert "Traceback" not in captured.err + captured.out, argv
    assert "internal error" not in captured.err, (argv, captured.err)
    if code == ExitCode.USAGE:  # argparse's errors and ours: exactly one line each
        errors = [line for line in captured.err.splitlines() if line.startswith("cnnviz: error:")]
        assert len(errors) == 1, (argv, captured.err)
        assert "usage:" not in captured.err, (argv, captured.err)


# -- one bad value at a time, on an otherwise good command line --------------------------------


def _good_argv(command: str, files: dict[str, str]) -> list[str]:
    """A command line of ``command`` that works (exit 0)."""
    model = ["--model", "shapes_vgg11", "--weights", "random"]
    if command in ("layers", "summary"):
        return [command, "shapes_vgg11", "--weights", "random"]
    if command == "filters":
        return [command, "shapes_vgg11", "--weights", "random", "--out", files["out"]]
    if command == "activations":
        return [command, files["tiny"], *model, "--layers", "conv1", "--out", files["out"]]
    return [command, files["tiny"], *model, "--workers", "0", "--out", files["out"]]


def _one_bad_value_cases() -> list[tuple[str, str]]:
    """Each long option that takes a value, per command; saliency and explain only for what
    gradcam does not have (the three share the rest)."""
    gradcam = {option for option, _ in OPTIONS["gradcam"]}
    return [
        (command, option)
        for command in COMMANDS
        for option, takes_value in OPTIONS[command]
        if takes_value
        and option.startswith("--")
        and not (command in ("saliency", "explain") and option in gradcam)
    ]


@pytest.mark.parametrize(("command", "option"), _one_bad_value_cases())
def test_each_bad_value_alone_is_refused_not_a_bug(
    command: str,
    option: str,
    files: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The random search above rarely puts exactly one bad value on a command line that would
    otherwise run, where a bad value reaches deepest; this tries each one there."""
    monkeypatch.chdir(Path(files["out"]).parent)
    _, bad = _pools(files).get(option, ([], ["-1"]))
    for value in dict.fromkeys([*bad, ""]):
        argv = ["-q", *_good_argv(command, files), option, value]
        _check(argv, main(argv), capsys.readouterr())
