"""Property: on any bytes, load_image returns 8-bit RGB or raises ImageLoadError — nothing else.

Random bytes and mutations (overwritten, inserted, deleted bytes and truncation) of small valid
PNG, JPEG and GIF files. Derandomized and bounded so CI is deterministic and fast.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cnnviz.errors import ImageLoadError
from cnnviz.inputs.images import load_image_with_notes

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _encoded(fmt: str, mode: str) -> bytes:
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (6, 7, len(mode)), dtype=np.uint8)
    image = Image.fromarray(array.squeeze(-1) if len(mode) == 1 else array, mode=mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


VALID = {
    ".png": _encoded("PNG", "RGB"),
    ".jpg": _encoded("JPEG", "RGB"),
    ".gif": _encoded("GIF", "L"),
}


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    # Module-scoped: hypothesis reruns the test body many times within one function call.
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)


def check(folder: Path, suffix: str, data: bytes) -> None:
    path = folder / f"fuzz{suffix}"
    path.write_bytes(data)
    try:
        image, notes = load_image_with_notes(path)
    except ImageLoadError as e:
        message = str(e)
        assert "\n" not in message
        assert str(path) in message
        return
    assert image.mode == "RGB"
    assert image.width >= 1
    assert image.height >= 1
    assert np.asarray(image).dtype == np.uint8
    assert all(isinstance(note, str) for note in notes)


def test_valid_seeds_load(scratch: Path) -> None:
    for suffix, data in VALID.items():
        check(scratch, suffix, data)
        assert load_image_with_notes(scratch / f"fuzz{suffix}")[0].size == (7, 6)


@FUZZ
@given(
    data=st.binary(min_size=0, max_size=512),
    suffix=st.sampled_from([".png", ".jpg", ".gif", ".tif", ".bin"]),
)
def test_random_bytes(scratch: Path, data: bytes, suffix: str) -> None:
    check(scratch, suffix, data)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    suffix = draw(st.sampled_from(sorted(VALID)))
    data = bytearray(VALID[suffix])
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["set", "insert", "delete", "truncate"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "set" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        else:
            del data[at:]
    return suffix, bytes(data)


@FUZZ
@given(case=mutated())
def test_mutated_valid_files(scratch: Path, case: tuple[str, bytes]) -> None:
    suffix, data = case
    check(scratch, suffix, data)


@FUZZ
@given(
    offset=st.integers(0, 40),
    value=st.integers(0, 255),
    suffix=st.sampled_from(sorted(VALID)),
)
def test_single_byte_changes_in_the_header(
    scratch: Path, offset: int, value: int, suffix: str
) -> None:
    # Headers hold the sizes, so this is where decompression bombs and bad allocations come from.
    data = bytearray(VALID[suffix])
    data[offset] = value
    check(scratch, suffix, bytes(data))
