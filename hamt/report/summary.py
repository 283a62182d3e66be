"""The report's "Is HAMT competitive?" section, computed from the comparison rows: never typed in.

For each baseline trained from scratch on the same tokens and budget (``kind == "scratch"``), it puts
side by side: quality (bits per byte, lower is better; the mean over seeds where a model has several), training speed, decoding speed and state size
at the evaluation context, and recall. Speed and memory are measured once per model on this machine
and reported as ratios (HAMT / baseline). Quality is called better or worse only when the difference
exceeds the seed-to-seed spread:

    spread = max(std of HAMT's bpb over seeds, std of the baseline's)      (``bpb_std`` of the rows)
    called when |bpb_hamt - bpb_baseline| > 2 x spread

A row trained with one seed has no measured spread, so no quality difference is called for it: the
difference is shown and the verdict says why it is not one. Nothing here reads the claims of the seed
prototype; ``hamt.report.claims`` does that.
"""

from __future__ import annotations

from typing import Any

from hamt.tables import cell

SPREAD_FACTOR = 2.0  # a difference counts when it exceeds this many seed standard deviations


def quality_verdict(diff: float, spread: float | None) -> str:
    """``better`` / ``worse`` (HAMT's bpb lower / higher) beyond the spread, else why not."""
    if spread is None:
        return "not called: a single seed, the seed-to-seed spread is not measured"
    if abs(diff) <= SPREAD_FACTOR * spread:
        return f"no difference: |diff| <= {SPREAD_FACTOR:g} x seed spread ({spread:.4f})"
    return "HAMT better" if diff < 0 else "HAMT worse"


def seed_spread(*rows: dict) -> float | None:
    stds = [r.get("bpb_std") for r in rows]
    if any(s is None for s in stds):
        return None
    return max(float(s) for s in stds)


def bpb_of(row: dict) -> float:
    """The model's bits per byte: the mean over its seeds when it has several (``hamt.compare.seeds``)."""
    return float(row["bpb_mean"] if row.get("bpb_mean") is not None else row["bpb"])


def _ratio(a: Any, b: Any) -> float | None:
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or not b:
        return None
    return float(a) / float(b)


def competitiveness(rows: list[dict]) -> dict | None:
    """HAMT against each evaluated from-scratch baseline; None when HAMT or every baseline is missing."""
    ok = {r["name"]: r for r in rows if r.get("status") == "ok" and "seed_of" not in r}  # -seed<N> runs: in bpb_std
    hamt = ok.get("hamt")
    baselines = [r for r in ok.values() if r.get("kind") == "scratch"]
    if hamt is None or not baselines or not isinstance(hamt.get("bpb"), (int, float)):
        return None
    out = []
    for b in baselines:
        bh, bb = bpb_of(hamt), bpb_of(b)
        diff = bh - bb
        spread = seed_spread(hamt, b)
        out.append({
            "baseline": b["name"], "params_ratio": _ratio(hamt.get("params"), b.get("params")),
            "bpb_hamt": bh, "bpb_baseline": bb, "bpb_diff": diff, "spread": spread,
            "seeds": (len(hamt.get("seeds") or [1]), len(b.get("seeds") or [1])),
            "quality": quality_verdict(diff, spread),
            "train_speed_ratio": _ratio(hamt.get("train_tok_s"), b.get("train_tok_s")),
            "decode_speed_ratio": _ratio(b.get("decode_ms_per_token"), hamt.get("decode_ms_per_token")),
            "state_bytes_ratio": _ratio(hamt.get("state_bytes"), b.get("state_bytes")),
            "recall_hamt": hamt.get("recall_acc"), "recall_baseline": b.get("recall_acc"),
        })
    return {"hamt": hamt, "rows": out, "state_growth": _state_growth(hamt), "contexts": decode_by_context(hamt, baselines)}


def _decoded(row: dict) -> dict[int, dict]:
    return {d["context"]: d for d in row.get("decode") or [] if d.get("status") == "ok"}


def decode_by_context(hamt: dict, baselines: list[dict]) -> list[dict]:
    """Per baseline and context both decoded at: ms per generated token and state bytes, and HAMT's speed ratio."""
    mine = _decoded(hamt)
    out = []
    for b in baselines:
        theirs = _decoded(b)
        for c in sorted(set(mine) & set(theirs)):
            h, o = mine[c], theirs[c]
            out.append({"baseline": b["name"], "context": c, "ms_hamt": h.get("ms_per_token"),
                        "ms_baseline": o.get("ms_per_token"), "speed_ratio": _ratio(o.get("ms_per_token"), h.get("ms_per_token")),
                        "state_hamt": h.get("state_bytes"), "state_baseline": o.get("state_bytes")})
    return out


def _state_growth(row: dict) -> tuple[int, int, int, int] | None:
    """(shortest context, its state bytes, longest context, its state bytes) of the decode profile."""
    ok = sorted((d for d in row.get("decode") or [] if d.get("status") == "ok" and d.get("state_bytes")),
                key=lambda d: d["context"])
    if len(ok) < 2:
        return None
    return ok[0]["context"], ok[0]["state_bytes"], ok[-1]["context"], ok[-1]["state_bytes"]


def summary_blocks(results: dict) -> list[tuple]:
    """The section's blocks (heading, computed paragraph, table), or a note saying what is missing."""
    rows = (results.get("compare") or {}).get("rows") or []
    out: list[tuple] = [("h2", "Is HAMT competitive?")]
    comp = competitiveness(rows)
    if comp is None:
        return out + [("note", ("Not answered: it needs an evaluated HAMT row and at least one evaluated baseline "
                                "trained from scratch (`hamt compare`)."))]
    called = [r for r in comp["rows"] if r["quality"] in ("HAMT better", "HAMT worse")]
    seeds = "" if any(r["spread"] is not None for r in comp["rows"]) else (
        " Every model was trained with one seed, so the seed-to-seed spread is unmeasured and no quality "
        "difference is called; the bpb differences are shown as measured.")
    verdicts = "; ".join(f"{r['baseline']}: {r['quality']}" for r in called) or "none"
    text = (f"HAMT against {len(comp['rows'])} baseline(s) trained from scratch on the same tokens and budget: "
            f"quality called for {len(called)} of them ({verdicts}).{seeds}")
    growth = comp["state_growth"]
    if growth:
        c0, b0, c1, b1 = growth
        text += (f" HAMT's decoding state: {b0:,} bytes at {c0:,} tokens of context, {b1:,} at {c1:,} "
                 f"({'constant' if b0 == b1 else 'growing'}).")
    out.append(("p", text + " Ratios are HAMT / baseline, measured on this machine in this run (speed: higher is "
                            "faster for HAMT; state: lower is smaller for HAMT)."))
    out.append(("table", ["baseline", "seeds (HAMT, baseline)", "params ratio", "bpb HAMT", "bpb baseline", "diff", "quality",
                          "train speed ratio", "decode speed ratio", "state bytes ratio", "recall HAMT / baseline"],
                [[r["baseline"], "{}, {}".format(*r["seeds"]), cell(r["params_ratio"], 3), cell(r["bpb_hamt"], 4), cell(r["bpb_baseline"], 4),
                  f"{r['bpb_diff']:+.4f}", r["quality"], cell(r["train_speed_ratio"], 2),
                  cell(r["decode_speed_ratio"], 2), cell(r["state_bytes_ratio"], 3),
                  f"{cell(r['recall_hamt'], 3)} / {cell(r['recall_baseline'], 3)}"] for r in comp["rows"]]))
    if comp["contexts"]:
        out.append(("p", "Decoding at each context length (batch 1, this machine): milliseconds per generated token "
                         "and the state carried between tokens (HAMT's memory; a transformer's KV cache; Mamba-2's "
                         "SSM and convolution states)."))
        out.append(("table", ["baseline", "context", "ms/token HAMT", "ms/token baseline", "decode speed ratio",
                              "state bytes HAMT", "state bytes baseline"],
                    [[r["baseline"], f"{r['context']:,}", cell(r["ms_hamt"], 2), cell(r["ms_baseline"], 2),
                      cell(r["speed_ratio"], 2), cell(r["state_hamt"]), cell(r["state_baseline"])]
                     for r in comp["contexts"]]))
    return out
