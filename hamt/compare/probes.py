"""Architecture probes: associative recall (MQAR) and speed against sequence length, HAMT vs matched GPT-2.

They measure the architectures rather than checkpoints: the MQAR probe trains a small HAMT and a
parameter-matched GPT-2 on associative recall; the speed probe times freshly initialised models
(training / inference tokens/s and peak memory, same tokens per step). ``hamt compare`` writes them to
``recall.json`` and ``speed.json``.
"""

from __future__ import annotations

from hamt.compare.evaluate import _first_line, _log


def recall_probe(params, *, device=None) -> dict:
    """Small HAMT and matched GPT-2 (the profile's sizes, MQAR vocabulary) trained on MQAR; accuracy vs pairs."""
    cp = params.compare
    if cp.recall_train_steps == 0:
        return {"status": "skipped", "reason": "compare.recall_train_steps is 0"}
    from hamt import runtime
    from hamt.baselines import matched_gpt2_config
    from hamt.metrics.recall import min_seq_len, train_recall

    device = device or runtime.resolve_device(params.train.device)
    T = min_seq_len(max(cp.recall_pairs))
    hamt_cfg = params.model_config(vocab_size=cp.recall_vocab)
    gpt_cfg = matched_gpt2_config(hamt_cfg, n_positions=T)
    gpt_cfg.resid_pdrop = gpt_cfg.embd_pdrop = gpt_cfg.attn_pdrop = 0.0

    def build(cfg):
        import hamt.model  # noqa: F401
        from transformers import AutoModelForCausalLM

        return lambda: AutoModelForCausalLM.from_config(cfg)

    out = {"status": "ok", "steps": cp.recall_train_steps, "lr": 1e-3, "vocab_size": cp.recall_vocab, "seq_len": T,
           "pairs": list(cp.recall_pairs), "device": str(device), "models": {}}
    for arch, cfg in (("hamt", hamt_cfg), ("gpt2", gpt_cfg)):
        _log(f"recall probe: training a small {arch} on MQAR for {cp.recall_train_steps} steps")
        # lr 1e-3: at 3e-3 the tiny HAMT's MQAR accuracy swung from 0.07 to 0.45 with the seed (and the
        # ranking against GPT-2 with it); at 1e-3 both architectures are stable across seeds (+-0.05).
        r = train_recall(build(cfg), vocab_size=cp.recall_vocab, n_pairs=list(cp.recall_pairs), seq_len=T,
                         steps=cp.recall_train_steps, lr=1e-3, device=device)
        out["models"][arch] = {"params": sum(p.numel() for p in r["model"].parameters()), "accuracy": r["accuracy"],
                               "chance": r["chance"], "rows": r["rows"], "first_loss": r["first_loss"],
                               "final_loss": r["final_loss"], "seconds": r["seconds"]}
    return out


SPEED_REPEATS = 3


def speed_probe(params, *, device=None) -> dict:
    """Training / inference tokens/s and peak memory against sequence length, fresh HAMT vs matched GPT-2.

    Weights do not change the cost, so no checkpoint is needed; every step holds the same number of
    tokens (``train.micro_batch_size x compare.eval_context``), the batch shrinking as sequences grow.
    The two models are measured alternately ``SPEED_REPEATS`` times (the machine may be shared) and
    the medians are kept, with the median of the paired HAMT / GPT-2 training-speed ratios.
    """
    cp = params.compare
    if not cp.speed_seq_lens:
        return {"status": "skipped", "reason": "compare.speed_seq_lens is empty"}
    import statistics

    from hamt import runtime
    from hamt.baselines import hamt_and_matched_gpt2
    from hamt.metrics import systems
    from hamt.tokens import read_meta

    device = device or runtime.resolve_device(params.train.device)
    vocab = int(read_meta(params.tokenizer.tokens_dir)["vocab_size"])
    models = hamt_and_matched_gpt2(  # the GPT-2 that gpt2-scratch trains, positions extended (see its docstring)
        params.model_config(vocab_size=vocab), max(cp.speed_seq_lens), device)
    budget = params.train.micro_batch_size * cp.eval_context
    rows = []
    for T in cp.speed_seq_lens:
        batch = max(1, budget // T)
        runs: dict[str, list[tuple[dict, dict]]] = {k: [] for k in models}
        try:
            for rep in range(SPEED_REPEATS):
                for arch in (list(models) if rep % 2 == 0 else list(models)[::-1]):  # alternate who goes first
                    inf = systems.inference_throughput(models[arch], batch, T, device=device, steps=cp.throughput_steps)
                    tr = systems.train_throughput(models[arch], batch, T, device=device, steps=cp.throughput_steps)
                    runs[arch].append((inf, tr))
        except Exception as e:  # noqa: BLE001  e.g. out of memory at long sequences: recorded, not fatal
            for arch in models:
                rows.append({"model": arch, "seq_len": T, "batch": batch, "status": "failed",
                             "reason": f"{type(e).__name__}: {_first_line(e)}"})
            continue
        ratio = statistics.median(h[1]["tokens_per_s"] / g[1]["tokens_per_s"] for h, g in zip(runs["hamt"], runs["gpt2"]))
        for arch, model in models.items():
            med = lambda i, k: statistics.median(r[i][k] for r in runs[arch])  # noqa: E731
            rows.append({"model": arch, "params": sum(p.numel() for p in model.parameters()), "seq_len": T,
                         "batch": batch, "status": "ok", "repeats": SPEED_REPEATS,
                         "infer_tok_s": med(0, "tokens_per_s"), "infer_peak_mem_mb": med(0, "peak_mem_mb"),
                         "infer_mem_delta_mb": med(0, "mem_delta_mb"), "train_tok_s": med(1, "tokens_per_s"),
                         "train_peak_mem_mb": med(1, "peak_mem_mb"), "train_mem_delta_mb": med(1, "mem_delta_mb"),
                         "mem_source": runs[arch][0][1]["mem_source"], "hamt_speedup_vs_gpt2": ratio})
    del models
    return {"status": "ok", "device": str(device), "tokens_per_step": budget, "repeats": SPEED_REPEATS, "rows": rows}
