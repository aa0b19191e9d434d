"""Checkpoints that are written atomically and loaded without running code.

The file is safetensors: a JSON header plus raw tensor bytes, so loading it can
never execute anything (unlike ``torch.load`` on a pickle). Tensors are stored
under prefixes (``model/``, ``optim/<name>/<param>/<key>``, ``rng/``) and every
non-tensor value (epoch, optimiser hyper-parameters, counters) goes into the
header's metadata as JSON.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..core.errors import CsgError
from ..core.io import atomic_write_bytes

FORMAT = "csg-checkpoint-1"


def _flatten_optimizer(name: str, opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state = opt.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entries in state["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optim/{name}/{pid}/{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    meta[f"optim/{name}"] = {"param_groups": state["param_groups"], "scalars": scalars}


def _restore_optimizer(name: str, opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    info = meta.get(f"optim/{name}")
    if info is None:
        raise CsgError(f"checkpoint has no state for optimiser {name!r}; it was written by a different method")
    state: dict[int, dict[str, Any]] = {}
    prefix = f"optim/{name}/"
    for key, value in tensors.items():
        if key.startswith(prefix):
            pid, field = key[len(prefix):].split("/", 1)
            state.setdefault(int(pid), {})[field] = value
    for pid, entries in info["scalars"].items():
        state.setdefault(int(pid), {}).update(entries)
    groups = []
    for saved, current in zip(info["param_groups"], opt.param_groups):
        # JSON turns tuples (Adam's betas) into lists; give them back their type
        groups.append({k: tuple(v) if isinstance(current.get(k), tuple) and isinstance(v, list) else v
                       for k, v in saved.items()})
    opt.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(path: str | Path, model: torch.nn.Module, optimizers: dict[str, torch.optim.Optimizer] | None = None,
                    meta: dict[str, Any] | None = None) -> Path:
    """Write model weights (+ optimisers, RNG, ``meta``) atomically to ``path``."""
    tensors: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        tensors[f"model/{key}"] = value.detach().contiguous().cpu()
    header: dict[str, Any] = {"format": FORMAT, "meta": meta or {}}
    for name, opt in (optimizers or {}).items():
        _flatten_optimizer(name, opt, tensors, header)
    tensors["rng/torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng/cuda"] = torch.cuda.get_rng_state()
    data = st_save(tensors, metadata={"csg": json.dumps(header)})
    return atomic_write_bytes(path, data)


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Parse a csg checkpoint; anything else (a pickle, a truncated file) is refused."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CsgError(f"checkpoint {path} does not exist") from None
    try:
        tensors = st_load(raw)
        header_len = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + header_len])
        meta_blob = header.get("__metadata__", {}).get("csg")
    except (SafetensorError, ValueError, json.JSONDecodeError, UnicodeDecodeError, OverflowError):
        hint = " (it looks like a pickle: csg never unpickles files, since that can run code)" \
            if raw[:1] == b"\x80" or raw[:2] == b"PK" else ""
        raise CsgError(f"{path} is not a valid csg checkpoint{hint}; re-train or point to checkpoint.safetensors") from None
    if meta_blob is None:
        raise CsgError(f"{path} is a safetensors file but not a csg checkpoint (no csg metadata)")
    meta = json.loads(meta_blob)
    if meta.get("format") != FORMAT:
        raise CsgError(f"{path} has checkpoint format {meta.get('format')!r}, expected {FORMAT}")
    return tensors, meta


def restore_checkpoint(path: str | Path, model: torch.nn.Module,
                       optimizers: dict[str, torch.optim.Optimizer] | None = None, *,
                       restore_rng: bool = True) -> dict[str, Any]:
    """Load weights (and optimiser / RNG state) into existing objects; returns ``meta``."""
    tensors, header = read_checkpoint(path)
    state = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CsgError(f"checkpoint {path} does not fit this model (missing {list(missing)[:3]}, unexpected "
                       f"{list(unexpected)[:3]}); was it trained with another --arch or --method?")
    for name, opt in (optimizers or {}).items():
        _restore_optimizer(name, opt, tensors, header)
    if restore_rng:
        torch.set_rng_state(tensors["rng/torch"])
        if "rng/cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["rng/cuda"])
    return header["meta"]
