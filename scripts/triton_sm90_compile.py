"""Compile the Triton memory-scan kernels for an H100/H200 (sm_90) without a GPU, and print their resources.

    python scripts/triton_sm90_compile.py [--slots 16] [--freqs 65] [--chunk 16] [--fp64] [--json]

For each kernel (forward, backward; with and without the key read-back c) at the launch shape the
dispatcher uses (hamt.ops.triton.launch_shape), Triton compiles to PTX and a cubin for GPUTarget("cuda",
90, 32); the bundled ptxas, run again with -v on that PTX, reports registers and spills (the driver,
which Triton asks for them at load time, is not needed). A program owns a whole (batch, head) row, so
its S x F state must fit in registers: spills mean local-memory traffic in every time step. Exit
status 1 when any kernel spills. Never run under TRITON_INTERPRET=1 (kernels are then interpreted
functions, not compilable).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from hamt.ops import triton as tm

INTS = {"T", "H", "S", "F", "NC", "TS"}


def signature(fn, consts: dict, real: str) -> dict:
    """Triton types of ``fn``'s arguments: constexprs, i32 sizes, an fp eps, int32 permutations, real pointers."""
    def kind(n):
        if n in consts:
            return "constexpr"
        if n in INTS:
            return "i32"
        if n == "eps":
            return "fp32"
        return "*i32" if n == "PERM" else f"*{real}"
    return {n: kind(n) for n in fn.arg_names}


def ptxas_resources(ptx: str) -> dict:
    """Registers, spills and stack of the PTX's kernel, from the bundled ptxas -v."""
    from triton.backends.nvidia.compiler import get_ptxas  # the ptxas Triton itself uses for sm_90

    ptxas = get_ptxas(90).path
    arch = re.search(r"^\.target\s+(\S+)", ptx, re.M).group(1)
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        Path(src).write_text(ptx)
        out = subprocess.run([str(ptxas), "-v", f"--gpu-name={arch}", src, "-o", os.path.join(tmp, "k.cubin")],
                             capture_output=True, text=True, check=True).stderr
    regs = re.search(r"Used (\d+) registers", out)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", out)
    stack = re.search(r"(\d+) bytes stack frame", out)
    return {"arch": arch, "registers": int(regs.group(1)) if regs else None,
            "spill_stores": int(spill.group(1)) if spill else None, "spill_loads": int(spill.group(2)) if spill else None,
            "stack_bytes": int(stack.group(1)) if stack else None}


def compile_one(kernel: str, S: int, F: int, chunk: int, has_c: bool, fp64: bool, warps: int | None = None) -> dict:
    block_s, block_f, default_warps = tm.launch_shape(S, F)
    warps = warps or default_warps
    fn = tm._scan_fwd_kernel if kernel == "fwd" else tm._scan_bwd_kernel
    consts = dict(HAS_C=has_c, UNIT=True, CHUNK=chunk, BLOCK_S=block_s, BLOCK_F=block_f)
    if kernel == "fwd":
        consts |= dict(HAS_S0=True, SAVE_CK=True)
    real = "fp64" if fp64 else "fp32"
    compiled = triton.compile(ASTSource(fn, signature(fn, consts, real), consts), target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": warps, "enable_fp_fusion": True})
    ptx = compiled.asm["ptx"]
    return {"kernel": kernel, "S": S, "F": F, "block": [block_s, block_f], "chunk": chunk, "has_c": has_c,
            "dtype": real, "num_warps": compiled.metadata.num_warps, "shared_bytes": compiled.metadata.shared,
            "atomics": "atom.global" in ptx or "red.global" in ptx, **ptxas_resources(ptx)}


def main() -> int:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")
    ap = argparse.ArgumentParser()
    ap.add_argument("--slots", type=int, default=16)
    ap.add_argument("--freqs", type=int, default=65)
    ap.add_argument("--chunk", type=int, default=tm.DEFAULT_CHUNK_SIZE)
    ap.add_argument("--fp64", action="store_true", help="also the float64 variants")
    ap.add_argument("--json", action="store_true", help="one JSON list instead of a table")
    a = ap.parse_args()
    rows = [compile_one(k, a.slots, a.freqs, a.chunk, has_c, fp64)
            for fp64 in ((False, True) if a.fp64 else (False,)) for k in ("fwd", "bwd") for has_c in (False, True)]
    if a.json:
        print(json.dumps(rows))
    else:
        print("| kernel | dtype | S x F (block) | c | warps | registers | spill st/ld bytes | stack | shared bytes | atomics |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['kernel']} | {r['dtype']} | {r['S']} x {r['F']} ({r['block'][0]} x {r['block'][1]}) | "
                  f"{'yes' if r['has_c'] else 'no'} | {r['num_warps']} | {r['registers']} | {r['spill_stores']}/"
                  f"{r['spill_loads']} | {r['stack_bytes']} | {r['shared_bytes']} | {'yes' if r['atomics'] else 'no'} |")
    return 1 if any(r["spill_stores"] or r["spill_loads"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
