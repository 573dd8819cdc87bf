"""Typed configuration: dataclasses, YAML presets, ``--set key=value`` overrides; unknown keys fail.

A run configuration is a (nested) dataclass. It is built from, in order: the dataclass defaults, a preset
YAML file (a name such as ``tiny`` looked up in ``ecgflowcmr/configs/<stage>/`` or a path), then
``--set a.b=value`` overrides whose values are parsed as YAML scalars. Every key is checked against the
dataclass fields; a key that is not a field, or a value of the wrong type, raises :class:`ConfigError`
naming the key. Dataclasses may validate ranges in ``__post_init__`` (raise ``ConfigError``).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ecgflowcmr.errors import ConfigError

T = TypeVar("T")

PRESET_DIR = Path(__file__).parent / "configs"
RENAMED: dict[str, str] = {
    "stage.eval_items": "eval.max_items",
    "stage.eval_max_items": "eval.max_items",
    "stage.eval_batch_size": "eval.batch_size",
    "stage.eval_seed": "eval.seed",
}
"""Keys of earlier versions → their name now: an old key fails with the new name (no silent mapping)."""


def to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass (nested) as plain dicts/lists/scalars, ready for YAML or JSON."""
    return dataclasses.asdict(cfg)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(err.problem)
        raise ConfigError(key, f"{value!r} fits none of {tp}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(key, f"{value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(key, f"expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(key, f"expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, f"expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(key, f"expected a finite number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {value!r}")
        return value
    if tp is Path:
        return Path(value)
    return value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    for key in unknown:
        if f"{prefix}{key}" in RENAMED:
            raise ConfigError(f"{prefix}{key}", f"renamed: use {RENAMED[f'{prefix}{key}']}")
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}", f"unknown key (known: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, value in data.items():
        default = _dataclass_default(fields[name])
        if isinstance(value, dict) and default is not None:
            # a partial mapping updates the field's own default (e.g. a stage's train defaults), not the
            # defaults of the field's class
            value = merge(to_dict(default), value)
        kwargs[name] = _coerce(value, hints[name], f"{prefix}{name}")
    return cls(**kwargs)


def _dataclass_default(field: dataclasses.Field) -> Any:
    """The field's default value if it is a dataclass instance, else None."""
    if field.default_factory is not dataclasses.MISSING:
        default = field.default_factory()
    else:
        default = field.default
    is_instance = dataclasses.is_dataclass(default) and not isinstance(default, type)
    return default if is_instance else None


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict update (update wins); returns a new dict."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_overrides(sets: list[str]) -> dict[str, Any]:
    """``["train.lr=1e-4", "model.width=64"]`` → nested dict; values parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in sets:
        if "=" not in item:
            raise ConfigError(item, "an override must look like key=value (e.g. train.lr=1e-4)")
        key, raw = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        if not all(parts):
            raise ConfigError(key or item, "an override key must be dotted field names (e.g. train.lr)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except (yaml.YAMLError, RecursionError) as err:
            raise ConfigError(key, f"value {raw!r} is not valid YAML ({' '.join(str(err).split())[:200]})") from None
        if isinstance(value, str) and _looks_numeric(value):
            value = float(value)  # YAML 1.1 reads "1e-4" as a string
        node = out
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(".".join(parts[: i + 1]), f"is set to a value by another override, "
                                  f"so {key} cannot be set inside it")
        if isinstance(node.get(parts[-1]), dict) and not isinstance(value, dict):
            raise ConfigError(key, f"is a section (set its fields, e.g. {key}.FIELD=VALUE), not a value")
        node[parts[-1]] = value
    return out


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(path, "config file not found") from None
    except IsADirectoryError:
        raise ConfigError(path, "is a folder, not a YAML config file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(path, f"cannot read the config file ({err})") from None
    except (yaml.YAMLError, RecursionError) as err:
        raise ConfigError(path, f"not valid YAML ({' '.join(str(err).split())[:300]})") from None
    if not isinstance(data, dict):
        raise ConfigError(path, "a config file must hold a mapping at the top level")
    return data


def preset_path(stage: str, name_or_path: str | Path) -> Path:
    """A preset name (``tiny``, ``paper``) for ``stage`` or a path to a YAML file."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        return candidate
    path = PRESET_DIR / stage / f"{name_or_path}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in (PRESET_DIR / stage).glob("*.yaml"))
        raise ConfigError(str(name_or_path), f"no preset of that name for {stage} (known: {', '.join(known)})")
    return path


def load_config(cls: type[T], stage: str, config: str | Path | None = None, sets: list[str] | None = None) -> T:
    """Defaults ← preset/YAML ← ``--set`` overrides, validated against ``cls``."""
    data: dict[str, Any] = {}
    if config is not None:
        data = read_yaml(preset_path(stage, config))
    data = merge(data, parse_overrides(sets or []))
    return from_dict(cls, data)


def dump_yaml(cfg: Any) -> str:
    """The resolved config as YAML (paths as strings)."""

    def plain(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: plain(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return [plain(v) for v in obj]
        if isinstance(obj, Path):
            return str(obj)
        return obj

    return yaml.safe_dump(plain(to_dict(cfg)), sort_keys=False)
