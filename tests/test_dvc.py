"""dvc.yaml: its structure matches the stages' code and params.yaml, and ``dvc repro`` reproduces.

Structure: every stage depends on the hamt modules it imports (directly or not), the train stage's
``foreach`` is ``hamt.zoo.training_plan`` in every profile, the plots and the report cover every trained
model. The end-to-end test runs in a temporary copy of the repository (git init; ``.dvc/config`` as
committed, as on a fresh clone) on the ``micro`` profile and a corpus made here: every stage runs, a second
``dvc repro`` does nothing, a changed ``train.lr`` makes every trained model's checkpoint stale for ``hamt
compare`` and ``dvc status`` names exactly the stages that read ``train``, an experiment that adds an
ablation (``dvc exp run -S compare.trained=[...]``) trains that model alone (the other checkpoints
untouched) and re-runs compare and report, and ``dvc metrics show`` / ``dvc plots show --json`` read the
results.
``make_repo`` is shared with tests/test_flow.py.
"""

from __future__ import annotations

import ast
import json
import os
import re
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
# What no stage depends on: the package marker (a version string) and the CLI's dispatcher.
NOT_A_DEPENDENCY = {"hamt/__init__.py", "hamt/cli.py"}


def dvc_yaml(root: Path = ROOT) -> dict:
    return yaml.safe_load((root / "dvc.yaml").read_text())


def raw_params(root: Path = ROOT) -> dict:
    return yaml.safe_load((root / "params.yaml").read_text())


def _paths(entries) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries or []]


def foreach_list(stage: dict, params: dict) -> list:
    """A stage's ``foreach: ${a.b}`` as DVC resolves it: the key's value in params.yaml (never a profile's)."""
    m = re.fullmatch(r"\$\{([\w.]+)\}", str(stage["foreach"]).strip())
    assert m, f"foreach must name one params.yaml key, got {stage['foreach']!r}"
    node = params
    for part in m.group(1).split("."):
        node = node[part]
    return list(node)


def expanded_stages(root: Path = ROOT) -> dict[str, dict]:
    """Every stage instance, as DVC names them (``train@hamt``), with ``${item}`` substituted."""
    out = {}
    for name, st in dvc_yaml(root)["stages"].items():
        if "foreach" not in st:
            out[name] = st
            continue
        for item in foreach_list(st, raw_params(root)):
            text = yaml.safe_dump(st["do"]).replace("${item}", str(item))
            out[f"{name}@{item}"] = yaml.safe_load(text)
    return out


# --------------------------------------------------------------------------------------------------
# Structure (fast)
# --------------------------------------------------------------------------------------------------


def test_stage_deps_exist_and_outputs_do_not_overlap():
    assert list(dvc_yaml()["stages"]) == STAGES
    outs = {}
    for name, st in expanded_stages().items():
        for dep in st["deps"]:
            produced = any(dep == o or dep.startswith(o + "/") or o.startswith(dep + "/") for o in outs)
            assert produced or (ROOT / dep).exists(), f"{name}: dependency {dep} neither exists nor is an output"
        for o in _paths(st.get("outs")) + _paths(st.get("metrics")) + _paths(st.get("plots")):
            clash = [p for p in outs if p == o or p.startswith(o + "/") or o.startswith(p + "/")]
            assert not clash, f"{name}: output {o} overlaps {clash} of stage {outs[clash[0]]}"
            outs[o] = name


def _module_file(module: str) -> Path | None:
    path = ROOT / Path(*module.split("."))
    for f in (path / "__init__.py", path.with_suffix(".py")):
        if f.is_file():
            return f
    return None


def _hamt_imports(module: str) -> set[str]:
    """The hamt modules ``module`` imports anywhere in its file (lazy imports inside functions included)."""
    f = _module_file(module)
    package = module if f.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names |= {base} | {f"{base}.{a.name}" for a in node.names}  # `from pkg import submodule` too
    found = set()
    for name in names:
        parts = name.split(".")
        if parts[0] == "hamt":
            found |= {".".join(parts[:i]) for i in range(2, len(parts) + 1) if _module_file(".".join(parts[:i]))}
    return found


def imported_files(module: str) -> set[str]:
    """Files of every hamt module ``module`` reaches through imports, itself included (packages: each file)."""
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += sorted(_hamt_imports(m))
    return {_module_file(m).relative_to(ROOT).as_posix() for m in seen}


def test_stages_depend_on_every_module_they_import():
    """A code change re-runs the stages whose command can run that code, and (for the listed modules) only those."""
    from hamt.cli import COMMANDS

    for name, st in expanded_stages().items():
        command = re.match(r"hamt (\w+)", st["cmd"]).group(1)
        deps = [d for d in st["deps"] if d.startswith("hamt/") or d == "hamt"]
        assert "hamt" not in deps, f"{name}: depend on the modules it imports, not the whole package"
        needed = imported_files(COMMANDS[command][0]) - NOT_A_DEPENDENCY
        missing = sorted(f for f in needed if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps))
        assert not missing, f"{name} (hamt {command}) imports {missing} but does not depend on them"
        unused = sorted(d for d in deps if not any(f == d or f.startswith(d.rstrip("/") + "/") for f in needed))
        assert not unused, f"{name}: depends on {unused}, which `hamt {command}` never imports"


def test_stage_params_exist_for_every_profile():
    raw = raw_params()
    for profile in raw["profiles"]:
        for name, st in expanded_stages().items():
            for key in st["params"]:
                node = raw
                for part in key.replace("${profile}", profile).split("."):
                    assert isinstance(node, dict) and part in node, f"{name}: params.yaml has no {key} ({profile})"
                    node = node[part]


def test_train_foreach_is_the_training_plan_in_every_profile():
    """DVC trains exactly the models every profile's comparison needs: one list, hamt.zoo.training_plan."""
    from hamt.params import load_params, profile_names
    from hamt.zoo import pipeline_models, training_plan

    spec = dvc_yaml()["stages"]["train"]
    assert spec["do"]["cmd"] == "hamt train --model ${item} --skip-unplanned"  # outside a profile's plan: a record
    models = foreach_list(spec, raw_params())
    for profile in profile_names(ROOT / "params.yaml"):
        params = load_params(ROOT / "params.yaml", profile, validate_model=False)
        assert models == pipeline_models(params), f"profile {profile}: dvc.yaml trains {models}"
        assert set(training_plan(params)) <= set(models), f"profile {profile}: plans a model DVC does not train"
    stages = expanded_stages()
    for m in models:
        outs = _paths(stages[f"train@{m}"]["outs"])
        assert outs == [f"checkpoints/{m}"] + [f"results/train/{m}/{f}" for f in ("train.log", "log.csv", "metrics.json")]
    # compare and report read every one of them (as folders: the list follows compare.trained)
    assert {"checkpoints", "results/train"} <= set(stages["compare"]["deps"])
    assert "results/train" in stages["report"]["deps"]
    assert not [o for o in _paths(stages["compare"]["outs"]) if not o.startswith("results/compare/")]  # it trains nothing


def test_a_profile_cannot_change_the_trained_models():
    from hamt.errors import ConfigError
    from hamt.params import resolve

    raw = raw_params()
    raw["profiles"]["micro"].setdefault("compare", {})["trained"] = ["hamt"]
    with pytest.raises(ConfigError, match=r"profiles.micro.compare.trained: a profile cannot change the trained models"):
        resolve(raw, "tiny")  # refused whichever profile is active: `dvc exp run -S profile=micro` could run it
    raw["profiles"]["micro"]["compare"]["trained"] = list(raw["compare"]["trained"])
    assert resolve(raw, "micro").compare.trained == raw["compare"]["trained"]  # repeating the base list is fine


def test_metrics_and_plots_point_at_stage_outputs():
    spec = dvc_yaml()
    uncached = {p for st in expanded_stages().values() for e in (st.get("outs") or []) + (st.get("metrics") or [])
                if isinstance(e, dict) for p, o in e.items() if o.get("cache") is False}
    assert _paths(spec["stages"]["report"]["metrics"]) == ["results/metrics.json"]
    for plot in spec["plots"]:
        name, props = next(iter(plot.items()))
        files = list(props["y"]) if isinstance(props.get("y"), dict) else [name]
        for f in files:
            assert f in uncached, f"plot {name}: {f} is not an uncached stage output (git keeps those)"


def test_training_plots_cover_every_trained_model():
    from hamt.params import load_params
    from hamt.zoo import pipeline_models

    plan = pipeline_models(load_params(ROOT / "params.yaml", validate_model=False))
    for plot in dvc_yaml()["plots"]:
        name, props = next(iter(plot.items()))
        files = list(props["y"]) if isinstance(props.get("y"), dict) else []
        if any(f.startswith("results/train/") for f in files):
            assert files == [f"results/train/{m}/log.csv" for m in plan], f"plot {name}: {files}"


def test_dvc_config_has_a_default_local_remote():
    text = (ROOT / ".dvc" / "config").read_text()
    assert "remote = local" in text and "url = " in text
    assert (ROOT / ".dvcignore").is_file()


# --------------------------------------------------------------------------------------------------
# A repository copy on the micro profile (shared with test_flow.py)
# --------------------------------------------------------------------------------------------------


# The models trained in a repository copy: HAMT and one scratch baseline (seconds each on micro); the DVC
# test adds an ablation by experiment.
FAST_TRAINED = ["hamt", "gpt2-scratch"]


def fast_micro(params: dict, corpus: Path) -> dict:
    """params.yaml for tests: the micro profile on a local corpus, probes off (seconds, not minutes)."""
    params["profile"] = "micro"
    params["data"].update(source="local", local_path=str(corpus))
    # the trained set is the base list (no profile may change it); gpt2 must come back as a skipped row with its reason
    params["compare"].update(trained=list(FAST_TRAINED), baselines=["gpt2"])
    micro = params["profiles"]["micro"]
    micro["validate"]["recall_steps"] = 0
    micro["compare"].update(recall_train_steps=0, speed_seq_lens=[])
    return params


def fit_plots(spec: dict, models: list[str]) -> dict:
    """dvc.yaml's training plots for the copy's (smaller) list of trained models."""
    for plot in spec["plots"]:
        props = next(iter(plot.values()))
        if isinstance(props.get("y"), dict) and any(f.startswith("results/train/") for f in props["y"]):
            field = next(iter(props["y"].values()))
            props["y"] = {f"results/train/{m}/log.csv": field for m in models}
    return spec


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
    for f in (".dvcignore", ".gitignore"):
        shutil.copy2(ROOT / f, dest / f)
    (dest / "dvc.yaml").write_text(yaml.safe_dump(fit_plots(dvc_yaml(), FAST_TRAINED), sort_keys=False))
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
    """The stage instances a dvc command ran, in order (``train@hamt``, ``compare``, ...)."""
    return re.findall(r"Running stage '([^']+)'", output)


def hamt_cli(repo: Path, *args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "hamt"), *args], cwd=repo, env=env, capture_output=True, text=True, timeout=600)


def fingerprints(repo: Path, models: list[str]) -> dict:
    """sha256 and mtime of every file of each model's checkpoint and results folders."""
    from hamt.io import file_sha256

    out = {}
    for m in models:
        for d in (repo / "checkpoints" / m, repo / "results/train" / m):
            for f in sorted(p for p in d.rglob("*") if p.is_file()):
                out[f.relative_to(repo).as_posix()] = (file_sha256(f), f.stat().st_mtime_ns)
    return out


needs_tools = pytest.mark.skipif(DVC is None or GIT is None, reason="dvc and git are needed (pip install dvc; git)")


# --------------------------------------------------------------------------------------------------
# End to end (slow)
# --------------------------------------------------------------------------------------------------


@needs_tools
@pytest.mark.slow
def test_dvc_repro_noop_and_param_changes(tmp_path):
    repo = make_repo(tmp_path / "repo")
    env = tool_env(tmp_path)
    trains = [f"train@{m}" for m in FAST_TRAINED]

    first = dvc(repo, "repro", env=env)
    assert sorted(ran(first)) == sorted(["download", "tokenize", "validate", *trains, "compare", "report"])
    for f in ("data/raw/manifest.json", "data/tokens/meta.json", "results/compare/results.json", "results/report.html",
              "results/metrics.json", *(f"checkpoints/{m}/final/config.json" for m in FAST_TRAINED)):
        assert (repo / f).is_file(), f
    assert ran(dvc(repo, "repro", env=env)) == []  # nothing changed: nothing runs
    assert json.loads(dvc(repo, "status", "--json", env=env)) == {}
    rows = {r["name"]: r for r in json.loads((repo / "results/compare/results.json").read_text())["rows"]}
    assert list(rows) == ["hamt", "gpt2-scratch", "gpt2"]
    assert all(rows[m]["status"] == "ok" for m in FAST_TRAINED), {m: rows[m]["reason"] for m in FAST_TRAINED}

    # Metrics and plots (offline: --json gives the data without the CDN-loaded Vega page)
    metrics = json.loads(dvc(repo, "metrics", "show", "--json", env=env))
    data = next(iter(metrics.values()))["data"]["results/metrics.json"]["data"]  # one revision: the workspace
    assert data["models"]["hamt"]["ppl"] > 1 and data["validate_passed"] is True
    plots = json.loads(dvc(repo, "plots", "show", "--json", env=env))
    assert not plots.get("errors"), plots["errors"]
    loss = plots["data"]["training_loss"][0]["content"]["data"]["values"]
    assert {r["step"] for r in loss} >= {"5", "20"}
    assert {r["filename"].split("/")[0] for r in loss} == set(FAST_TRAINED)  # every trained model's series
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "first reproduction")

    # A train parameter: every trained model is stale now; compare refuses them until they are retrained
    # (`dvc repro` would retrain exactly the stages dvc status lists: the experiment below runs that path).
    text = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(text.replace("  lr: 0.003\n", "  lr: 0.002\n", 1))
    status = json.loads(dvc(repo, "status", "--json", env=env))
    assert set(status) == {"validate", *trains, "compare"}, status
    assert all(v == [{"changed deps": {"params.yaml": {"train": "modified"}}}] for v in status.values()), status
    out = hamt_cli(repo, "compare", env=env)
    assert out.returncode == 1 and "HAMT itself was not evaluated" in out.stderr
    rows = {r["name"]: r for r in json.loads((repo / "results/compare/results.json").read_text())["rows"]}
    for m in FAST_TRAINED:
        assert rows[m]["status"] == "stale" and "train.lr: 0.003 when trained, 0.002 now" in rows[m]["reason"], rows[m]
        assert rows[m]["ppl"] is None
    git(repo, "checkout", "params.yaml")  # back to the trained parameters: the checkpoints are current again
    assert set(json.loads(dvc(repo, "status", "--json", env=env))) <= {"compare", "report"}  # compare's results rewritten

    # An experiment that adds an ablation to compare.trained: that model alone is trained, the others are not
    # touched, and compare and report follow.
    before = fingerprints(repo, FAST_TRAINED)
    out = dvc(repo, "exp", "run", "-S", "compare.trained=[hamt,gpt2-scratch,ablation-slots-3]", env=env)
    assert ran(out) == ["train@ablation-slots-3", "compare", "report"]
    assert "Stage 'train@hamt' didn't change" in out and "Stage 'download' didn't change" in out
    assert fingerprints(repo, FAST_TRAINED) == before
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert lock["stages"]["compare"]["params"]["params.yaml"]["compare"]["trained"][-1] == "ablation-slots-3"
    assert "train@ablation-slots-3" in lock["stages"]
    rows = {r["name"]: r for r in json.loads((repo / "results/compare/results.json").read_text())["rows"]}
    assert list(rows) == ["hamt", "gpt2-scratch", "gpt2", "ablation-slots-3"]
    assert rows["ablation-slots-3"]["status"] == "ok" and rows["ablation-slots-3"]["hamt_switches"]["num_slots"] == 3
    assert rows["ablation-slots-3"]["checkpoint"].startswith("checkpoints/ablation-slots-3/")
    assert json.loads(dvc(repo, "status", "--json", env=env)) == {}
