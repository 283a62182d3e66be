"""Training checkpoints that describe themselves, are written atomically and are checked on load.

A checkpoint is one ``torch.save`` file ``<dir>/step_<N>.pt`` holding everything a resumed run needs
to continue bit for bit: model, optimizer, scheduler and grad-scaler state, the step, the RNG states
(python, numpy, torch, cuda; one set per rank), the data loader's position (per rank), the fallback
ladder's state, the resolved params and model config, and the run's identity (``run``: a run id and the
resolved config's hash). Beside it, ``step_<N>.pt.sha256`` holds its checksum in ``sha256sum`` format
(``sha256sum -c`` verifies it) and, on a ``#`` comment line that sha256sum ignores, the run id, so that
listing, pruning and loading can keep to one run's checkpoints without opening the files.

Writing is atomic: the bytes go to a temp file in the same folder (hashed while they stream), the
file is fsync'ed and renamed over the final name, then the checksum sidecar is written the same way,
then the folder is fsync'ed. A checkpoint counts only when its sidecar exists and matches, so a
process killed at any point leaves either the previous set of checkpoints or the new one, never a
half-written file that would be loaded. The newest ``keep`` checkpoints of the run are kept; a write
that fails (disk full, permissions, torch's zip writer's ``RuntimeError``) removes its temp file and
says in one line what, where and how much space is free.

Loading picks the newest checkpoint of a run (by default the run that wrote last) that verifies; a corrupt or truncated newer one is reported with
a warning naming the file and skipped. A file that is not a checkpoint, or one of another model
configuration, raises ``CheckpointError``.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from hamt.errors import CheckpointError
from hamt.io import file_sha256, free_space, fsync_dir, temp_path, write_bytes_atomic, write_failure

FORMAT = "hamt-train-checkpoint/1"
_NAME = re.compile(r"^step_(\d+)\.pt$")
# What a killed writer can leave here and nothing else: hamt.io's temp files/folders of a checkpoint, its sidecar or
# the final/ export (".<name>.tmp.<8 chars>") and the folder a replaced export leaves (".final.old.<8 hex>").
_STALE = re.compile(r"^\.(step_\d+\.pt(\.sha256)?|final)\.(tmp|old)\.[a-z0-9_]{8}$")
_RUN_LINE = "# run "

# Config keys that say nothing about the weights' shapes or meaning (library versions, runtime flags).
_VOLATILE_CONFIG_KEYS = {
    "transformers_version", "_name_or_path", "architectures", "auto_map", "dtype", "torch_dtype", "use_cache",
    "output_attentions", "output_hidden_states", "return_dict", "_attn_implementation_autoset",
    "_attn_implementation", "attn_implementation", "memory_mode", "chunk_size", "id2label", "label2id",
}

# ---------------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------------


def checkpoint_path(ckpt_dir: str | Path, step: int) -> Path:
    return Path(ckpt_dir) / f"step_{step:08d}.pt"


def sidecar_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def list_checkpoints(ckpt_dir: str | Path, run_id: str | None = None) -> list[Path]:
    """Checkpoint files in ``ckpt_dir`` (verified or not), newest step first; with ``run_id``, that run's only."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name)) and p.is_file()]
    paths = [p for _, p in sorted(found, reverse=True)]
    return paths if run_id is None else [p for p in paths if checkpoint_run(p) == run_id]


def checkpoint_run(path: str | Path) -> str | None:
    """The run id recorded in a checkpoint's sidecar (None: no sidecar, or written before runs had ids)."""
    try:
        lines = sidecar_path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    return next((ln[len(_RUN_LINE):].split()[0] for ln in lines if ln.startswith(_RUN_LINE) and ln.split()[2:]), None)


def latest_run(ckpt_dir: str | Path) -> str | None:
    """The run id of the checkpoint written last in ``ckpt_dir`` (by its sidecar's time), None if none has one."""
    stamped = []
    for p in list_checkpoints(ckpt_dir):
        run = checkpoint_run(p)
        if run is not None:
            stamped.append((sidecar_path(p).stat().st_mtime_ns, run))
    return max(stamped)[1] if stamped else None


def runs_in(ckpt_dir: str | Path) -> dict[str | None, int]:
    """{run id (None: unknown): its newest step} of the checkpoint files in ``ckpt_dir``."""
    out: dict[str | None, int] = {}
    for p in list_checkpoints(ckpt_dir):
        out.setdefault(checkpoint_run(p), int(_NAME.match(p.name).group(1)))
    return out


def remove_other_runs(ckpt_dir: str | Path, run_id: str) -> list[Path]:
    """Delete the checkpoints (and sidecars) of every run but ``run_id`` (a new run supersedes them)."""
    removed = [p for p in list_checkpoints(ckpt_dir) if checkpoint_run(p) != run_id]
    for p in removed:
        p.unlink(missing_ok=True)
        sidecar_path(p).unlink(missing_ok=True)
    return removed


def remove_stale_temps(ckpt_dir: str | Path) -> list[Path]:
    """Delete temp files left by a process killed while writing (only the writer calls this).

    Only names this project creates here (``_STALE``): the hidden ``.<name>.tmp.<id>`` files and folders of
    ``hamt.io`` (checkpoints, sidecars, an unfinished ``final/`` export) and the ``.final.old.<id>`` folder a
    replaced export leaves. Nothing else in the folder is touched, and nothing below it.
    """
    d = Path(ckpt_dir)
    stale = [p for p in d.iterdir() if _STALE.match(p.name)] if d.is_dir() else []
    for p in stale:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)  # an unfinished final/ export
        else:
            p.unlink(missing_ok=True)
    return stale


# ---------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------


class _HashingWriter:
    """File-like wrapper that hashes the bytes torch.save streams through it; runs a test hook."""

    def __init__(self, f, hook: Callable[[int], None] | None = None):
        self.f = f
        self.sha = hashlib.sha256()
        self.nbytes = 0
        self.hook = hook

    def write(self, data) -> int:
        n = self.f.write(data)
        self.sha.update(data)
        self.nbytes += len(data)
        if self.hook is not None:
            self.f.flush()  # the bytes so far are on disk when a test kills the process in the hook
            self.hook(self.nbytes)  # may sleep (kill tests) or raise OSError (disk-full tests)
        return n

    def flush(self) -> None:
        self.f.flush()


def save_checkpoint(
    state: dict, ckpt_dir: str | Path, step: int, keep: int = 3, write_hook: Callable[[int], None] | None = None,
    run: dict | None = None,
) -> Path:
    """Write ``state`` as ``<ckpt_dir>/step_<step>.pt`` atomically with its checksum; keep the newest ``keep``.

    ``run`` ({"run_id", "config_hash"}) is stored in the state and the run id in the sidecar; pruning then
    keeps to that run's checkpoints. On a failed write (disk full, permissions, torch's zip writer) the
    temp file is removed, the previous checkpoints are untouched, and ``CheckpointError`` says what
    happened, where, and how much space is free, in one line.
    """
    import torch

    d = Path(ckpt_dir)
    d.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(d, step)
    tmp = temp_path(final)  # ".step_<N>.pt.tmp.<id>": what remove_stale_temps deletes after a kill
    state = {"format": FORMAT, "step": step, "saved_at": time.time(), **state}
    if run is not None:
        state["run"] = dict(run)
    run_line = f"{_RUN_LINE}{run['run_id']} config {run.get('config_hash', '?')}\n" if run else ""
    try:
        with open(tmp, "wb") as f:
            w = _HashingWriter(f, write_hook)
            torch.save(state, w)
            f.flush()
            os.fsync(f.fileno())
        digest = w.sha.hexdigest()
        # The sidecar goes first: a checkpoint file only replaces the old one once its checksum is on
        # disk, and a sidecar whose file is missing or different just marks that step as invalid.
        write_bytes_atomic(sidecar_path(final), f"{digest}  {final.name}\n{run_line}".encode())
        os.replace(tmp, final)
        fsync_dir(d)
    except (OSError, RuntimeError) as e:  # torch's zip writer reports a full disk as RuntimeError "unexpected pos"
        tmp.unlink(missing_ok=True)
        prev = next((p for p in list_checkpoints(d, run and run["run_id"]) if p != final), None)
        kept = f"the previous checkpoint {prev.name} is intact" if prev else "no earlier checkpoint exists"
        raise CheckpointError(
            f"could not write checkpoint {final} ({write_failure(e)}; {free_space(d)}); {kept}; "
            "free disk space or set train.out_dir") from e
    prune_checkpoints(d, keep, run and run["run_id"])
    return final


def prune_checkpoints(ckpt_dir: str | Path, keep: int, run_id: str | None = None) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints (and their sidecars) of run ``run_id`` (None: of any run)."""
    removed = list_checkpoints(ckpt_dir, run_id)[max(1, keep):]
    for p in removed:
        p.unlink(missing_ok=True)
        sidecar_path(p).unlink(missing_ok=True)
    return removed


# ---------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------


def verify(path: str | Path) -> str | None:
    """None when ``path`` matches its sidecar checksum, else the reason it does not."""
    path = Path(path)
    side = sidecar_path(path)
    if not path.is_file():
        return "file missing"
    if not side.is_file():
        return f"checksum file {side.name} missing (write interrupted?)"
    try:
        expected = side.read_text(encoding="utf-8").split()[0]
    except (OSError, IndexError, UnicodeDecodeError):
        return f"checksum file {side.name} unreadable"
    actual = file_sha256(path)
    if actual != expected:
        return f"sha256 mismatch (expected {expected[:12]}…, file has {actual[:12]}…; truncated or corrupt)"
    return None


def load_checkpoint(path: str | Path, map_location: Any = "cpu", check: bool = True) -> dict:
    """Load and verify one checkpoint file; ``CheckpointError`` if it is corrupt or not a checkpoint."""
    import torch

    path = Path(path)
    if check:
        problem = verify(path)
        if problem is not None:
            raise CheckpointError(f"checkpoint {path} is not usable: {problem}")
    try:
        # weights_only: the state holds only tensors and plain Python values (see capture_rng_state).
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is not a HAMT training checkpoint ({first})") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a HAMT training checkpoint (no '{FORMAT}' marker)")
    return state


def load_latest(
    ckpt_dir: str | Path, map_location: Any = "cpu", expected_model: dict | None = None, run_id: str | None = None
) -> tuple[dict | None, Path | None]:
    """The newest checkpoint of run ``run_id`` in ``ckpt_dir`` that verifies, or (None, None) when there is none.

    ``run_id`` None: the run that wrote last (``latest_run``; any checkpoint when none records a run).
    Corrupt/truncated/unfinished newer files are skipped with a warning naming them. If files exist
    but none verifies, ``CheckpointError``. ``expected_model`` (see ``model_identity``) is compared
    with the checkpoint's model and a mismatch raises ``CheckpointError``.
    """
    candidates = list_checkpoints(ckpt_dir, run_id or latest_run(ckpt_dir))
    if not candidates:
        return None, None
    problems = []
    for path in candidates:
        try:
            state = load_checkpoint(path, map_location)
        except CheckpointError as e:
            problems.append(str(e))
            warnings.warn(f"{e}; trying the previous checkpoint", stacklevel=2)
            continue
        if expected_model is not None:
            check_model(state, expected_model, path)
        return state, path
    raise CheckpointError(
        f"no usable checkpoint in {ckpt_dir} ({len(problems)} found, all corrupt or unfinished: {problems[0]}); "
        "start over with hamt train --force-new"
    )


# ---------------------------------------------------------------------------------------------------
# Model identity
# ---------------------------------------------------------------------------------------------------


def model_identity(config: Any) -> dict:
    """The parts of a model config that define its weights (class, shapes, behaviour), as plain values."""
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    out = {k: v for k, v in d.items() if k not in _VOLATILE_CONFIG_KEYS and not k.startswith("_")}
    return _plain(out)


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


def check_model(state: dict, expected: dict, path: str | Path = "checkpoint") -> None:
    saved = state.get("model_identity")
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path} records no model configuration; it cannot be resumed safely")
    diff = sorted(k for k in set(saved) | set(expected) if saved.get(k) != expected.get(k))
    if diff:
        k = diff[0]
        raise CheckpointError(
            f"{path} is for a different model ({k}: checkpoint {saved.get(k)!r}, now {expected.get(k)!r}"
            f"{f' and {len(diff) - 1} more' if len(diff) > 1 else ''}); use another train.out_dir or --name"
        )


# ---------------------------------------------------------------------------------------------------
# RNG state (as plain values, so that torch.load(weights_only=True) can read it back)
# ---------------------------------------------------------------------------------------------------


def capture_rng_state() -> dict:
    import numpy as np
    import torch

    version, mt, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    out = {
        "python": [version, list(mt), gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return out


def restore_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, g = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, g))
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
