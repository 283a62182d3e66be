"""Seed-to-seed spread: the rows of a model's ``-seed<N>`` runs folded into the row of the model.

``compare.trained`` may hold, beside ``llama-scratch``, the same model trained with other seeds
(``llama-scratch-seed2``, ...; ``hamt.zoo.split_seed``). Every run is evaluated as its own row; then
the model's row gets, over its evaluated runs (its own, with ``train.seed``, and each ``-seed<N>``):

    seeds      the seeds evaluated, in that order
    bpb_mean   mean bits per byte
    bpb_std    sample standard deviation (n - 1), None with one run

and each ``-seed<N>`` row ``seed_of`` = the model's name, so tables show one line per model and the
summary (``hamt.report.summary``) calls a difference only beyond the spread. A run that is not
evaluated (stale, not trained) is listed in ``seeds_missing``, never averaged.
"""

from __future__ import annotations

import statistics

from hamt.zoo import split_seed


def aggregate_seeds(rows: list[dict], base_seed: int) -> list[dict]:
    """The rows with seed statistics added (in place, and returned); rows keep their order."""
    runs: dict[str, list[tuple[int, dict]]] = {}
    for r in rows:
        base, seed = split_seed(r["name"])
        if seed is not None:
            r["seed_of"] = base
        runs.setdefault(base, []).append((base_seed if seed is None else seed, r))
    for r in rows:
        group = runs.get(r["name"], [])
        if "seed_of" in r or len(group) < 2:
            continue
        ok = [(s, x) for s, x in group if x.get("status") == "ok" and isinstance(x.get("bpb"), (int, float))]
        evaluated = {x["name"] for _, x in ok}
        r["seeds"] = [s for s, _ in ok]
        r["seeds_missing"] = [x["name"] for _, x in group if x["name"] not in evaluated]
        bpbs = [float(x["bpb"]) for _, x in ok]
        r["bpb_mean"] = statistics.fmean(bpbs) if bpbs else None
        r["bpb_std"] = statistics.stdev(bpbs) if len(bpbs) >= 2 else None
    return rows
