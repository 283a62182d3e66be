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
    """The params file as a mapping: valid YAML, not empty, a mapping at the top, no key given twice."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"parameter file {path} not found; pass --params PATH or run from the project root")
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, yaml.MarkedYAMLError) and e.problem_mark is not None and "twice" in (e.problem or ""):
            first = f"{e.problem} (line {e.problem_mark.line + 1})"
        raise ConfigError(f"{path}: not valid YAML ({first})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror or e})") from None
    if data is None:
        raise ConfigError(f"{path} is empty; it must hold the parameter sections (see the project's params.yaml)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return data


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML itself keeps the last silently)."""


def _mapping_without_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict:
    loader.flatten_mapping(node)
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, (str, int, float, bool)) and key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} is given twice (first on line {seen[key] + 1})", key_node.start_mark)
        if isinstance(key, (str, int, float, bool)):
            seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def split_profiles(raw: dict, profile: str | None, allowed: set[str]) -> tuple[str, dict, dict]:
    """(active profile name, base sections, profiles) of a raw params mapping; unknown sections refused."""
    raw = copy.deepcopy(raw)
    profiles = raw.pop("profiles", {}) or {}
    if not isinstance(profiles, dict):
        raise ConfigError("profiles: expected a mapping of profile names to overlays")
    for pname, overlay in profiles.items():
        if not isinstance(overlay, dict) and overlay is not None:
            raise ConfigError(f"profiles.{pname}: expected a mapping of sections (e.g. train: {{max_steps: 40}}), "
                              f"got {overlay!r}")
        for key, section in (overlay or {}).items():
            _check_section(key, section, allowed, f"profiles.{pname}.")
    name = profile or raw.pop("profile", None) or "tiny"
    raw.pop("profile", None)
    if not isinstance(name, str):
        raise ConfigError(f"profile: expected one profile name, got {name!r}")
    for key, section in raw.items():
        _check_section(key, section, allowed)
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


def _check_section(key: Any, section: Any, allowed: set[str], where: str = "") -> None:
    if key not in allowed:
        raise ConfigError(f"unknown section '{where}{key}'{did_you_mean(str(key), allowed)}; "
                          f"valid: {', '.join(sorted(allowed))}")
    if section is not None and not isinstance(section, dict):
        raise ConfigError(f"{where}{key}: expected a mapping of keys to values, got {section!r}")
