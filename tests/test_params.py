"""hamt.params and hamt.typed: params.yaml is the only source of defaults; strict loading; no import cycle."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from conftest import ROOT
from hamt.errors import ConfigError
from hamt.params import SECTIONS, read_yaml, resolve
from hamt.typed import coerce, from_dict


def _field_defaults(cls) -> dict:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
        else:
            out[f.name] = dataclasses.MISSING
    return out


def _compare(cls, yaml_section: dict, where: str, defaults: dict | None = None) -> list[str]:
    """Problems of ``cls``'s defaults (or of ``defaults``, a nested default instance's values) vs params.yaml."""
    problems = []
    for name, default in (defaults or _field_defaults(cls)).items():
        key = f"{where}.{name}"
        if name not in yaml_section:
            problems.append(f"{key}: in {cls.__name__} but not in params.yaml")
            continue
        value = yaml_section[name]
        if dataclasses.is_dataclass(default):
            nested = {f.name: getattr(default, f.name) for f in dataclasses.fields(default)}
            problems += _compare(type(default), value, key, nested)
        elif default is not dataclasses.MISSING and default != value:
            problems.append(f"{key}: dataclass default {default!r} != params.yaml {value!r}")
    return problems


def test_every_dataclass_default_is_the_params_yaml_value():
    raw = read_yaml(ROOT / "params.yaml")
    problems = []
    for section, cls in SECTIONS.items():
        problems += _compare(cls, raw.get(section) or {}, section)
    assert not problems, "\n".join(problems)


def test_the_checker_catches_a_drifted_default():
    raw = read_yaml(ROOT / "params.yaml")
    raw["train"] = {**raw["train"], "warmup_steps": raw["train"]["warmup_steps"] + 1}
    assert any("warmup_steps" in p for p in _compare(SECTIONS["train"], raw["train"], "train"))


def test_every_profile_resolves():
    raw = read_yaml(ROOT / "params.yaml")
    for name in raw["profiles"]:
        assert resolve(raw, name).profile == name


def test_strict_loading_names_the_key():
    @dataclasses.dataclass
    class S:
        lr: float = 1.0
        steps: int = 1

    assert from_dict(S, {"lr": 2}).lr == 2.0  # int -> float is lossless
    with pytest.raises(ConfigError, match="unknown key 's.lrr' \\(did you mean 'lr'\\?\\)"):
        from_dict(S, {"lrr": 1}, "s")
    with pytest.raises(ConfigError, match="s.steps: expected an integer"):
        from_dict(S, {"steps": 1.5}, "s")
    with pytest.raises(ConfigError, match="x: expected true or false"):
        coerce("yes", bool, "x")


def _imports(path: Path, package: str) -> set[str]:
    """Modules of ``package`` that ``path`` imports anywhere (top level or inside functions)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith(package + ".")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == package:
                out |= {f"{package}.{a.name}" for a in node.names}
            elif node.module.startswith(package + "."):
                out.add(node.module)
    return out


def _module_graph(root: Path, package: str = "hamt") -> dict[str, set[str]]:
    files = {}
    for p in sorted((root / package).rglob("*.py")):
        parts = p.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        files[name] = p
    graph = {}
    for name, p in files.items():
        deps = set()
        for mod in _imports(p, package):
            while mod not in files and "." in mod:  # "from hamt.metrics import lm" names a module or a symbol
                mod = mod.rsplit(".", 1)[0]
            if mod in files and mod != name and not name.startswith(mod + "."):
                deps.add(mod)
        graph[name] = deps
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_no_import_cycle_in_the_package():
    """Function-level imports count too: a cycle hidden inside a function is still a cycle."""
    cycle = _cycle(_module_graph(ROOT))
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_check_finds_a_cycle(tmp_path):
    pkg = tmp_path / "hamt"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from hamt.b import x\n")
    (pkg / "b.py").write_text("def f():\n    from hamt import a\n")
    assert _cycle(_module_graph(tmp_path)) in (["hamt.a", "hamt.b", "hamt.a"], ["hamt.b", "hamt.a", "hamt.b"])
