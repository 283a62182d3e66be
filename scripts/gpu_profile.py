"""Where one HAMT training step's GPU time goes: torch profiler, top CUDA kernels by total time.

    python scripts/gpu_profile.py [--preset 100m] [--batch 16] [--seq-len 1024]
"""
import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from hamt.baselines import hamt_and_matched_gpt2
from hamt.config import HAMTConfig
from hamt.metrics.systems import train_step

ap = argparse.ArgumentParser()
ap.add_argument("--preset", default="100m")
ap.add_argument("--batch", type=int, default=16)
ap.add_argument("--seq-len", type=int, default=1024)
ap.add_argument("--rows", type=int, default=25)
a = ap.parse_args()
dev = torch.device("cuda")
model = hamt_and_matched_gpt2(HAMTConfig.from_preset(a.preset), a.seq_len, dev)["hamt"]  # what hamt bench model times
x = torch.randint(0, model.config.vocab_size, (a.batch, a.seq_len), device="cuda")
step = train_step(model, x, device=dev, precision="bf16")
for _ in range(2):
    step()
torch.cuda.synchronize()
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    step()
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=a.rows, max_name_column_width=70))
