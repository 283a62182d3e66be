"""What every test of hamt.ops shares: random scan inputs, the relative error, and gradients vs the reference.

A plain module, not ``tests/ops/conftest.py``: the tests import it by name (so does test_triton.py run
as a script under TRITON_INTERPRET=1), and a second ``conftest`` module would shadow tests/conftest.py
for the other test files that do ``from conftest import ROOT``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from hamt.ops import memory_reference, slot_permutations, unitary

ROOT = Path(__file__).resolve().parents[2]

# torch.testing.assert_close tolerances of outputs, per real dtype
TOL = {torch.float64: dict(rtol=1e-9, atol=1e-10), torch.float32: dict(rtol=1e-4, atol=2e-5)}
# rel_err bounds of gradients vs the reference, per real dtype
GRAD_TOL = {torch.float64: 1e-9, torch.float32: 1e-4}
NAMES = ("q", "k", "v", "log_f", "w", "b", "state", "c")  # the differentiable inputs


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """max |x - ref| / max |ref|: the error relative to the reference's scale (guarded at 0)."""
    return float((x - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


def make_inputs(B, T, H, S, F, dtype=torch.float64, gated=True, with_state=True, with_c=True, raw_gates=False,
                seed=0, device="cpu") -> dict:
    """Keyword inputs of every scan path (q, k, v, log_f, w, b, perm, state, c), for real ``dtype``.

    Default: the model's distribution (unitary q, k; log f = logsigmoid; softmax slot addresses a,
    w = (1 - f) a, c = a). ``gated=False``: fixed per-head decays and uniform slots. ``raw_gates``:
    w, b, c iid uniform(0, 1) and log f uniform(-2, 0), which grows larger states: a harsher test."""
    g = torch.Generator().manual_seed(seed)
    cd = torch.complex128 if dtype == torch.float64 else torch.complex64

    def cplx(*shape):
        return torch.complex(torch.randn(*shape, generator=g, dtype=dtype),
                             torch.randn(*shape, generator=g, dtype=dtype)).to(cd)

    q, k, v = unitary(cplx(B, T, H, F)), unitary(cplx(B, T, H, F)), cplx(B, T, H, F)
    if raw_gates:
        log_f = -2.0 * torch.rand(B, T, H, generator=g, dtype=dtype)
        w, b, a = (torch.rand(B, T, H, S, generator=g, dtype=dtype) for _ in range(3))
    elif gated:
        log_f = torch.nn.functional.logsigmoid(torch.randn(B, T, H, generator=g, dtype=dtype) + 2)
        a = torch.randn(B, T, H, S, generator=g, dtype=dtype).softmax(-1)
        b = torch.randn(B, T, H, S, generator=g, dtype=dtype).softmax(-1)
        w = (1 - log_f.exp())[..., None] * a
    else:
        log_f = torch.nn.functional.logsigmoid(torch.linspace(0, 4, H, dtype=dtype)).expand(B, T, H).clone()
        a = torch.full((B, T, H, S), 1.0 / S, dtype=dtype)
        b = a.clone()
        w = (1 - log_f.exp())[..., None] * a
    state = cplx(B, H, S, F) if with_state else None
    out = dict(q=q, k=k, v=v, log_f=log_f, w=w, b=b, perm=slot_permutations(S, F, seed),
               state=state, c=a if with_c else None)
    return {key: None if x is None else x.to(device) for key, x in out.items()}


def run_with_grads(fn, inputs: dict, loss_terms=("r", "u", "state"), seed=1):
    """Outputs of ``fn(**inputs)`` and the gradients of a random real linear loss of the chosen outputs
    (complex outputs enter through their real and imaginary parts) w.r.t. every given input."""
    leaves = {k: None if x is None else x.detach().clone().requires_grad_(k != "perm") for k, x in inputs.items()}
    r, u, state = fn(**leaves)
    outs = {"r": r, "u": u, "state": state}
    g = torch.Generator().manual_seed(seed)
    loss = 0.0
    for name in ("r", "u", "state"):
        x = outs[name]
        if name in loss_terms and x is not None:
            weight = torch.randn(torch.view_as_real(x).shape, generator=g, dtype=x.real.dtype).to(x.device)
            loss = loss + (torch.view_as_real(x) * weight).sum()
    loss.backward()
    grads = {k: leaves[k].grad for k in NAMES if leaves.get(k) is not None and leaves[k].grad is not None}
    return {k: x.detach() for k, x in outs.items() if x is not None}, grads


def errors_vs_reference(fast, inputs: dict, loss_terms=("r", "u", "state"), ref=memory_reference) -> dict:
    """rel_err of every output and gradient (keys "r", "u", "state", "dq", ...) of ``fast`` vs ``ref``;
    "missing" where one of them has an output or a gradient the other has not."""
    ref_out, ref_grad = run_with_grads(ref, inputs, loss_terms)
    out, grad = run_with_grads(fast, inputs, loss_terms)
    errors = {}
    for prefix, a, b in (("", out, ref_out), ("d", grad, ref_grad)):
        for key in set(a) | set(b):
            errors[prefix + key] = rel_err(a[key], b[key]) if key in a and key in b else "missing"
    return errors


def assert_grads_match_reference(fast, dtype, T: int, S: int, with_c: bool) -> None:
    """Gradients of a random real loss over every output, through ``fast`` and through the reference,
    agree for every input (an input without a reference gradient has none through ``fast`` either)."""
    inputs = make_inputs(2, T, 2, S, 5, dtype, with_c=with_c)
    errors = {k: e for k, e in errors_vs_reference(fast, inputs).items() if k.startswith("d")}
    assert set(errors) == {"d" + n for n in NAMES if inputs[n] is not None}, errors
    bad = {k: e for k, e in errors.items() if not e < GRAD_TOL[dtype]}
    assert not bad, bad
