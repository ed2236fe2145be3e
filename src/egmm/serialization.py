"""Model files: one safetensors file holding the weights and a JSON config.

Layout (``model.egmm``): a safetensors file (tensors only, so loading cannot execute code) whose
metadata holds ``format = "egmm"``, ``schema`` (an integer) and ``config``, a JSON document with
the model class, the egmm version that wrote it, the observables, the latent projection, the
parameter names and trained ranges and every hyper-parameter. Files are written to a temporary
name in the same folder and renamed, so a crash never leaves a half-written model behind.

A file that is missing, truncated, corrupted, of another format, or written with a newer schema
raises :class:`egmm.ModelFileError` with the path in the message; nothing is unpickled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from egmm.errors import ModelFileError

__all__ = ["SCHEMA_VERSION", "SavableModel", "load_model", "read_config", "save_model"]

SCHEMA_VERSION = 1


def _registry() -> dict[str, Any]:
    from egmm.density import GMMDensity
    from egmm.flows import FlowDensity

    return {"GMMDensity": GMMDensity, "FlowDensity": FlowDensity}


def save_model(model: Any, path: str | os.PathLike) -> None:
    """Write ``model`` (anything with ``to_config()`` and ``module``) to ``path`` atomically."""
    from egmm import __version__

    path = Path(path)
    config = {"class": type(model).__name__, "egmm_version": __version__,
              **model.to_config()}
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.module.state_dict().items()}
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        # safetensors creates its file owner-only: keep the permissions an ordinary open()
        # gets under the user's umask (read off a file made that way, without touching the
        # process-wide umask)
        with open(tmp, "wb"):
            pass
        mode = tmp.stat().st_mode & 0o777
        save_file(tensors, str(tmp), metadata={"format": "egmm", "schema": str(SCHEMA_VERSION),
                                               "config": json.dumps(config)})
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON config of a model file, after checking format and schema."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"{path}: not a readable egmm model file ({exc})") from None
    if meta.get("format") != "egmm":
        raise ModelFileError(f"{path}: not an egmm model file (no egmm metadata)")
    try:
        schema = int(meta["schema"])
        config = json.loads(meta["config"])
    except (KeyError, ValueError) as exc:
        raise ModelFileError(f"{path}: damaged egmm metadata ({exc})") from None
    if schema > SCHEMA_VERSION:
        raise ModelFileError(
            f"{path}: written with model-file schema {schema} by egmm "
            f"{config.get('egmm_version', '?')}; this egmm reads schema ≤ {SCHEMA_VERSION}. "
            "Upgrade egmm to load it.")
    return config


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Rebuild the model stored in ``path`` (class taken from the file)."""
    path = Path(path)
    config = read_config(path)
    cls = _registry().get(config.get("class"))
    if cls is None:
        raise ModelFileError(f"{path}: unknown model class {config.get('class')!r}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"{path}: corrupted or truncated weights ({exc})") from None
    try:
        model = cls.from_config(config)
        model.module.load_state_dict(tensors, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{path}: weights do not match the stored config ({exc})") from None
    return model.to(map_location)


class SavableModel:
    """``save``/``load`` for models with ``to_config()``, ``from_config()`` and ``module``."""

    def save(self, path: str | os.PathLike) -> None:
        """Write the model to ``path`` (one safetensors file with a JSON config), atomically."""
        save_model(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
        """Read a model written by :meth:`save`; refuses files it cannot trust or read."""
        from egmm.errors import InputError

        model = load_model(path, map_location=map_location)
        if not isinstance(model, cls):
            raise InputError(f"{path}: holds a {type(model).__name__}, not a {cls.__name__}")
        return model
