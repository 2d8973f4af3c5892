"""Shared test set-up: no network, nothing read or written in the user's home, sample images.

Set at import, before any test module imports cnnviz, torch, timm, matplotlib or huggingface_hub:

* ``CNNVIZ_OFFLINE=1`` (cnnviz never downloads) and ``HF_HUB_OFFLINE=1`` (nor does timm).
* ``CNNVIZ_CACHE``: the session's cnnviz cache, where ``shapes_vgg11`` is trained once (about
  95–255 s on one core) and reused by later runs: ``<checkout>/build/test-cache`` (``build/``
  is git-ignored), unless the caller already set the variable (CI or a developer sharing one
  cache), in which case theirs is kept. Never ``~/.cache/cnnviz``. A test that needs an empty
  cache passes its own ``tmp_path`` (``load_shapes_vgg11(cache_dir=...)`` or
  ``monkeypatch.setenv``).
* ``MPLCONFIGDIR``: matplotlib's font cache goes to ``<session cache>/matplotlib`` rather than
  ``~/.cache/matplotlib`` (again, a caller's own setting is kept).
* ``OMP_NUM_THREADS=1`` in a pytest-xdist worker (``make unit`` runs one per core), unless set.

``TORCH_HOME`` and the ``XDG_*`` folders point at fresh temporary directories for the whole
session, so no test sees weights cached on the developer's machine and the programs tests start
(Chromium) write nothing into their home; a test that plants a checkpoint there should use
``monkeypatch.setenv("TORCH_HOME", str(tmp_path))`` to keep it to itself.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLES_DIR = REPO_ROOT / "src" / "cnnviz" / "data" / "samples"
DEFAULT_TEST_CACHE = REPO_ROOT / "build" / "test-cache"
"""The session cache unless the caller sets ``CNNVIZ_CACHE``."""

os.environ["CNNVIZ_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
CACHE_SET_BY_CALLER = bool(os.environ.get("CNNVIZ_CACHE"))  # empty means unset, as in cnnviz
if not CACHE_SET_BY_CALLER:
    os.environ["CNNVIZ_CACHE"] = str(DEFAULT_TEST_CACHE)
SESSION_CACHE = Path(os.environ["CNNVIZ_CACHE"]).expanduser()
if not os.environ.get("MPLCONFIGDIR"):
    os.environ["MPLCONFIGDIR"] = str(SESSION_CACHE / "matplotlib")
if os.environ.get("PYTEST_XDIST_WORKER") and not os.environ.get("OMP_NUM_THREADS"):
    # `make unit` runs one pytest worker per core: one torch thread each, not cores² in all
    os.environ["OMP_NUM_THREADS"] = "1"


XDG_DIRS = ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME")
"""Where other programs the tests start (Chromium and its dconf) keep their files."""


@pytest.fixture(scope="session", autouse=True)
def _empty_torch_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An empty ``TORCH_HOME`` and empty XDG folders for the session (restored afterwards).

    The XDG folders are replaced even when the caller set them: theirs lie in their home.
    """
    home = tmp_path_factory.mktemp("torch_home")
    xdg = tmp_path_factory.mktemp("xdg")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(home))
        patch.setenv("CNNVIZ_OFFLINE", "1")
        for name in XDG_DIRS:
            patch.setenv(name, str(xdg / name.removeprefix("XDG_").lower()))
        yield home


@pytest.fixture(autouse=True)
def _restore_cnnviz_logger() -> Iterator[None]:
    """Undo what an in-process CLI call does to the ``cnnviz`` logger: its handler holds that
    test's captured stderr, which is closed afterwards ("Logging error: I/O operation on closed
    file" in later tests); its level and ``propagate=False`` would leak into later tests too."""
    logger = logging.getLogger("cnnviz")
    handlers, level, propagate = logger.handlers[:], logger.level, logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


@dataclass(frozen=True)
class SessionCache:
    """The session's ``CNNVIZ_CACHE`` folder and whether the caller chose it."""

    path: Path
    set_by_caller: bool
    default: Path = DEFAULT_TEST_CACHE


@pytest.fixture(scope="session")
def session_cache() -> SessionCache:
    """The folder ``CNNVIZ_CACHE`` names for the whole session (see the module docstring)."""
    return SessionCache(SESSION_CACHE, CACHE_SET_BY_CALLER)


@pytest.fixture
def samples_dir() -> Path:
    """The bundled sample photographs (``coffee.jpg``, ``chelsea.jpg``)."""
    return SAMPLES_DIR
