"""HAMT against its baselines, on the same tokens with the same metrics (stage ``compare``).

The models (``hamt.zoo``) are of four kinds:

- ``hamt``: the trained model, ``<train.out_dir>/hamt/final``;
- ``scratch``: transformers' GPT2LMHeadModel trained by the same trainer on the same tokens and budget
  — ``gpt2-scratch`` with HAMT's parameter count (``hamt.baselines.matched_gpt2_config``, within 5%),
  ``gpt2-scratch-2x`` with twice it (for the "fewer parameters for similar quality" claim);
- ``ablation``: ``ablation-<switch>`` (``gating-off``, ``aux-on``, ``slots-1``, ...), HAMT with one
  switch flipped, trained with the same budget;
- ``pretrained``: GPT-2, DistilGPT-2, Pythia-70M/160M evaluated zero-shot, from a local folder
  (``compare.local_models``) or the Hugging Face hub. Only when the tokens are GPT-2 BPE (otherwise
  token-level numbers would not be comparable): the GPT-2 family reads the ids as they are; Pythia
  has its own tokenizer, so the evaluated text is decoded and re-tokenized with it (bpb and word
  perplexity stay comparable: same text, same byte/word counts).

This stage only evaluates. The trained models (``compare.trained``, ``hamt.zoo.training_plan``) are
trained by ``hamt train --model NAME``, one DVC stage instance ``train@NAME`` each (or the flow's
training fan-out); compare reads ``<train.out_dir>/<name>/final``. Before loading one it checks that
its newest training checkpoint (which records the resolved parameters and the model config it was
trained with) describes the model the current parameters ask for — same model config
(``hamt.zoo.model_config_for``), same training recipe (the train section but for
``RUNTIME_TRAIN_KEYS``), same tokens — so a result never comes from a stale checkpoint.

A model that cannot be evaluated gives a row with ``status: skipped`` (not trained yet, offline,
tokenizer mismatch) or ``status: stale`` (trained with other parameters), with a one-line ``reason``
that says what to run; an unexpected error gives ``status: failed`` and the error. No row is ever
dropped or filled with a number that was not measured.

The package: ``evaluate`` (one row per model), ``staleness`` (is a checkpoint the model asked
for?), ``probes`` (MQAR and speed), and here the stage itself (the CLI, ``compare``, the results files).

Beside the per-model rows, two probes measure the architectures rather than checkpoints:
an MQAR probe (small HAMT vs parameter-matched GPT-2, trained on associative recall) and a speed
probe (freshly initialised HAMT vs matched GPT-2: training / inference tokens/s and peak memory
against sequence length, same tokens per step). Outputs in ``compare.out_dir``:
``results.csv`` / ``results.json`` (one row per model), ``recall.json``, ``speed.json``.
"""

from __future__ import annotations

import csv
import io
import math
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from hamt.compare.evaluate import COLUMNS, EvalContext, _first_line, _log, run_baseline, skipped
from hamt.compare.probes import recall_probe, speed_probe
from hamt.compare.seeds import aggregate_seeds
from hamt.errors import ConfigError, HAMTError
from hamt.tables import cell
from hamt.zoo import evaluation_plan, kind_of

__all__ = ["COLUMNS", "EvalContext", "cli_compare", "compare", "format_table", "recall_probe", "run_baseline",
           "speed_probe", "write_results"]


def add_arguments_compare(parser) -> None:
    parser.add_argument("--baselines", nargs="*", default=None, metavar="NAME",
                        help="pretrained baselines to evaluate (default: compare.baselines); every model of "
                             "compare.trained is evaluated")
    parser.add_argument("--no-ablations", action="store_true", help="leave out the ablation-* models of compare.trained")


def cli_compare(params, args) -> int:
    if getattr(args, "no_ablations", False):
        params.compare.trained = [n for n in params.compare.trained if kind_of(n) != "ablation"]
    result = compare(params, baselines=args.baselines, progress=True)
    print(format_table(result["rows"]))
    print(f"results in {Path(params.compare.out_dir) / 'results.csv'} (+ results.json, recall.json, speed.json)")
    hamt_row = next((r for r in result["rows"] if r["name"] == "hamt"), None)
    if hamt_row is None or hamt_row["status"] != "ok":
        why = hamt_row["reason"] if hamt_row else "not evaluated"
        print(f"hamt compare: error: HAMT itself was not evaluated ({why})", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------------


def compare(params, baselines: list[str] | None = None, *, rows: list[dict] | None = None,
            progress: bool = False) -> dict:
    """Evaluate HAMT, the baselines and the ablations; run the probes; write ``compare.out_dir``.

    ``rows``: rows already computed by ``run_baseline`` (e.g. by the flow's foreach); only the
    probes then run here.
    """
    names = evaluation_plan(params, baselines)
    if rows is None:
        try:
            ctx = EvalContext(params)
        except ConfigError:  # a parameter to fix: nothing is written
            raise
        except HAMTError as e:  # no tokens to evaluate on: every row says why
            ctx, rows = None, [skipped(n, kind_of(n), str(e)) for n in names]
        if ctx is not None:
            rows = []
            for n in names:
                _log(f"compare: {n}")
                rows.append(run_baseline(params, n, ctx=ctx, progress=progress))
    aggregate_seeds(rows, params.train.seed)  # a model's -seed<N> runs: mean and spread in its row
    _log("compare: recall probe (MQAR)")
    recall = _guard(recall_probe, params)
    _log("compare: speed probe")
    speed = _guard(speed_probe, params)
    for row in rows:
        arch = "hamt" if row["kind"] == "hamt" else ("gpt2" if row["name"] == "gpt2-scratch" else None)
        if arch and recall.get("status") == "ok":
            row["mqar_trained_acc"] = recall["models"][arch]["accuracy"]
    result = {"rows": rows, "recall": recall, "speed": speed, "env": environment(params),
              "eval": {"split": params.compare.eval_split, "context": params.compare.eval_context,
                       "stride": params.compare.eval_stride, "max_tokens": params.compare.eval_max_tokens}}
    write_results(params, result)
    return result


def _guard(fn, params) -> dict:
    try:
        return fn(params)
    except HAMTError as e:
        return {"status": "skipped", "reason": str(e)}
    except Exception as e:  # noqa: BLE001
        _log(traceback.format_exc())
        return {"status": "failed", "reason": f"{type(e).__name__}: {_first_line(e)}"}


def environment(params) -> dict:
    import torch
    import transformers

    from hamt.runtime import device_name, resolve_device

    dev = resolve_device(params.train.device)
    return {"device": str(dev), "device_name": device_name(dev), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
            "profile": params.profile, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def write_results(params, result: dict) -> None:
    from hamt.io import write_bytes_atomic, write_json_atomic

    out = Path(params.compare.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "results.json", {k: result[k] for k in ("rows", "env", "eval")})
    write_json_atomic(out / "recall.json", result["recall"])
    write_json_atomic(out / "speed.json", result["speed"])
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in result["rows"]:
        w.writerow({k: _csv_value(row.get(k)) for k in COLUMNS})
    write_bytes_atomic(out / "results.csv", buf.getvalue().encode("utf-8"))


def _csv_value(v: Any) -> Any:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return "" if v is None else v


def format_table(rows: list[dict]) -> str:
    """A plain-text summary of the rows for the terminal."""
    head = f"{'model':28s} {'status':8s} {'params':>11s} {'ppl':>9s} {'bpb':>7s} {'word ppl':>10s} {'recall':>7s}"
    lines = [head, "-" * len(head)]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"{r['name']:28s} {r['status']:8s} {r['reason']}")
            continue
        lines.append(f"{r['name']:28s} {'ok':8s} {r['params']:>11,} {cell(r['ppl'], 2):>9s} {cell(r['bpb'], 3):>7s} "
                     f"{cell(r['word_ppl'], 1):>10s} {cell(r['recall_acc'], 3):>7s}")
    return "\n".join(lines)
