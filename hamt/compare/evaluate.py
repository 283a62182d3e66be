"""One row of the comparison: evaluate one model (trained, ablation or pretrained) on the shared tokens.

``EvalContext`` holds what every row is evaluated on (the same ids, byte/word counts, device);
``run_baseline`` turns one model name into one row of ``COLUMNS``: ``ok`` with every measure of
``hamt.metrics``, or ``skipped`` / ``stale`` / ``failed`` with a one-line reason. Whether a trained
model is the one the parameters ask for is ``hamt/compare/staleness.py``'s question.
"""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path

from hamt.compare.staleness import trained_as_asked
from hamt.errors import ConfigError, DataError, HAMTError
from hamt.zoo import REGISTRY, describe, hamt_overrides, kind_of


# Columns of results.csv, in order (results.json rows hold these plus nested details).
COLUMNS = [
    "name", "kind", "status", "reason", "params", "tokens_seen", "train_steps", "eval_split", "eval_tokens",
    "loss", "ppl", "bpb", "word_ppl", "train_tok_s", "trainer_tok_s", "infer_tok_s", "decode_tok_s",
    "decode_ms_per_token", "state_bytes", "peak_mem_mb", "infer_peak_mem_mb", "mem_source", "recall_acc",
    "mqar_trained_acc", "fidelity", "slot_active_fraction", "slot_entropy", "tokenizer", "counts_note", "seconds",
]


# --------------------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------------------


def empty_row(name: str, kind: str) -> dict:
    row = {c: None for c in COLUMNS}
    row.update(name=name, kind=kind, status="ok", reason="")
    return row


def skipped(name: str, kind: str, reason: str) -> dict:
    row = empty_row(name, kind)
    row.update(status="skipped", reason=reason)
    return row


# --------------------------------------------------------------------------------------------------
# Shared evaluation context: the tokens, their counts, the device
# --------------------------------------------------------------------------------------------------


class EvalContext:
    """What every row is evaluated on: the same ids, byte/word counts and device."""

    def __init__(self, params):
        import numpy as np

        from hamt.metrics.lm import scored_counts
        from hamt.runtime import resolve_device
        from hamt.tokenize import load_tokenizer
        from hamt.tokens import load_split, read_meta

        cp = params.compare
        self.params = params
        self.tokens_dir = Path(params.tokenizer.tokens_dir)
        self.meta = read_meta(self.tokens_dir)
        split = cp.eval_split
        ids = load_split(self.tokens_dir, split, self.meta)
        n_total = len(ids)
        n = min(n_total, cp.eval_max_tokens) if cp.eval_max_tokens else n_total
        if n < 2:
            raise DataError(f"the {split} split has {n_total} tokens; compare needs at least 2")
        if cp.eval_context >= n:  # one window would be the whole slice, and the probes run at this length
            cut = " (compare.eval_max_tokens)" if n < n_total else ""
            raise ConfigError(f"compare.eval_context={cp.eval_context} does not fit the {n:,} tokens evaluated of the "
                              f"{split} split{cut}; set compare.eval_context below {n}")
        self.ids = np.asarray(ids[:n], dtype=np.int64)
        self.split = split
        self.counts = scored_counts(load_tokenizer(self.tokens_dir), self.ids)  # bytes/words of the text scored
        self.device = resolve_device(params.train.device)
        self.tokenizer_kind = (self.meta.get("tokenizer") or {}).get("kind")
        self.vocab_size = int(self.meta["vocab_size"])

    def is_gpt2_bpe(self) -> bool:
        return self.tokenizer_kind == "gpt2" and self.vocab_size == 50257

    def text(self) -> str:
        """The evaluated ids decoded back to text (for models with their own tokenizer)."""
        from hamt.tokenize import load_tokenizer

        return load_tokenizer(self.tokens_dir).decode(self.ids.tolist(), skip_special_tokens=False)


# --------------------------------------------------------------------------------------------------
# One baseline
# --------------------------------------------------------------------------------------------------


def run_baseline(params, name: str, *, ctx: EvalContext | None = None, progress: bool = False) -> dict:
    """Evaluate one model of the registry (or ``ablation-<switch>``, or ``hamt``) into one row."""
    kind = kind_of(name)
    t0 = time.perf_counter()
    try:
        ctx = ctx or EvalContext(params)
        if kind == "pretrained":
            row = _run_pretrained(params, name, ctx, progress)
        else:
            row = _run_trained(params, name, kind, ctx, progress)
    except HAMTError as e:
        row = skipped(name, kind, str(e))
    except Exception as e:  # noqa: BLE001  recorded in the row and printed, never dropped
        row = empty_row(name, kind)
        row.update(status="failed", reason=f"{type(e).__name__}: {_first_line(e)}")
        _log(f"{name} failed:\n{traceback.format_exc()}")
    row["seconds"] = time.perf_counter() - t0
    row.setdefault("what", describe(name))
    if row["status"] != "ok":
        _log(f"{name}: {row['status']} ({row['reason']})")
    return row


def _train_summary(params, name: str) -> dict:
    import json

    path = Path(params.train.results_dir) / name / "metrics.json"
    if path.is_file():
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {}
    return {}


def train_hint(name: str) -> str:
    return f"run `hamt train --model {name}` (or `dvc repro`)"


def _run_trained(params, name: str, kind: str, ctx: EvalContext, progress: bool) -> dict:
    final = Path(params.train.out_dir) / name / "final"
    if not (final / "config.json").is_file():
        return skipped(name, kind, f"not trained: no model in {final}; {train_hint(name)}")
    check = trained_as_asked(params, name, ctx)
    if not check["ok"]:
        row = skipped(name, kind, f"{check['reason']}; {train_hint(name)}")
        row["status"] = check["status"]
        return row
    from hamt.generate import load_model

    model = load_model(final, str(ctx.device))
    summary = _train_summary(params, name)
    row = empty_row(name, kind)
    row.update(tokens_seen=summary.get("tokens"), train_steps=summary.get("steps"),
               trainer_tok_s=summary.get("tokens_per_s"), model_dir=str(final), tokenizer=ctx.tokenizer_kind,
               checkpoint=check["checkpoint"])
    if kind == "ablation":
        row["config"] = hamt_overrides(name)
    _evaluate_into(row, model, ctx.ids, ctx, progress)
    if kind == "hamt":
        row["sample"] = _sample(params, final, ctx)
    return row


def _run_pretrained(params, name: str, ctx: EvalContext, progress: bool) -> dict:
    spec = REGISTRY[name]
    if not ctx.is_gpt2_bpe():
        return skipped(name, "pretrained",
                       f"tokenizer mismatch: the tokens are {ctx.tokenizer_kind} (vocab {ctx.vocab_size:,}); "
                       f"pretrained baselines need GPT-2 BPE tokens (tokenizer.kind=gpt2)")
    source = params.compare.local_models.get(name) or spec["hub"]
    if name in params.compare.local_models and not Path(source).is_dir():
        return skipped(name, "pretrained", f"compare.local_models.{name}: {source} is not a folder")
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    except Exception as e:  # noqa: BLE001  offline / missing / not a causal LM: a skipped row with the reason
        return skipped(name, "pretrained", f"not available ({'local folder' if source != spec['hub'] else 'hub, offline?'}: "
                                           f"{source}): {type(e).__name__}: {_first_line(e)}")
    model = model.to(ctx.device).eval()
    row = empty_row(name, "pretrained")
    row.update(model_dir=str(source), tokenizer="gpt2")
    ids = ctx.ids
    if spec["tokenizer"] == "own":
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(source)
        except Exception as e:  # noqa: BLE001
            return skipped(name, "pretrained", f"its own tokenizer is not available ({source}): {_first_line(e)}")
        import numpy as np

        ids = np.asarray(tok(ctx.text(), add_special_tokens=False, verbose=False)["input_ids"], dtype=np.int64)
        row["tokenizer"] = f"own ({type(tok).__name__}, vocab {len(tok):,}); ppl is per own token"
        _evaluate_into(row, model, ids, ctx, progress, vocab=len(tok))
        return row
    _evaluate_into(row, model, ids, ctx, progress)
    return row


def _evaluate_into(row: dict, model, ids, ctx: EvalContext, progress: bool, vocab: int | None = None) -> None:
    """Fill a row with every metric of ``hamt.metrics`` measured on ``model``."""
    import torch

    from hamt.metrics import lm, memory, systems
    from hamt.metrics.recall import recall_accuracy

    cp, tp = ctx.params.compare, ctx.params.train
    ids_t = torch.as_tensor(ids)
    limit = systems.max_context(model)
    context = min(cp.eval_context, limit) if limit else cp.eval_context
    stride = min(cp.eval_stride, context)
    row["params"] = sum(p.numel() for p in model.parameters())
    m = lm.evaluate_lm(model, ids_t, context=context, stride=stride, n_bytes=ctx.counts["bytes"],
                       n_words=ctx.counts["words"], batch_size=cp.eval_batch_size, device=ctx.device,
                       progress=progress, desc=f"eval {row['name']}")
    row.update(loss=m["loss"], ppl=m["ppl"], bpb=m["bpb"], word_ppl=m["word_ppl"], eval_tokens=m["tokens"],
               eval_split=ctx.split, counts_note=ctx.counts["counts_note"], eval_context=context, eval_stride=stride,
               eval_bytes=ctx.counts["bytes"], eval_words=ctx.counts["words"])
    row.update(memory.memory_diagnostics(model, ids_t, context=context, device=ctx.device))
    if memory.is_hamt(model):
        row["hamt_switches"] = {k: getattr(model.config, k) for k in
                                ("use_gating", "use_auxiliary_loss", "conv_kernel", "num_slots")}
    batch = tp.micro_batch_size
    tr = systems.train_throughput(model, batch, context, device=ctx.device, steps=cp.throughput_steps)
    inf = systems.inference_throughput(model, batch, context, device=ctx.device, steps=cp.throughput_steps)
    row.update(train_tok_s=tr["tokens_per_s"], peak_mem_mb=tr["peak_mem_mb"], mem_source=tr["mem_source"],
               train_mem_delta_mb=tr["mem_delta_mb"], infer_mem_delta_mb=inf["mem_delta_mb"],
               infer_tok_s=inf["tokens_per_s"], infer_peak_mem_mb=inf["peak_mem_mb"], probe_batch=batch,
               probe_seq_len=context)
    # The row's decoding numbers are taken where prompt + new tokens fill the evaluation context, a
    # length every model evaluated here can hold; the profile over decode_contexts goes to the plot.
    ref = max(1, cp.eval_context - cp.decode_tokens)
    contexts = sorted(set(cp.decode_contexts) | {ref})
    decode = systems.decode_profile(model, contexts, new_tokens=cp.decode_tokens, device=ctx.device)
    row["decode"] = decode
    at = next((d for d in decode if d["context"] == ref and d["status"] == "ok"), None)
    if at is not None:
        row.update(decode_tok_s=at["decode_tok_s"], decode_ms_per_token=at["ms_per_token"], state_bytes=at["state_bytes"],
                   decode_context=ref)
    # Zero-shot recall uses the ids the model was trained on (its embedding may be padded beyond them).
    vocab = min(vocab or ctx.vocab_size, int(model.get_output_embeddings().weight.shape[0]))
    pairs = [n for n in cp.recall_pairs if limit is None or 4 * n <= limit]
    rec = recall_accuracy(model, vocab, pairs=pairs, n_samples=cp.recall_samples, device=ctx.device)
    row["recall"] = rec
    row["recall_acc"] = sum(r["accuracy"] for r in rec) / len(rec) if rec else None
    del model
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()


def _sample(params, model_dir: Path, ctx: EvalContext) -> dict:
    """A greedy continuation of a fixed prompt: the "text generation works" check."""
    from hamt.generate import generate_text

    prompt = "The"
    try:
        text = generate_text(model_dir, ctx.tokens_dir, prompt, max_new_tokens=params.compare.generate_tokens,
                             temperature=0.0, device=str(ctx.device))
    except Exception as e:  # noqa: BLE001
        return {"status": "failed", "prompt": prompt, "reason": f"{type(e).__name__}: {_first_line(e)}"}
    new = text[len(prompt):] if text.startswith(prompt) else text
    words = new.split()
    return {"status": "ok", "prompt": prompt, "text": text, "new_tokens": params.compare.generate_tokens,
            "new_chars": len(new), "distinct_word_ratio": len(set(words)) / len(words) if words else 0.0}


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


def _log(msg: str) -> None:
    print(f"[compare] {msg}", file=sys.stderr, flush=True)
