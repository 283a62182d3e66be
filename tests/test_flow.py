"""flows/hamt_flow.py end to end, the card server, and its agreement with DVC (its helpers: tests/test_orchestration.py).

The end-to-end tests run the flow in a temporary copy of the repository (git + DVC, as on a fresh
clone; ``make_repo`` from test_dvc.py) on the ``micro`` profile and a corpus made here, with the
Metaflow datastore and cards in temporary folders. One full run takes the primary branch and commits
its outputs to DVC; ``resume`` from ``train`` with the primary's training forced to fail
(HAMT_PRIMARY_FAULTS) takes the fallback branch; ``resume`` from ``validate_small`` with a failing
validation stops the flow with a clear message.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from test_dvc import DVC, FAST_TRAINED, GIT, dvc, make_repo, tool_env
from test_orchestration import raw_params

sys.path.insert(0, str(ROOT / "flows"))
import orchestration as orc  # noqa: E402
from hamt.io import dir_sha256  # noqa: E402

# The repository copy's place is fixed now: the Metaflow client of this process reads the datastore root
# when metaflow is first imported (inside the tests), and the flow keeps runs and cards in <repo>/.metaflow.
_REPO = Path(tempfile.mkdtemp(prefix="hamt-flow-tests-", dir=os.environ.get("TMPDIR"))) / "repo"
os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"] = str(_REPO)
os.environ["METAFLOW_HOME"] = str(_REPO.parent / "metaflow-home")  # no ~/.metaflowconfig (S3, a service...)
os.environ.update(METAFLOW_DEFAULT_METADATA="local", METAFLOW_DEFAULT_DATASTORE="local")
for _var in ("METAFLOW_CARD_LOCALROOT", "METAFLOW_PROFILE", "METAFLOW_SERVICE_URL"):
    os.environ.pop(_var, None)
os.environ.setdefault("USERNAME", "hamt-tests")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
NAN_FAULTS = "nan@1,nan@1,nan@1,nan@1"  # one NaN more than fallback.max_divergence_retries (3)


# --------------------------------------------------------------------------------------------------
# End to end (slow): one repository copy for the module
# --------------------------------------------------------------------------------------------------

needs_tools = pytest.mark.skipif(DVC is None or GIT is None, reason="dvc and git are needed (pip install dvc; git)")


def run_flow(repo: Path, *args: str, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "flows/hamt_flow.py", "--no-pylint", *args]
    out = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    if check:
        assert out.returncode == 0, f"{' '.join(args)} failed:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    return out


def card_text(html: str) -> str:
    """The JSON a Metaflow card embeds (base64 in ``__MF_DATA__[...] = "..."``), decoded: the card's content."""
    import base64
    import re

    blobs = re.findall(r'__MF_DATA__\["[^"]+"\] = "([A-Za-z0-9+/=]+)"', html)
    assert blobs, "no card data in the HTML"
    return "\n".join(base64.b64decode(b).decode("utf-8") for b in blobs)


def latest_run():
    from metaflow import Flow, namespace

    namespace(None)
    return Flow("HAMTFlow").latest_run


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    if DVC is None or GIT is None:
        pytest.skip("dvc and git are needed")
    repo = make_repo(_REPO, with_flows=True)
    env = tool_env(tmp_path_factory.mktemp("flow-env"))
    env.update(METAFLOW_DATASTORE_SYSROOT_LOCAL=str(_REPO), METAFLOW_HOME=os.environ["METAFLOW_HOME"])  # as here
    return repo, env


@pytest.fixture(scope="module")
def primary_run(workspace):
    repo, env = workspace
    run_flow(repo, "run", "--max-workers", "2", env=env)
    return latest_run()


@pytest.fixture(scope="module")
def fallback_run(workspace, primary_run):
    repo, env = workspace
    run_flow(repo, "resume", "--origin-run-id", primary_run.id, "--max-workers", "2", "train",
             env={**env, orc.FAULTS_ENV: NAN_FAULTS})
    run = latest_run()
    assert run.id != primary_run.id
    return run


@needs_tools
@pytest.mark.slow
def test_flow_run_records_artifacts(workspace, primary_run):
    repo, _ = workspace
    assert primary_run.successful
    d = primary_run["end"].task.data
    assert d.train_branch == "primary_ok" and "trained" in d.branch_reason
    assert d.resolved_params["profile"] == "micro" and d.resolved_params == d.trained_params
    manifest = json.loads((repo / "data/raw/manifest.json").read_text())
    assert d.data_sha256 == {s: v["sha256"] for s, v in manifest["splits"].items()}
    assert d.tokenizer_identity["kind"] == "bpe" and len(d.tokenizer_identity["sha256"]) == 64
    assert d.checkpoint_dir == "checkpoints/hamt/final"
    assert d.checkpoint_sha256 == dir_sha256(repo / "checkpoints/hamt/final")
    assert d.train_metrics["steps"] == 20 and d.train_metrics["val_loss"] > 0
    assert d.git["commit"] == subprocess.run([GIT, "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                                             text=True).stdout.strip()
    # the training fan-out is the plan (dvc.yaml's train foreach); compare evaluated what it trained
    assert d.training_names == FAST_TRAINED and set(d.training_results) == set(FAST_TRAINED)
    assert all(r["ok"] for r in d.training_results.values()), {n: r["reason"] for n, r in d.training_results.items()}
    assert d.training_results["gpt2-scratch"]["command"][-2:] == ["--model", "gpt2-scratch"]
    assert sorted(t.data.model_name for t in primary_run["train_model"]) == sorted(FAST_TRAINED)
    rows = {r["name"]: r for r in d.comparison_rows}
    assert list(rows) == ["hamt", "gpt2-scratch", "gpt2"]
    assert all(rows[n]["status"] == "ok" for n in FAST_TRAINED), {n: rows[n]["reason"] for n in FAST_TRAINED}
    assert rows["hamt"]["hamt_switches"]["num_slots"] == raw_params()["profiles"]["micro"]["model"]["num_slots"]
    assert "hamt_switches" not in rows["gpt2-scratch"]
    assert rows["gpt2"]["status"] == "skipped" and "tokenizer" in rows["gpt2"]["reason"]
    assert d.report_markdown.startswith("# ") and "<html" in d.report_html.lower()
    assert "primary_ok" in [s.id for s in primary_run] and "fallback" not in [s.id for s in primary_run]


@needs_tools
@pytest.mark.slow
def test_every_step_has_a_card(workspace, primary_run, monkeypatch):
    from metaflow.cards import get_cards

    monkeypatch.chdir(workspace[0])  # the card client looks for .metaflow from here
    steps = {s.id: s for s in primary_run}
    assert set(steps) >= {"start", "download", "tokenize", "validate_small", "train", "register_model", "train_model",
                          "train_join", "plan_compare", "compare", "compare_join", "report", "end"}
    for name, step in steps.items():
        if name == "primary_ok":
            continue  # a one-line step without a card
        for task in step:
            cards = get_cards(task)
            assert len(cards) == 1, f"{name}/{task.id} has {len(cards)} cards"
            assert "<html" in cards[0].get().lower() and card_text(cards[0].get())
    train_card = card_text(get_cards(steps["train"].task)[0].get())
    assert "primary: micro" in train_card and "loss curves" in train_card


@needs_tools
@pytest.mark.slow
def test_flow_outputs_are_what_dvc_records(workspace, primary_run):
    repo, env = workspace
    d = primary_run["end"].task.data
    assert d.dvc["status"] == "committed", d.dvc
    assert d.corpus.startswith("local text"), d.corpus  # the download step names the data it used
    assert json.loads(dvc(repo, "status", "--json", env=env)) == {}
    assert "Running stage" not in dvc(repo, "repro", env=env)
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"download", "tokenize", "validate", *(f"train@{m}" for m in FAST_TRAINED), "compare",
                                   "report"}


@needs_tools
@pytest.mark.slow
def test_forced_primary_failure_takes_the_fallback_branch(workspace, fallback_run, monkeypatch):
    from metaflow.cards import get_cards

    monkeypatch.chdir(workspace[0])  # the card client looks for .metaflow from here
    assert fallback_run.successful
    d = fallback_run["end"].task.data
    assert d.train_branch == "fallback"
    assert not d.primary_result["ok"] and "roll-backs" in d.primary_result["reason"]
    assert d.primary_result["faults"] == NAN_FAULTS and d.fallback_result["ok"]
    assert d.branch_reason.startswith("the primary profile micro failed: training failed: loss nan")
    assert d.trained_profile == "micro" and d.train_metrics["steps"] == 20
    names = [s.id for s in fallback_run]
    assert "fallback" in names and "primary_ok" not in names
    card = card_text(get_cards(fallback_run["register_model"].task)[0].get())
    assert "fallback" in card and "roll-backs" in card
    assert d.dvc["status"] == "committed"  # the fallback profile equals params.yaml's here


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@needs_tools
@pytest.mark.slow
def test_card_server_serves_the_report_card(workspace, fallback_run, tmp_path):
    repo, env = workspace
    port = _free_port()
    server = subprocess.Popen([sys.executable, "flows/hamt_flow.py", "--no-pylint", "card", "server", "--run-id",
                               fallback_run.id, "--port", str(port), "--max-cards", "100"],
                              cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline, info = time.time() + 90, None
        while time.time() < deadline and info is None:
            try:
                code, body = _get(f"{base}/runinfo")
                info = json.loads(body) if code == 200 else None
            except OSError:
                time.sleep(0.5)
        assert info is not None, f"card server did not answer: {server.stderr.read1(4000) if server.poll() else ''}"
        report = [c for c in info["cards"] if c["task"].split("/")[-2] == "report"]
        assert report, [c["task"] for c in info["cards"]]
        url = f"{base}/card/{report[0]['card']}"
        code, body = _get(url)
        assert code == 200 and "HAMT: measured results" in card_text(body.decode("utf-8"))
        if CHROMIUM is None:
            pytest.skip("chromium not installed (apt-get install -y chromium): card served but not rendered")
        shot = screenshot_url(url, tmp_path / "card.png", tmp_path / "profile-a")
        control = screenshot_url(f"{base}/card/{report[0]['task']}/0000", tmp_path / "control.png", tmp_path / "p-b",
                                 allow_http_error=True)
        assert shot.std() > 10 and saturated(shot) > 30_000, saturated(shot)  # the report's coloured plots
        # a 404 page (a blue button; newer Chromium renders nothing for an HTTP error): the check can fail
        assert control is None or saturated(control) < 5_000, saturated(control)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def saturated(pixels) -> int:
    """Pixels of strong colour (plot lines and bars; text is grey/black)."""
    return int(((pixels.max(-1) - pixels.min(-1)) > 100).sum())


def screenshot_url(url: str, out: Path, profile: Path, allow_http_error: bool = False):
    import numpy as np
    from PIL import Image

    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", f"--screenshot={out}", "--window-size=1280,3000",
           "--virtual-time-budget=5000", url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if allow_http_error and not out.is_file() and "ERR_HTTP_RESPONSE_CODE_FAILURE" in proc.stderr:
        return None
    assert out.is_file(), f"chromium wrote no screenshot (rc {proc.returncode}): {proc.stderr[-500:]}"
    return np.asarray(Image.open(out).convert("RGB")).astype(int)  # (H, W, 3)


@needs_tools
@pytest.mark.slow
def test_failed_validation_stops_the_flow(workspace, fallback_run):
    repo, env = workspace
    out = run_flow(repo, "resume", "--origin-run-id", fallback_run.id, "validate_small",
                   env={**env, "HAMT_FAULTS": "nan@2"}, check=False)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "validate_small failed, so the expensive training was not started" in text and "finite" in text
    run = latest_run()
    assert not run.successful and "train" not in [s.id for s in run]
    assert run["validate_small"].task.data.validation["passed"] is False
