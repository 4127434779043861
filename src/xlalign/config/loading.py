"""Profiles from ``configs/*.yaml``: ``inherit``, overlays, ``section.key=value`` overrides, and
``derive``, the one way to derive a profile from another; unknown keys and duplicate keys are refused.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from xlalign.config.sections import Profile
from xlalign.config.values import _BUILDING, CONFIG_DIR, ConfigError, _choice, _hints


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp``; allow int->float, nothing else implicit."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is Literal:
        _choice(value, tp, key)
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, key)
    if tp is float:
        # YAML 1.1 reads "5e-6" (no dot) as a string; accept any string that is a float literal.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {type(value).__name__} {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}={value} must be a finite number")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def _section_default(cls: type, name: str) -> Any:
    """A field's default value, if it is a dataclass (``calm.train`` starts from CALM's defaults)."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    if f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
        return default if dataclasses.is_dataclass(default) else None
    return None


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else key
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = (
                f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(names)}"
            )
            raise ConfigError(f"unknown profile key {full!r}{hint}")
        if isinstance(value, dict) and dataclasses.is_dataclass(hints[key]):
            # Keys a mapping leaves out keep the field's default section, not the class defaults.
            default = _section_default(cls, key)
            if default is not None:
                value = _merge(dataclasses.asdict(default), value)
        kwargs[key] = _coerce(value, hints[key], full)
    token = _BUILDING.set((cls, prefix))
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except TypeError as exc:  # pragma: no cover - defensive
        raise ConfigError(f"{prefix or cls.__name__}: {exc}") from exc
    finally:
        _BUILDING.reset(token)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int) -> None:
        super().__init__(f"duplicate key {key!r} (line {line})")
        self.key, self.line = key, line


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping with a repeated key (plain YAML keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                if key in seen:
                    raise _DuplicateKey(key, key_node.start_mark.line + 1)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = _load_yaml(path.read_text(encoding="utf-8")) or {}
    except _DuplicateKey as exc:
        raise ConfigError(
            f"{path}: duplicate key {exc.key!r} (line {exc.line}); each key may appear once per mapping"
        ) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def _resolve_profile_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    candidate = CONFIG_DIR / f"{name_or_path}.yaml"
    if candidate.exists():
        return candidate
    known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(f"unknown profile {name_or_path!r}; known profiles: {', '.join(known)}")


def _profile_dict(name_or_path: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    path = _resolve_profile_path(name_or_path)
    if str(path) in seen:
        raise ConfigError(f"{path}: circular 'inherit'")
    data = _read_yaml(path)
    parent = data.pop("inherit", None)
    if parent:
        data = _merge(_profile_dict(parent, seen + (str(path),)), data)
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.learning_rate=1e-4`` -> (["train", "learning_rate"], 1e-4); the value is YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = _load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: typing.Iterable[str] | dict[str, Any]) -> dict:
    items = (
        overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides)
    )
    out = dict(data)
    for key, value in items:
        parts = key.split(".") if isinstance(key, str) else key
        node = out
        for part in parts[:-1]:
            node[part] = dict(node.get(part) or {})
            node = node[part]
        node[parts[-1]] = value
    return out


def _overlay_path(overlay: str) -> Path:
    path = Path(overlay)
    if not path.exists():
        path = CONFIG_DIR / "ablations" / f"{overlay}.yaml"
    if not path.exists():
        raise ConfigError(f"unknown overlay {overlay!r} (looked for {path})")
    return path


def _apply(
    data: dict[str, Any],
    overlays: typing.Iterable[str],
    overrides: typing.Iterable[str] | dict[str, Any] | None,
    sections: dict[str, Any] | None = None,
) -> Profile:
    for overlay in overlays:
        data = _merge(data, _read_yaml(_overlay_path(overlay)))
    for name, value in (sections or {}).items():
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            data = {**data, name: dataclasses.asdict(value)}  # the whole section, replaced
        elif isinstance(value, dict):
            data = _merge(data, {name: value})  # these fields of the section, merged
        else:
            data = {**data, name: value}  # a top-level value (name, seed, ...)
    return _build(Profile, apply_overrides(data, overrides or ()))


def load_profile(
    name_or_path: str = "cpu",
    overrides: typing.Iterable[str] | dict[str, Any] = (),
    overlays: typing.Iterable[str] = (),
) -> Profile:
    """Load ``configs/<name>.yaml`` (following ``inherit``), then overlays, then ``key=value`` overrides."""
    return _apply(_profile_dict(name_or_path), overlays, overrides)


def derive(
    profile: Profile,
    overlays: typing.Iterable[str] = (),
    overrides: typing.Iterable[str] | dict[str, Any] | None = None,
    **sections: Any,
) -> Profile:
    """The one way to make a profile from another: ``profile`` with, in this order,

    1. ``overlays``: ``configs/ablations/<name>.yaml`` names or paths, merged like YAML;
    2. ``sections``: keyword per top-level field; a mapping sets those fields of the section
       (``train={"method": "dpo"}``, ``model={"name": "smollm2-135m"}``), a section instance replaces
       it whole (``lora=profile.calm.lora``), any other value sets the field (``seed=1``);
    3. ``overrides``: ``["train.max_steps=5"]`` or ``{"train.max_steps": 5}``;

    then built and validated again exactly as a loaded profile is (``ConfigError`` names the key).
    ``profile`` itself is never changed.
    """
    return _apply(profile.to_dict(), overlays, overrides, sections)


def profile_from_dict(data: dict[str, Any]) -> Profile:
    """Rebuild a profile from ``Profile.to_dict()`` output (e.g. a run record)."""
    return _build(Profile, data)
