"""Checkpoints that rebuild themselves, and the device choice.

``network-final.pt`` holds, for each network, its
constructor arguments and ``state_dict`` (``generator_snapshots``: a list of such entries, the
EMA generator at earlier points of training), plus the :class:`LatentSpec` and metadata (channel
names, the learned categorical prior, the resolved config). Only tensors and plain Python
values: loadable with ``torch.load(weights_only=True)``. Resume state (optimisers, RNG
states, counters) lives in a separate file owned by the training loop.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from pathlib import Path
from typing import Any

import torch

from infogan_cells._io import atomic_path
from infogan_cells.config import LatentSpec
from infogan_cells.errors import ConfigError, InputError
from infogan_cells.model.networks import Discriminator, Generator, GeneratorEnsemble

log = logging.getLogger(__name__)

FORMAT = "infogan-cells/network"
FORMAT_VERSION = 1
FINAL_NAME = "network-final.pt"


# --------------------------------------------------------------------------------------
# Devices


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an explicit device that is not there is an error."""
    name = (name or "auto").strip()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise InputError(f"device {name!r}: not a device name (use auto, cpu, cuda, cuda:N or mps)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(
                f"device {name!r}: CUDA is not available on this machine (use --device cpu or auto)"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise InputError(f"device {name!r}: MPS is not available on this machine")
    elif dev.type != "cpu":
        raise InputError(f"device {name!r}: unsupported device type {dev.type!r}")
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` | ``fp32`` | ``bf16`` -> ``fp32`` or ``bf16`` on ``device``.

    ``auto`` is bf16 on a CUDA device that supports it and fp32 elsewhere (bf16 on the CPU is
    correct but usually slower than fp32). An explicit ``bf16`` on a device without bf16 is a
    :class:`ConfigError` naming the key.
    """
    if precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"config key 'train.precision': {precision!r} is not one of auto, fp32, bf16")
    if precision == "fp32":
        return "fp32"
    supported = _bf16_supported(device)
    if precision == "auto":
        return "bf16" if device.type == "cuda" and supported else "fp32"
    if not supported:
        raise ConfigError(
            f"config key 'train.precision': bf16 is not supported on {device} "
            f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else device.type}); "
            "use fp32 or auto"
        )
    return "bf16"


def _bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    if device.type == "cpu":
        return True
    return False  # MPS autocast supports fp16 only on many macOS versions: keep it fp32


def autocast(device: torch.device, precision: str = "fp32") -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` when ``precision`` (resolved, :func:`resolve_precision`) is
    ``bf16``; a no-op for ``fp32``, so one loop runs on every device in either precision."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# --------------------------------------------------------------------------------------
# Networks


def host_state(net: torch.nn.Module) -> dict:
    """A copy of ``net``'s weights on the host, torch.compile unwrapped: what a checkpoint keeps
    of it (a copy even on the CPU, so later steps do not change it)."""
    net = getattr(net, "_orig_mod", net)
    return {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}


def _net_entry(net: torch.nn.Module) -> dict:
    return {"kwargs": getattr(net, "_orig_mod", net).kwargs, "state_dict": host_state(net)}


def save_network(
    path: str | Path,
    *,
    G: Generator,
    D: Discriminator,
    G_ema: Generator | None = None,
    meta: dict[str, Any] | None = None,
    snapshots: list[dict] | None = None,
) -> None:
    """Write G (and its EMA), D+Q and ``meta`` to ``path`` atomically; ``snapshots``: state
    dicts of the EMA generator (G where there is none) at earlier points of training, oldest
    first, which :func:`load_generator` joins with the final one."""
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "latent_spec": G.kwargs["spec"],
        "generator": _net_entry(G),
        "discriminator": _net_entry(D),
        "meta": dict(meta or {}),
    }
    if G_ema is not None:
        payload["generator_ema"] = _net_entry(G_ema)
    if snapshots:
        kwargs = (G_ema if G_ema is not None else G).kwargs
        payload["generator_snapshots"] = [{"kwargs": kwargs, "state_dict": sd} for sd in snapshots]
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def network_path(path: str | Path) -> Path:
    """A run directory means its ``network-final.pt``; a file means itself."""
    path = Path(path)
    if path.is_dir():
        path = path / FINAL_NAME
        if not path.exists():
            raise InputError(f"{path.parent}: run directory holds no {FINAL_NAME} (has training finished?)")
    return path


def load_payload(path: str | Path) -> dict:
    """Load and check a network file; :class:`InputError` names the file when it is not ours."""
    path = network_path(path)
    if not path.exists():
        raise InputError(f"{path}: network file not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, pickle with code, random bytes
        raise InputError(
            f"{path}: not a readable infogan-cells network file ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200]})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError(f"{path}: not an infogan-cells network file (no format='{FORMAT}')")
    return payload


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(network_path(path), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _build(cls: type, entry: dict, device: torch.device | str, path: Path) -> torch.nn.Module:
    try:
        net = cls(**entry["kwargs"])
        net.load_state_dict(entry["state_dict"])
    except (KeyError, TypeError, RuntimeError) as err:
        raise InputError(f"{path}: network entry does not match {cls.__name__} ({err})") from None
    return net.to(device).eval()


def load_generator(
    path: str | Path, *, ema: bool = True, device: torch.device | str = "cpu", snapshots: bool = False
) -> tuple[Generator | GeneratorEnsemble, LatentSpec, dict]:
    """Rebuild the generator (the EMA one when present and ``ema``) in eval mode; with
    ``snapshots`` and ``ema``, the run's kept generators and the final one as one
    :class:`GeneratorEnsemble` when the run kept any (``train.generator_snapshots``).

    Returns ``(G, spec, meta)``; ``meta`` holds channel names, the learned prior and the config.
    """
    payload = load_payload(path)
    key = "generator_ema" if ema and "generator_ema" in payload else "generator"
    G = _build(Generator, payload[key], device, Path(path))
    kept = (payload.get("generator_snapshots") or []) if ema else []
    if snapshots and kept:
        G = GeneratorEnsemble([_build(Generator, e, device, Path(path)) for e in kept] + [G]).eval()
    return G, G.spec, payload["meta"]


def load_discriminator(
    path: str | Path, *, device: torch.device | str = "cpu"
) -> tuple[Discriminator, LatentSpec, dict]:
    """Rebuild D with its Q head in eval mode (the analysis assigns real crops with Q)."""
    payload = load_payload(path)
    D = _build(Discriminator, payload["discriminator"], device, Path(path))
    return D, D.spec, payload["meta"]
