"""Choose the study profile's training budget by measurement: the smallest budget (in steps) at which the GPT-2
with 2x HAMT's parameters beats the parameter-matched GPT-2 by more than the seed-to-seed spread.

    python scripts/study_budget.py                          # study profile, budgets 400 800 steps, seeds 1337 2
    python scripts/study_budget.py --steps 200 400 800 --seeds 1337 2 3 --lanes 2

Below that budget, parameters buy nothing, so the comparison cannot reward a better architecture (issue 15).
Each (model, seed, budget) is a ``hamt train`` run of the profile with ``train.max_steps`` and ``train.seed``
replaced, on the profile's own tokens (``hamt download`` + ``hamt tokenize`` into --work), one thread per run and
``--lanes`` runs side by side, longest first. Quality is each run's final validation loss (``train.eval_batches``
fixed batches, the same for every model); a budget *separates* when

    mean(loss of gpt2-scratch) - mean(loss of gpt2-scratch-2x) > SPREAD_FACTOR x max(sample std of either)

the rule the report's summary uses for every quality call (``hamt.report.summary``). Writes
``<out>/budget.json`` (every run, every budget's verdict, the chosen budget) and ``<out>/budget.md`` (the table),
and prints the table. Runs already finished in --work are reused (their metrics.json), so an interrupted search
resumes where it stopped.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hamt.io import write_json_atomic, write_text_atomic  # noqa: E402
from hamt.report.summary import SPREAD_FACTOR  # noqa: E402

# relative cost per token of each model (HAMT = 1; params.yaml's compare comment): longest runs start first
COST = {"gpt2-scratch-2x": 2.4, "gpt2-scratch": 1.15}


def hamt(*args: str, threads: int = 1) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    return subprocess.run([sys.executable, "-m", "hamt.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True)


def prepare(profile: str, work: Path) -> list[str]:
    """The profile's corpus and tokens in ``work``; the ``--set`` options that point a run at them."""
    sets = ["--set", f"data.raw_dir={work / 'raw'}", "--set", f"tokenizer.tokens_dir={work / 'tokens'}"]
    for stage in ("download", "tokenize"):
        if stage == "tokenize" and (work / "tokens" / "meta.json").is_file():
            break
        out = hamt(stage, "--profile", profile, *sets, threads=2)
        if out.returncode:
            sys.exit(f"study_budget: hamt {stage} failed: {out.stderr.strip().splitlines()[-1:]}")
    return sets


def run_one(profile: str, sets: list[str], work: Path, model: str, seed: int, steps: int) -> dict:
    name = f"{model}-b{steps}-s{seed}"
    metrics = work / "train" / name / "metrics.json"
    if not metrics.is_file():
        t0 = time.time()
        out = hamt("train", "--profile", profile, "--model", model, "--name", name, "--force-new", *sets,
                   "--set", f"train.seed={seed}", "--set", f"train.max_steps={steps}",
                   "--set", f"train.eval_every={steps}", "--set", f"train.ckpt_every={steps}",
                   "--set", f"train.out_dir={work / 'checkpoints'}", "--set", f"train.results_dir={work / 'train'}")
        if out.returncode:
            return {"name": name, "model": model, "seed": seed, "steps": steps, "status": "failed",
                    "reason": (out.stderr.strip().splitlines() or ["no output"])[-1]}
        print(f"  {name}: {time.time() - t0:.0f} s", flush=True)
    m = json.loads(metrics.read_text())
    return {"name": name, "model": model, "seed": seed, "steps": steps, "status": "ok",
            "val_loss": m["val_loss"], "tokens": m.get("tokens"), "params": m.get("n_params"),
            "train_time_s": m.get("train_time_s")}


def verdicts(runs: list[dict], small: str, big: str, budgets: list[int]) -> list[dict]:
    rows = []
    for steps in budgets:
        loss = {m: [r["val_loss"] for r in runs if r["steps"] == steps and r["model"] == m and r["status"] == "ok"]
                for m in (small, big)}
        row = {"steps": steps, "tokens": next((r["tokens"] for r in runs if r["steps"] == steps and r.get("tokens")), None)}
        for m, xs in loss.items():
            row[f"{m} mean"] = statistics.fmean(xs) if xs else None
            row[f"{m} std"] = statistics.stdev(xs) if len(xs) >= 2 else None
            row[f"{m} seeds"] = len(xs)
        stds = [row[f"{small} std"], row[f"{big} std"]]
        if None in stds or row[f"{small} mean"] is None or row[f"{big} mean"] is None:
            row["gain"], row["spread"], row["separates"] = None, None, None
        else:
            row["gain"] = row[f"{small} mean"] - row[f"{big} mean"]  # > 0: the 2x model's loss is lower
            row["spread"] = max(stds)
            row["separates"] = row["gain"] > SPREAD_FACTOR * row["spread"]
        rows.append(row)
    return rows


def table(rows: list[dict], small: str, big: str) -> str:
    def f(x, spec=".4f"):
        return "–" if x is None else format(x, spec)

    lines = [f"| steps | tokens | {small} val loss (mean ± std) | {big} val loss (mean ± std) | gain | "
             f"{SPREAD_FACTOR:g} x spread | separates |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['steps']} | {f(r['tokens'], ',')} | {f(r[f'{small} mean'])} ± {f(r[f'{small} std'])} | "
                     f"{f(r[f'{big} mean'])} ± {f(r[f'{big} std'])} | {f(r['gain'])} | "
                     f"{f(None if r['spread'] is None else SPREAD_FACTOR * r['spread'])} | "
                     f"{'–' if r['separates'] is None else ('yes' if r['separates'] else 'no')} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="study")
    ap.add_argument("--steps", type=int, nargs="+", default=[400, 800], help="candidate budgets (train.max_steps)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1337, 2])
    ap.add_argument("--models", nargs=2, default=["gpt2-scratch", "gpt2-scratch-2x"], metavar=("MATCHED", "BIGGER"))
    ap.add_argument("--lanes", type=int, default=2, help="runs side by side, one thread each")
    ap.add_argument("--work", type=Path, default=ROOT / ".cache" / "study_budget", help="corpus, tokens, runs")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "study")
    a = ap.parse_args()
    if len(a.seeds) < 2:
        sys.exit("study_budget: --seeds needs at least 2 seeds (the spread is their standard deviation)")
    a.work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    sets = prepare(a.profile, a.work)
    jobs = sorted(((m, s, n) for n in a.steps for m in a.models for s in a.seeds), key=lambda j: -COST.get(j[0], 1) * j[2])
    print(f"study_budget: {len(jobs)} runs in {a.lanes} lanes, work {a.work}", flush=True)
    with cf.ThreadPoolExecutor(a.lanes) as pool:
        runs = list(pool.map(lambda j: run_one(a.profile, sets, a.work, *j), jobs))
    small, big = a.models
    rows = verdicts(runs, small, big, sorted(a.steps))
    chosen = next((r["steps"] for r in rows if r["separates"]), None)
    result = {"profile": a.profile, "models": a.models, "seeds": a.seeds, "spread_factor": SPREAD_FACTOR,
              "budgets": rows, "chosen_steps": chosen, "runs": runs, "wall_s": round(time.time() - t0, 1),
              "threads_per_run": 1, "lanes": a.lanes}
    md = (table(rows, small, big) + "\n\n"
          + (f"Smallest separating budget: {chosen} steps.\n" if chosen else "No measured budget separates.\n"))
    a.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(a.out / "budget.json", result)
    write_text_atomic(a.out / "budget.md", md)
    print(md)
    failed = [r for r in runs if r["status"] != "ok"]
    for r in failed:
        print(f"failed: {r['name']}: {r['reason']}", file=sys.stderr)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
