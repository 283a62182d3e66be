"""Is a trained model the one the current parameters describe? (compare never evaluates a stale checkpoint).

A model's newest training checkpoint records the resolved parameters and the model config it was
trained with; ``trained_as_asked`` compares them with what the parameters ask for now — same model
config (``hamt.zoo.model_config_for``), same training recipe (the train section but for
``RUNTIME_TRAIN_KEYS``), same tokens — and says in one line what differs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hamt.errors import CheckpointError
from hamt.zoo import model_config_for, params_for


# Train keys that say how or where a run executes, not what it learns: a model trained with other values of
# these is still the model the parameters describe (the fallback ladder may change micro-batch and
# gradient checkpointing during a run anyway). Every other train key must match.
RUNTIME_TRAIN_KEYS = frozenset({
    "out_dir", "results_dir", "device", "compile", "micro_batch_size", "gradient_checkpointing", "eval_every",
    "eval_batches", "ckpt_every", "log_every", "keep_checkpoints", "peak_flops", "wandb",
})


def trained_as_asked(params, name: str, ctx) -> dict:  # ctx: hamt.compare.evaluate.EvalContext (not imported: a cycle)
    """Whether ``<train.out_dir>/<name>`` holds the model the current parameters describe.

    Read from its newest training checkpoint (``hamt.checkpoint``: the resolved params and the model
    identity of the run that wrote ``final/``) and ``final/meta.json`` (the tokens it was trained on).
    Returns {ok, status, reason, checkpoint}; status ``stale`` when it was trained differently,
    ``skipped`` when that cannot be told.
    """
    from hamt.checkpoint import load_latest, model_identity
    from hamt.params import to_dict

    ckpt_dir = Path(params.train.out_dir) / name
    try:
        state, path = load_latest(ckpt_dir)
    except CheckpointError as e:
        return {"ok": False, "status": "skipped", "reason": f"its training checkpoints are unusable ({e})", "checkpoint": None}
    if state is None:
        return {"ok": False, "status": "skipped", "checkpoint": None,
                "reason": f"no training checkpoint in {ckpt_dir} records what {ckpt_dir / 'final'} was trained with"}
    out = {"ok": False, "status": "stale", "checkpoint": str(path)}
    expected = model_identity(model_config_for(params, name, ctx.vocab_size))
    diff = _first_diff(state.get("model_identity") or {}, expected, "model config")
    if diff:
        return {**out, "reason": f"stale: trained as another model ({diff})"}
    saved = (state.get("params") or {}).get("train") or {}
    now = to_dict(params_for(params, name).train)  # a -seed<N> model was trained with its own seed
    diff = _first_diff({k: v for k, v in saved.items() if k not in RUNTIME_TRAIN_KEYS},
                       {k: v for k, v in now.items() if k not in RUNTIME_TRAIN_KEYS}, "train")
    if diff:
        return {**out, "reason": f"stale: trained with other parameters ({diff})"}
    meta_path = ckpt_dir / "final" / "meta.json"
    if meta_path.is_file():
        import json

        trained_on = json.loads(meta_path.read_text(encoding="utf-8"))
        keys = ("tokenizer_sha256", "vocab_size", "splits")
        diff = _first_diff({k: trained_on.get(k) for k in keys}, {k: ctx.meta.get(k) for k in keys}, "tokens")
        if diff:
            return {**out, "reason": f"stale: trained on other tokens ({diff})"}
    return {"ok": True, "status": "ok", "reason": "", "checkpoint": str(path)}


def _first_diff(saved: dict, now: dict, what: str) -> str | None:
    """``"train.lr: 0.003 when trained, 0.002 now (and 2 more)"``, or None when equal."""
    keys = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if not keys:
        return None
    k = keys[0]
    a, b = saved.get(k), now.get(k)
    if isinstance(a, dict) and isinstance(b, dict):  # e.g. a split's sha256 inside tokens.splits
        inner = _first_diff(a, b, f"{what}.{k}")
        if inner:
            return inner + (f" (and {len(keys) - 1} more)" if len(keys) > 1 else "")
    more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
    return f"{what}.{k}: {_short(a)} when trained, {_short(b)} now{more}"


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."
