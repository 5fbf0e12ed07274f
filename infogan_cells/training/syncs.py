"""Counting the calls that make the host wait for the device, on any device.

On CUDA, reading a tensor's value (``item``, ``tolist``, ``bool(t)``...), copying it to the CPU,
or an operation whose output shape depends on the data (``nonzero``, ``bincount``...) blocks the
Python thread until the GPU catches up; a training step without them keeps the GPU's queue full.
:class:`HostSyncCounter` counts them through torch's function-override mode, so the same check
runs on the CPU (where nothing actually waits) and on CUDA (beside CUDA's own
``torch.cuda.set_sync_debug_mode``).
"""

from __future__ import annotations

from torch.overrides import TorchFunctionMode

__all__ = ["HostSyncCounter"]


class HostSyncCounter(TorchFunctionMode):
    """Counts, by name, the tensor calls made while active that would sync the host with a CUDA device.

    ``with HostSyncCounter() as c: ...`` then ``c.calls`` (name -> count) and ``c.total``.
    """

    SYNCING = frozenset(
        {
            "item",
            "tolist",
            "numpy",
            "cpu",
            "__bool__",
            "__int__",
            "__float__",
            "__index__",
            "bincount",
            "nonzero",
            "unique",
            "masked_select",
            "multinomial",
        }
    )

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[str, int] = {}

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        to_cpu = name == "to" and any(str(a) == "cpu" for a in [*args[1:], kwargs.get("device")])
        if name in self.SYNCING or to_cpu:
            self.calls[name] = self.calls.get(name, 0) + 1
        return func(*args, **kwargs)
