"""The ``hamt`` CLI: its COMMANDS map, dvc.yaml's stages and the flow's steps stay in sync; --help works."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from hamt import cli

# Commands that are tools, not pipeline stages (no DVC stage, no flow step).
TOOLS = {"generate", "bench", "params"}


def dvc_stage_commands() -> dict[str, str]:
    """stage name -> the hamt subcommand its cmd runs."""
    out = {}
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        cmd = stage.get("do", stage)["cmd"].strip()  # a foreach stage's command is under `do`
        m = re.fullmatch(r"hamt (\w+)(?: --model \$\{item\} --skip-unplanned)?", cmd)
        assert m, f"dvc stage {name}: cmd must be one `hamt <command>` call, got {stage['cmd']!r}"
        out[name] = m.group(1)
    return out


def test_every_pipeline_command_is_a_dvc_stage_and_back():
    stages = dvc_stage_commands()
    for name, command in stages.items():
        assert command in cli.COMMANDS, f"dvc stage {name} runs unknown command hamt {command}"
        assert name == command, f"dvc stage {name} should be named like its command ({command})"
    pipeline = set(cli.COMMANDS) - TOOLS
    assert set(stages.values()) == pipeline, (
        f"commands without a stage: {sorted(pipeline - set(stages.values()))}; "
        f"add a dvc.yaml stage or list the command in TOOLS")


def test_flow_steps_call_the_same_stage_functions():
    """Each pipeline command's function is what the flow runs (the flow holds no stage logic)."""
    flow = (ROOT / "flows" / "hamt_flow.py").read_text()
    helpers = (ROOT / "flows" / "orchestration.py").read_text()
    calls = {"download": ("hamt.data", "download"), "tokenize": ("hamt.tokenize", "tokenize"),
             "validate": ("hamt.validate", "validate_small"), "compare": ("hamt.compare", "run_baseline"),
             "report": ("hamt.report", "report")}
    for command, (module, func) in calls.items():
        imported = re.search(rf"from {re.escape(module)} import [^\n]*\b{func}\b", flow)
        assert command in cli.COMMANDS and imported, f"flow does not call the function behind hamt {command}"
    # training goes through the CLI itself (a child process, torchrun when several GPUs)
    assert '"hamt.cli", "train"' in helpers
    assert set(calls) | {"train"} == set(cli.COMMANDS) - TOOLS


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in text


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_every_subcommand_help(name, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([name, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert f"usage: hamt {name}" in text and "--profile" in text and "--set" in text


def test_no_command_prints_help_and_fails(capsys):
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_console_script_runs():
    exe = shutil.which("hamt", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("console script not installed (pip install -e .)")
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "usage: hamt" in out.stdout


def test_help_imports_no_stage_module_and_no_torch():
    code = ("import sys; from hamt import cli; cli.build_parser()\n"
            "print(sorted(m for m in sys.modules if m.startswith('hamt.') or m == 'torch'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "['hamt.cli', 'hamt.errors']", out.stdout


def test_only_the_named_command_is_imported():
    assert cli._command_of(["--version"]) is None
    assert cli._command_of(["train", "--name", "compare"]) == "train"
    assert cli._command_of(["--debug", "bench", "model"]) == "bench"
