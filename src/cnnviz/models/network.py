"""Whether a download can work, found out once and quickly, before a library spends a minute on it.

Without a network, ``timm.create_model(..., pretrained=True)`` asks the Hugging Face hub for each
candidate weights file and retries five times with back-off: about a minute and a dozen log lines
before it gives up. :func:`network_reachable` opens one TCP connection to the host instead
(two seconds at most, once per host and process) and :func:`hub_reachable` puts the hub client in
its offline mode when the hub cannot be reached, so that it answers from its local cache at once
and never retries. ``CNNVIZ_OFFLINE`` (:func:`offline_mode`) means unreachable, without a probe.
"""

from __future__ import annotations

import logging
import os
import socket
import sys

logger = logging.getLogger(__name__)

HUB_HOST = "huggingface.co"
PYTORCH_HOST = "download.pytorch.org"
_TRUE = {"1", "true", "yes", "on"}

# (host, port) → reachable: each host is probed once per process.
_PROBED: dict[tuple[str, int], bool] = {}


def offline_mode() -> bool:
    """Whether ``CNNVIZ_OFFLINE`` forbids every download (``1``, ``true``, ``yes`` or ``on``)."""
    return os.environ.get("CNNVIZ_OFFLINE", "").strip().lower() in _TRUE


def network_reachable(host: str = HUB_HOST, port: int = 443, timeout: float = 2.0) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` seconds.

    The answer is remembered per ``(host, port)`` for the rest of the process (a failed name
    lookup, a refused connection and a timeout all mean unreachable). With ``CNNVIZ_OFFLINE`` set
    the answer is ``False`` and nothing is probed (or remembered).
    """
    if offline_mode():
        return False
    key = (host, port)
    if key not in _PROBED:
        try:
            with socket.create_connection(key, timeout=timeout):
                _PROBED[key] = True
        except OSError as e:  # gaierror, ConnectionRefusedError, TimeoutError, no route, ...
            logger.debug("%s:%d is not reachable: %s", host, port, e)
            _PROBED[key] = False
    return _PROBED[key]


def forget_probes() -> None:
    """Forget every remembered answer, so the next :func:`network_reachable` probes again."""
    _PROBED.clear()


def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether the Hugging Face hub can be reached; if not, its client goes offline now.

    Offline, ``huggingface_hub`` (and timm through it) reads its local cache only: no request,
    no retries, and its warnings (only retry noise then) are silenced below ERROR. The variable
    ``HF_HUB_OFFLINE`` is set for libraries imported later; ``huggingface_hub`` reads it once at
    import, so an already imported one is switched too.
    """
    if network_reachable(HUB_HOST, 443, timeout):
        return True
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        setattr(constants, "HF_HUB_OFFLINE", True)  # noqa: B010  # a module mypy cannot see
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    return False
