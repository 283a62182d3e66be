"""dvc.yaml: its structure matches the stages' code and params.yaml, and ``dvc repro`` reproduces.

The end-to-end test runs in a temporary copy of the repository (git init; ``.dvc/config`` as committed,
as on a fresh clone) on the ``micro`` profile and a corpus made here: every stage runs, a second
``dvc repro`` does nothing, a changed ``train.lr`` marks exactly the stages that read ``train``,
``dvc exp run -S compare.eval_stride=...`` re-runs compare and report only, and ``dvc metrics show`` /
``dvc plots show --json`` read the results.
``make_repo`` is shared with tests/test_flow.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, make_corpus

BIN = Path(sys.executable).parent
DVC = shutil.which("dvc", path=str(BIN)) or shutil.which("dvc")
GIT = shutil.which("git")
STAGES = ["download", "tokenize", "validate", "train", "compare", "report"]


def dvc_yaml() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())


def _paths(entries) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries or []]


# --------------------------------------------------------------------------------------------------
# Structure (fast)
# --------------------------------------------------------------------------------------------------


def test_stage_deps_exist_and_outputs_do_not_overlap():
    stages = dvc_yaml()["stages"]
    assert list(stages) == STAGES
    outs = {}
    for name, st in stages.items():
        for dep in st["deps"]:
            produced = any(dep == o or dep.startswith(o + "/") for o in outs)
            assert produced or (ROOT / dep).exists(), f"{name}: dependency {dep} neither exists nor is an output"
        for o in _paths(st.get("outs")) + _paths(st.get("metrics")) + _paths(st.get("plots")):
            clash = [p for p in outs if p == o or p.startswith(o + "/") or o.startswith(p + "/")]
            assert not clash, f"{name}: output {o} overlaps {clash} of stage {outs[clash[0]]}"
            outs[o] = name


def test_stage_params_exist_for_every_profile():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for profile in raw["profiles"]:
        for name, st in dvc_yaml()["stages"].items():
            for key in st["params"]:
                node = raw
                for part in key.replace("${profile}", profile).split("."):
                    assert isinstance(node, dict) and part in node, f"{name}: params.yaml has no {key} ({profile})"
                    node = node[part]


def test_metrics_and_plots_point_at_stage_outputs():
    spec = dvc_yaml()
    uncached = {p for st in spec["stages"].values() for e in (st.get("outs") or []) + (st.get("metrics") or [])
                if isinstance(e, dict) for p, o in e.items() if o.get("cache") is False}
    assert _paths(spec["stages"]["report"]["metrics"]) == ["results/metrics.json"]
    for plot in spec["plots"]:
        name, props = next(iter(plot.items()))
        files = list(props["y"]) if isinstance(props.get("y"), dict) else [name]
        for f in files:
            assert f in uncached, f"plot {name}: {f} is not an uncached stage output (git keeps those)"


def test_compare_outputs_are_the_baselines_it_trains_in_every_profile():
    """DVC must own (and so clear before re-running) every model `hamt compare` trains, or it reuses stale ones."""
    from hamt.zoo import kind_of
    from hamt.params import load_params, profile_names

    outs = _paths(dvc_yaml()["stages"]["compare"]["outs"])
    declared = {o.split("/", 1)[1] for o in outs if o.startswith("checkpoints/")}
    for profile in profile_names(ROOT / "params.yaml"):
        params = load_params(ROOT / "params.yaml", profile, validate_model=False)
        trained = {b for b in params.compare.baselines if kind_of(b) == "scratch"}
        assert trained == declared, f"profile {profile}: compare trains {sorted(trained)}, dvc.yaml owns {sorted(declared)}"
        for name in trained:
            assert f"results/train/{name}/metrics.json" in outs


def test_dvc_config_has_a_default_local_remote():
    text = (ROOT / ".dvc" / "config").read_text()
    assert "remote = local" in text and "url = " in text
    assert (ROOT / ".dvcignore").is_file()


# --------------------------------------------------------------------------------------------------
# A repository copy on the micro profile (shared with test_flow.py)
# --------------------------------------------------------------------------------------------------


def fast_micro(params: dict, corpus: Path) -> dict:
    """params.yaml for tests: the micro profile on a local corpus, probes off (seconds, not minutes)."""
    params["profile"] = "micro"
    params["data"].update(source="local", local_path=str(corpus))
    micro = params["profiles"]["micro"]
    micro["validate"]["recall_steps"] = 0
    # the two scratch baselines are DVC outputs; gpt2 must come back as a skipped row with its reason
    micro["compare"].update(baselines=["gpt2-scratch", "gpt2-scratch-2x", "gpt2"], recall_train_steps=0,
                            speed_seq_lens=[])
    return params


def git(repo: Path, *args: str) -> str:
    out = subprocess.run([GIT, "-c", "user.email=tests@hamt", "-c", "user.name=hamt tests", *args], cwd=repo,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def make_repo(dest: Path, with_flows: bool = False) -> Path:
    """A fresh-clone-like copy: hamt/ (DVC hashes it), params.yaml (fast micro), dvc.yaml, .dvc/, git."""
    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "hamt", dest / "hamt", ignore=ignore)
    if with_flows:
        shutil.copytree(ROOT / "flows", dest / "flows", ignore=ignore)
    for f in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy2(ROOT / f, dest / f)
    (dest / ".dvc").mkdir()
    shutil.copy2(ROOT / ".dvc" / "config", dest / ".dvc" / "config")
    (dest / ".dvc" / ".gitignore").write_text("/config.local\n/tmp\n/cache\n")
    corpus = dest.parent / f"{dest.name}-corpus.txt"
    corpus.write_text(make_corpus(), encoding="utf-8")
    params = fast_micro(yaml.safe_load((ROOT / "params.yaml").read_text()), corpus)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(dest, "init", "-q")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "fresh clone")
    return dest


def tool_env(tmp: Path) -> dict:
    """The environment of a command run in a repository copy (venv on PATH, offline, quiet, isolated)."""
    env = dict(os.environ)
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", DVC_NO_ANALYTICS="1", WANDB_MODE="disabled",
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
               HAMT_NPROC_PER_NODE="1", USERNAME="hamt-tests", METAFLOW_USER="hamt-tests",
               METAFLOW_DATASTORE_SYSROOT_LOCAL=str(tmp / "metaflow"), METAFLOW_HOME=str(tmp / "metaflow-home"),
               METAFLOW_DEFAULT_METADATA="local", METAFLOW_DEFAULT_DATASTORE="local",
               DVC_GLOBAL_CONFIG_DIR=str(tmp / "dvc-global"), DVC_SYSTEM_CONFIG_DIR=str(tmp / "dvc-system"),
               DVC_SITE_CACHE_DIR=str(tmp / "dvc-site"),
               GIT_CONFIG_NOSYSTEM="1")
    # Cards go to <repo>/.metaflow (METAFLOW_CARD_LOCALROOT is broken in Metaflow 2.19.39: cards are not written).
    for var in ("HAMT_DATA_DIR", "HAMT_FAULTS", "HAMT_PRIMARY_FAULTS", "HAMT_WORKDIR", "METAFLOW_CARD_LOCALROOT",
                "METAFLOW_PROFILE", "METAFLOW_SERVICE_URL"):
        env.pop(var, None)
    return env


def dvc(repo: Path, *args: str, env: dict, check: bool = True) -> str:
    out = subprocess.run([DVC, *args], cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    if check:
        assert out.returncode == 0, f"dvc {' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout + out.stderr


def ran(output: str) -> list[str]:
    return [s for s in STAGES if f"Running stage '{s}'" in output]


needs_tools = pytest.mark.skipif(DVC is None or GIT is None, reason="dvc and git are needed (pip install dvc; git)")


# --------------------------------------------------------------------------------------------------
# End to end (slow)
# --------------------------------------------------------------------------------------------------


@needs_tools
@pytest.mark.slow
def test_dvc_repro_noop_and_param_changes(tmp_path):
    repo = make_repo(tmp_path / "repo")
    env = tool_env(tmp_path)

    first = dvc(repo, "repro", env=env)
    assert ran(first) == STAGES
    for f in ("data/raw/manifest.json", "data/tokens/meta.json", "checkpoints/hamt/final/config.json",
              "results/compare/results.json", "results/report.html", "results/metrics.json"):
        assert (repo / f).is_file(), f
    assert ran(dvc(repo, "repro", env=env)) == []  # nothing changed: nothing runs
    assert json.loads(dvc(repo, "status", "--json", env=env)) == {}

    # Metrics and plots (offline: --json gives the data without the CDN-loaded Vega page)
    metrics = json.loads(dvc(repo, "metrics", "show", "--json", env=env))
    data = next(iter(metrics.values()))["data"]["results/metrics.json"]["data"]  # one revision: the workspace
    assert data["models"]["hamt"]["ppl"] > 1 and data["validate_passed"] is True
    plots = json.loads(dvc(repo, "plots", "show", "--json", env=env))["data"]
    loss = plots["training_loss"][0]["content"]["data"]["values"]
    assert {r["step"] for r in loss} >= {"5", "20"}

    # A train parameter: the stages that read the train section see it (their dependents follow them)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "first reproduction")
    text = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(text.replace("  lr: 0.003\n", "  lr: 0.002\n", 1))
    status = json.loads(dvc(repo, "status", "--json", env=env))
    assert set(status) == {"validate", "train", "compare"}, status
    assert all(v == [{"changed deps": {"params.yaml": {"train": "modified"}}}] for v in status.values()), status
    (repo / "params.yaml").write_text(text)

    # An experiment on a compare parameter re-runs compare and its dependent report only.
    out = dvc(repo, "exp", "run", "-S", "compare.eval_stride=8", env=env)
    assert ran(out) == ["compare", "report"]
    assert "Stage 'train' didn't change" in out and "Stage 'download' didn't change" in out
    assert yaml.safe_load((repo / "params.yaml").read_text())["compare"]["eval_stride"] == 8
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert lock["stages"]["compare"]["params"]["params.yaml"]["compare"]["eval_stride"] == 8
    assert json.loads(dvc(repo, "status", "--json", env=env)) == {}
