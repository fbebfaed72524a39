"""Method registry: ``@register("dino", config=DINOConfig)`` on a method class; ``METHODS["dino"]`` builds it.

A new method is one file: its config dataclass beside its class, registered together. The recipe's
``method:`` section is built from the registry (``method_config_schema``) when a recipe is loaded, so a
method registered later (a plugin module, a test) gets its own ``method.NAME`` section too.
"""

from __future__ import annotations

from dataclasses import field, make_dataclass

METHODS: dict[str, type] = {}
CONFIGS: dict[str, type] = {}  # name -> the config dataclass of its ``method.NAME`` section


def register(name: str, config: type | None = None):
    """Register a method class under ``name`` with its config dataclass (None: a method without settings)."""

    def add(cls):
        old = METHODS.get(name)
        if old is not None and f"{old.__module__}.{old.__qualname__}" != f"{cls.__module__}.{cls.__qualname__}":
            raise ValueError(f"method {name!r} is registered twice ({old.__qualname__} and {cls.__qualname__})")
        cls.method_name, cls.config_class = name, config
        METHODS[name] = cls
        if config is not None:
            CONFIGS[name] = config
        return cls

    return add


def method_config_schema() -> type:
    """The ``method:`` section's dataclass for the methods registered now: name, base, augment and one
    ``NAME: NAMEConfig`` section per registered method."""
    fields = [("name", str, field(default="dino")),  # a registered method (METHODS)
              ("base", str, field(default="dino")),  # a wrapper's (AB's) base method, which supplies p(l | x)
              ("augment", str, field(default="dino"))]  # photometric preset on the device: dino | simclr | none
    fields += [(name, config, field(default_factory=config)) for name, config in CONFIGS.items()]
    return make_dataclass("MethodConfig", fields)


def config_of(method_cfg, name: str):
    """The ``method.NAME`` section of a method config (None for a method registered without one)."""
    return getattr(method_cfg, name) if name in CONFIGS else None
