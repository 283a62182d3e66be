"""Optional fused kernels for the holographic memory.

``hamt.kernels.triton_memory`` holds the Triton kernel of the memory scan (forward and backward). It
imports Triton at module level, so importing it raises ``ImportError`` where Triton is not installed;
this package itself imports nothing heavy, and ``hamt.memory.triton_available`` guards the import.
The kernel runs on CUDA, and on CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1`` set
before Triton is imported), which is how the tests check it without a GPU.
"""
