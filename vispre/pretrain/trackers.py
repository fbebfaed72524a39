"""Experiment trackers (``train.trackers``): checked before training starts, and given the resolved recipe.

accelerate skips a tracker whose package is missing with a warning only, so ``train.trackers=[wandb]``
without wandb would train for hours and log nowhere; here that is a user error naming the field. Every
tracker gets the recipe as flat hparams (``optim.lr: 0.0005``, ``data.spec: ...``): TensorBoard's HPARAMS
tab, wandb's config, mlflow's params.
"""

from __future__ import annotations

import json
from typing import Any

from ..utils.typed_config import ConfigError

# the pip package that brings each tracker accelerate knows
PACKAGES = {"comet_ml": "comet-ml", "dvclive": "dvclive", "clearml": "clearml", "tensorboard": "tensorboard",
            "wandb": "wandb", "mlflow": "mlflow", "aim": "aim", "swanlab": "swanlab", "trackio": "trackio"}


def checked_trackers(names) -> list[str] | None:
    """``train.trackers`` as accelerate's ``log_with``; an unknown or uninstalled tracker is a ConfigError."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

    names = [str(n) for n in names or []]
    available = {str(getattr(t, "value", t)) for t in get_available_trackers()}
    for name in names:
        if name == "all":
            continue
        if name not in LOGGER_TYPE_TO_CLASS:
            known = ", ".join(sorted(LOGGER_TYPE_TO_CLASS))
            raise ConfigError(f"train.trackers: unknown tracker {name!r}; one of {known} (or all, or [] for none)")
        if name not in available:
            raise ConfigError(f"train.trackers: {name} is not installed (pip install {PACKAGES.get(name, name)}), "
                              f"or leave it out: train.trackers=[{', '.join(n for n in names if n != name)}]")
    return names or None


def flat_hparams(values: Any, prefix: str = "") -> dict[str, int | float | str | bool]:
    """A nested recipe as ``{"a.b": scalar}``: numbers, strings and booleans stay, None becomes "null",
    lists become their JSON text (TensorBoard's hparams take scalars and strings only)."""
    if isinstance(values, dict):
        out: dict[str, int | float | str | bool] = {}
        for key, value in values.items():
            out.update(flat_hparams(value, f"{prefix}{key}."))
        return out
    key = prefix[:-1]
    if values is None:
        return {key: "null"}
    if isinstance(values, (bool, int, float, str)):
        return {key: values}
    return {key: json.dumps(values, default=str)}


def recipe_hparams(cfg) -> dict[str, int | float | str | bool]:
    """The resolved recipe (a PretrainConfig) as flat hparams for ``init_trackers(name, config=...)``."""
    from omegaconf import OmegaConf

    return flat_hparams(OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True))
