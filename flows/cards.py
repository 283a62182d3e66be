"""The flow's cards: tables, loss figures, the live training card and the report, drawn from the stages' dicts.

Nothing here computes a result: every block is made from a dict a ``hamt`` stage returned (or the
report's Markdown). Metaflow and matplotlib are imported inside the functions (every step is a new
process that imports the flow file).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from orchestration import plain

# The comparison columns shown on the card (results/compare/results.csv has them all).
COMPARE_COLUMNS = ["name", "kind", "status", "params", "loss", "ppl", "bpb", "word_ppl", "train_tok_s", "infer_tok_s",
                   "decode_ms_per_token", "state_bytes", "peak_mem_mb", "recall_acc", "mqar_trained_acc", "fidelity",
                   "slot_active_fraction", "reason"]


def cell(v: Any) -> str:
    """One table cell as text: thousands separators for ints, 4 significant digits for floats."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1e6 else f"{v:,.0f}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, default=str)
    return str(v)


def table(rows: list[dict], columns: list[str] | None = None):
    """A card Table of every row and column. (``Table.from_dataframe`` would cut each text cell of a
    column to 30 characters when any is longer, which hides skip reasons; so cells are formatted here.)"""
    from metaflow.cards import Table

    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    if not rows:
        return Table([["(no rows)"]], headers=columns or [""])
    return Table([[cell(r.get(c)) for c in columns] for r in rows], headers=columns)


def yaml_block(obj: Any) -> str:
    import yaml

    return "```yaml\n" + yaml.safe_dump(plain(obj), sort_keys=False, width=110) + "```"


def loss_figure(series: dict[str, list[dict]], title: str = "loss"):
    """Train/validation loss against step for each named log (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for name, rows in series.items():
        for key, style in (("train_loss", "-"), ("val_loss", "o--")):
            pts = [(r["step"], r[key]) for r in rows if "step" in r and key in r]
            if pts:
                ax.plot(*zip(*pts), style, label=f"{name} {key}", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    if ax.lines:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


class LiveTraining:
    """The live part of a training card: a progress bar and a status line, refreshed from log.csv."""

    def __init__(self, card, label: str, max_steps: int):
        from metaflow.cards import Markdown, ProgressBar

        self.card, self.max_steps, self.t0 = card, max_steps, time.time()
        self.bar = ProgressBar(max=max_steps, label=label, value=0, unit="steps")
        self.status = Markdown("_starting..._")
        card.append(self.bar)
        card.append(self.status)
        card.refresh()

    def __call__(self, rows: list[dict]) -> None:
        if not rows:
            return
        last = rows[-1]
        step = int(last.get("step", 0))
        elapsed = time.time() - self.t0
        eta = elapsed / step * (self.max_steps - step) if step else float("nan")
        val = next((r["val_loss"] for r in reversed(rows) if "val_loss" in r), None)
        self.bar.update(step, metadata=f"{last.get('tokens_per_s', 0):,.0f} tok/s, ETA {eta:,.0f} s")
        self.status.update(f"step **{step}/{self.max_steps}** · train loss **{last.get('train_loss', float('nan')):.4f}**"
                           + (f" · val loss **{val:.4f}**" if val is not None else "")
                           + f" · elapsed {elapsed:,.0f} s")
        self.card.refresh()


def training_blocks(result: dict, profile: str, role: str) -> list:
    """Card components summarising one training attempt (primary or fallback)."""
    from metaflow.cards import Image, Markdown

    m = result.get("metrics") or {}
    head = "ok" if result["ok"] else f"FAILED: {result['reason']}"
    blocks = [Markdown(f"### {role} training: profile `{profile}` — {head}\n\n"
                       f"`{' '.join(result['command'])}` ({result['nproc']} process(es), {result['seconds']:.0f} s"
                       + (f", faults injected: `{result['faults']}`" if result.get("faults") else "") + ")")]
    keys = ("model_class", "n_params", "steps", "tokens", "train_loss", "val_loss", "val_perplexity", "tokens_per_s",
            "mfu", "peak_mem_mb", "device", "precision", "world_size", "micro_batch_size", "seq_len", "weights_sha256")
    if m:
        blocks.append(table([{"metric": k, "value": m.get(k)} for k in keys if k in m]))
    if m.get("fallbacks"):
        blocks.append(Markdown("**Fallback ladder rungs taken**"))
        blocks.append(table(m["fallbacks"]))
    if result.get("log"):
        import matplotlib.pyplot as plt

        fig = loss_figure({profile: result["log"]}, f"{role}: {profile}")
        blocks.append(Image.from_matplotlib(fig, label="loss curves"))
        plt.close(fig)
    return blocks


def report_blocks(md_text: str, plots: dict[str, str]) -> list:
    """The report as card components: its Markdown (image links replaced by embedded images)."""
    import re

    from metaflow.cards import Image, Markdown

    blocks, buf = [], []
    for line in md_text.splitlines():
        m = re.fullmatch(r"\s*!\[(.*?)\]\((.*?)\)\s*", line)
        if not m:
            buf.append(line)
            continue
        if buf:
            blocks.append(Markdown("\n".join(buf)))
            buf = []
        key = next((k for k, p in plots.items() if Path(p).name == Path(m.group(2)).name), None)
        if key is not None and Path(plots[key]).is_file():
            blocks.append(Image(src=Path(plots[key]).read_bytes(), label=m.group(1) or key))
        else:
            blocks.append(Markdown(f"_(plot {m.group(2)} not found)_"))
    if buf:
        blocks.append(Markdown("\n".join(buf)))
    return blocks
