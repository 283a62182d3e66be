"""Does torch.compile compile a HAMT block whole? Graph breaks of one block's forward under torch._dynamo.explain.

    python scripts/gpu_compile_check.py [--preset 100m] [--device cuda] [--batch 2] [--seq-len 256]

Prints the graph count, the graph breaks with their reasons, and whether Inductor compiled forward and
backward of the block (one training step through torch.compile(block, fullgraph=True)). Exit status 0 only
when there are no graph breaks and the fullgraph compile ran. Both fused kernels are torch.library ops
(Triton on CUDA, the C kernel on CPU), so dynamo traces through the dispatch to them.
"""
import argparse
import sys

import torch

from hamt.config import HAMTConfig
from hamt.layers import HAMTBlock

ap = argparse.ArgumentParser()
ap.add_argument("--preset", default="100m")
ap.add_argument("--device", default="cuda")
ap.add_argument("--batch", type=int, default=2)
ap.add_argument("--seq-len", type=int, default=256)
ap.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
a = ap.parse_args()
dev = torch.device(a.device)
cfg = HAMTConfig.from_preset(a.preset)
block = HAMTBlock(cfg, 0).to(dev).train()
x = torch.randn(a.batch, a.seq_len, cfg.hidden_dim, device=dev, requires_grad=True)
amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.precision == "bf16")


def fwd(x):
    with amp:
        return block(x)[0]


if dev.type == "cpu":  # build/load the C kernel first: its one-time compile (subprocess, ctypes) is not traceable
    from hamt.ops import cpu_kernel_status

    print("fused CPU kernel:", cpu_kernel_status()[1])
explained = torch._dynamo.explain(fwd)(x)
print(f"preset {a.preset} device {dev} {a.precision}: graphs {explained.graph_count}, "
      f"graph breaks {explained.graph_break_count}")
for reason in explained.break_reasons:
    print("  break:", str(reason.reason).splitlines()[0][:200])
torch._dynamo.reset()
full_ok = True
try:
    compiled = torch.compile(fwd, fullgraph=True)
    compiled(x).float().square().mean().backward()
    print("torch.compile(fullgraph=True): forward + backward compiled")
except Exception as e:  # noqa: BLE001 - the reason is the result
    full_ok = False
    print(f"torch.compile(fullgraph=True) failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
sys.exit(0 if explained.graph_break_count == 0 and full_ok else 1)
