"""Modules a method exports beside its encoder (ICVF's phi, its whole value function), and how to rebuild them.

An export writes each extra module as ``NAME.safetensors`` (weights) and ``NAME.json`` (an ``ExportSpec``: the
registered builder's name and its keyword arguments, what the module reads from the encoder, its output width).
Reading one back (``vispre.export.read.load_exported_module``) looks the builder up in ``EXPORTABLE`` and calls it
with the recorded arguments: no method, recipe or pickled object is needed, and a file can only name builders
registered here (``@exportable("name")``), never an arbitrary import path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

EXPORTABLE: dict[str, Callable[..., nn.Module]] = {}


def exportable(name: str):
    """Register ``builder(**kwargs) -> nn.Module`` under ``name``."""
    def add(builder):
        if name in EXPORTABLE and EXPORTABLE[name] is not builder:
            raise ValueError(f"exportable module builder {name!r} is registered twice")
        EXPORTABLE[name] = builder
        return builder

    return add


@dataclass
class ExportSpec:
    builder: str  # a name in EXPORTABLE
    kwargs: dict[str, Any] = field(default_factory=dict)  # JSON values only
    reads: str = "pooled"  # what the module reads from Encoder(x): "pooled" | "tokens"
    out_dim: int | None = None  # width of its output (per state), where it has one

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict, where: str = "") -> ExportSpec:
        unknown = set(data) - {"builder", "kwargs", "reads", "out_dim"}
        if unknown or "builder" not in data:
            raise ValueError(f"{where}: not a module spec (fields {sorted(data)})")
        return cls(**data)

    def build(self) -> nn.Module:
        if self.builder not in EXPORTABLE:
            raise ValueError(f"no exportable module builder {self.builder!r} (known: {sorted(EXPORTABLE)})")
        return EXPORTABLE[self.builder](**self.kwargs)


@dataclass
class ExportedModule:
    """A module with the spec that rebuilds it (its weights are the module's state dict)."""

    module: nn.Module
    spec: ExportSpec
