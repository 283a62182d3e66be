"""The params file as mappings: reading it strictly, profile overlays, ``--set`` overrides.

The half of the parameter handling that knows nothing about the sections' fields: ``read_yaml`` turns a
file into a mapping (one ``ConfigError`` line for every problem), ``deep_merge`` lays a profile over the
base sections and ``parse_override`` / ``apply_overrides`` apply ``--set section.key=value``. The typed
sections and ``resolve`` / ``load_params``, the public API, are ``hamt.params``. Imports no torch.
"""

from __future__ import annotations

import copy
import typing
from pathlib import Path
from typing import Any

import yaml

from hamt.errors import ConfigError
from hamt.typed import did_you_mean


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out
def parse_override(text: str) -> tuple[list[str], Any]:
    """``section.key=value`` -> (["section", "key"], parsed YAML value)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value, e.g. --set train.lr=1e-3")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if len(parts) < 2:
        raise ConfigError(f"--set {text!r}: the key needs a section, e.g. train.{key.strip() or 'lr'}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    # YAML reads 1e-3 as a string; numbers in scientific notation are meant as floats.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else value
        except ValueError:
            pass
    return parts, value
def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"parameter file {path} not found; pass --params PATH or run from the project root")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"{path}: not valid YAML ({first})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return data


def split_profiles(raw: dict, profile: str | None, allowed: set[str]) -> tuple[str, dict, dict]:
    """(active profile name, base sections, profiles) of a raw params mapping; unknown sections refused."""
    raw = copy.deepcopy(raw)
    profiles = raw.pop("profiles", {}) or {}
    if not isinstance(profiles, dict):
        raise ConfigError("profiles: expected a mapping of profile names to overlays")
    name = profile or raw.pop("profile", None) or "tiny"
    raw.pop("profile", None)
    for key in raw:
        if key not in allowed:
            raise ConfigError(f"unknown section '{key}'{did_you_mean(key, allowed)}; valid: {', '.join(sorted(allowed))}")
    if name not in profiles and profiles:
        raise ConfigError(f"unknown profile '{name}'{did_you_mean(name, profiles)}; available: {', '.join(profiles)}")
    return name, raw, profiles


def apply_overrides(merged: dict, overrides: typing.Sequence[str], allowed: set[str]) -> dict:
    """``merged`` with each ``--set section.key=value`` of ``overrides`` applied (in place; returned)."""
    for text in overrides:
        parts, value = parse_override(text)
        if parts[0] not in allowed:
            raise ConfigError(f"--set {text}: unknown section '{parts[0]}'; valid: {', '.join(sorted(allowed))}")
        node = merged.setdefault(parts[0], {})
        for p in parts[1:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text}: '{p}' is not a section")
        node[parts[-1]] = value
    return merged
