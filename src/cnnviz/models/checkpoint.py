"""Weight files: reading checkpoints safely, fitting them to a model, and finding cached weights.

Reading never unpickles arbitrary objects: ``.pth``/``.pt``/``.bin`` go through
``torch.load(weights_only=True)``, which only rebuilds tensors and plain containers, so a pickle
that would run code is refused (:class:`CheckpointError`, "refused to unpickle …").
``.safetensors`` files hold tensors only and are read with :mod:`safetensors`.

Pretrained files that torchvision publishes are looked up where torch caches them,
``<torch.hub.get_dir()>/checkpoints/<file name of the URL>``; a download is attempted only when
the caller asks for it and the environment variable ``CNNVIZ_OFFLINE`` is not set.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from cnnviz.errors import (
    CheckpointError,
    NonFiniteError,
    WeightsUnavailableError,
    remedy,
    weights_remedy,
)
from cnnviz.models.network import network_reachable
from cnnviz.models.network import offline_mode as offline_mode  # re-exported for the loaders

logger = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".pth", ".pt", ".bin")
SAFETENSORS_SUFFIXES = (".safetensors",)
# Containers under which training scripts commonly keep the state dict.
_STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict")
# Prefixes added by nn.DataParallel/DistributedDataParallel and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# torch.hub's convention: ``name-<sha256 prefix>.ext``.
_HASH_IN_NAME = re.compile(r"-([a-f0-9]+)\.")
_FEW = 5


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint path that does not exist or is not a file."""


def _few(items: list[str]) -> str:
    """The first few items and how many there are: ``'a', 'b', … (7 in all)``."""
    shown = ", ".join(repr(item) for item in items[:_FEW])
    return f"{shown}, … ({len(items)} in all)" if len(items) > _FEW else shown


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from ``path`` without ever unpickling arbitrary objects.

    Accepts a raw state dict, or a dict holding one under ``"state_dict"``, ``"model"`` or
    ``"model_state_dict"``; a ``module.`` (DataParallel) or ``_orig_mod.`` (torch.compile) prefix
    shared by every key is stripped. Tensors are loaded to the CPU.

    Raises:
        CheckpointNotFoundError: the file does not exist.
        CheckpointError: an unknown suffix, a pickle that needs arbitrary code ("refused to
            unpickle"), a corrupt file, or content that is not a mapping of names to tensors.
        NonFiniteError: a floating tensor holds NaN or infinite values; the message names it.

    Example::

        state = load_checkpoint("my_vgg.safetensors")
    """
    file = Path(path).expanduser()
    if file.is_dir():
        raise CheckpointNotFoundError(
            f"Checkpoint {str(file)!r} is a directory; pass the checkpoint file itself as "
            f"{remedy('--weights', 'weights=')}"
        )
    if not file.is_file():
        raise CheckpointNotFoundError(
            f"Checkpoint {str(file)!r} does not exist; check the path passed as "
            f"{remedy('--weights', 'weights=')}"
        )
    suffix = file.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        raw = _read_safetensors(file)
    elif suffix in PICKLE_SUFFIXES:
        raw = _read_pickle(file)
    elif (kind := zip_kind(file)) is not None:
        raise CheckpointError(program_remedy(file, kind))
    else:
        accepted = ", ".join(PICKLE_SUFFIXES + SAFETENSORS_SUFFIXES)
        raise CheckpointError(
            f"checkpoint {str(file)!r} has suffix {suffix!r}; cnnviz reads {accepted} files, "
            "so save the weights as one of those"
        )
    state_dict = _extract_state_dict(raw, file)
    check_finite_weights(state_dict, source=str(file))
    return state_dict


def _read_safetensors(file: Path) -> object:
    from safetensors import SafetensorError  # lazy: only checkpoint files need it
    from safetensors.torch import load_file  # lazy: only checkpoint files need it

    try:
        return load_file(str(file), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"cannot read safetensors checkpoint {str(file)!r} ({e}); the file is damaged or not "
            "a safetensors file"
        ) from e


def _read_pickle(file: Path) -> object:
    kind = zip_kind(file)
    if kind is not None:  # torch.load would warn and hand it to torch.jit.load
        raise CheckpointError(program_remedy(file, kind))
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch wraps the restricted unpickler's reason (e.g. "Unsupported global: GLOBAL
        # io.open …") in advice to retry unsafely; keep only the reason.
        reason = str(e.__cause__ or e.__context__ or e).strip().split("\n")[0].split(". ")[0]
        raise CheckpointError(
            f"refused to unpickle {str(file)!r}: it is not a plain state dict of tensors "
            f"({reason[:200]}); save model.state_dict() with torch.save, or use safetensors"
        ) from e
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise CheckpointError(
            f"cannot read checkpoint {str(file)!r} ({e}); the file is damaged or not a "
            "PyTorch checkpoint"
        ) from e


def _extract_state_dict(raw: object, file: Path) -> dict[str, torch.Tensor]:
    """The name → tensor mapping inside ``raw``, with wrapper prefixes stripped."""
    if not isinstance(raw, Mapping):
        raise CheckpointError(
            f"checkpoint {str(file)!r} holds a {type(raw).__name__}, not a state dict; "
            "save model.state_dict()"
        )
    for key in _STATE_DICT_KEYS:
        inner = raw.get(key)
        if isinstance(inner, Mapping):
            logger.debug("using the state dict stored under %r in %s", key, file)
            raw = inner
            break
    state = dict(raw)
    not_tensors = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors or not state:
        what = f"non-tensor entries {_few(not_tensors)}" if not_tensors else "no tensors"
        raise CheckpointError(
            f"checkpoint {str(file)!r} has {what}; save model.state_dict() "
            "(or a dict holding it under 'state_dict' or 'model')"
        )
    for prefix in _WRAPPER_PREFIXES:
        if all(str(k).startswith(prefix) for k in state):
            state = {str(k)[len(prefix) :]: v for k, v in state.items()}
    return {str(k): v for k, v in state.items()}


def zip_kind(path: Path) -> str | None:
    """``"torchscript"`` or ``"export"`` for such an archive, else ``None``."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return None
    if any("/code/__torch__/" in n for n in names):
        return "torchscript"
    if any(n.endswith("/models/model.json") for n in names):
        return "export"
    return None


def program_remedy(path: Path, kind: str) -> str:
    """How to load a program file given where a checkpoint was expected."""
    option = remedy(f"--model {kind}:{path} (without --weights)", f'load_model("{kind}:{path}")')
    what = "TorchScript" if kind == "torchscript" else "torch.export"
    return f"{path} is a {what} program, not a state dict; load it with {option}"


def check_finite_weights(
    state_dict: Mapping[str, torch.Tensor], *, source: str = "checkpoint"
) -> None:
    """Raise :class:`NonFiniteError` naming the first floating tensor with NaN or ±inf values."""
    for key, tensor in state_dict.items():
        if not tensor.is_floating_point():
            continue
        # Fast path: a NaN or ±inf element makes the sum non-finite (an overflowing sum of
        # finite values falls through to the exact count below, which then finds nothing).
        if bool(torch.isfinite(tensor.sum())):
            continue
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise NonFiniteError(
                f"{source}: tensor {key!r} holds {bad} NaN/infinite value(s) of "
                f"{tensor.numel()}; the weights are corrupt or training diverged, use another "
                "checkpoint"
            )


def apply_checkpoint(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    key_map: Mapping[str, str] | None = None,
    source: str = "checkpoint",
    assign: bool = False,
) -> None:
    """Load ``state_dict`` into ``module`` after checking that it fits exactly.

    ``key_map`` renames checkpoint keys to the module's keys (keys not in it are kept as they
    are). BatchNorm's ``num_batches_tracked`` may be absent (old torchvision checkpoints).
    With ``assign=True`` the module may have been built on the ``meta`` device (no memory, no
    initialisation): it takes the checkpoint's tensors, cast to the module's dtypes, instead of
    copying into its own; every parameter and buffer must then come from the checkpoint.

    Raises:
        CheckpointError: missing, unexpected or mis-shaped keys; the message lists the first few
            of each and their count.

    Example::

        key_map = torchvision_key_map(batch_norm=False)
        apply_checkpoint(model, load_checkpoint(path), key_map=key_map)
    """
    key_map = key_map or {}
    renamed = {key_map.get(key, key): tensor for key, tensor in state_dict.items()}
    expected = module.state_dict()
    missing = [k for k in expected if k not in renamed and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in renamed if k not in expected]
    misshaped = [
        f"{k}: checkpoint {tuple(renamed[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in renamed and renamed[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s) {_few(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s) {_few(unexpected)}")
    if misshaped:
        problems.append(f"{len(misshaped)} mis-shaped tensor(s) {_few(misshaped)}")
    if problems:
        raise CheckpointError(
            f"{source} does not fit {type(module).__name__}: {'; '.join(problems)}; "
            "pass weights saved from this architecture (model.state_dict())"
        )
    if not assign:
        module.load_state_dict(renamed, strict=True)
        return
    for key, tensor in expected.items():
        if key not in renamed:  # a BatchNorm counter (anything else was reported above)
            renamed[key] = torch.zeros((), dtype=tensor.dtype)
        elif renamed[key].dtype != tensor.dtype:
            renamed[key] = renamed[key].to(tensor.dtype)
    module.load_state_dict(renamed, strict=True, assign=True)
    left = [name for name, t in (*module.named_parameters(), *module.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(
            f"{source} leaves {len(left)} tensor(s) of {type(module).__name__} unset "
            f"({_few(left)}); this model cannot be loaded from a checkpoint alone"
        )


def hub_checkpoint_path(url: str) -> Path:
    """Where torch caches the file at ``url``: ``<torch.hub.get_dir()>/checkpoints/<name>``.

    ``torch.hub.get_dir()`` follows ``$TORCH_HOME`` at call time.
    """
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def fetch_hub_checkpoint(url: str, *, model_name: str) -> Path:
    """The cached file for ``url``, downloaded first if absent and downloads are allowed.

    Raises:
        WeightsUnavailableError: the file is not cached and ``CNNVIZ_OFFLINE`` is set, the
            host cannot be reached (:func:`~cnnviz.models.network.network_reachable`, asked
            once per process), or the download failed; the one-line message says how to get
            the weights.
    """
    target = hub_checkpoint_path(url)
    if target.is_file():
        return target
    how = (
        f"run once with network access, copy {target.name} from {url} to {target}, "
        f"or pass {weights_remedy()}"
    )
    if offline_mode():
        raise WeightsUnavailableError(
            f"pretrained weights for {model_name!r} are not cached at {target} and "
            f"CNNVIZ_OFFLINE forbids downloading them; {how}"
        )
    parsed = urlparse(url)
    host, port = parsed.hostname or "", parsed.port or (80 if parsed.scheme == "http" else 443)
    if not network_reachable(host, port):
        raise WeightsUnavailableError(
            f"no network: pretrained weights for {model_name!r} are not cached at {target} and "
            f"{host} cannot be reached; {how}"
        )
    match = _HASH_IN_NAME.search(target.name)
    logger.info("downloading pretrained weights for %s from %s to %s", model_name, url, target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(target), match.group(1) if match else None)
    except Exception as e:  # any network/disk/hash failure becomes one actionable message
        raise WeightsUnavailableError(
            f"pretrained weights for {model_name!r} are not cached at {target} and could not "
            f"be downloaded ({type(e).__name__}: {e}); {how}"
        ) from e
    return target
