"""The small-model sanity run before the expensive one (stage ``validate_small``, ``hamt validate``).

A short training run of a small model on the real tokens, through the real trainer
(``hamt.train.train(..., name="validate")``), must show that the pipeline works end to end:

- ``loss_drop``: the training loss falls by at least ``validate.min_loss_drop`` of its first value
  (first logged step vs the mean of the last five logged steps);
- ``finite``: no NaN/inf loss, and no divergence roll-back was needed;
- ``generation``: the trained model generates the requested tokens and they decode to text;
- ``recall``: a small HAMT of the same shape trained briefly on MQAR (``hamt.metrics.recall``) recalls
  above chance (by more than three binomial standard errors).

The small model is the profile's ``model`` section with ``validate.model`` over it (GPU profiles use
``{preset: tiny}``), trained with the profile's ``train`` section, ``validate.train`` over it and
``max_steps = validate.steps``. Everything goes under ``validate.out_dir``: the run's checkpoints
(``checkpoints/``), its ``validate/log.csv`` and ``metrics.json`` (the verdict).
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import sys
import time
from pathlib import Path

from hamt.errors import HAMTError


def cli_validate(params, args) -> int:
    result = validate_small(params)
    for name, c in result["checks"].items():
        print(f"  {'ok  ' if c['passed'] else 'FAIL'} {name}: {c['detail']}")
    if not result["passed"]:
        print(f"hamt validate: FAILED: {'; '.join(result['reasons'])}", file=sys.stderr)
        return 1
    print(f"hamt validate: passed ({result['seconds']:.0f} s); details in {Path(params.validate.out_dir) / 'metrics.json'}")
    return 0


def small_params(params):
    """The parameters of the validation run (see the module docstring)."""
    from hamt.params import TrainParams, from_dict, to_dict

    vp = params.validate
    out = Path(vp.out_dir)
    train = {**to_dict(params.train), **vp.train}
    steps = vp.steps
    train.update(max_steps=steps, out_dir=str(out / "checkpoints"), results_dir=str(out), log_every=1,
                 eval_every=min(train["eval_every"], steps), ckpt_every=steps,
                 warmup_steps=min(train["warmup_steps"], steps // 4))
    return dataclasses.replace(params, model={**params.model, **vp.model},
                               train=from_dict(TrainParams, train, "validate.train"))


def _check(passed: bool, detail: str, **values) -> dict:
    return {"passed": bool(passed), "detail": detail, **values}


def _loss_checks(rows: list[dict], summary: dict, min_drop: float) -> dict:
    losses = [float(r["train_loss"]) for r in rows if r.get("train_loss") not in (None, "")]
    vals = [float(r["val_loss"]) for r in rows if r.get("val_loss") not in (None, "")]
    divergences = [e for e in summary.get("fallbacks", []) if e.get("kind") == "divergence"]
    finite = all(math.isfinite(x) for x in losses + vals) and bool(losses)
    checks = {"finite": _check(finite and not divergences,
                               f"{len(losses)} training losses, {len(vals)} validation losses, "
                               f"{len(divergences)} divergence roll-backs"
                               + ("" if finite else "; non-finite loss logged"))}
    if len(losses) < 2:
        checks["loss_drop"] = _check(False, f"only {len(losses)} training loss logged")
        return checks
    first, last = losses[0], sum(losses[-5:]) / len(losses[-5:])
    drop = (first - last) / first if first > 0 else 0.0
    checks["loss_drop"] = _check(drop >= min_drop, f"{first:.3f} -> {last:.3f} ({drop:.1%} drop, need {min_drop:.0%})",
                                 first=first, last=last, drop=drop)
    return checks


def _generation_check(model_dir: Path, tokens_dir: str, n_tokens: int, device: str) -> dict:
    from hamt.generate import generate_text

    prompt = "The"
    try:
        text = generate_text(model_dir, tokens_dir, prompt, max_new_tokens=n_tokens, temperature=0.0, device=device)
    except HAMTError:
        raise
    except Exception as e:  # noqa: BLE001  generation crashing is what this check exists to catch
        return _check(False, f"generate raised {type(e).__name__}: {str(e).strip().splitlines()[0][:200]}")
    new = text[len(prompt):] if text.startswith(prompt) else text
    return _check(bool(new.strip()), f"{n_tokens} new tokens -> {new.strip()[:80]!r}", text=text)


def _recall_check(sp, steps: int, pairs: int, vocab: int, device) -> dict:
    import hamt.model  # noqa: F401  registers the HAMT Auto classes
    from transformers import AutoModelForCausalLM

    from hamt.metrics.recall import above_chance, train_recall

    cfg = sp.model_config(vocab_size=vocab)
    r = train_recall(lambda: AutoModelForCausalLM.from_config(cfg), vocab_size=vocab, n_pairs=pairs, steps=steps,
                     device=device)
    ok = above_chance(r["accuracy"], r["chance"], r["queries"])
    return _check(ok, f"MQAR accuracy {r['accuracy']:.3f} vs chance {r['chance']:.3f} ({pairs} pairs, "
                      f"{steps} steps, {r['seconds']:.0f} s; copying any value in context would give {1 / pairs:.2f})",
                  accuracy=r["accuracy"], chance=r["chance"], seconds=r["seconds"])


def validate_small(params) -> dict:
    """Run the small-model checks; write ``validate.out_dir/metrics.json``; return the verdict."""
    from hamt.runtime import resolve_device
    from hamt.io import write_json_atomic
    from hamt.train import TrainingFailed, train

    vp, t0 = params.validate, time.perf_counter()
    out = Path(vp.out_dir)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # a fresh run every time, never a resume
    sp = small_params(params)
    checks: dict[str, dict] = {}
    summary: dict = {}
    try:
        summary = train(sp, name="validate")
    except TrainingFailed as e:
        checks["training"] = _check(False, f"training failed: {e}")
    if "training" not in checks:
        import csv

        with open(out / "validate" / "log.csv", newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        checks.update(_loss_checks(rows, summary, vp.min_loss_drop))
        final = Path(sp.train.out_dir) / "validate" / "final"
        checks["generation"] = _generation_check(final, sp.tokenizer.tokens_dir, vp.generate_tokens, str(
            resolve_device(sp.train.device)))
    if vp.recall_steps:
        checks["recall"] = _recall_check(sp, vp.recall_steps, vp.recall_pairs, vp.recall_vocab,
                                         resolve_device(sp.train.device))
    reasons = [f"{name}: {c['detail']}" for name, c in checks.items() if not c["passed"]]
    result = {"passed": not reasons, "checks": checks, "reasons": reasons, "seconds": time.perf_counter() - t0,
              "train": {k: summary.get(k) for k in ("n_params", "steps", "tokens", "train_loss", "val_loss",
                                                    "tokens_per_s", "device")},
              "model": sp.model}
    write_json_atomic(out / "metrics.json", result)
    return result
