"""Running the explorer on uvicorn: in the foreground for ``cnnviz serve`` (Ctrl-C stops it
cleanly) or in a background thread for :func:`explore` in a notebook.

The socket is bound before uvicorn starts, so the URL (with its port) is known at once, also for
``port=0`` (a free port).
"""

from __future__ import annotations

import logging
import socket
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from torch import nn

from cnnviz.errors import UsageError
from cnnviz.models.loaded import LoadedModel
from cnnviz.serve.app import create_app
from cnnviz.serve.security import new_token
from cnnviz.serve.session import ExplorerSession
from cnnviz.serve.uploads import MEGABYTE, UploadLimits

logger = logging.getLogger(__name__)

LOCAL_HOSTS = ("127.0.0.1", "localhost")

STARTUP_SECONDS = 30.0
"""How long :meth:`Explorer.start` waits for uvicorn to serve."""


@dataclass(frozen=True)
class ServeSettings:
    """Where and how the explorer serves: host, port (0: a free one), cache budget, limits."""

    host: str = "127.0.0.1"
    port: int = 0
    cache_mb: float = 512.0
    max_upload_mb: float = 20.0
    max_upload_mp: float = 40.0
    samples: bool = True

    @property
    def limits(self) -> UploadLimits:
        return UploadLimits(
            max_bytes=int(self.max_upload_mb * MEGABYTE),
            max_pixels=int(self.max_upload_mp * 1_000_000),
        )


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``UsageError`` naming the remedy if taken)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, so that asyncio sets TCP_NODELAY on each connection: without it a small
    # answer written in two pieces waits for the client's delayed ACK (40 ms on Linux)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UsageError(
            f"Cannot listen on {host}:{port} ({e.strerror}); choose another --port "
            "(0 picks a free one)."
        ) from e
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


@dataclass
class Explorer:
    """A running explorer: its :attr:`url` (with the token), :meth:`stop`, and in a notebook a
    link and the page inline."""

    url: str
    session: ExplorerSession
    server: uvicorn.Server
    sock: socket.socket
    folder: tempfile.TemporaryDirectory[str]
    thread: threading.Thread | None = field(default=None, repr=False)

    def serve_forever(self) -> None:
        """Serve in this thread until Ctrl-C (or SIGTERM), then clean up."""
        try:
            self.server.run(sockets=[self.sock])
        finally:
            self._clean_up()

    def start(self) -> Explorer:
        """Serve in a background thread; returns once the server answers."""
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + STARTUP_SECONDS
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self._clean_up()
                raise RuntimeError("The cnnviz explorer did not start; see the log above.")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Shut the server down and delete its temporary folder (uploads)."""
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=10)
        self._clean_up()

    def _clean_up(self) -> None:
        self.sock.close()
        self.folder.cleanup()

    def __repr__(self) -> str:
        return f"Explorer({self.url})"

    def _repr_html_(self) -> str:
        return (
            f'<p>cnnviz explorer: <a href="{self.url}" target="_blank">{self.url}</a></p>'
            f'<iframe src="{self.url}" width="100%" height="860" '
            'style="border:1px solid #ccc"></iframe>'
        )


def make_explorer(loaded: LoadedModel, images: Sequence[Path], settings: ServeSettings) -> Explorer:
    """The explorer of ``loaded`` on ``images`` (plus the bundled samples), bound but not yet
    serving: call :meth:`Explorer.serve_forever` or :meth:`Explorer.start`."""
    # lazy: the samples module loads torch's data helpers, only needed here
    from cnnviz.data.samples import bundled_samples

    folder = tempfile.TemporaryDirectory(prefix="cnnviz-serve-")
    samples = bundled_samples() if settings.samples or not images else []
    session = ExplorerSession(
        loaded,
        images,
        folder=Path(folder.name),
        samples=samples,
        cache_mb=settings.cache_mb,
        limits=settings.limits,
    )
    token = new_token()
    local = settings.host in LOCAL_HOSTS
    if not local:
        logger.warning(
            "serving on %s: anyone who can reach this address and has the token can use the "
            "explorer (and your model); the default, 127.0.0.1, is reachable from this machine "
            "only",
            settings.host,
        )
    app = create_app(session, token, hosts=(settings.host,) if local else ("*",))
    sock = bind(settings.host, settings.port)
    port = sock.getsockname()[1]
    shown_host = settings.host if ":" not in settings.host else f"[{settings.host}]"
    if settings.host in ("0.0.0.0", "::"):  # every address: the URL names this machine
        shown_host = socket.gethostname()
    config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
    return Explorer(
        url=f"http://{shown_host}:{port}/?token={token}",
        session=session,
        server=uvicorn.Server(config),
        sock=sock,
        folder=folder,
    )


def explore(
    model: LoadedModel | nn.Module | str,
    images: Any = None,
    *,
    port: int = 0,
    cache_mb: float = 512.0,
    samples: bool = True,
) -> Explorer:
    """Start the explorer (``cnnviz serve``) in the background and return it: ``.url`` opens
    it, ``.stop()`` ends it; in a notebook it shows its link and the page inline.

    Args:
        model: a :class:`~cnnviz.models.LoadedModel`, a registry name (``"efficientnet_lite0"``)
            or your own ``nn.Module`` (wrapped with :func:`cnnviz.from_module`).
        images: image files or folders (default: none; the bundled samples are always there
            unless ``samples=False``).
        port: the port on 127.0.0.1 (0: a free one).
        cache_mb: the byte budget of the explorer's cache.

    Example::

        >>> explorer = cnnviz.explore("efficientnet_lite0", ["cat.jpg"])
        >>> explorer.url   # 'http://127.0.0.1:41234/?token=…'
        >>> explorer.stop()
    """
    # lazy: model loading pulls in torchvision and timm; paths are listed only when given
    from cnnviz.inputs.images import find_images
    from cnnviz.models import from_module, load_model

    if isinstance(model, str):
        loaded = load_model(model)
    elif isinstance(model, nn.Module):
        loaded = from_module(model)
    else:
        loaded = model
    if images is None:
        paths: list[Path] = []
    else:
        given = [images] if isinstance(images, str | Path) else list(images)
        paths = [found for item in given for found in find_images(item)]
    settings = ServeSettings(port=port, cache_mb=cache_mb, samples=samples)
    return make_explorer(loaded, paths, settings).start()
