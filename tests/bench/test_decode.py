"""``hamt bench decode``: HAMT's state is constant and of its exact size; GPT-2's KV cache grows linearly."""

from __future__ import annotations

from conftest import ROOT

from .conftest import rows_of


def test_decode_rows_state_constant_and_kv_linear(bench_all):
    from hamt.baselines import matched_gpt2_config
    from hamt.config import HAMTConfig
    from hamt.params import load_params

    rows = rows_of(bench_all, "decode")
    hamt = {r["context"]: r for r in rows if r["model"] == "hamt"}
    gpt2 = {r["context"]: r for r in rows if r["model"] == "gpt2"}
    assert set(hamt) == set(gpt2) == {16, 40}
    # HAMT's state does not grow with the context, nor while decoding
    assert len({r["state_bytes"] for r in hamt.values()} | {r["state_bytes_after"] for r in hamt.values()}) == 1
    # its exact size: complex64 memory (B, H, S, F) plus the fp32 conv tail (B, d, k-1), per layer
    cfg: HAMTConfig = load_params(ROOT / "params.yaml", "micro").model_config()
    per_layer = cfg.num_attention_heads * cfg.num_slots * cfg.num_freqs * 8 + cfg.hidden_dim * (cfg.conv_kernel - 1) * 4
    assert hamt[16]["state_bytes"] == cfg.num_layers * per_layer
    # GPT-2's KV cache: 2 (K, V) x layers x context x width x 4 bytes
    g = matched_gpt2_config(cfg)
    for ctx, r in gpt2.items():
        assert r["state_bytes"] == 2 * g.n_layer * ctx * g.n_embd * 4
