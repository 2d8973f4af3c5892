"""Exit codes by intent: a ``CnnvizError`` is the user's problem (2, or 3), anything else is a bug
(70, "this is a bug in cnnviz"); every usage error, argparse's included, is one line; ``--method
all`` skips a method only when it raises ``NotApplicableError``.

Cheap throughout: ``shapes_vgg11`` with random weights on an 8×8 picture, decoding in-process;
the ``--method all`` runs use a registry cut down to three methods.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, NoReturn

import pytest
from PIL import Image

from cnnviz.cli import ExitCode, build_parser, main
from cnnviz.cli.shared import finish
from cnnviz.errors import CnnvizError, NotApplicableError, WeightsUnavailableError
from cnnviz.methods import base, registry
from cnnviz.options import (
    SANITY_MODES,
    ChannelOrder,
    DeepFilterView,
    DeletionBaseline,
    FilterScale,
    values,
)

MODEL = ["--model", "shapes_vgg11", "--weights", "random"]
SHAPES = [*MODEL, "--workers", "0"]
BUG = "— this is a bug in cnnviz; rerun with --debug for the traceback"


@pytest.fixture
def image(tmp_path: Path) -> str:
    Image.new("RGB", (8, 8), (40, 160, 90)).save(tmp_path / "a.png")
    return str(tmp_path / "a.png")


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, list[str]]:
    code = main(["-q", *argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    return code, captured.out, captured.err.strip().splitlines()


def _raiser(error: Exception) -> Any:
    def explain(self: base.Method, *args: Any, **kwargs: Any) -> NoReturn:
        raise error

    return explain


# -- the codes -------------------------------------------------------------------------------


def test_exit_code_values_and_the_errors_that_carry_them() -> None:
    assert [(c.name, int(c)) for c in ExitCode] == [
        ("OK", 0),
        ("PARTIAL", 1),
        ("USAGE", 2),
        ("WEIGHTS", 3),
        ("INTERNAL", 70),
        ("INTERRUPTED", 130),
        ("PIPE_CLOSED", 141),
        ("TERMINATED", 143),
    ]
    assert ExitCode.INTERRUPTED == 128 + signal.SIGINT
    assert ExitCode.PIPE_CLOSED == 128 + signal.SIGPIPE
    assert ExitCode.TERMINATED == 128 + signal.SIGTERM
    assert CnnvizError.exit_code == ExitCode.USAGE
    assert NotApplicableError.exit_code == ExitCode.USAGE
    assert WeightsUnavailableError.exit_code == ExitCode.WEIGHTS


# -- any other exception is a bug: 70 --------------------------------------------------------


def test_a_plain_value_error_in_a_method_is_an_internal_error(
    image: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry.get_method("gradcam"), "explain", _raiser(ValueError("boom")))
    argv = ["gradcam", image, *SHAPES, "--out", str(tmp_path / "o")]
    code, out, err = _run(argv, capsys)
    assert code == ExitCode.INTERNAL == 70
    assert err == [f"cnnviz: internal error: ValueError: boom {BUG}"]
    assert out == ""
    with pytest.raises(ValueError, match=r"^boom$"):  # --debug: the exception itself
        main(["-q", "--debug", *argv])


def test_an_os_error_outside_out_is_a_bug_inside_out_an_output_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import cnnviz.outputs.files

    out = tmp_path / "o"

    def disk_full(path: Path, data: bytes, *, durable: bool = True) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(cnnviz.outputs.files, "atomic_write_bytes", disk_full)
    argv = ["filters", "shapes_vgg11", "--weights", "random", "--out", str(out)]
    code, _, err = _run(argv, capsys)
    assert code == ExitCode.USAGE
    assert err == [
        f"cnnviz: error: Cannot write {out / 'backbone.conv1.filters.png'}: No space left on "
        f"device; check the free space and permissions of --out {out}."
    ]

    def elsewhere(path: Path, data: bytes, *, durable: bool = True) -> None:
        raise OSError(errno.EIO, "Input/output error", str(tmp_path / "elsewhere"))

    monkeypatch.setattr(cnnviz.outputs.files, "atomic_write_bytes", elsewhere)
    code, _, err = _run(argv, capsys)
    assert code == ExitCode.INTERNAL
    assert err == [
        f"cnnviz: internal error: OSError: [Errno 5] Input/output error: "
        f"'{tmp_path / 'elsewhere'}' {BUG}"
    ]


def test_an_unlistable_input_folder_is_a_user_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import cnnviz.inputs.images

    def denied(path: str) -> NoReturn:
        raise PermissionError(errno.EACCES, "Permission denied", path)

    monkeypatch.setattr(cnnviz.inputs.images, "find_images", denied)
    code, _, err = _run(["gradcam", "locked", *SHAPES, "--out", str(tmp_path)], capsys)
    assert code == ExitCode.USAGE
    assert err == ["cnnviz: error: locked: cannot list it (Permission denied)."]


def test_the_meta_device_is_refused_where_values_are_needed(
    image: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["gradcam", image, *SHAPES, "--device", "meta", "--out", str(tmp_path / "o")]
    code, _, err = _run(argv, capsys)
    assert code == ExitCode.USAGE
    assert len(err) == 1 and "--device meta holds shapes but no values" in err[0]
    argv = ["summary", "shapes_vgg11", "--weights", "random", "--device", "meta", "--json"]
    code, out, _ = _run(argv, capsys)
    assert code == ExitCode.OK
    assert json.loads(out)["total_params"] == 229_222


# -- --method all: skip only what does not apply ---------------------------------------------


@pytest.fixture
def three_methods(monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry cut down to gradcam, saliency and cam, so ``--method all`` is quick."""
    registry.method_names()  # registers the built-in methods
    subset = {name: registry.get_method(name) for name in ("gradcam", "saliency", "cam")}
    monkeypatch.setattr(base, "_REGISTRY", subset)


@pytest.mark.usefixtures("three_methods")
def test_method_all_skips_a_method_that_does_not_apply(
    image: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    reason = NotApplicableError("Saliency does not apply to this model (test)")
    monkeypatch.setattr(registry.get_method("saliency"), "explain", _raiser(reason))
    out = tmp_path / "o"
    code, _, err = _run(["explain", image, *SHAPES, "--method", "all", "--out", str(out)], capsys)
    assert code == ExitCode.OK
    manifest = json.loads((out / "manifest.json").read_text())
    skipped = manifest["extra"]["skipped_methods"]
    assert sorted(skipped) == ["cam", "saliency"]  # cam: the real check, 64 channels vs 256 inputs
    assert skipped["saliency"] == "Saliency does not apply to this model (test)"
    assert "'backbone.bn5_2' has 64 channels" in skipped["cam"]
    assert "takes 256 features" in skipped["cam"]
    assert [item["method"] for item in manifest["items"]] == ["gradcam"]
    assert manifest["failures"] == []
    assert err == [
        "cnnviz: method saliency skipped: Saliency does not apply to this model (test)",
        f"cnnviz: method cam skipped: {skipped['cam']}",
    ]


@pytest.mark.usefixtures("three_methods")
def test_method_all_fails_on_any_other_exception(
    image: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chosen behaviour: the run stops with exit 70 (a bug), rather than exit 1 with the image
    recorded as failed: an exception that is not a CnnvizError says nothing about the image."""
    monkeypatch.setattr(registry.get_method("saliency"), "explain", _raiser(RuntimeError("kaput")))
    argv = ["explain", image, *SHAPES, "--method", "all", "--out", str(tmp_path / "o")]
    code, _, err = _run(argv, capsys)
    assert code == ExitCode.INTERNAL
    assert err == [f"cnnviz: internal error: RuntimeError: kaput {BUG}"]


def test_one_method_that_does_not_apply_is_a_usage_error(
    image: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["explain", image, *SHAPES, "--method", "cam", "--out", str(tmp_path / "o")]
    code, _, err = _run(argv, capsys)
    assert code == ExitCode.USAGE
    assert len(err) == 1
    assert err[0].startswith("cnnviz: error: CAM needs the layer right before global average")


# -- one channel for usage errors ------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        ([], "the following arguments are required: COMMAND (see `cnnviz --help`)"),
        (["nope"], "argument COMMAND: invalid choice: 'nope'"),
        (["gradcam", "{image}"], "the following arguments are required: --out/-o"),
        (["gradcam", "{image}", "-o", "{out}", "--bogus"], "unrecognized arguments: --bogus"),
        (["filters", "--scale", "none", "-o", "{out}"], "argument --scale: invalid choice"),
        (["gradcam", "{image}", "-o", "{out}", "--batch-size", "0"], "positive whole number"),
        (["gradcam", "{image}", "-o", "{out}", "--alpha", "nan"], "number in [0, 1], got nan"),
        (["activations", "{image}", "--layers", "x", "--channels", "0", "-o", "{out}"], "got 0"),
        (["sanity", "{image}", "--mode", "both", "-o", "{out}"], "one or more of cascading"),
        (["evaluate", "{image}", "--baseline", "grey", "-o", "{out}"], "--baseline: invalid"),
        (["gradcam", "{image}", *SHAPES, "-o", ""], "--out is empty"),
        (["gradcam", "{image}", *SHAPES, "-t", "0", "--top-k", "1", "-o", "{out}"], "not both"),
        (["report", *MODEL, "-o", "{out}"], "give image files or folders, or --demo."),
        (["activations", "{image}", *MODEL, "--layers", ",", "-o", "{out}"], "--layers is empty"),
    ],
)
def test_every_usage_error_is_one_line_and_exit_2(
    argv: list[str], words: str, image: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [a.format(image=image, out=tmp_path / "o") for a in argv]
    for debug in ([], ["--debug"]):  # --debug re-raises bugs only
        code, out, err = _run([*debug, *argv], capsys)
        assert code == ExitCode.USAGE
        assert out == ""
        assert len(err) == 1, err
        assert err[0].startswith("cnnviz: error: ")
        assert words in err[0]
        assert "usage:" not in err[0]


def test_help_and_version_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    from cnnviz import __version__

    assert main(["--help"]) == ExitCode.OK
    assert capsys.readouterr().out.startswith("usage: cnnviz ")
    assert main(["gradcam", "--help"]) == ExitCode.OK
    assert capsys.readouterr().out.startswith("usage: cnnviz gradcam ")
    assert main(["--version"]) == ExitCode.OK
    assert capsys.readouterr().out == f"cnnviz {__version__}\n"


# -- the parser reads closed sets and the default model from one place ------------------------


def _option(command: str, flag: str) -> argparse.Action:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return next(a for a in sub.choices[command]._actions if flag in a.option_strings)


def test_choices_come_from_the_enums() -> None:
    from cnnviz.inspect import activations, filters
    from cnnviz.metrics import faithfulness, sanity

    assert _option("filters", "--scale").choices == ["per-filter", "global"] == values(FilterScale)
    assert _option("filters", "--view").choices == ["mean", "per-input"] == values(DeepFilterView)
    assert _option("activations", "--order").choices == ["first", "top"] == values(ChannelOrder)
    assert _option("evaluate", "--baseline").choices == ["zeros", "mean", "blur"]
    assert values(DeletionBaseline) == ["zeros", "mean", "blur"]
    assert _option("sanity", "--mode").default == ("cascading", "independent") == SANITY_MODES
    # The old homes still give the same objects.
    assert filters.FilterScale is FilterScale and filters.DeepFilterView is DeepFilterView
    assert activations.ChannelOrder is ChannelOrder
    assert faithfulness.Baseline is DeletionBaseline
    assert sanity.MODES == SANITY_MODES


def test_default_model_is_defined_once_and_imports_no_torch() -> None:
    from cnnviz.models import DEFAULT_MODEL, registry

    assert registry.DEFAULT_MODEL is DEFAULT_MODEL == "efficientnet_lite0"
    assert _option("gradcam", "--model").default == DEFAULT_MODEL
    code = "import sys, cnnviz.models; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- the summary line ------------------------------------------------------------------------


def test_finish_names_only_files_that_exist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "manifest.json").write_text("{}")
    args = argparse.Namespace(json=False)
    manifest: dict[str, Any] = {"items": [{}], "failures": []}
    files = ["index.html", "a.png", "a.png", "manifest.json"]
    assert finish(manifest, tmp_path, args, what="checks", files=files) == ExitCode.OK
    assert capsys.readouterr().out == f"Wrote checks to {tmp_path}/ (a.png, manifest.json)\n"
    manifest["failures"] = [{"input": "b.png", "method": "gradcam", "error": "bad\nfile"}]
    code = finish(manifest, tmp_path, args, files=["nothing.png"], list_failures=True)
    assert code == ExitCode.PARTIAL
    captured = capsys.readouterr()
    assert captured.out == f"Wrote 1 result(s) to {tmp_path}/\n"
    assert captured.err == "cnnviz: skipped b.png (gradcam): bad\\nfile\n"


def test_a_closed_pipe_is_141_and_quiet(capsys: pytest.CaptureFixture[str]) -> None:
    """``cnnviz models | head -1``: the reader goes away; exit 141 (128 + SIGPIPE), no bug line."""

    class ClosedPipe(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    with contextlib.redirect_stdout(ClosedPipe()):
        code = main(["models"])
    assert code == ExitCode.PIPE_CLOSED == 141
    assert capsys.readouterr().err == ""


def test_a_closed_pipe_from_a_real_reader_exits_quietly() -> None:
    """The same through a real pipe whose reader is gone before the child writes a line (the
    child's interpreter takes far longer to start than closing takes)."""
    command = [sys.executable, "-m", "cnnviz.cli", "methods"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as child:
        assert child.stdout is not None and child.stderr is not None
        child.stdout.close()  # the reader goes away, like `| head -0`
        err = child.stderr.read().decode()
        code = child.wait(timeout=60)
    assert code == 141, err
    assert err == ""
