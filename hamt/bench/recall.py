"""``hamt bench recall``: multi-query associative recall on the Zoology grid (Arora et al. 2023).

HAMT against attention (transformers' Llama: RoPE, SwiGLU, RMSNorm) and a selective state-space model
(transformers' Mamba2) at the *same dimensions* — model width ``d``, ``layers`` blocks, one vocabulary —
as Zoology compares them: trained from scratch on MQAR (``hamt.metrics.recall``) at each
(sequence length, key-value pairs) of the grid, each with every learning rate of ``lrs``; the row kept
is the best learning rate's. Accuracy is exact match at the query positions only (argmax over the
whole vocabulary). Every training batch is fresh (seeded), so the training examples a cell saw are
``steps x batch_size``: the table and every row state it, since Zoology's numbers come from 100,000
examples and many epochs, which a CPU cannot afford. ``state_bytes`` is what each model carries
between tokens after reading one sequence of the cell's length (batch 1): HAMT's memory, Llama's KV
cache, Mamba2's SSM and convolution states — the x axis of Zoology's recall-vs-state-size view.

Differences from Zoology's generator: the queries come after the bindings and a filler stretch
(``hamt.metrics.recall``'s layout) rather than scattered through the rest of the sequence, and the
answer is fed back as the next input (teacher forcing).
"""

from __future__ import annotations

from hamt.bench.meta import header, progress
from hamt.errors import ConfigError
from hamt.params import RECALL_MODELS
from hamt.tables import cell, md_table


def recall_model(kind: str, d_model: int, layers: int, vocab_size: int, seq_len: int):
    """A ``kind`` model of width ``d_model`` and ``layers`` blocks (heads of width 32, as the tiny preset)."""
    heads = max(1, d_model // 32)
    if kind == "hamt":
        from hamt.config import HAMTConfig
        from hamt.model import HAMTForCausalLM

        cfg = HAMTConfig(vocab_size=vocab_size, hidden_dim=d_model, hcm_dim=2 * d_model, num_layers=layers,
                         num_slots=4, num_attention_heads=heads, max_position_embeddings=seq_len)
        return HAMTForCausalLM(cfg)
    if kind == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=d_model, intermediate_size=4 * d_model,
                          num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                          max_position_embeddings=seq_len)
        return LlamaForCausalLM(cfg)
    if kind == "mamba":
        from transformers import Mamba2Config, Mamba2ForCausalLM

        cfg = Mamba2Config(vocab_size=vocab_size, hidden_size=d_model, num_hidden_layers=layers, state_size=64,
                           expand=2, head_dim=32, num_heads=2 * d_model // 32, n_groups=1,
                           chunk_size=min(64, seq_len))
        return Mamba2ForCausalLM(cfg)
    raise ConfigError(f"bench recall: unknown model kind {kind!r}; choose from {', '.join(RECALL_MODELS)}")


def state_bytes(model, seq_len: int, device="cpu") -> int:
    """Bytes of the decoding state after one sequence of ``seq_len`` tokens (batch 1)."""
    import torch

    from hamt.metrics.systems import cache_nbytes

    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(input_ids=torch.zeros(1, seq_len, dtype=torch.long, device=device), use_cache=True)
    model.train(was_training)
    return cache_nbytes(getattr(out, "cache", None) or getattr(out, "past_key_values", None))


def bench_recall(s, device) -> list[dict]:
    """``s``: the ``bench.recall`` settings (``hamt.params.BenchRecallParams``, validated when loaded).

    Rows (model, d_model, seq_len, n_pairs, lr) with accuracy; ``best`` marks each cell's best lr."""
    from hamt.metrics.recall import train_recall

    rows = []
    bar = progress(len(s.models) * len(s.d_models) * len(s.grid) * len(s.lrs), "bench recall")
    for kind in s.models:
        for d in s.d_models:
            for T, n in s.grid:
                cell_rows = []
                for lr in s.lrs:
                    def factory(kind=kind, d=d, T=T):
                        return recall_model(kind, d, s.layers, s.vocab_size, T)

                    r = train_recall(factory, vocab_size=s.vocab_size, n_pairs=n, seq_len=T, steps=s.steps,
                                     batch_size=s.batch_size, lr=lr, seed=s.seed, eval_samples=s.eval_samples,
                                     device=device)
                    model = r["model"]
                    cell_rows.append(dict(
                        model=kind, d_model=d, layers=s.layers, seq_len=T, n_pairs=n, vocab_size=s.vocab_size,
                        lr=lr, accuracy=r["accuracy"], chance=r["chance"], queries=r["queries"],
                        train_examples=s.steps * s.batch_size, eval_examples=s.eval_samples,
                        final_loss=r["final_loss"], seconds=r["seconds"],
                        params=sum(p.numel() for p in model.parameters()),
                        state_bytes=state_bytes(model, T, device)))
                    bar.update(1)
                best = max(cell_rows, key=lambda row: row["accuracy"])
                for row in cell_rows:
                    row["best"] = row is best
                rows += cell_rows
    bar.close()
    return rows


def best_rows(rows: list[dict]) -> list[dict]:
    """One row per (model, d_model, seq_len, n_pairs): the best learning rate's."""
    return [r for r in rows if r.get("best") and "accuracy" in r]


def render(rows: list[dict], info: dict) -> str:
    best = best_rows(rows)
    examples = sorted({r["train_examples"] for r in best})
    lrs = sorted({r["lr"] for r in rows})
    lines = [header(info) + "### Multi-query associative recall (MQAR, Zoology grid)\n",
             f"Exact-match accuracy at the query positions, best of learning rates {', '.join(map(str, lrs))}; "
             f"{', '.join(f'{e:,}' for e in examples)} training examples per cell (Zoology: 100,000), "
             f"vocabulary {best[0]['vocab_size'] if best else '-'}.", ""]
    table = [[r["model"], r["d_model"], r["seq_len"], r["n_pairs"], cell(r["accuracy"], 3), cell(r["chance"], 5),
              r["lr"], f"{r['state_bytes']:,}", f"{r['params']:,}", cell(r["seconds"], 1)] for r in best]
    lines.append(md_table(["model", "d", "T", "pairs", "accuracy", "chance", "lr", "state bytes", "params", "s"], table))
    return "\n".join(lines)
