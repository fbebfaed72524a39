"""Value checks for typed configs: OmegaConf checks types (``steps: abc`` is refused), these check ranges
(``steps: 0``, ``views: [{size: 0}]``, a probability of 1.5) and name the field.

    checks = Checks("train")
    checks.at_least("steps", cfg.steps, 1)
    checks.raise_if_any("recipes/x.yaml")   # ValueCheckError: recipes/x.yaml: train.steps: must be >= 1, got 0

A method's config dataclass may define ``check_values(self, checks)``; ``load_recipe`` calls it for the
recipe's method (and its base) with ``Checks("method.NAME")``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .errors import ValueCheckError


class Checks:
    def __init__(self, prefix: str = ""):
        self.prefix = prefix
        self.problems: list[str] = []

    def name(self, field: str) -> str:
        return f"{self.prefix}.{field}" if self.prefix else field

    def fail(self, field: str, message: str) -> None:
        self.problems.append(f"{self.name(field)}: {message}")

    def at_least(self, field: str, value: Any, low: float, optional: bool = False) -> None:
        if value is None and optional:
            return
        if value is None or not value >= low:
            self.fail(field, f"must be >= {low}, got {value}")

    def above(self, field: str, value: Any, low: float, optional: bool = False) -> None:
        if value is None and optional:
            return
        if value is None or not value > low:
            self.fail(field, f"must be > {low}, got {value}")

    def between(self, field: str, value: Any, low: float, high: float, optional: bool = False,
                open_low: bool = False) -> None:
        """``low <= value <= high`` (``low < value`` with ``open_low``); probabilities are ``between(0, 1)``."""
        if value is None and optional:
            return
        ok = value is not None and (value > low if open_low else value >= low) and value <= high
        if not ok:
            self.fail(field, f"must be in {'(' if open_low else '['}{low}, {high}], got {value}")

    def one_of(self, field: str, value: Any, choices: Iterable) -> None:
        choices = tuple(choices)
        if value not in choices:
            self.fail(field, f"must be one of {', '.join(map(str, choices))}, got {value!r}")

    def extend(self, other: Checks) -> None:
        self.problems.extend(other.problems)

    def raise_if_any(self, where: str | None = None) -> None:
        if self.problems:
            lead = f"{where}: " if where else ""
            raise ValueCheckError(lead + ("\n  ".join(self.problems) if len(self.problems) == 1
                                          else "invalid values:\n  " + "\n  ".join(self.problems)))
