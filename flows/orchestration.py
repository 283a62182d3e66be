"""Helpers of ``flows/hamt_flow.py``: parameters, the training child process, hashes, DVC (cards: ``cards.py``).

Nothing here computes a result: the stages live in ``hamt/``. This module only does what an
orchestrator does — resolve ``params.yaml`` (``hamt.params.resolve``), launch ``hamt train`` (or
``torchrun ... -m hamt.cli train``) as a child process and watch its ``log.csv``, fingerprint the
outputs, and keep DVC's lock file in step with a flow run; ``flows/cards.py`` draws the cards from the
stages' own result dicts. It imports no torch at the top (every Metaflow step is a new process that imports the
flow file, and torch costs seconds).

Environment variables read here (all optional):

    HAMT_WORKDIR          folder holding data/, checkpoints/, results/ (default: the repository root,
                          i.e. the folder above flows/, when it has params.yaml; else the current folder)
    HAMT_NPROC_PER_NODE   training processes per machine: an integer, or "auto" = every visible CUDA GPU
                          (default "auto"; on a CPU machine that is 1). More than 1 launches torchrun.
    HAMT_PRIMARY_FAULTS   fault injection for the *primary* training only, in the trainer's HAMT_FAULTS
                          syntax (``hamt/train/faults.py``, EnvFaults), e.g. ``nan@1,nan@1,nan@1,nan@1`` (more NaN
                          roll-backs than fallback.max_divergence_retries) or ``sigkill@1`` (a crash).
    HAMT_TRAIN_GPUS       GPUs requested by ``@resources`` on the training steps (remote runs only)
"""

from __future__ import annotations

import codecs
import collections
import csv
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

FLOWS_DIR = Path(__file__).resolve().parent
REPO_ROOT = FLOWS_DIR.parent
DEFAULT_PARAMS = "params.yaml"
FAULTS_ENV = "HAMT_PRIMARY_FAULTS"


class PipelineStopped(Exception):
    """The flow cannot go on (validation failed, both trainings failed); the message says why and what to do."""


# --------------------------------------------------------------------------------------------------
# Where the flow works, and its parameters
# --------------------------------------------------------------------------------------------------


def workdir() -> Path:
    """The folder whose data/, checkpoints/, results/ the flow shares with ``dvc repro``."""
    env = os.environ.get("HAMT_WORKDIR", "").strip()
    if env:
        return Path(env).expanduser().resolve()
    return REPO_ROOT if (REPO_ROOT / DEFAULT_PARAMS).is_file() else Path.cwd()


def enter_workdir() -> Path:
    """chdir into ``workdir()``: every step writes the same relative paths ``params.yaml`` names."""
    wd = workdir()
    os.chdir(wd)
    return wd


def pin_local_datastore() -> None:
    """Keep Metaflow's local datastore in ``workdir()/.metaflow`` unless METAFLOW_DATASTORE_SYSROOT_LOCAL is set.

    Call before importing metaflow. Metaflow 2.19 writes a card under the first ``.metaflow`` found upward
    from the task's current folder (``workdir()``, where every step works) but reads cards from the
    datastore root; pinning the root there keeps the two in agreement wherever the flow is launched from.
    (METAFLOW_CARD_LOCALROOT does not help: in 2.19.39 setting it makes the card root None.)
    """
    os.environ.setdefault("METAFLOW_DATASTORE_SYSROOT_LOCAL", str(workdir()))


def default_params_path() -> str:
    """The Config's default file: params.yaml beside flows/ (so the flow runs from any folder)."""
    path = REPO_ROOT / DEFAULT_PARAMS
    return str(path) if path.is_file() else DEFAULT_PARAMS


def env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() else None


def parse_overrides(text: str) -> list[str]:
    """``"train.lr=1e-3; train.max_steps=50"`` -> ``["train.lr=1e-3", "train.max_steps=50"]`` (also newlines)."""
    items = [s.strip() for chunk in (text or "").splitlines() for s in chunk.split(";")]
    return [s for s in items if s]


def plain(obj: Any) -> Any:
    """A Metaflow ConfigValue (or anything nested in one) as plain dicts and lists."""
    if hasattr(obj, "to_dict"):
        obj = obj.to_dict()
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


def resolve(raw: Any, profile: str | None, overrides: list[str], train_profile: str | None = None):
    """The run's ``hamt.params.Params``; with ``train_profile``, that profile's sections for training.

    A training profile (the primary or the fallback) brings its own model/train/fallback/validate/
    compare/report sections, but the data and tokenizer of the run's profile: the tokens already on
    disk are the ones every model of the run is trained and evaluated on.
    """
    from hamt.params import resolve as resolve_params

    raw = plain(raw)
    base = resolve_params(raw, profile or None, overrides, source="flow config")
    if not train_profile or train_profile == base.profile:
        return base
    trained = resolve_params(raw, train_profile, overrides, source=f"flow config, profile {train_profile}")
    return dataclasses.replace(trained, data=base.data, tokenizer=base.tokenizer)


def write_resolved(params, folder: Path) -> Path:
    """Write resolved parameters as a self-contained params file (no profiles) for a child ``hamt`` call."""
    import yaml

    d = params.to_dict()
    d["profiles"] = {}
    path = Path(folder) / "params.resolved.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------------
# Identity of code and outputs
# --------------------------------------------------------------------------------------------------


def git_info(folder: Path) -> dict:
    """Commit and dirtiness of the code the run used (None outside a git checkout)."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None, "branch": git("rev-parse", "--abbrev-ref", "HEAD")}


def versions() -> dict:
    import platform

    out = {"python": platform.python_version()}
    for mod in ("hamt", "torch", "transformers", "metaflow", "dvc"):
        try:
            m = __import__(mod)
            out[mod] = getattr(m, "__version__", "?")
        except ImportError:
            out[mod] = None
    return out


# --------------------------------------------------------------------------------------------------
# CPU threads of parallel tasks
# --------------------------------------------------------------------------------------------------

REMOTE_ENV = ("METAFLOW_KUBERNETES_WORKLOAD", "AWS_BATCH_JOB_ID")  # set by Metaflow's remote compute


def share_cpu_threads(n_parallel: int) -> int | None:
    """Give each of ``n_parallel`` local foreach tasks its share of the cores (torch intra-op threads).

    Metaflow runs a foreach's tasks side by side on one machine; with torch's default (every core per
    process) their OpenMP threads oversubscribe and spin: on 2 cores, five baseline trainings at once ran
    several times slower than one after another. Skipped when OMP_NUM_THREADS is set (the user decided)
    and on Kubernetes/Batch (one task per container). Returns the thread count set, or None.
    """
    if os.environ.get("OMP_NUM_THREADS") or any(v in os.environ for v in REMOTE_ENV):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // max(1, n_parallel))
    import torch

    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)  # for any child process
    return threads


# --------------------------------------------------------------------------------------------------
# Training as a child process
# --------------------------------------------------------------------------------------------------


def nproc_per_node() -> int:
    """HAMT_NPROC_PER_NODE: an integer, or "auto" (default) = the visible CUDA GPUs, at least 1."""
    value = os.environ.get("HAMT_NPROC_PER_NODE", "auto").strip().lower()
    if value.isdigit() and int(value) >= 1:
        return int(value)
    if value != "auto":
        raise PipelineStopped(f"HAMT_NPROC_PER_NODE={value!r}: expected a positive integer or 'auto'")
    try:
        import torch

        return max(1, torch.cuda.device_count())
    except ImportError:
        return 1


def train_command(params_file: Path, nproc: int, resume: bool, model: str = "hamt") -> list[str]:
    """``hamt train [--model NAME]`` on the resolved params; under torchrun (DDP, one process per GPU) when nproc > 1."""
    args = ["-m", "hamt.cli", "train", "--params", str(params_file)] + (["--model", model] if model != "hamt" else [])
    args += ["--resume"] if resume else []
    if nproc > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    return [sys.executable, *args]


def read_log(path: Path) -> list[dict]:
    """The trainer's log.csv as dicts of floats (empty cells dropped); [] while it does not exist."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return []
    out = []
    for r in rows:
        row = {}
        for k, v in r.items():
            try:
                row[k] = float(v)
            except (TypeError, ValueError):
                continue
        out.append(row)
    return out


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def clear_run(params, name: str) -> None:
    """Remove ``<train.out_dir>/<name>`` and ``<train.results_dir>/<name>``: a fresh run, as ``dvc repro``
    removes a stage's outputs before running it (stale checkpoints of another config are never resumed)."""
    for d in (Path(params.train.out_dir) / name, Path(params.train.results_dir) / name):
        shutil.rmtree(d, ignore_errors=True)


class _Tail:
    """Copy a child's stream to ours while keeping its last lines (for the failure reason)."""

    def __init__(self, stream, sink, keep: int = 40):
        self.lines: collections.deque[str] = collections.deque(maxlen=keep)
        self._partial = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")  # a character may span two reads
        self._thread = threading.Thread(target=self._pump, args=(stream, sink), daemon=True)
        self._thread.start()

    def _pump(self, stream, sink) -> None:
        for chunk in iter(lambda: stream.read1(1 << 14), b""):
            text = self._decoder.decode(chunk)
            sink.write(text)
            sink.flush()
            text = (self._partial + text).replace("\r", "\n")
            *done, self._partial = text.split("\n")
            self.lines.extend(line for line in done if line.strip())

    def join(self) -> list[str]:
        self._thread.join(timeout=10)
        if self._partial.strip():
            self.lines.append(self._partial)
        return list(self.lines)


def failure_reason(returncode: int, metrics: dict | None, stderr_tail: list[str]) -> str:
    """One line: the trainer's own verdict (metrics.json "failed"), its CLI error, or how it died."""
    if metrics and metrics.get("failed"):
        return f"training failed: {metrics['failed']}"
    errors = [line.strip() for line in stderr_tail if "error:" in line.lower() or "Error" in line]
    if returncode < 0:
        try:
            how = signal.Signals(-returncode).name
        except ValueError:
            how = f"signal {-returncode}"
        return f"the training process was killed by {how}" + (f" (last output: {errors[-1][:300]})" if errors else "")
    if errors:
        return f"exit status {returncode}: {errors[-1][:300]}"
    last = stderr_tail[-1].strip()[:300] if stderr_tail else "no output"
    return f"exit status {returncode}: {last}"


def run_training(params, *, faults: str = "", resume: bool = False, name: str = "hamt", nproc: int | None = None,
                 on_progress: Callable[[list[dict]], None] | None = None, poll_s: float = 2.0) -> dict:
    """Train model ``name`` (``hamt.zoo``) of ``params`` in a child ``hamt train --model NAME`` (torchrun when
    several GPUs) and report how it went. A fresh run unless ``resume``: its folders are cleared first.

    Returns {ok, reason, returncode, command, nproc, seconds, metrics, log, faults}. ``metrics`` is the
    trainer's metrics.json (it also records a failed run); ``log`` its log.csv rows. ``on_progress(rows)``
    is called every ``poll_s`` seconds while the child runs (live cards). ``nproc``: processes (default
    ``nproc_per_node()``).
    """
    if not resume:
        clear_run(params, name)
    nproc = nproc or nproc_per_node()
    results = Path(params.train.results_dir) / name
    env = dict(os.environ)
    env.pop("HAMT_FAULTS", None)
    if faults:
        env["HAMT_FAULTS"] = faults
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="hamt-flow-") as tmp:
        cmd = train_command(write_resolved(params, Path(tmp)), nproc, resume, name)
        print("launching: " + " ".join(cmd), flush=True)
        proc = subprocess.Popen(cmd, env=env, stdout=sys.stdout, stderr=subprocess.PIPE)
        tail = _Tail(proc.stderr, sys.stderr)
        while proc.poll() is None:
            time.sleep(poll_s)
            if on_progress is not None:
                on_progress(read_log(results / "log.csv"))
        lines = tail.join()
    metrics = read_json(results / "metrics.json")
    if metrics is not None and (results / "metrics.json").stat().st_mtime < t0:
        metrics = None  # a leftover of an earlier run, not this one's verdict
    ok = proc.returncode == 0 and metrics is not None and not metrics.get("failed") and not metrics.get("interrupted")
    reason = "" if ok else failure_reason(proc.returncode, metrics, lines)
    if proc.returncode == 0 and not ok:
        reason = "the trainer exited without a final metrics.json" if metrics is None else "the run was interrupted"
    return {"ok": ok, "reason": reason, "returncode": proc.returncode, "command": cmd, "nproc": nproc,
            "seconds": time.time() - t0, "metrics": metrics, "log": read_log(results / "log.csv"), "faults": faults,
            "resumed": resume}


# --------------------------------------------------------------------------------------------------
# DVC: keep dvc.lock in step with what the flow wrote
# --------------------------------------------------------------------------------------------------


def dvc_sync(folder: Path, run_params: dict, trained_params: dict, params_file: str = DEFAULT_PARAMS) -> dict:
    """``dvc commit -f`` when the flow's outputs are what ``dvc repro`` would have produced, else why not.

    They are when the parameters the flow resolved for every stage (including the trained model's) equal
    those ``params.yaml`` on disk resolves to. Then ``dvc status`` is clean and ``dvc repro`` a no-op
    after the flow. Otherwise (a --profile/--overrides/--config run, or a fallback profile that differs)
    dvc.lock is left alone, so DVC correctly sees those stages as changed.
    """
    folder = Path(folder)
    if not (folder / "dvc.yaml").is_file() or not (folder / ".dvc").is_dir():
        return {"status": "skipped", "reason": f"{folder} is not a DVC repository (no dvc.yaml or .dvc/)"}
    from hamt.params import load_params

    try:
        disk = load_params(folder / params_file, validate_model=False).to_dict()
    except Exception as e:  # noqa: BLE001  an unreadable params.yaml only means: do not commit
        return {"status": "skipped", "reason": f"{params_file} does not resolve ({e})"}
    if run_params != disk:
        diff = _first_difference(disk, run_params)
        return {"status": "skipped", "reason": f"the run's parameters differ from {params_file} ({diff}); "
                                               "dvc.lock left as is: `dvc repro` will re-run the affected stages"}
    if trained_params != disk:
        diff = _first_difference(disk, trained_params)
        return {"status": "skipped", "reason": f"the model was trained with the fallback profile, whose parameters differ "
                                               f"from {params_file} ({diff}); dvc.lock left as is"}
    dvc = shutil.which("dvc") or str(Path(sys.executable).with_name("dvc"))
    env = {**os.environ, "DVC_NO_ANALYTICS": os.environ.get("DVC_NO_ANALYTICS", "1")}
    try:
        out = subprocess.run([dvc, "commit", "--force", "--quiet"], cwd=folder, capture_output=True, text=True,
                             env=env, timeout=1800)
    except (OSError, subprocess.SubprocessError) as e:
        return {"status": "failed", "reason": f"could not run dvc commit: {e}"}
    if out.returncode != 0:
        return {"status": "failed", "reason": (out.stderr or out.stdout).strip()[-500:]}
    return {"status": "committed", "reason": "parameters equal params.yaml; `dvc commit -f` recorded the flow's outputs"}


def _first_difference(a: Any, b: Any, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))
    return f"{path}: {a!r} in the file, {b!r} in the run"


# --------------------------------------------------------------------------------------------------
# Cards (metaflow.cards components built from the stages' own dicts)
# --------------------------------------------------------------------------------------------------
