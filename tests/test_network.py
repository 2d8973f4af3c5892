"""Network found out once, quickly: the probe, its cache, CNNVIZ_OFFLINE, the hub going offline,
and pretrained weights refused at once (no retries) when their host cannot be reached.

Nothing here reaches beyond this machine: the probes go to 127.0.0.1, and where a download could
start, ``socket.create_connection`` (the call urllib and the hub client connect with) is replaced
by one that fails and counts.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cnnviz.errors import WeightsUnavailableError
from cnnviz.models import load_model
from cnnviz.models.network import forget_probes, hub_reachable, network_reachable


@pytest.fixture(autouse=True)
def _online(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Downloads allowed (conftest forbids them) and no remembered probe, before and after."""
    monkeypatch.delenv("CNNVIZ_OFFLINE", raising=False)
    forget_probes()
    yield
    forget_probes()


def _no_network(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every TCP connection fails as without a network (name lookup); returns the calls."""
    calls: list[tuple[str, int]] = []

    def fail(address: tuple[str, int], *args: object, **kwargs: object) -> socket.socket:
        calls.append(address)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", fail)
    return calls


@pytest.fixture
def hub_online(monkeypatch: pytest.MonkeyPatch) -> Iterator[logging.Logger]:
    """The hub client online, as in a user's shell (conftest puts it offline); its logger's level
    is restored with ``setLevel`` afterwards (which also resets logging's level caches)."""
    import huggingface_hub.constants as hub_constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.NOTSET)
    yield hub_logger
    hub_logger.setLevel(level)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_closed_port_is_unreachable_at_once_and_an_open_one_reachable() -> None:
    port = _closed_port()
    start = time.perf_counter()
    assert network_reachable("127.0.0.1", port) is False
    assert time.perf_counter() - start < 2.5
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert network_reachable("127.0.0.1", server.getsockname()[1]) is True


def test_each_host_is_probed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _no_network(monkeypatch)
    assert not network_reachable("huggingface.co")
    assert not network_reachable("huggingface.co")
    assert not network_reachable("download.pytorch.org", 443)
    assert calls == [("huggingface.co", 443), ("download.pytorch.org", 443)]
    forget_probes()
    assert not network_reachable("huggingface.co")
    assert len(calls) == 3


def test_cnnviz_offline_means_unreachable_without_a_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _no_network(monkeypatch)
    monkeypatch.setenv("CNNVIZ_OFFLINE", "1")
    assert network_reachable("127.0.0.1", _closed_port()) is False
    assert calls == []


def test_an_unreachable_hub_puts_its_client_offline(
    monkeypatch: pytest.MonkeyPatch, hub_online: logging.Logger
) -> None:
    import huggingface_hub.constants as hub_constants

    _no_network(monkeypatch)
    assert not hub_constants.is_offline_mode()
    assert hub_reachable() is False
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert hub_constants.is_offline_mode()
    assert hub_online.level == logging.ERROR


def test_timm_pretrained_without_network_fails_at_once_without_retries(
    monkeypatch: pytest.MonkeyPatch,
    hub_online: logging.Logger,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The hub client starts online with an empty cache; without the probe it would retry for
    about a minute, logging "Retrying in 1s [Retry 1/5]" and more."""
    import huggingface_hub.constants as hub_constants
    import timm  # noqa: F401  # imported before the clock starts: its import takes seconds

    calls = _no_network(monkeypatch)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    start = time.perf_counter()
    with (
        caplog.at_level(logging.DEBUG),
        pytest.raises(WeightsUnavailableError, match=r"^no network: .*timm:resnet18") as error,
    ):
        load_model("timm:resnet18")
    assert time.perf_counter() - start < 1.0
    assert "huggingface.co cannot be reached" in str(error.value)
    assert 'weights="FILE" or weights="random"' in str(error.value)
    assert calls == [("huggingface.co", 443)]  # the probe, and no request after it
    assert "retry" not in (capfd.readouterr().err + caplog.text).lower()


def test_torchvision_weights_without_network_fail_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = _no_network(monkeypatch)
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError, match=r"^no network: .*'vgg11'") as error:
        load_model("vgg11")
    assert time.perf_counter() - start < 1.0
    assert "download.pytorch.org cannot be reached" in str(error.value)
    assert calls == [("download.pytorch.org", 443)]


def test_timm_pretrained_without_network_loads_cached_weights(
    monkeypatch: pytest.MonkeyPatch, hub_online: logging.Logger, tmp_path: Path
) -> None:
    """Weights in the Hugging Face cache (its documented layout: refs/main names the snapshot)
    load without a network, after the one probe."""
    import huggingface_hub.constants as hub_constants
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    planted = timm.create_model("resnet18", pretrained=False)
    repo = tmp_path / "models--timm--resnet18.a1_in1k"
    commit = "0" * 40
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    state = {k: v.contiguous() for k, v in planted.state_dict().items()}
    save_file(state, str(repo / "snapshots" / commit / "model.safetensors"))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    calls = _no_network(monkeypatch)
    loaded = load_model("timm:resnet18")
    assert "pretrained" in loaded.weights
    assert torch.equal(loaded.module.fc.weight, planted.fc.weight)
    assert calls == [("huggingface.co", 443)]
