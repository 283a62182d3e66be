"""A model of ``compare.trained`` that the active profile does not train: its "not trained" record.

DVC runs one ``train@<name>`` instance for every name of ``compare.trained`` (its foreach cannot read a
profile), while a profile's ``compare.plan`` may train only some of them (``hamt.zoo.training_plan``: tiny
leaves out what only the study has time for). Such an instance runs ``hamt train --model NAME
--skip-unplanned`` and writes, instead of a model, the outputs DVC expects, saying why:

    <train.out_dir>/<name>/not_trained.json        {"model", "status": "not trained", "reason", "profile"}
    <train.results_dir>/<name>/metrics.json        the same record (compare and the report skip it)
    <train.results_dir>/<name>/log.csv             the header only (dvc plots: an empty series)
    <train.results_dir>/<name>/train.log           one line

Folders that already hold a run (a checkpoint or a metrics.json that is not such a record) are left as they
are: the record never replaces a trained model (DVC empties a stage's outputs before it runs anyway).
"""

from __future__ import annotations

import json
from pathlib import Path

from hamt.io import write_json_atomic, write_text_atomic
from hamt.zoo import NOT_TRAINED, is_not_trained


def _holds_a_run(ckpt: Path, results: Path) -> bool:
    if ckpt.is_dir() and any(p.name != "not_trained.json" for p in ckpt.iterdir()):
        return True
    m = results / "metrics.json"
    if not m.is_file():
        return False
    try:
        return not is_not_trained(json.loads(m.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return True  # unreadable: not ours to overwrite


def write_not_trained(params, name: str, reason: str) -> dict:
    """Write ``name``'s record (see the module docstring); returns it with ``written`` False when a run was kept."""
    from hamt.train.logs import LOG_COLUMNS

    ckpt, results = Path(params.train.out_dir) / name, Path(params.train.results_dir) / name
    record = {"model": name, "status": NOT_TRAINED, "reason": reason, "profile": params.profile}
    if _holds_a_run(ckpt, results):
        return {**record, "written": False}
    ckpt.mkdir(parents=True, exist_ok=True)
    results.mkdir(parents=True, exist_ok=True)
    write_json_atomic(ckpt / "not_trained.json", record)
    write_json_atomic(results / "metrics.json", record)
    write_text_atomic(results / "log.csv", ",".join(LOG_COLUMNS) + "\n")
    write_text_atomic(results / "train.log", f"{name}: {NOT_TRAINED}: {reason}\n")
    return {**record, "written": True}
