"""flows/launch.py: a default user name, a run's arguments checked before Metaflow starts, user errors in one line.

The end-to-end cases run ``flows/hamt_flow.py`` as a new user would: no USERNAME, USER or METAFLOW_USER,
no Metaflow config; the datastore and the work folder are temporary.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "flows"))
import launch  # noqa: E402

FLOW = ROOT / "flows" / "hamt_flow.py"
USER_VARS = ("METAFLOW_USER", "SUDO_USER", "USERNAME", "USER")


def fresh_env(tmp_path: Path) -> dict:
    """The environment of a first run: no user name, no Metaflow config, everything under ``tmp_path``."""
    env = {k: v for k, v in os.environ.items()
           if k not in USER_VARS and not k.startswith("METAFLOW_") and k not in ("HAMT_DEBUG", launch.ERRORS_ENV)}
    env.update(HAMT_WORKDIR=str(tmp_path), METAFLOW_DATASTORE_SYSROOT_LOCAL=str(tmp_path),
               METAFLOW_HOME=str(tmp_path / "metaflow-home"), METAFLOW_DEFAULT_METADATA="local",
               METAFLOW_DEFAULT_DATASTORE="local", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    return env


def run_flow(tmp_path: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    # the flow file by absolute path: the steps change into HAMT_WORKDIR, and Metaflow re-runs the file from there
    return subprocess.run([sys.executable, str(FLOW), "--no-pylint", *args], cwd=ROOT, env=fresh_env(tmp_path),
                          capture_output=True, text=True, timeout=timeout)


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


# --------------------------------------------------------------------------------------------------
# The user name
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("env, expected", [
    ({}, "hamt"),
    ({"USER": "root"}, "hamt"),
    ({"USER": "root", "SUDO_USER": "root"}, "hamt"),
    ({"USER": "ada"}, None),
    ({"USERNAME": "ada"}, None),
    ({"METAFLOW_USER": "ada", "USER": "root"}, None),
])
def test_default_user_only_when_metaflow_would_find_none(monkeypatch, tmp_path, env, expected):
    for k in USER_VARS + ("METAFLOW_PROFILE",):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("METAFLOW_HOME", str(tmp_path))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert launch.default_user() == expected
    assert os.environ.get("METAFLOW_USER") == (expected or env.get("METAFLOW_USER"))


def test_default_user_keeps_the_name_in_metaflows_config(monkeypatch, tmp_path):
    for k in USER_VARS + ("METAFLOW_PROFILE",):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("METAFLOW_HOME", str(tmp_path))
    (tmp_path / "config.json").write_text('{"METAFLOW_USER": "ada"}')
    assert launch.default_user() is None and "METAFLOW_USER" not in os.environ


# --------------------------------------------------------------------------------------------------
# The run's arguments
# --------------------------------------------------------------------------------------------------


def test_run_arguments_are_read_from_metaflows_command_line(monkeypatch):
    monkeypatch.delenv("METAFLOW_RUN_PROFILE", raising=False)
    monkeypatch.delenv("METAFLOW_RUN_OVERRIDES", raising=False)
    assert launch.run_arguments(["show"]) is None
    assert launch.run_arguments(["--no-pylint", "step", "download", "--run-id", "1"]) is None  # a task
    assert launch.run_arguments(["run"]) == {"config": None, "profile": "", "overrides": ""}
    assert launch.run_arguments(["--config", "cfg", "other.yaml", "run", "--profile", "micro",
                                 "--overrides=train.lr=1e-3;train.max_steps=5"]) == {
        "config": "other.yaml", "profile": "micro", "overrides": "train.lr=1e-3;train.max_steps=5"}
    assert launch.run_arguments(["--config-value", "cfg", "{}", "run"])["config"] is False
    monkeypatch.setenv("METAFLOW_RUN_OVERRIDES", "train.lr=2")  # click's auto_envvar_prefix
    assert launch.run_arguments(["run"])["overrides"] == "train.lr=2"


@pytest.mark.parametrize("overrides, message", [
    ("train.bogus=1", "unknown key 'train.bogus'"),
    ("train.lr=abc", "train.lr: expected a number"),
    ("nosection", "expected section.key=value"),
])
def test_bad_overrides_fail_in_one_line_before_metaflow_starts(tmp_path, overrides, message):
    out = run_flow(tmp_path, "run", "--overrides", overrides, timeout=120)
    assert out.returncode == 2
    assert out.stdout == ""  # Metaflow printed nothing: no task started
    assert out.stderr.strip().splitlines() == [last_line(out.stderr)]  # one line, no traceback
    assert last_line(out.stderr).startswith("hamt flow: error: ") and message in out.stderr
    assert not (tmp_path / ".metaflow").exists()


def test_bad_model_value_and_profile_fail_before_metaflow_starts(tmp_path):
    out = run_flow(tmp_path, "run", "--overrides", "model.hidden_dim=abc", timeout=300)
    assert out.returncode == 2 and out.stdout == ""
    assert last_line(out.stderr) == "hamt flow: error: model.hidden_dim: expected an integer, got 'abc'"
    out = run_flow(tmp_path, "run", "--profile", "nope", timeout=120)
    assert out.returncode == 2 and out.stdout == "" and "unknown profile 'nope'" in last_line(out.stderr)


# --------------------------------------------------------------------------------------------------
# A user error inside a step
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_missing_data_ends_the_run_with_the_message_last(tmp_path):
    """No data where data.local_path points: the download step fails in one line, not retried, repeated last."""
    missing = tmp_path / "no-such-corpus.txt"
    out = run_flow(tmp_path, "run", "--profile", "micro", "--overrides", f"data.source=local;data.local_path={missing}")
    assert out.returncode != 0
    text = out.stdout + out.stderr
    expected = f"hamt flow: download: error: local data path {missing} does not exist"
    assert last_line(out.stderr).startswith(expected)
    download_lines = [line for line in out.stdout.splitlines() if "/download/" in line]
    assert expected in download_lines[-2] and download_lines[-1].endswith("Task failed.")  # the step's last words
    assert "Traceback" not in text and "Task is starting (retry)" not in text  # no traceback, no pointless retry
    assert "for user:hamt" in text  # the default user name: the run needed no environment variable
    assert not missing.exists()
