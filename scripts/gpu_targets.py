"""The GPU targets of issue 16, one row each, read from what scripts/gpu_session.sh measured.

    python scripts/gpu_targets.py RESULTS_DIR

RESULTS_DIR holds the session's ``eager/model.json`` (``hamt bench model``, 100m, bf16: HAMT and GPT-2 SDPA
in the same run, paired medians), ``memory/memory.json`` (``hamt bench memory``: the scan against its
bandwidth floor) and ``compile.txt`` (scripts/gpu_compile_check.py's output, exit status on its last line).
A missing file makes its rows "not measured". Nothing here measures: it only reads and compares.
"""
import json
import sys
from pathlib import Path


def load(path: Path) -> list[dict]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []


def main(root: Path) -> None:
    model = load(root / "eager" / "model.json")
    memory = load(root / "memory" / "memory.json")
    hamt = {r["seq_len"]: r for r in model if r["model"] == "hamt"}
    gpt2 = {r["seq_len"]: r for r in model if r["model"] == "gpt2"}
    rows = []

    def speed(T: int, want: float) -> None:
        r = hamt.get(T)
        got = None if r is None else r["hamt_speedup_vs_gpt2"]
        rows.append((f"100m bf16 tok/s >= {want}x GPT-2 SDPA at T={T}", got, None if got is None else got >= want,
                     "" if r is None else f"HAMT {r['tokens_per_s']:,.0f} vs GPT-2 {gpt2[T]['tokens_per_s']:,.0f} tok/s"))

    speed(1024, 1.0)
    speed(8192, 2.0)
    tri = next((r for r in memory if r["mode"] == "triton"), None)
    rows.append(("scan fwd+bwd <= 3x its bandwidth floor", None if tri is None else tri["times_floor"],
                 None if tri is None else tri["times_floor"] <= 3.0,
                 "" if tri is None else f"{tri['fwd_bwd_ms']:.2f} ms vs floor {tri['floor_fwd_bwd_ms']:.3f} ms"))
    r = hamt.get(1024)
    rows.append(("MFU >= 30% (100m, T=1024)", None if r is None else r["mfu"],
                 None if r is None or r["mfu"] is None else r["mfu"] >= 0.30, "" if r is None else r["peak_flops_source"]))
    for T in sorted(hamt):
        a, b = hamt[T]["activation_mb"], gpt2[T]["activation_mb"]
        rows.append((f"activation memory <= GPT-2's at T={T}", a / b, a <= b, f"HAMT {a:,.0f} MB vs GPT-2 {b:,.0f} MB"))
    compile_txt = (root / "compile.txt").read_text(encoding="utf-8") if (root / "compile.txt").exists() else ""
    status = compile_txt.strip().splitlines()[-1] if compile_txt.strip() else ""
    ok = None if not status.startswith("rc=") else status == "rc=0"
    rows.append(("torch.compile compiles the block, no eager fallback", None, ok,
                 next((ln for ln in compile_txt.splitlines() if "graph breaks" in ln), "")))
    print("| target | measured | met | detail |\n|---|---|---|---|")
    for name, got, met, detail in rows:
        shown = "not measured" if met is None else ("" if got is None else f"{got:.3g}")
        print(f"| {name} | {shown} | {'—' if met is None else ('yes' if met else 'no')} | {detail} |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "results/gpu"))
