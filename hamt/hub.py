"""A saved HAMT folder that loads anywhere: ``auto_map`` in config.json plus flat copies of the model's code.

``AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)`` then works where only torch and
transformers are installed (``hamt`` not importable): the lm-eval command line, a colleague's laptop, the
hub. ``HAMTPreTrainedModel.save_pretrained`` calls ``write_remote_code`` after writing the weights.

The copies are the library's own modules, one flat file each (transformers copies a folder's ``.py``
files into its module cache and resolves relative imports only), with every ``from hamt.x.y import``
rewritten to ``from .hamt_x_y import``: nothing is hand-copied, so they cannot drift (tests/test_hub.py
checks each copy equals its source up to that rewrite). Which modules: the import closure of
``hamt.model`` and ``hamt.config`` (imports inside functions included). The fused kernels stay optional
in the copies: the C kernel's source (``csrc/``) is not a ``.py`` file, so it is not found and the memory
runs the pure-PyTorch chunked path; the Triton kernel is imported only on CUDA with Triton installed.
Works from inside such a copy too (a model loaded with trust_remote_code saves its sibling files again).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from hamt.io import read_json, write_json_atomic, write_text_atomic

ROOTS = ("hamt.model", "hamt.config")
# the two names transformers' auto_map points at; every other module is hamt_<dotted path with _>
FLAT_NAMES = {"hamt.model": "modeling_hamt", "hamt.config": "configuration_hamt"}
AUTO_MAP = {"AutoConfig": "configuration_hamt.HAMTConfig", "AutoModelForCausalLM": "modeling_hamt.HAMTForCausalLM"}

_IMPORT = re.compile(r"^(\s*)from (hamt(?:\.\w+)*) import ", re.MULTILINE)
_HERE = Path(__file__).resolve().parent
_IN_LIBRARY = __package__ == "hamt"  # False inside a flat copy (transformers' dynamic module)


def flat_name(module: str) -> str:
    """``hamt.ops.naive`` -> ``hamt_ops_naive`` (``hamt.model``/``hamt.config``: the auto_map names)."""
    return FLAT_NAMES.get(module, module.replace(".", "_"))


def rewrite_imports(source: str) -> str:
    """Every ``from hamt.x import`` line -> ``from .hamt_x import`` (the only change a copy has)."""
    return _IMPORT.sub(lambda m: f"{m.group(1)}from .{flat_name(m.group(2))} import ", source)


def _library_file(module: str) -> Path:
    parts = module.split(".")[1:]
    path = _HERE.joinpath(*parts)
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _hamt_imports(source: str, where: str) -> list[str]:
    """The hamt modules ``source`` imports (anywhere in the file); any other form of import is refused."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "hamt" for a in node.names):
            raise ValueError(f"{where}: `import hamt...` cannot be made relative; use `from hamt.x import y`")
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "hamt":
            if node.module == "hamt":
                raise ValueError(f"{where}: `from hamt import ...` cannot be made relative; name the module")
            out.append(node.module)
    return out


def code_files() -> dict[str, str]:
    """``{file name: text}`` of the flat copies a saved model carries."""
    if not _IN_LIBRARY:  # inside a copy: the siblings already are the copies
        return {p.name: p.read_text(encoding="utf-8") for p in sorted(_HERE.glob("*.py"))
                if p.name.startswith(("hamt_", "modeling_hamt", "configuration_hamt"))}
    files, todo = {}, list(ROOTS)
    while todo:
        module = todo.pop()
        name = flat_name(module) + ".py"
        if name in files:
            continue
        source = _library_file(module).read_text(encoding="utf-8")
        files[name] = rewrite_imports(source)
        todo += _hamt_imports(source, module)
    return dict(sorted(files.items()))


def write_remote_code(folder: str | Path) -> None:
    """Write the code copies into a ``save_pretrained`` folder and point config.json's ``auto_map`` at them."""
    folder = Path(folder)
    for name, text in code_files().items():
        write_text_atomic(folder / name, text)
    cfg_path = folder / "config.json"
    cfg = read_json(cfg_path)
    cfg["auto_map"] = dict(AUTO_MAP)
    write_json_atomic(cfg_path, cfg)
