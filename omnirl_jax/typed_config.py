"""A small typed loader from YAML-style dicts into trees of dataclasses.

Why: a typo or a wrong type in a config should fail at start with one line that names the dotted
key, not hours later inside a jitted function. Supported field types: nested dataclasses, ``int``,
``float`` (ints and numeric strings such as ``2e-4`` accepted), ``bool``, ``str``, ``Literal[...]``, ``Optional[X]``, ``list[X]``,
``tuple[X, Y]`` (a list of that length), ``dict[str, X]`` and a bare ``dict`` (free-form, passed through unchecked).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value or key is invalid; the message is one line naming the dotted key."""


def from_dict(cls: type[T], data: Any, key: str = "") -> T:
    """Builds dataclass ``cls`` from ``data``, checking every key and value against the types."""
    return _convert(cls, data, key)


def read_mapping(path: str) -> dict:
    """The top-level mapping of a YAML file (empty file: ``{}``); a one-line ConfigError otherwise."""
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {_one_line(e)}") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return raw


def read_with_base(path: str, _seen: tuple = ()) -> dict:
    """The mapping of a YAML file whose optional top-level ``base: other.yaml`` (relative to the
    file) names a config it changes: the base's mapping, with this file's keys merged into it
    section by section (a mapping merges key by key, any other value replaces the base's). Why:
    a variant of a config (the Quickstart of the bandit rung, a rung's sizes) states only what
    differs, so the shared settings have one home."""
    raw = read_mapping(path)
    if "base" not in raw:
        return raw
    base = raw.pop("base")
    if not isinstance(base, str):
        raise ConfigError(f"config file {path}: 'base' must be a file name, got {_describe(base)}")
    base_path = str(Path(path).parent / base)
    if Path(base_path).resolve() in _seen:
        raise ConfigError(f"config file {path}: base {base} includes itself")
    return _merge(read_with_base(base_path, _seen + (Path(path).resolve(),)), raw)


def _merge(base: dict, changes: dict) -> dict:
    merged = _deep_copy(base)
    for key, value in changes.items():
        both = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _merge(merged[key], value) if both else _deep_copy(value)
    return merged


def apply_overrides(raw: dict, overrides: typing.Sequence[str]) -> dict:
    """Returns a copy of ``raw`` with each ``dotted.key=value`` set; values parsed as YAML."""
    raw = _deep_copy(raw)
    for item in overrides:
        dotted, sep, text = item.partition("=")
        if not sep or not dotted:
            raise ConfigError(f"override {item!r} must look like dotted.key=value")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"override {dotted}: value {text!r} is not valid YAML: {_one_line(e)}") from None
        node = raw
        parts = dotted.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {dotted}: {'.'.join(parts[: i + 1])} is not a section")
            node = child
        node[parts[-1]] = value
    return raw


def to_dict(cfg: Any) -> dict:
    """The plain-dict form of a config tree (for saving next to the run), tuples as lists: as YAML
    reads it back."""
    return _deep_copy(dataclasses.asdict(cfg))


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _convert_dataclass(tp, value, key)
    if origin is Union or origin is types.UnionType:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{_name(key)}: {value!r} matches none of {tp}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{_name(key)}: {value!r} is not one of {list(choices)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{_name(key)}: expected a list, got {_describe(value)}")
        (item_tp,) = typing.get_args(tp)
        return [_convert(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        items = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(items):
            raise ConfigError(f"{_name(key)}: expected a list of {len(items)}, got {_describe(value)}")
        return tuple(_convert(item_tp, v, f"{key}[{i}]") for i, (item_tp, v) in enumerate(zip(items, value)))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{_name(key)}: expected a mapping, got {_describe(value)}")
        args = typing.get_args(tp)
        if not args:
            return _deep_copy(value)
        return {str(k): _convert(args[1], v, _join(key, str(k))) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{_name(key)}: expected true/false, got {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{_name(key)}: expected an integer, got {_describe(value)}")
        return value
    if tp is float:
        if isinstance(value, str):  # PyYAML (YAML 1.1) reads 2e-4 as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{_name(key)}: expected a number, got {_describe(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{_name(key)}: expected a string, got {_describe(value)}")
        return value
    raise TypeError(f"typed_config does not support the type {tp!r} (at {_name(key)})")


def _convert_dataclass(cls: Any, value: Any, key: str) -> Any:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(f"{_name(key)}: expected a section (mapping), got {_describe(value)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for name in value:
        if name not in fields:
            raise ConfigError(f"unknown config key {_join(key, str(name))!r} (known: {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        sub = _join(key, name)
        if name in value:
            kwargs[name] = _convert(hints[name], value[name], sub)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required config key {sub!r}")
    return cls(**kwargs)


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_deep_copy(v) for v in value]
    return value


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _name(key: str) -> str:
    return f"config key {key!r}" if key else "config"


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())
