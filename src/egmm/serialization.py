"""Model files: one safetensors file holding the weights and a JSON config.

Layout (``model.egmm``): a safetensors file (tensors only, so loading cannot execute code) whose
metadata holds ``format = "egmm"``, ``schema`` (an integer) and ``config``, a JSON document with
the model class, the egmm version that wrote it, the observables, the latent projection, the
parameter names and trained ranges and every hyper-parameter, and ``sha256``, a checksum of the
tensors and the config. Files are written to a temporary name in the same folder, flushed to
disk and renamed, so a crash never leaves a half-written model behind.

A file that is missing, truncated, corrupted (its checksum, or a trained range that does not
match the network's input scaling), of another format, or written with a newer schema raises
:class:`egmm.ModelFileError` with the path in the message; nothing is unpickled. Files written
before the checksum existed load without that check.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from egmm._io import atomic_path
from egmm.errors import ModelFileError

__all__ = ["SCHEMA_VERSION", "SavableModel", "load_model", "read_config", "save_model"]

SCHEMA_VERSION = 1


def _registry() -> dict[str, Any]:
    from egmm.density import GMMDensity
    from egmm.flows import FlowDensity

    return {"GMMDensity": GMMDensity, "FlowDensity": FlowDensity}


def _digest(tensors: dict[str, torch.Tensor], config: str) -> str:
    """SHA-256 of the tensors (names, dtypes, shapes, bytes, in name order) and the config."""
    h = hashlib.sha256(config.encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_model(model: Any, path: str | os.PathLike) -> None:
    """Write ``model`` (anything with ``to_config()`` and ``module``) to ``path`` atomically."""
    from egmm import __version__

    path = Path(path)
    if not path.parent.is_dir():
        raise ModelFileError(f"{path}: cannot write the model file, its folder does not exist")
    config = {"class": type(model).__name__, "egmm_version": __version__,
              **model.to_config()}
    try:
        text = json.dumps(config)
    except TypeError as exc:
        raise ModelFileError(f"{path}: the model's configuration cannot be stored ({exc}): "
                             "options must be numbers, strings, lists or mappings of them"
                             ) from None
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.module.state_dict().items()}
    metadata = {"format": "egmm", "schema": str(SCHEMA_VERSION), "config": text,
                "sha256": _digest(tensors, text)}
    with atomic_path(path) as tmp:
        # safetensors creates its file owner-only: keep the permissions an ordinary open()
        # gets under the user's umask (read off a file made that way, without touching the
        # process-wide umask)
        with open(tmp, "wb"):
            pass
        mode = tmp.stat().st_mode & 0o777
        save_file(tensors, str(tmp), metadata=metadata)
        os.chmod(tmp, mode)


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
    if not isinstance(config, dict):
        raise ModelFileError(f"{path}: damaged egmm metadata (the config is a "
                             f"{type(config).__name__}, not a mapping)")
    if schema > SCHEMA_VERSION:
        raise ModelFileError(
            f"{path}: written with model-file schema {schema} by egmm "
            f"{config.get('egmm_version', '?')}; this egmm reads schema ≤ {SCHEMA_VERSION}. "
            "Upgrade egmm to load it.")
    return config


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Rebuild the model stored in ``path``, whatever its class (``egmm.load_model``: a
    GMMDensity or a FlowDensity, as the file says); ``GMMDensity.load`` /
    ``FlowDensity.load`` also check the class."""
    path = Path(path)
    config = read_config(path)
    cls = _registry().get(config.get("class"))
    if cls is None:
        raise ModelFileError(f"{path}: unknown model class {config.get('class')!r}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            stored = (f.metadata() or {}).get("sha256")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"{path}: corrupted or truncated weights ({exc})") from None
    # (files of egmm before 0.1's checksums have none: they are read unchecked)
    if stored is not None and stored != _digest(tensors, json.dumps(config)):
        raise ModelFileError(f"{path}: corrupted model file (its weights or configuration "
                             "do not match the checksum stored with them)")
    try:
        model = cls.from_config(config)
        scaling = {k: v.clone() for k, v in model.module.state_dict().items()
                   if k in ("theta_center", "theta_halfwidth")}
        floats = {t.dtype for t in tensors.values() if t.is_floating_point()}
        if floats == {torch.float64}:  # a model kept in float64 stays float64
            model.module.to(torch.float64)
        model.module.load_state_dict(tensors, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        raise ModelFileError(f"{path}: weights do not match the stored config ({exc})") from None
    for name, expected in scaling.items():
        if not torch.equal(model.module.state_dict()[name].cpu(), expected):
            raise ModelFileError(f"{path}: the trained range in the config "
                                 f"({config.get('parameter_bounds')}) does not match the "
                                 f"network's input scaling ({name}): the file was edited or "
                                 "damaged")
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
