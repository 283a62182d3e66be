"""``hamt bench decode``: per-token latency and state bytes at several context lengths (batch 1).

HAMT prefills the context in chunks of ``bench.prefill_chunk`` (so the state is a real one) and then
steps one token at a time; its state is the same size at every context. GPT-2 decodes with a KV cache
(transformers' DynamicCache) of the same context, synthesised with random keys and values of the right
shape: a decode step's cost depends on the cache's size, not on its content, and this avoids an
O(context^2) prefill per row. State bytes are ``hamt.metrics.systems.cache_nbytes`` for both.
"""

from __future__ import annotations

import statistics

from hamt.bench.meta import header, progress
from hamt.tables import md_table


def gpt2_kv_cache(gcfg, context: int, device):
    """A DynamicCache holding ``context`` random keys/values per layer (what a prefill would leave)."""
    import torch
    from transformers import DynamicCache

    cache = DynamicCache(config=gcfg)
    hd = gcfg.n_embd // gcfg.n_head
    for layer in range(gcfg.n_layer):
        kv = torch.randn(2, 1, gcfg.n_head, context, hd, device=device)  # (K|V, B, heads, T, head dim)
        cache.update(kv[0], kv[1], layer)
    return cache


def bench_decode(config, opts: dict, device) -> list[dict]:
    """Rows (model, context): ms/token, tokens/s, state bytes after the prefill and after decoding."""
    import torch
    from transformers import GPT2LMHeadModel

    from hamt.baselines import matched_gpt2_config
    from hamt.metrics.systems import cache_nbytes, timed
    from hamt.model import HAMTForCausalLM

    torch.manual_seed(0)
    hamt = HAMTForCausalLM(config).to(device).eval()
    gcfg = matched_gpt2_config(config)
    gcfg._attn_implementation = "sdpa"
    steps, chunk = opts["decode_steps"], opts["prefill_chunk"]
    rows = []
    bar = progress(len(opts["contexts"]) * 2, "bench decode")
    for ctx in opts["contexts"]:
        gcfg.n_positions = ctx + steps + 2  # same architecture, a position table long enough
        gpt2 = GPT2LMHeadModel(gcfg).to(device).eval()
        with torch.no_grad():
            ids = torch.randint(0, config.vocab_size, (1, ctx), device=device)
            cache = None
            for s in range(0, ctx, chunk):  # HAMT: a real prefill, in chunks (memory stays O(chunk))
                cache = hamt(input_ids=ids[:, s:s + chunk], cache=cache, use_cache=True).cache
            hamt_state = cache_nbytes(cache)
            kv = gpt2_kv_cache(gcfg, ctx, device)
            kv_bytes = cache_nbytes(kv)
            bar.update(1)
            tok = torch.zeros(1, 1, dtype=torch.long, device=device)
            for _ in range(2):  # warm-up of both (the GPT-2 cache grows by these tokens, like generation)
                cache = hamt(input_ids=tok, cache=cache, use_cache=True).cache
                gpt2(input_ids=tok, cache=kv, use_cache=True)
            # Each model's steps back to back: alternating single steps let GPT-2's KV cache (22 MB at 4,096 tokens)
            # evict HAMT's weights from the CPU caches between its steps, which made HAMT's step look 1.3x slower
            # from 256 to 4,096 tokens of context (tiny, 1 thread; alone it was flat: BENCHMARKS.md, 2026-12-08).
            times = {"hamt": [timed(lambda: hamt(input_ids=tok, cache=cache, use_cache=True), device)
                              for _ in range(steps)],
                     "gpt2": [timed(lambda: gpt2(input_ids=tok, cache=kv, use_cache=True), device)
                              for _ in range(steps)]}
            hamt_state_after = cache_nbytes(cache)
        bar.update(1)
        for name, state, after, how in (
            ("hamt", hamt_state, hamt_state_after, f"prefilled in chunks of {chunk}"),
            ("gpt2", kv_bytes, cache_nbytes(kv), "KV cache synthesised at this context"),
        ):
            med = statistics.median(times[name])
            rows.append(dict(model=name, context=ctx, steps=steps, ms_per_token=1e3 * med, tokens_per_s=1 / med,
                             state_bytes=state, state_bytes_after=after, state_how=how,
                             params=sum(p.numel() for p in (hamt if name == "hamt" else gpt2).parameters())))
        del gpt2, kv
    bar.close()
    return rows


def render(rows: list[dict], info: dict) -> str:
    h = {r["context"]: r for r in rows if r["model"] == "hamt"}
    g = {r["context"]: r for r in rows if r["model"] == "gpt2"}
    title = "### Decoding: per-token latency and state bytes vs context (batch 1)\n\n"
    body = md_table(
        ["context", "HAMT ms/token", "GPT-2 ms/token", "HAMT state bytes", "GPT-2 KV-cache bytes", "KV / HAMT state"],
        [[c, h[c]["ms_per_token"], g[c]["ms_per_token"], h[c]["state_bytes"], g[c]["state_bytes"],
          g[c]["state_bytes"] / h[c]["state_bytes"]] for c in h],
    )
    sizes = sorted({r["state_bytes"] for r in h.values()} | {r["state_bytes_after"] for r in h.values()})
    const = "constant" if len(sizes) == 1 else f"NOT constant ({sizes})"
    note = (f"\n\nHAMT state (memory + conv tail, all layers): {const} across contexts; HAMT prefilled for real "
            f"in chunks, GPT-2's KV cache synthesised at the context (a step's cost depends on its size only). "
            f"Medians of {rows[0]['steps']} single-token steps, each model's back to back.\n")
    return header(info) + title + body + note
