"""hamt.runtime: device resolution (strict) and names."""

from __future__ import annotations

from hamt import runtime


def test_resolve_device_and_name():
    assert runtime.resolve_device("cpu").type == "cpu"
    assert runtime.device_name("cpu").startswith("CPU")


def test_resolve_device_is_strict():
    import pytest
    import torch

    from hamt.errors import ConfigError

    with pytest.raises(ConfigError, match="expected auto, cpu, cuda or cuda:N"):
        runtime.resolve_device("tpu", setting="train.device")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="train.device: 'cuda' requested but this machine has no usable CUDA"):
            runtime.resolve_device("cuda", setting="train.device")
        assert runtime.resolve_device("auto").type == "cpu"


def test_autocast_and_oom_detection():
    import contextlib

    import torch

    assert isinstance(runtime.autocast_context(torch.device("cpu"), "fp32"), contextlib.nullcontext)
    with runtime.autocast_context(torch.device("cpu"), "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    assert runtime.is_oom(RuntimeError("CUDA out of memory. Tried to allocate"))
    assert not runtime.is_oom(RuntimeError("shape mismatch"))
