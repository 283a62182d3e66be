"""HAMT: the Holographic Associative Memory Transformer and its reproducible pipeline.

Import the model lazily (``from hamt.model import HAMTForCausalLM``): this package's top level stays
light so that ``hamt --help`` and the config checks start fast.
"""

__version__ = "0.1.0"
