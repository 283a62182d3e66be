"""Read every result file the report uses into one dict, and the few accessors the rest of the report shares.

    <train.results_dir>/<name>/{log.csv,metrics.json}   loss curves, throughput, tokens seen
    <compare.out_dir>/{results,recall,speed}.json       the comparison, MQAR probe, speed probe
    <validate.out_dir>/metrics.json                     the small-model sanity run
    <tokenizer.tokens_dir>/meta.json                    the tokenizer's identity
    <report.bench_dir>/*.json                           benchmarks, when present

A missing file is normal (that stage has not run) and leaves its entry empty. A file that exists but
cannot be read or parsed is never skipped silently: it goes to ``results["errors"]`` as
``{"path", "error"}`` and the report lists it.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from hamt.data import corpus_description, corpus_floor
from hamt.io import read_json
from hamt.zoo import is_not_trained


def _dataset_used(source: dict, configured: str) -> str:
    """The data the tokens came from: the hub's dataset name, "synthetic" for the generated corpus, else the
    configured name (a local folder is taken to be what data.dataset says, as before)."""
    if source.get("kind") == "synthetic":
        return "synthetic"
    return source.get("dataset") or configured


def collect(params) -> dict:
    """Every result file the report reads, in one dict (the input of the claims ledger and the plots)."""
    errors: list[dict] = []
    train_dir = Path(params.train.results_dir)
    train = {}
    if train_dir.is_dir():
        for d in sorted(p for p in train_dir.iterdir() if p.is_dir()):
            log, metrics = _read_csv(d / "log.csv", errors), _read_json(d / "metrics.json", errors, dict)
            if (log or metrics) and not is_not_trained(metrics):  # a profile's unplanned model: no run to show
                train[d.name] = {"log": log, "metrics": metrics or {}}
    cdir, bdir = Path(params.compare.out_dir), Path(params.report.bench_dir)
    bench = {p.stem: _read_json(p, errors, (dict, list)) for p in sorted(bdir.glob("*.json"))} if bdir.is_dir() else {}
    meta = _read_json(Path(params.tokenizer.tokens_dir) / "meta.json", errors, dict) or {}
    source = meta.get("raw_source") or {}
    return {
        "corpus": corpus_description(source) if source else params.data.dataset,
        "floor": corpus_floor(source, params.compare.eval_split) if source else None,
        "profile": params.profile,
        "model": dict(params.model),
        "dataset": _dataset_used(source, params.data.dataset),
        "tokenizer": (meta.get("tokenizer") or {}).get("kind"),
        "compare": _read_json(cdir / "results.json", errors, dict),
        "recall": _read_json(cdir / "recall.json", errors, dict),
        "speed": _read_json(cdir / "speed.json", errors, dict),
        "validate": _read_json(Path(params.validate.out_dir) / "metrics.json", errors, dict),
        "train": train,
        "bench": {k: v for k, v in bench.items() if v is not None},
        "presets": preset_parameter_counts(),
        "train_params": {"max_steps": params.train.max_steps, "batch_size": params.train.batch_size,
                         "seq_len": params.train.seq_len},
        "errors": errors,
    }


def preset_parameter_counts() -> dict:
    """Exact parameter counts of the seed's presets (built on the meta device: no memory, no weights)."""
    from hamt.config import HAMTConfig
    from hamt.model import count_parameters

    return {name: count_parameters(HAMTConfig.from_preset(name)) for name in ("33m", "50m", "100m", "200m")}


def _read_json(path: Path, errors: list[dict], kind: type | tuple[type, ...]) -> Any:
    """The parsed file, or None: missing is silent, unreadable / not JSON / not a ``kind`` is an error."""
    if not path.exists():
        return None
    try:
        data = read_json(path)
    except (OSError, ValueError) as e:  # ValueError covers JSONDecodeError and UnicodeDecodeError
        errors.append({"path": str(path), "error": f"{type(e).__name__}: {e}"})
        return None
    if not isinstance(data, kind):
        errors.append({"path": str(path), "error": f"expected a JSON {_kind_name(kind)}, found {type(data).__name__}"})
        return None
    return data


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {dict: "object", list: "array"}
    return " or ".join(names[k] for k in (kind if isinstance(kind, tuple) else (kind,)))


def _read_csv(path: Path, errors: list[dict]) -> list[dict]:
    """Rows with numbers parsed; [] when missing, [] and an error when unreadable."""
    if not path.exists():
        return []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return [{k: _num(v) for k, v in row.items()} for row in csv.DictReader(f)]
    except (OSError, ValueError, csv.Error) as e:
        errors.append({"path": str(path), "error": f"{type(e).__name__}: {e}"})
        return []


def _num(v: Any) -> Any:
    if v is None or v == "":
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return v
    return int(x) if x.is_integer() and "." not in str(v) and "e" not in str(v).lower() else x


# ---- accessors of the collected dict, shared by the ledger, the plots and the document -----------------------


# Model-section keys that do not change the architecture a preset names.
_NEUTRAL_MODEL_KEYS = {"preset", "vocab_size", "memory_mode", "chunk_size", "dropout"}


def rows_by_name(results: dict) -> dict[str, dict]:
    """The comparison's rows (``results.json``), keyed by model name."""
    comp = results.get("compare") or {}
    return {r["name"]: r for r in comp.get("rows", []) if isinstance(r, dict) and "name" in r}


def is_ok(row: dict | None) -> bool:
    return bool(row) and row.get("status") == "ok"


def env_of(results: dict) -> dict:
    """The comparison's environment: device, device name, library versions, time."""
    return (results.get("compare") or {}).get("env") or {}


def preset_of(results: dict) -> str | None:
    """The preset the evaluated model is, or ``"<preset>+overrides"`` when the profile changes its shape."""
    model = results.get("model") or {}
    name = model.get("preset")
    extra = sorted(set(model) - _NEUTRAL_MODEL_KEYS)
    return f"{name}+overrides" if (name and extra) else (name or "custom")


def bench_rows(results: dict, name: str) -> list[dict]:
    """Rows of ``results/bench/<name>.json`` (written by ``hamt bench``: a list of dicts), or []."""
    data = (results.get("bench") or {}).get(name)
    rows = data.get("rows") if isinstance(data, dict) else data
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []
