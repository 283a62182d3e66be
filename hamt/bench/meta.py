"""What every benchmark row carries and where it goes: device, date, commit, the resolved command;
the tables' header line, result files and a progress bar."""

from __future__ import annotations

import datetime as _dt
import os
import subprocess
import sys
from pathlib import Path


def git_commit() -> str:
    """Short commit (+dirty); HAMT_GIT_COMMIT names it where the tree was copied without .git."""
    if os.environ.get("HAMT_GIT_COMMIT"):
        return os.environ["HAMT_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        commit = out.stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return (commit + ("+dirty" if dirty else "")) if commit else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def command(args, opts: dict) -> str:
    """The resolved command line: rerunning it reproduces the measurement's settings."""
    what = args.what
    parts = ["hamt bench", what]
    if args.profile:
        parts.append(f"--profile {args.profile}")
    parts += [f"--set {s}" for s in args.overrides]
    if opts["preset"]:
        parts.append(f"--preset {opts['preset']}")
    if opts["vocab_size"]:
        parts.append(f"--vocab-size {opts['vocab_size']}")
    if what in ("model", "all"):
        parts += ["--seq-lens " + " ".join(map(str, opts["seq_lens"])), f"--tokens-per-step {opts['tokens_per_step']}"]
    if what in ("memory", "all"):
        parts += [f"--memory-seq-len {opts['memory_seq_len']}", f"--memory-batch {opts['memory_batch']}"]
    if what in ("decode", "all"):
        parts += ["--contexts " + " ".join(map(str, opts["contexts"])), f"--decode-steps {opts['decode_steps']}"]
    parts += [f"--repeats {opts['repeats']}", f"--precision {opts['precision']}"]
    if opts["memory_mode"]:
        parts.append(f"--memory-mode {opts['memory_mode']}")
    if what in ("model", "all"):
        parts += [flag for flag in ("--optimizer", "--compile") if opts[flag[2:]]]
    if args.device:
        parts.append(f"--device {args.device}")
    if opts["threads"]:
        parts.append(f"--threads {opts['threads']}")
    return " ".join(parts)


def metadata(device, command_line: str, opts: dict) -> dict:
    """The fields every row of every benchmark carries."""
    from hamt.runtime import device_name

    return {
        "device": device_name(device, threads=True),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(),
        "command": command_line,
        "preset": opts["preset"] or "profile",
        "precision": opts["precision"],
        "compile": bool(opts["compile"]),
        "optimizer": bool(opts["optimizer"]),
    }


def header(info: dict) -> str:
    """The italic line above each table."""
    return (f"_device: {info['device']} · date: {info['date']} · commit: {info['commit']} · "
            f"precision: {info['precision']} · command: `{info['command']}`_\n\n")


def write_results(out_dir: Path, name: str, rows: list[dict], table: str) -> None:
    """``<out_dir>/<name>.json`` (the rows) and ``<name>.md`` (the table), atomically."""
    from hamt.io import write_json_atomic, write_text_atomic

    write_json_atomic(out_dir / f"{name}.json", rows)
    write_text_atomic(out_dir / f"{name}.md", table)


def progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, dynamic_ncols=True, leave=False)
