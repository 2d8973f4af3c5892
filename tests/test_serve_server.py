"""The explorer as people start it: ``cnnviz.explore`` in the background and ``cnnviz serve`` in
the foreground, over real HTTP on 127.0.0.1 (a free port), with concurrent clients and Ctrl-C."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image
from starlette.testclient import TestClient

import cnnviz
from cnnviz.data.samples import bundled_samples
from cnnviz.errors import UsageError
from cnnviz.serve.server import Explorer, bind


@pytest.fixture(scope="module")
def explorer() -> Iterator[Explorer]:
    running = cnnviz.explore("efficientnet_lite0", port=0)
    yield running
    running.stop()


def test_explore_serves_on_localhost_with_a_token(explorer: Explorer) -> None:
    assert explorer.url.startswith("http://127.0.0.1:") and "?token=" in explorer.url
    base, token = explorer.url.split("/?token=")
    assert len(token) == 48
    with httpx.Client(base_url=base) as client:
        assert client.get("/api/info").status_code == 403
        page = client.get("/", params={"token": token})
        assert page.status_code == 200 and page.text.lower().startswith("<!doctype html")
        info = client.get("/api/info")  # the cookie the page set
        assert info.status_code == 200 and info.json()["model"]["name"] == "efficientnet_lite0"
    html = explorer._repr_html_()
    assert explorer.url in html and "<iframe" in html


def test_concurrent_clients_get_consistent_answers(explorer: Explorer) -> None:
    """Requests from many threads share one model: each answer is the one a lone request gets."""
    base, token = explorer.url.split("/?token=")
    headers = {"Authorization": f"Token {token}"}
    with httpx.Client(base_url=base, headers=headers, timeout=120) as client:
        ids = [i["id"] for i in client.get("/api/images").json()["images"]]
        asks = [
            (f"/api/images/{image}/explanation", {"method": method, "class": str(cls)})
            for image in ids
            for method in ("gradcam", "layercam", "gradcam++")
            for cls in (281, 967, 504)
        ]

        def ask(item: tuple[str, dict[str, str]]) -> tuple[int, float | None]:
            response = client.get(item[0], params=item[1])
            return response.status_code, response.json()["target"].get("probability")

        with ThreadPoolExecutor(8) as pool:
            together = list(pool.map(ask, asks * 2))
        alone = [ask(item) for item in asks]
    assert all(status == 200 for status, _ in together)
    assert together == alone * 2


def test_stop_frees_the_port_and_the_uploads() -> None:
    running = cnnviz.explore("efficientnet_lite0", port=0, samples=True)
    folder = running.session.folder
    base = running.url.split("/?token=")[0]
    assert folder.is_dir()
    running.stop()
    assert not folder.exists()
    with pytest.raises(httpx.HTTPError):
        httpx.get(base + "/api/info", timeout=2)


def test_connections_are_not_delayed_by_nagle() -> None:
    """asyncio sets TCP_NODELAY only on sockets made for IPPROTO_TCP; without it every small
    JSON answer waited 40 ms for the client's delayed ACK (measured: 44 ms → 1.2 ms)."""
    sock = bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()


def test_a_taken_port_is_a_usage_error() -> None:
    taken = bind("127.0.0.1", 0)
    try:
        with pytest.raises(UsageError, match="another --port"):
            bind("127.0.0.1", taken.getsockname()[1])
    finally:
        taken.close()


@pytest.mark.slow
def test_cnnviz_serve_prints_the_url_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    """The command as a new user runs it: no arguments but a free port; Ctrl-C ends it cleanly."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "cnnviz", "serve", "--port", "0", str(bundled_samples()[0])],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        url = ""
        deadline = time.monotonic() + 120
        while not url and time.monotonic() < deadline:
            line = process.stdout.readline() if process.stdout else ""
            if line.strip().startswith("http://127.0.0.1:"):
                url = line.strip()
            elif process.poll() is not None:
                break
        assert url, process.stderr.read() if process.stderr else ""
        answer = httpx.get(url, timeout=30)
        assert answer.status_code == 200
        images = httpx.get(url.replace("/?token=", "/api/images?token="), timeout=30).json()
        assert [i["source"] for i in images["images"]] == ["given", "sample"]  # chelsea once
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    assert "explorer stopped" in stderr and "Traceback" not in stderr


NET_PY = """
from torch import nn


class Gray(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))

    def forward(self, x):
        return self.head(self.features(x))
"""


def test_serve_takes_every_model_option(tmp_path: Path) -> None:
    """An engineer's own grayscale model: a class in a file, a checkpoint, class names, input
    size and normalisation, all from the command line, as for every other command."""
    import torch  # lazy: only this test builds a model by hand

    from cnnviz.cli.parser import build_parser
    from cnnviz.cli.serve_command import explorer_from_args

    (tmp_path / "net.py").write_text(NET_PY)
    namespace: dict[str, object] = {}
    exec(compile(NET_PY, "net.py", "exec"), namespace)
    torch.manual_seed(0)
    net = namespace["Gray"]()  # type: ignore[operator]
    torch.save(net.state_dict(), tmp_path / "gray.pth")
    (tmp_path / "names.txt").write_text("circle\nsquare\ntriangle\nstar\n")
    own = tmp_path / "mine.png"
    Image.new("L", (50, 40), 128).save(own)
    args = build_parser().parse_args(
        [
            "serve", str(own), "--model", f"{tmp_path / 'net.py'}:Gray",
            "--weights", str(tmp_path / "gray.pth"), "--class-names", str(tmp_path / "names.txt"),
            "--input-size", "32", "--mean", "0.5", "--std", "0.25", "--port", "0", "--no-samples",
        ]
    )  # fmt: skip
    explorer = explorer_from_args(args)
    try:
        with TestClient(explorer.server.config.app, base_url="http://127.0.0.1") as client:
            headers = {"Authorization": "Token " + explorer.url.split("?token=")[1]}
            images = client.get("/api/images", headers=headers).json()["images"]
            assert [(i["name"], i["source"]) for i in images] == [("mine.png", "given")]
            image = images[0]["id"]
            top = client.get(f"/api/images/{image}/predictions", headers=headers).json()
            assert {p["label"] for p in top["predictions"]} == {
                "circle",
                "square",
                "triangle",
                "star",
            }
            answer = client.get(
                f"/api/images/{image}/explanation",
                params={"method": "gradcam", "class": "star"},
                headers=headers,
            ).json()
            assert answer["target"]["label"] == "star" and answer["layer"] == "features"
            assert f"--weights {tmp_path / 'gray.pth'}" in answer["command"]
            picture = client.get("/" + answer["image"], headers=headers)
            assert Image.open(io.BytesIO(picture.content)).size == (32, 32)
    finally:
        explorer.stop()


def test_serve_with_no_arguments_offers_the_bundled_photos_on_the_default_model() -> None:
    from cnnviz.cli.parser import build_parser
    from cnnviz.cli.serve_command import explorer_from_args

    explorer = explorer_from_args(build_parser().parse_args(["serve", "--port", "0"]))
    try:
        assert explorer.session.loaded.name == "efficientnet_lite0"
        listed = [(i.name, i.source) for i in explorer.session.images()]
        assert listed == [("chelsea.jpg", "sample"), ("coffee.jpg", "sample")]
        assert explorer.url.startswith("http://127.0.0.1:")
    finally:
        explorer.stop()


def test_another_host_warns_and_accepts_any_host_name(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """--host 0.0.0.0 (bound here on 127.0.0.1 only: tests never listen on the network)."""
    from cnnviz.serve import server as serve_server

    monkeypatch.setattr(serve_server, "bind", lambda host, port: bind("127.0.0.1", 0))
    loaded = cnnviz.load_model("efficientnet_lite0")
    settings = serve_server.ServeSettings(host="0.0.0.0", port=0)
    with caplog.at_level("WARNING", logger="cnnviz.serve.server"):
        explorer = serve_server.make_explorer(loaded, [], settings)
    try:
        assert "anyone who can reach this address" in caplog.text
        assert explorer.url.startswith(f"http://{socket.gethostname()}:")
        token = explorer.url.split("?token=")[1]
        with TestClient(explorer.server.config.app, base_url="http://my-machine.lan") as client:
            answer = client.get("/api/info", headers={"Authorization": f"Token {token}"})
        assert answer.status_code == 200  # the machine's own name is now a fine Host
    finally:
        explorer.stop()


def test_open_starts_a_browser(monkeypatch: pytest.MonkeyPatch) -> None:
    import webbrowser

    from cnnviz.cli.main import main

    opened: list[str] = []
    monkeypatch.setattr(webbrowser, "open", opened.append)
    monkeypatch.setattr(Explorer, "serve_forever", lambda self: self.stop())
    monkeypatch.setattr("threading.Timer", _ImmediateTimer)
    assert main(["serve", "--port", "0", "--open"]) == 0
    assert len(opened) == 1 and opened[0].startswith("http://127.0.0.1:")
    assert "?token=" in opened[0]


class _ImmediateTimer:
    """threading.Timer that runs its function at start()."""

    def __init__(self, delay: float, function: object, args: tuple[object, ...] = ()) -> None:
        self.function, self.args = function, args

    def start(self) -> None:
        self.function(*self.args)  # type: ignore[operator]
