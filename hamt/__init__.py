"""HAMT: the Holographic Associative Memory Transformer and its reproducible pipeline.

``import hamt`` registers ``model_type="hamt"`` with transformers' ``AutoConfig`` and
``AutoModelForCausalLM``, lazily: it imports neither torch nor transformers (so ``hamt --help`` and the
config checks start fast). If transformers' Auto modules are already loaded it registers now; otherwise a
post-import hook (``_AutoHook`` on ``sys.meta_path``) registers as soon as they load, at the first moment
the transformers modules ``hamt.model`` imports are complete. Then
``AutoModelForCausalLM.from_pretrained(path)`` works without naming ``hamt.model``.
"""

from __future__ import annotations

import sys

__version__ = "0.1.0"

_CONFIG_AUTO = "transformers.models.auto.configuration_auto"
_MODEL_AUTO = "transformers.models.auto.modeling_auto"
# what hamt.config / hamt.model import from transformers: never import them while one is half-initialised
_NEEDED = (_CONFIG_AUTO, "transformers.configuration_utils", _MODEL_AUTO, "transformers.modeling_utils",
           "transformers.generation.utils")
_done = {"config": False, "model": False}


def _ready(name: str, just_loaded: str | None) -> bool:
    module = sys.modules.get(name)
    if module is None:
        return False
    return name == just_loaded or not getattr(getattr(module, "__spec__", None), "_initializing", False)


def _register(just_loaded: str | None = None) -> None:
    """Register what can be registered now (see the module docstring); a later load retries the rest."""
    busy = [n for n in _NEEDED if n in sys.modules and not _ready(n, just_loaded)]
    if busy:
        return
    try:
        if not _done["config"] and _ready(_CONFIG_AUTO, just_loaded):
            from transformers import AutoConfig

            from hamt.config import HAMTConfig

            AutoConfig.register("hamt", HAMTConfig, exist_ok=True)
            _done["config"] = True
        if not _done["model"] and _ready(_MODEL_AUTO, just_loaded):
            import hamt.model  # noqa: F401  its import registers both classes

            _done["config"] = _done["model"] = True
    except ImportError:  # no torch, or transformers mid-import in a way not foreseen: the next load retries
        return
    if all(_done.values()) and _HOOK in sys.meta_path:
        sys.meta_path.remove(_HOOK)


class _Loader:
    """Wraps a module's loader: run the module, then ``_register``."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        _register(module.__name__)

    def __getattr__(self, name):
        return getattr(self.loader, name)


class _AutoHook:
    """A ``sys.meta_path`` finder that only wraps the loaders of the modules in ``_NEEDED``."""

    def find_spec(self, name, path=None, target=None):
        if name not in _NEEDED:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader)
                return spec
        return None


_HOOK = _AutoHook()
if _CONFIG_AUTO in sys.modules or _MODEL_AUTO in sys.modules:
    _register()
if not all(_done.values()):
    sys.meta_path.insert(0, _HOOK)
