"""Where the work runs: device resolution, DDP, autocast, out-of-memory detection, synchronisation.

One definition each, used by train, compare, validate, generate and bench. ``resolve_device`` is
strict: asking for CUDA on a machine without it is a ``ConfigError`` naming the setting, never a
silent fall back to the CPU (``auto`` is the way to say "whatever is here").
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from hamt.errors import ConfigError


@dataclass
class DistInfo:
    """Who this process is in a (possibly single-process) run. ``master`` logs and writes files."""

    ddp: bool = False
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def master(self) -> bool:
        return self.rank == 0


def resolve_device(spec: str = "auto", local_rank: int = 0, setting: str = "device") -> torch.device:
    """``auto | cpu | cuda | cuda:N`` -> torch.device; CUDA without one is a ConfigError naming ``setting``."""
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"{setting}: '{spec}' requested but this machine has no usable CUDA device "
                f"(torch {torch.__version__}); use cpu or auto"
            )
        try:
            idx = local_rank if spec == "cuda" else int(spec.split(":", 1)[1])
        except ValueError:
            raise ConfigError(f"{setting}: expected auto, cpu, cuda or cuda:N, got {spec!r}") from None
        if idx >= torch.cuda.device_count():
            raise ConfigError(f"{setting}: {spec} does not exist ({torch.cuda.device_count()} CUDA devices)")
        return torch.device(f"cuda:{idx}")
    raise ConfigError(f"{setting}: expected auto, cpu, cuda or cuda:N, got {spec!r}")


def init_distributed(device_spec: str, setting: str = "train.device") -> tuple[DistInfo, torch.device]:
    """One environment check (torchrun sets RANK), as in nanoGPT. Returns (DistInfo, device)."""
    import torch.distributed as dist

    if int(os.environ.get("RANK", -1)) == -1:
        return DistInfo(), resolve_device(device_spec, setting=setting)
    info = DistInfo(True, int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"]))
    device = resolve_device(device_spec, info.local_rank, setting=setting)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return info, device


def autocast_context(device: torch.device, precision: str):
    """fp32: no autocast; bf16 / fp16: ``torch.autocast`` on the device's type."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def is_oom(err: BaseException) -> bool:
    """An out-of-memory error from any device (CUDA's own type, or a RuntimeError saying so)."""
    return isinstance(err, torch.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and "out of memory" in str(err).lower()
    )


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU): call before reading a timer."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device | str, threads: bool = False) -> str:
    """A human name of the device (GPU model, or the CPU model from /proc/cpuinfo; ``threads`` adds torch's count)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if not name:
        import platform

        name = platform.processor() or platform.machine()
    return f"CPU: {name}" + (f" ({torch.get_num_threads()} threads)" if threads else "")
