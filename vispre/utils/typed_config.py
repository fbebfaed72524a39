"""Typed configs: dataclass schemas, filled from YAML recipes and ``key=value`` overrides.

OmegaConf structured configs give the type checks: an unknown or mistyped key is an error that
names it (``data.batch_sise``), instead of a silently ignored setting.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import UserError

T = TypeVar("T")


class ConfigError(UserError, ValueError):
    """A recipe or override the schema refuses; the message names the file and the key."""


BASE_KEY = "_base_"


def load_yaml(path: str | Path, _chain: tuple[Path, ...] = ()):
    """A YAML recipe; ``_base_: other.yaml`` (relative to this file) is loaded first and overridden,
    so recipes share their common part instead of copying it."""
    import yaml  # OmegaConf's parser: its errors carry the line and column

    path = Path(path)
    included_by = f" (the _base_ of {_chain[-1]})" if _chain else ""
    if not path.is_file():
        raise ConfigError(f"recipe {path}{included_by} does not exist" if not path.exists()
                          else f"recipe {path}{included_by} is not a file")
    if path.resolve() in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path.resolve()))
        raise ConfigError(f"{path}: {BASE_KEY} includes itself ({cycle})")
    try:
        config = OmegaConf.load(path)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}:{where}: YAML syntax error: {problem}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the recipe: {e}") from e
    if not isinstance(config, DictConfig):
        raise ConfigError(f"{path}: a recipe is a mapping of keys, not a {type(config).__name__}")
    base = config.pop(BASE_KEY, None)
    if base is None:
        return config
    return OmegaConf.merge(load_yaml(path.parent / base, (*_chain, path.resolve())), config)


def _merged(schema: type, path, overrides: Sequence[str], defaults: dict):
    """The untyped merge load_config and preview_yaml share: schema <- defaults <- YAML <- overrides."""
    config = OmegaConf.structured(schema)
    if defaults:
        config = OmegaConf.merge(config, defaults)
    if path is not None:
        config = OmegaConf.merge(config, load_yaml(path))
    return apply_overrides(config, overrides)


def load_config(schema: type[T], path: str | Path | None = None, overrides: Sequence[str] = (),
                **defaults: Any) -> T:
    """``schema`` defaults <- ``defaults`` <- YAML file <- ``key=value`` overrides, type-checked."""
    try:
        config = _merged(schema, path, overrides, defaults)
        missing = sorted(OmegaConf.missing_keys(config))
        if missing:
            raise ConfigError(f"{path or schema.__name__}: missing required value(s): {', '.join(missing)}")
        return OmegaConf.to_object(config)
    except OmegaConfBaseException as e:
        where = f"{path}: " if path else ""
        message = str(getattr(e, "msg", e)).splitlines()[0]
        raise ConfigError(f"{where}{getattr(e, 'full_key', '?')}: {message}") from e


def preview_yaml(schema: type, path: str | Path | None = None, overrides: Sequence[str] = (),
                 **defaults: Any) -> str:
    """What ``load_config`` would resolve, as YAML, even while required values are missing: they show as
    ``???`` and a trailing comment lists them (``--print-config`` before the values are filled in)."""
    try:
        config = _merged(schema, path, overrides, defaults)
    except OmegaConfBaseException as e:
        where = f"{path}: " if path else ""
        raise ConfigError(f"{where}{getattr(e, 'full_key', '?')}: {str(getattr(e, 'msg', e)).splitlines()[0]}") from e
    missing = sorted(OmegaConf.missing_keys(config))
    text = OmegaConf.to_yaml(config)
    return text + (f"# missing required value(s): {', '.join(missing)}\n" if missing else "")


def apply_overrides(config, overrides: Sequence[str]):
    """``key=value`` overrides, one at a time, values parsed as YAML; returns the config. A key through a list
    item (``arms.2.encoder=DIR``) goes through ``OmegaConf.update``: merging a ``from_dotlist`` tree would read
    ``2`` as a dict key. Other keys merge, which also fills optional sections left at None."""
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key=value")
        tree = OmegaConf.from_dotlist([item])
        try:
            if any(part.isdigit() for part in key.split(".")):
                OmegaConf.update(config, key, OmegaConf.select(tree, key), merge=True)
            else:
                config = OmegaConf.merge(config, tree)
        except OmegaConfBaseException as e:
            if getattr(e, "full_key", None):
                raise  # load_config's handler names the key
            raise ConfigError(f"{key}: {str(getattr(e, 'msg', e)).splitlines()[0]}") from e
        except (IndexError, TypeError, ValueError) as e:  # e.g. a list index where the node is no list
            raise ConfigError(f"{key}: {str(e).splitlines()[0]}") from e
    return config


def to_yaml(config: Any) -> str:
    """The resolved config as YAML (written next to every run's checkpoints)."""
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def load_section(schema: type[T], values: Any, where: str) -> T:
    """One section of a recipe typed by a schema chosen at load time (an agent's or a method's registered
    config): ``values`` (a dict or DictConfig) over the schema's defaults; an error names ``where.key``."""
    try:
        config = OmegaConf.merge(OmegaConf.structured(schema), values)
        return OmegaConf.to_object(config)
    except OmegaConfBaseException as e:
        message = str(getattr(e, "msg", e)).splitlines()[0]
        raise ConfigError(f"{where}.{getattr(e, 'full_key', '?')}: {message}") from e
