"""Your own architecture: ``path/to/file.py:ClassOrFactory`` or ``package.module:ClassOrFactory``.

The part after the colon names a ``nn.Module`` subclass, a factory function returning a module,
or a module instance, in that file or importable module. A class or factory is called with the
keyword arguments of ``model_args`` (``--model-arg KEY=VALUE`` on the command line). Loading a
file *runs its code*, exactly as ``python file.py`` would (its folder is importable while it
runs, so it may import its neighbours); a checkpoint given as ``weights`` is then read safely and
must fit the built module exactly.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from cnnviz.errors import CnnvizError, ModelNotFoundError, close_matches, error_text, remedy

_MODULE_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_ATTRIBUTE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
RESERVED_PREFIXES = ("torchvision", "timm", "torchscript", "export")


class UserModelError(CnnvizError, ValueError):
    """The user's model code could not be imported, called, or did not give a module."""


def is_user_spec(name: str) -> bool:
    """Whether ``name`` is ``file.py:Attr`` or ``package.module:Attr`` (not a zoo prefix)."""
    source, sep, attribute = name.rpartition(":")
    if not sep or source in RESERVED_PREFIXES or not _ATTRIBUTE.match(attribute):
        return False
    return source.endswith(".py") or bool(_MODULE_PATH.match(source))


def _load_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise ModelNotFoundError(
            f"model file {str(path)!r} does not exist; give path/to/file.py:ClassName"
        )
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    module_name = f"cnnviz_user_model_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ModelNotFoundError(f"cannot import {str(path)!r} as Python code")
    module = importlib.util.module_from_spec(spec)
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)  # the file may import modules next to it
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the user's code: any failure becomes one message naming it
        sys.modules.pop(module_name, None)
        raise UserModelError(
            f"running {str(path)!r} failed ({type(e).__name__}: {error_text(e)}); fix the file "
            "so that `python FILE` runs"
        ) from e
    finally:
        sys.path.remove(folder)
    return module


def _import(source: str) -> ModuleType:
    if source.endswith(".py"):
        return _load_file(Path(source).expanduser())
    try:
        return importlib.import_module(source)
    except ModuleNotFoundError as e:
        raise ModelNotFoundError(
            f"cannot import {source!r} ({error_text(e)}); install the package, run from the "
            "folder that holds it, or give a file as path/to/file.py:ClassName"
        ) from e
    except Exception as e:  # the user's code: any failure becomes one message naming it
        raise UserModelError(
            f"importing {source!r} failed ({type(e).__name__}: {error_text(e)})"
        ) from e


def _attribute(module: ModuleType, source: str, attribute: str) -> Any:
    obj: Any = module
    for part in attribute.split("."):
        if not hasattr(obj, part):
            candidates = [
                n
                for n, v in vars(module).items()
                if not n.startswith("_") and (callable(v) or isinstance(v, nn.Module))
            ]
            raise ModelNotFoundError(
                f"{source} has no {attribute!r}.{close_matches(attribute, candidates)} "
                f"Give {source}:NAME with NAME an nn.Module class, a function returning one, "
                "or a module instance"
            )
        obj = getattr(obj, part)
    return obj


def build_user_module(spec: str, model_args: Mapping[str, Any] | None = None) -> nn.Module:
    """Import and build the module named by ``spec`` (``file.py:Attr`` or ``pkg.mod:Attr``).

    Raises:
        ModelNotFoundError: the file, module or attribute does not exist.
        UserModelError: the code raised, rejected ``model_args``, or did not give an
            ``nn.Module``.

    Example::

        net = build_user_module("models/net.py:Net", {"num_classes": 10})
    """
    source, _, attribute = spec.rpartition(":")
    obj = _attribute(_import(source), source, attribute)
    args = dict(model_args or {})
    if isinstance(obj, nn.Module):
        if args:
            raise UserModelError(
                f"{spec} is a module instance, so it takes no constructor arguments; drop "
                f"{remedy('--model-arg', 'model_args')} or name its class instead"
            )
        return obj
    if not callable(obj):
        raise UserModelError(
            f"{spec} is a {type(obj).__name__}; name an nn.Module class or a function returning one"
        )
    try:
        built = obj(**args)
    except Exception as e:  # the user's constructor: any failure becomes one message
        given = ", ".join(f"{k}={v!r}" for k, v in args.items()) or "no arguments"
        raise UserModelError(
            f"{spec}({given}) failed ({type(e).__name__}: {error_text(e)}); give its "
            f"constructor arguments with {remedy('--model-arg KEY=VALUE', 'model_args={…}')}"
        ) from e
    if not isinstance(built, nn.Module):
        raise UserModelError(f"{spec}(…) returned a {type(built).__name__}, not a torch.nn.Module")
    return built
