"""Helpers of the training tests: the micro profile on test tokens, final weights, the log series."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from conftest import ROOT
from hamt.params import read_yaml, resolve


def micro(tokens_dir: Path, out: Path, *overrides: str):
    """The ``micro`` profile on ``tokens_dir``, writing under ``out``, on the CPU."""
    return resolve(read_yaml(ROOT / "params.yaml"), "micro", [
        f"tokenizer.tokens_dir={tokens_dir}", f"train.out_dir={out / 'ckpt'}", f"train.results_dir={out / 'results'}",
        "train.device=cpu", *overrides])


def final_weights(out: Path, name: str = "hamt") -> dict:
    from safetensors.torch import load_file

    return load_file(out / "ckpt" / name / "final" / "model.safetensors")


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def series(out: Path, name: str = "hamt") -> list[dict]:
    with (out / "results" / name / "log.csv").open() as f:
        return list(csv.DictReader(f))
