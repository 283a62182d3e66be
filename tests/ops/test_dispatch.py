"""The dispatcher (hamt/ops/__init__.py): which path ``mode`` runs, and that one ``chunk_size`` reaches
every path (the model's config value included), with one default, and is checked the same way."""

import inspect
import os

import pytest
import torch
from scan_helpers import TOL, make_inputs

import hamt.layers
import hamt.ops
from hamt.config import HAMTConfig
from hamt.model import HAMTForCausalLM
from hamt.ops import DEFAULT_CHUNK_SIZE, cpu_kernel_status, memory_chunked, memory_fused_cpu, memory_scan

PATHS = {"chunk": "memory_chunked", "cpu": "memory_fused_cpu"}  # names the dispatcher calls in hamt.ops


def _spy(monkeypatch, mode, run=True) -> list:
    """Record the chunk_size each call of ``mode``'s path function receives (and run it unless not ``run``)."""
    if mode == "triton":
        module, name = pytest.importorskip("hamt.ops.triton"), "memory_triton"
    else:
        module, name = hamt.ops, PATHS[mode]
    seen, orig = [], getattr(module, name)

    def spy(*args, **kwargs):
        seen.append(kwargs["chunk_size"])
        return orig(*args, **kwargs) if run else (None, None, None)
    monkeypatch.setattr(module, name, spy)
    return seen


@pytest.mark.parametrize("mode", ["chunk", "cpu", "triton"])
def test_chunk_size_reaches_every_path(monkeypatch, mode):
    if mode == "cpu" and not cpu_kernel_status()[0]:
        pytest.skip(f"fused CPU kernel unavailable: {cpu_kernel_status()[1]}")
    x = make_inputs(1, 9, 2, 3, 5, torch.float64)
    # Triton runs on CPU tensors only under its interpreter (test_triton.py runs it so in a subprocess)
    run = mode != "triton" or os.environ.get("TRITON_INTERPRET") == "1"
    seen = _spy(monkeypatch, mode, run)
    out = memory_scan(**x, mode=mode, chunk_size=3)
    memory_scan(**x, mode=mode)
    assert seen == [3, DEFAULT_CHUNK_SIZE]
    if run:
        for a, b in zip(out, memory_scan(**x, mode="reference")):
            torch.testing.assert_close(a, b, **TOL[torch.float64])


def test_one_default_for_every_path():
    fns = [memory_scan, memory_chunked, memory_fused_cpu]
    try:
        from hamt.ops.triton import memory_triton
        fns.append(memory_triton)
    except ImportError:
        pass
    for fn in fns:
        assert inspect.signature(fn).parameters["chunk_size"].default == DEFAULT_CHUNK_SIZE, fn.__name__


@pytest.mark.parametrize("mode", ["auto", "reference", "chunk", "cpu", "triton"])
@pytest.mark.parametrize("bad", [0, -1, 2.5, "16", None, True])
def test_invalid_chunk_size_is_a_value_error_for_every_mode(mode, bad):
    x = make_inputs(1, 4, 1, 2, 5, torch.float64)
    with pytest.raises(ValueError, match="chunk_size must be an int >= 1"):
        memory_scan(**x, mode=mode, chunk_size=bad)


@pytest.mark.parametrize("fn", [memory_chunked, memory_fused_cpu])
def test_invalid_chunk_size_is_a_value_error_for_each_path(fn):
    x = make_inputs(1, 4, 1, 2, 5, torch.float64)
    with pytest.raises(ValueError, match="chunk_size"):
        fn(**x, chunk_size=0)


def test_unknown_mode():
    with pytest.raises(ValueError, match="unknown memory mode 'fast'"):
        memory_scan(**make_inputs(1, 4, 1, 2, 5, torch.float64), mode="fast")


@pytest.mark.parametrize("mode", ["chunk", "cpu"])
def test_model_config_chunk_size_reaches_the_path(monkeypatch, mode):
    """HAMTConfig.chunk_size is what the model's memory layers pass to the scan."""
    if mode == "cpu" and not cpu_kernel_status()[0]:
        pytest.skip(f"fused CPU kernel unavailable: {cpu_kernel_status()[1]}")
    cfg = HAMTConfig.from_params(dict(preset="tiny", vocab_size=64, hidden_dim=16, hcm_dim=16, num_layers=2,
                                      num_slots=2, num_attention_heads=2, memory_mode=mode, chunk_size=5))
    seen = _spy(monkeypatch, mode)
    HAMTForCausalLM(cfg).eval()(input_ids=torch.randint(0, 64, (1, 12)))
    assert seen == [5, 5]  # one scan per layer
    assert hamt.layers.memory_scan is memory_scan  # the layers call the dispatcher


def test_the_model_default_chunk_is_the_ops_default():
    from hamt.config import HAMTConfig
    from hamt.ops import DEFAULT_CHUNK_SIZE

    assert HAMTConfig().chunk_size == DEFAULT_CHUNK_SIZE


@pytest.mark.parametrize("mode", ["reference", "chunk", "cpu"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_raw_pairs_with_normalize_equal_the_reference_on_unitary_inputs(mode, dtype):
    """The model's call: q, k, v as (re, im) pair views of one (B, T, 3, H, F, 2) projection, k and q raw,
    ``normalize=eps``; outputs, final state and every gradient equal the reference run on
    unitary(q, eps), unitary(k, eps) as complex tensors."""
    if mode == "cpu" and not cpu_kernel_status()[0]:
        pytest.skip(f"fused CPU kernel unavailable: {cpu_kernel_status()[1]}")
    x = make_inputs(2, 13, 3, 4, 9, dtype)
    g = torch.Generator().manual_seed(3)
    eps = 0.3  # large, so that an eps applied wrongly (or not at all) shows
    kqv = torch.randn(2, 13, 3, 3, 9, 2, generator=g, dtype=dtype)
    gates = {n: x[n] for n in ("log_f", "w", "b", "state", "c")}

    def ref(kqv, **gates):
        k, q, v = (torch.view_as_complex(t.contiguous()) for t in kqv.unbind(2))
        return hamt.ops.memory_reference(hamt.ops.unitary(q, eps), hamt.ops.unitary(k, eps), v, perm=x["perm"],
                                         **gates)

    def fast(kqv, **gates):
        k, q, v = kqv.unbind(2)  # strided views, read in place by the cpu kernel
        r, u, s = memory_scan(q, k, v, perm=x["perm"], mode=mode, chunk_size=4, normalize=eps, **gates)
        assert r.shape == u.shape == (2, 13, 3, 9, 2) and not r.is_complex() and s.is_complex()
        return torch.view_as_complex(r), torch.view_as_complex(u), s

    results = []
    for fn in (ref, fast):
        leaves = [t.detach().clone().requires_grad_() for t in (kqv, *gates.values())]
        outs = fn(leaves[0], **dict(zip(gates, leaves[1:])))
        w = torch.Generator().manual_seed(4)
        loss = sum((torch.view_as_real(o) * torch.randn(torch.view_as_real(o).shape, generator=w, dtype=dtype)).sum()
                   for o in outs)
        results.append([o.detach() for o in outs] + list(torch.autograd.grad(loss, leaves)))
    for got, want in zip(*results[::-1]):
        torch.testing.assert_close(got, want, **TOL[dtype])
