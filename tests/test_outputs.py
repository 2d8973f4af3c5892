"""Atomic writes, safe file names and the manifest."""

from __future__ import annotations

import dataclasses
import json
import os
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

import cnnviz
from cnnviz.errors import NonFiniteError, OutputError
from cnnviz.inspect.filters import FilterScale
from cnnviz.outputs.files import (
    atomic_write_bytes,
    safe_stem,
    to_json_text,
    unique_stems,
    write_json,
    write_npy,
    write_png,
)
from cnnviz.outputs.manifest import (
    SCHEMA_VERSION,
    Manifest,
    environment_info,
    read_manifest,
    write_manifest,
)
from cnnviz.outputs.records import prepare_out_dir


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.bin"
    atomic_write_bytes(target, b"first")
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert os.listdir(target.parent) == ["out.bin"]


def test_unserialisable_json_leaves_old_file(tmp_path: Path) -> None:
    target = tmp_path / "m.json"
    write_json(target, {"ok": 1})
    old = target.read_bytes()
    with pytest.raises(TypeError, match="object"):
        write_json(target, {"bad": object()})
    with pytest.raises(NonFiniteError):
        write_json(target, {"score": float("nan")})
    assert target.read_bytes() == old
    assert os.listdir(tmp_path) == ["m.json"]


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_failure_mid_write_keeps_old_file_and_removes_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    target = tmp_path / "a.png"
    atomic_write_bytes(target, b"old")

    def boom(*_args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, failing, boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"new" * 1000)
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["a.png"]


def test_out_dir_is_created_and_returned(tmp_path: Path) -> None:
    assert prepare_out_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert (tmp_path / "a" / "b").is_dir()
    assert prepare_out_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"  # existing: fine


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("file.txt", "{out} exists and is not a folder; give a folder for --out."),
        ("file.txt/out", "Cannot create the output folder {out} (Not a directory);"),
        ("file.txt/deeper/out", "Cannot create the output folder {out} (Not a directory);"),
    ],
)
def test_out_dir_that_cannot_be_a_folder_is_an_output_error(
    tmp_path: Path, where: str, message: str
) -> None:
    """A folder at or under a regular file cannot exist, for root as for anyone else."""
    (tmp_path / "file.txt").write_text("keep me")
    out = tmp_path / where
    with pytest.raises(OutputError) as caught:
        prepare_out_dir(out)
    assert str(caught.value).startswith(message.format(out=out))
    assert isinstance(caught.value, OSError)
    assert isinstance(caught.value.__cause__, (NotADirectoryError, FileExistsError))
    assert (tmp_path / "file.txt").read_text() == "keep me"
    assert os.listdir(tmp_path) == ["file.txt"]


def test_out_dir_without_write_permission_is_an_output_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The permission check itself, whoever runs the suite (root passes any real one)."""
    asked: list[tuple[str, int]] = []

    def no_write(path: str | os.PathLike[str], mode: int, **_kwargs: object) -> bool:
        asked.append((os.fspath(path), mode))
        return False

    monkeypatch.setattr(os, "access", no_write)
    with pytest.raises(OutputError) as caught:
        prepare_out_dir(tmp_path / "ro")
    assert str(caught.value) == (
        f"The output folder {tmp_path / 'ro'} is not writable; choose another --out."
    )
    assert asked == [(str(tmp_path / "ro"), os.W_OK | os.X_OK)]


def test_cli_out_under_a_file_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cnnviz.cli import main

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "file.txt").write_text("keep me")
    out = tmp_path / "file.txt" / "out"
    model = ["--model", "shapes_vgg11", "--weights", "random", "--workers", "0"]
    code = main(["-q", "gradcam", str(tmp_path / "a.png"), *model, "-o", str(out)])
    err = capsys.readouterr().err.splitlines()
    assert code == 2
    assert err == [f"cnnviz: error: Cannot create the output folder {out} (Not a directory); "
                   "choose a writable --out."]  # fmt: skip
    assert sorted(os.listdir(tmp_path)) == ["a.png", "file.txt"]


def test_write_json_format(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    write_json(target, {"b": (1, 2), "a": "é", "p": Path("d/f.png")})
    assert target.read_text(encoding="utf-8") == (
        '{\n  "a": "é",\n  "b": [\n    1,\n    2\n  ],\n  "p": "d/f.png"\n}\n'
    )
    assert to_json_text({"z": np.float32(0.5), "k": FilterScale.GLOBAL}) == (
        '{\n  "k": "global",\n  "z": 0.5\n}'
    )


def test_write_npy_float32_and_values(tmp_path: Path) -> None:
    data = np.array([[0.1, -2.5], [3.0, 1e-3]], dtype=np.float64)
    write_npy(tmp_path / "m.npy", data)
    loaded = np.load(tmp_path / "m.npy")
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, data.astype(np.float32))
    write_npy(tmp_path / "i.npy", np.array([1, 2], dtype=np.int64))
    assert np.load(tmp_path / "i.npy").dtype == np.int64
    with pytest.raises(TypeError, match="object"):
        write_npy(tmp_path / "o.npy", np.array([object()]))


def test_write_png_roundtrip(tmp_path: Path) -> None:
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 7
    write_png(tmp_path / "rgb.png", rgb)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "rgb.png")), rgb)
    gray = np.array([[0, 128, 255]], dtype=np.uint8)
    write_png(tmp_path / "g.png", gray)
    with Image.open(tmp_path / "g.png") as img:
        assert img.mode == "L"
        np.testing.assert_array_equal(np.asarray(img), gray)
    with pytest.raises(TypeError, match="uint8"):
        write_png(tmp_path / "f.png", rgb.astype(np.float32))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("../../etc/passwd", "etc_passwd"),
        ("..\\..\\windows\\system32", "windows_system32"),
        ("a\x00b\nc", "a_b_c"),
        ("cat photo (1)", "cat_photo_1"),
        ("Ünïcødé 名前", "Ünïcødé_名前"),
        ("-rf", "rf"),
        ("...", "image"),
        ("", "image"),
        ("con", "_con"),
        ("x..y", "x.y"),
    ],
)
def test_safe_stem_examples(name: str, expected: str) -> None:
    assert safe_stem(name) == expected


@given(st.text(max_size=300))
def test_safe_stem_properties(name: str) -> None:
    stem = safe_stem(name)
    assert stem
    assert "/" not in stem
    assert "\\" not in stem
    assert ".." not in stem
    assert not any(ord(ch) < 32 or ord(ch) == 127 for ch in stem)
    assert not stem.startswith((".", "-"))
    assert len(stem) <= 100
    assert len(stem.encode("utf-8")) <= 200
    assert safe_stem(stem) == stem


def test_unique_stems_dedupes() -> None:
    assert unique_stems([Path("a.jpg"), Path("x/a.png"), Path("b.jpg")]) == ["a", "a-2", "b"]
    # A suffixed name never takes another input's plain name; case-insensitive collisions.
    assert unique_stems([Path("a.jpg"), Path("a.png"), Path("a-2.jpg")]) == ["a", "a-3", "a-2"]
    assert unique_stems([Path("A.jpg"), Path("a.png"), Path("a.gif")]) == ["A", "a-2", "a-3"]


def test_environment_info_versions() -> None:
    import platform

    import torchvision

    info = environment_info()
    assert info["cnnviz"] == cnnviz.__version__
    assert info["torch"] == torch.__version__
    assert info["torchvision"] == torchvision.__version__
    assert info["python"] == platform.python_version()
    assert info["platform"]


def test_version_is_the_installed_metadata_written_once_in_pyproject(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import importlib.metadata
    import re

    from cnnviz.cli import main

    installed = importlib.metadata.version("cnnviz")
    assert cnnviz.__version__ == installed
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"cnnviz {installed}\n"
    root = Path(__file__).resolve().parents[1]
    pyproject = (root / "pyproject.toml").read_text(encoding="utf-8")
    # One literal version, in [project]; a stale install of an older checkout fails here.
    assert re.findall(r'(?m)^version = "([^"]+)"$', pyproject) == [installed]
    init = (root / "src" / "cnnviz" / "__init__.py").read_text(encoding="utf-8")
    assert not re.search(r"[\"']\d+\.\d+", init)  # no second copy of a version number


def test_version_without_metadata_says_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.delattr(cnnviz, "__version__", raising=False)  # the cached lookup; restored after
    monkeypatch.setattr(importlib.metadata, "version", missing)
    assert cnnviz.__version__ == "0+unknown"


def _manifest() -> Manifest:
    return Manifest(
        command="gradcam",
        model={"name": "vgg11", "weights": None},
        method="gradcam",
        layer="backbone.bn5_2",
        items=[{"input": "a.jpg", "files": {"overlay": "a/overlay.png"}, "score": 1.5}],  # type: ignore[arg-type]  # lists are accepted and frozen to tuples
    )


def test_manifest_defaults_and_dict(tmp_path: Path) -> None:
    manifest = _manifest()
    assert isinstance(manifest.items, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        manifest.command = "x"  # type: ignore[misc]  # the point: it is frozen
    data = manifest.to_dict()
    assert data["schema_version"] == SCHEMA_VERSION == 1
    created = datetime.fromisoformat(str(data["created"]))
    assert created.utcoffset() == timedelta(0)
    assert data["items"] == [
        {"input": "a.jpg", "files": {"overlay": "a/overlay.png"}, "score": 1.5}
    ]
    assert data["failures"] == []
    assert data["environment"] == environment_info()
    assert set(data) == {
        "schema_version",
        "created",
        "command",
        "model",
        "method",
        "layer",
        "items",
        "failures",
        "environment",
        "extra",
    }
    path = write_manifest(tmp_path / "run", manifest)
    assert path == tmp_path / "run" / "manifest.json"
    assert json.loads(path.read_text(encoding="utf-8")) == data
    assert read_manifest(tmp_path / "run") == manifest


def test_manifest_refuses_newer_schema_and_nan(tmp_path: Path) -> None:
    data = _manifest().to_dict()
    data["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(ValueError, match="schema version"):
        Manifest.from_dict(data)
    bad = Manifest(command="x", model={}, items=({"score": float("inf")},))
    with pytest.raises(NonFiniteError):
        write_manifest(tmp_path, bad)
    assert not (tmp_path / "manifest.json").exists()
