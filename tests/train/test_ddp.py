"""Data-parallel training on CPU: ``torchrun --standalone --nproc_per_node 2`` with gloo.

The ranks must end with identical weights, and — because RandomWindows gives the two ranks together
the batch one process would draw — the DDP run must follow the single-process run with the same
global batch (equal up to float reduction order).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, make_micro_tokens
from hamt.params import read_yaml, resolve

DRIVER = """
import json, os, sys
from hamt.params import read_yaml, resolve
from hamt.train import train
p = resolve(read_yaml(sys.argv[1]), "micro", sys.argv[3:])
s = train(p)
rank = int(os.environ["RANK"])
with open(os.path.join(sys.argv[2], f"rank{rank}.json"), "w") as f:
    json.dump({k: s[k] for k in ("weights_sha256", "steps", "world_size", "val_loss", "tokens")}, f)
"""


@pytest.fixture(scope="module")
def tokens_dir(tmp_path_factory) -> Path:
    return make_micro_tokens(tmp_path_factory.mktemp("ddp-data"), seed=3)


def test_two_process_cpu_ddp_trains_and_ranks_agree(tokens_dir, tmp_path):
    from hamt.train import train

    overrides = [f"tokenizer.tokens_dir={tokens_dir}", "train.device=cpu", "train.micro_batch_size=4",
                 "train.max_steps=12", "train.eval_every=6", "train.ckpt_every=6", "train.log_every=3"]
    ddp_out, single_out = tmp_path / "ddp", tmp_path / "single"
    ddp_out.mkdir()
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(driver),
           str(ROOT / "params.yaml"), str(ddp_out), *overrides,
           f"train.out_dir={ddp_out / 'ckpt'}", f"train.results_dir={ddp_out / 'results'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]

    r0, r1 = (json.loads((ddp_out / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2 and r0["steps"] == r1["steps"] == 12
    assert r0["weights_sha256"] == r1["weights_sha256"]
    assert r0["tokens"] == 12 * 8 * 32  # the global batch, not one rank's
    assert (ddp_out / "ckpt" / "hamt" / "final" / "model.safetensors").is_file()
    assert (ddp_out / "ckpt" / "hamt" / "step_00000006.pt").is_file()

    single = train(resolve(read_yaml(ROOT / "params.yaml"), "micro", [
        *overrides, f"train.out_dir={single_out / 'ckpt'}", f"train.results_dir={single_out / 'results'}"]))
    assert single["weights_sha256"] != ""

    def losses(out: Path) -> list[float]:
        with (out / "results" / "hamt" / "log.csv").open() as f:
            return [float(r["train_loss"]) for r in csv.DictReader(f)]

    assert losses(ddp_out) == pytest.approx(losses(single_out), rel=1e-3)
    assert r0["val_loss"] == pytest.approx(single["val_loss"], rel=1e-3)
