"""Which code of a training step creates tensors off the inputs' device or waits for the device.

``DeviceAudit`` is a ``torch.overrides.TorchFunctionMode`` that records, while active,
every call that

* **creates** a tensor from nothing on the default device (``torch.zeros(3)``,
  ``torch.tensor(1.0)``, ``torch.rand(n)``... without ``device=``): on a GPU run that
  tensor is on the CPU, and the step either fails or copies it to the GPU;
* creates one on the CPU by name (``device="cpu"``): a CPU tensor on purpose;
* **waits** for the device: ``.item()``, ``.tolist()``, ``.cpu()``, ``.numpy()``,
  ``bool()``, ``float()``, ``int()`` of a tensor (on a GPU each is a host
  synchronisation: the CPU stops until the queued GPU work is done).

Backward passes run outside a ``TorchFunctionMode`` (the autograd engine does not carry
it): there a ``TorchDispatchMode`` records the waits (``aten._local_scalar_dense``: the
``.item()`` or ``bool()`` of a custom ``backward``).

Each record names the innermost calling function outside torch (``path:function``,
the path relative to the repository for this project's files), so that the same audit
run on the CPU says what would happen on a GPU: a step whose own code has no
default-device creation creates its tensors where its inputs are. Tensors that follow
an input (``torch.zeros_like(x)``, ``x.new_zeros``, ``torch.arange(n, device=x.device)``,
arithmetic) are not recorded.
"""

import os
import sys
from collections import Counter

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "sb_sphereface2") + os.sep
TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
# Functions that make a tensor from sizes or host data (not from a tensor argument).
FACTORIES = {
    torch.zeros, torch.ones, torch.empty, torch.full, torch.tensor, torch.arange, torch.rand, torch.randn,
    torch.randint, torch.randperm, torch.linspace, torch.logspace, torch.eye, torch.scalar_tensor,
    torch.as_tensor, torch.from_numpy,
}
HOST_WAITS = {
    torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.cpu, torch.Tensor.numpy, torch.Tensor.__bool__,
    torch.Tensor.__float__, torch.Tensor.__int__,
}


def _name(func):
    return getattr(func, "__name__", str(func))


def _caller():
    """``path:function`` of the innermost frame outside torch and this file."""
    frame = sys._getframe(2)
    here = os.path.abspath(__file__)
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        if not path.startswith(TORCH_DIR) and path != here and not path.startswith("<"):
            shown = os.path.relpath(path, ROOT) if path.startswith(ROOT + os.sep) else path
            return f"{shown}:{frame.f_code.co_name}", path.startswith(PACKAGE)
        frame = frame.f_back
    return "<torch>", False


class DeviceAudit(TorchFunctionMode):
    """Record tensor creations off the inputs' device and host waits (see the module).

    ``records`` counts ``(kind, function, site)`` with kind ``"default device"``,
    ``"cpu by name"`` or ``"host wait"``; ``ours(kind)`` are the sites in
    ``sb_sphereface2``.

    Example
    -------
    >>> x = torch.ones(3)
    >>> with DeviceAudit() as audit:
    ...     y = torch.zeros_like(x) + torch.arange(3, device=x.device)
    ...     z = torch.zeros(3)
    ...     flag = bool(y.sum() > 0)
    >>> sorted(kind for kind, _, _ in audit.records)
    ['default device', 'host wait']
    """

    def __init__(self):
        super().__init__()
        self.records = Counter()
        self.package_sites = set()
        self.waiting = False  # inside a host wait seen here: the dispatch mode does not count it again
        self._dispatch = _BackwardWaits(self)

    def __enter__(self):
        self._dispatch.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        super().__exit__(*exc)
        return self._dispatch.__exit__(*exc)

    def record(self, kind, func):
        site, ours = _caller()
        self.records[(kind, _name(func), site)] += 1
        if ours:
            self.package_sites.add((kind, site))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = None
        if func in FACTORIES:
            from_tensor = func is torch.as_tensor and args and isinstance(args[0], torch.Tensor)
            device = kwargs.get("device")
            if func is torch.from_numpy:
                kind = "cpu by name"
            elif device is None and not from_tensor:
                kind = "default device"
            elif isinstance(device, str) and torch.device(device).type == "cpu":
                kind = "cpu by name"
        elif func in HOST_WAITS:
            kind = "host wait"
        if kind is None:
            return func(*args, **kwargs)
        self.record(kind, func)
        self.waiting = kind == "host wait"
        try:
            return func(*args, **kwargs)
        finally:
            self.waiting = False

    def ours(self, kind):
        """Sites in ``sb_sphereface2`` of records of ``kind``."""
        return {site for k, site in self.package_sites if k == kind}

    def lines(self):
        """The records as text lines, most frequent first."""
        return [f"{count:4d} x {kind}: {func} at {site}" for (kind, func, site), count in self.records.most_common()]


class _BackwardWaits(TorchDispatchMode):
    """The host waits that ``DeviceAudit``'s function mode does not see (backward passes)."""

    def __init__(self, audit):
        super().__init__()
        self.audit = audit

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and not self.audit.waiting:
            self.audit.record("host wait", func)
        return func(*args, **(kwargs or {}))
