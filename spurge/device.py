"""One device resolver for every stage (augment, train, the CLIP filter, map, demo).

``auto`` (or ``None``) takes CUDA when a GPU is there, else Apple's MPS, else the CPU. A named
device that this machine lacks is a :class:`~spurge.errors.DeviceError` naming ``--device``,
never a silent fall-back to the CPU. torch is imported on first use so that the CLI can offer
:data:`DEVICE_CHOICES` without loading it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from spurge.errors import DeviceError

if TYPE_CHECKING:
    import torch

#: What ``--device`` accepts besides explicit torch devices such as ``cuda:1``.
DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")

#: The default device: the best one this machine has.
DEFAULT_DEVICE = "auto"

_INDEXED = re.compile(r"(cpu|cuda|mps):\d+")


def is_device_name(device: str) -> bool:
    """Whether ``device`` is spelled like a device (``auto``, ``cuda``, ``cuda:1``...).

    This checks the spelling only; whether this machine has the device is
    :func:`resolve_device`'s question.
    """
    return device in DEVICE_CHOICES or _INDEXED.fullmatch(device) is not None


def mps_available() -> bool:
    """Whether Apple's Metal backend is usable (always False off macOS)."""
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """The torch device for ``device`` (``auto``/``None``: CUDA, else MPS, else CPU).

    Raises:
        DeviceError: ``device`` is misspelt or this machine does not have it.
    """
    import torch

    if isinstance(device, torch.device):
        device = str(device)
    if device in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DeviceError(
            f"unknown device {device!r} (use auto, cpu, cuda, cuda:N or mps)"
        ) from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"{device!r} requested but CUDA is not available on this machine")
    if resolved.type == "mps" and not mps_available():
        raise DeviceError(f"{device!r} requested but Apple MPS is not available on this machine")
    return resolved
