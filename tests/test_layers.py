"""hamt.layers: the block's parts on their own (the model-level equivalences are in test_model.py)."""

from __future__ import annotations

import pytest
import torch

from hamt.config import HAMTConfig
from hamt.layers import HAMTBlock, HolographicMemory, RMSNorm


def small_config(**kw) -> HAMTConfig:
    base = dict(vocab_size=64, hidden_dim=32, hcm_dim=64, num_layers=1, num_slots=2, num_attention_heads=2,
                max_position_embeddings=32, memory_mode="reference")
    return HAMTConfig(**{**base, **kw})


def test_rmsnorm_normalises_and_scales():
    torch.manual_seed(0)
    norm = RMSNorm(8, eps=0.0)
    with torch.no_grad():
        norm.weight.fill_(2.0)
    x = torch.randn(3, 5, 8) * 7
    y = norm(x)
    torch.testing.assert_close(y.square().mean(-1), torch.full((3, 5), 4.0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gating", [True, False])
@pytest.mark.parametrize("conv", [4, 0])
def test_memory_in_segments_with_carried_state_equals_one_pass(gating, conv):
    """The layer's state (memory + conv tail) carries a segment's context into the next exactly."""
    torch.manual_seed(0)
    layer = HolographicMemory(small_config(use_gating=gating, conv_kernel=conv)).double()
    x = torch.randn(2, 13, 32, dtype=torch.float64)
    full, state_full, _ = layer(x)
    a, s1, _ = layer(x[:, :6])
    b, s2, _ = layer(x[:, 6:], s1)
    torch.testing.assert_close(torch.cat([a, b], 1), full, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(s2.memory, state_full.memory, rtol=1e-9, atol=1e-9)


def test_memory_stats_report_fidelity_and_slot_use():
    torch.manual_seed(0)
    layer = HolographicMemory(small_config(num_slots=4))
    _, _, stats = layer(torch.randn(2, 9, 32), want_stats=True)
    assert -1.0 <= stats.fidelity.item() <= 1.0
    assert stats.slot_usage.shape == (4,) and stats.slot_usage.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_block_is_residual_and_causal():
    torch.manual_seed(0)
    block = HAMTBlock(small_config(), 0).eval()
    x = torch.randn(1, 10, 32)
    y, _, _ = block(x)
    x2 = x.clone()
    x2[:, 7:] += 1.0  # change the future only
    y2, _, _ = block(x2)
    torch.testing.assert_close(y[:, :7], y2[:, :7])
    assert not torch.allclose(y[:, 7:], y2[:, 7:])


def test_causal_conv_matches_conv1d_and_carries_its_tail():
    from hamt.layers import CausalConv

    torch.manual_seed(0)
    conv = CausalConv(6, 4)
    with torch.no_grad():
        conv.bias.normal_()
    x = torch.randn(2, 11, 6)
    y, tail = conv(x, None)
    ref = torch.nn.functional.conv1d(torch.nn.functional.pad(x.transpose(1, 2), (3, 0)), conv.weight, conv.bias, groups=6)
    torch.testing.assert_close(y, torch.nn.functional.silu(ref).transpose(1, 2))
    y1, t1 = conv(x[:, :5], None)
    y2, _ = conv(x[:, 5:], t1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y)


def test_dft_matrices_are_rfft_and_irfft():
    from hamt.layers import dft_matrices

    P = 10
    fwd, inv = dft_matrices(P, torch.float64, "cpu")
    x = torch.randn(7, P, dtype=torch.float64)
    torch.testing.assert_close(x @ fwd.T, torch.view_as_real(torch.fft.rfft(x)).reshape(7, -1))
    X = torch.randn(7, P // 2 + 1, dtype=torch.complex128)  # imaginary DC and Nyquist parts too: irfft drops them
    torch.testing.assert_close(torch.view_as_real(X).reshape(7, -1) @ inv.T, torch.fft.irfft(X, n=P))


@pytest.mark.parametrize("mode", ["reference", "cpu", "chunk"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matmul_transform_equals_the_fft_reference(mode, dtype):
    """The folded DFT matmuls on real pairs (the default) against torch.fft with the reference scan: outputs,
    final memory and conv tail, fidelity, and the gradients of the input and of every parameter."""
    results = []
    for transform, memory_mode in (("fft", "reference"), ("matmul", mode)):
        torch.manual_seed(0)
        layer = HolographicMemory(small_config(memory_mode=memory_mode, num_slots=3, chunk_size=4)).to(dtype)
        layer.transform = transform
        x = torch.randn(2, 11, 32, dtype=dtype, requires_grad=True)
        y, state, stats = layer(x, want_stats=True)
        (y.square().sum() + stats.fidelity).backward()
        results.append([y, state.memory, state.conv, stats.fidelity, x.grad] + [p.grad for p in layer.parameters()])
    tol = {"rtol": 1e-9, "atol": 1e-9} if dtype == torch.float64 else {"rtol": 2e-4, "atol": 2e-4}
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got.detach(), want.detach(), **tol)


def test_folded_weight_follows_in_place_updates_without_grad():
    """Without gradients the folded kqv weight is kept, and refolded when the stored weight changes in place
    (an optimiser step, a load): the layer still computes what the fft reference computes."""
    torch.manual_seed(0)
    layer = HolographicMemory(small_config()).double().eval()
    x = torch.randn(1, 5, 32, dtype=torch.float64)

    def both():
        out = []
        for transform in ("matmul", "fft"):
            layer.transform = transform
            out.append(layer(x)[0])
        return out
    with torch.no_grad():
        a, ref = both()
        torch.testing.assert_close(a, ref)
        layer.kqv.weight.mul_(-2.0)
        b, ref2 = both()
        torch.testing.assert_close(b, ref2)
        assert not torch.allclose(b, a)


@pytest.mark.gpu
def test_matmul_transform_on_cuda_equals_the_fft_reference():
    """The model's CUDA path (folded DFT, real pairs, Triton scan via mode auto) against torch.fft with the
    reference scan on the same GPU: outputs, final memory and every gradient, float32."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    results = []
    for transform, memory_mode in (("fft", "reference"), ("matmul", "auto")):
        torch.manual_seed(0)
        layer = HolographicMemory(small_config(memory_mode=memory_mode, num_slots=3, chunk_size=4)).cuda()
        layer.transform = transform
        x = torch.randn(2, 37, 32, device="cuda", requires_grad=True)
        y, state, stats = layer(x, want_stats=True)
        (y.square().sum() + stats.fidelity).backward()
        results.append([y, state.memory, stats.fidelity, x.grad] + [p.grad for p in layer.parameters()])
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got.detach(), want.detach(), rtol=2e-4, atol=2e-4)
