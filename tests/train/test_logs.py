"""hamt.train.logs: the CSV series on resume, the event log, W&B disabled and offline."""

from __future__ import annotations

import sys

from hamt.train.logs import LOG_COLUMNS, CSVLog, NullLogger, TextLog, make_logger

from .helpers import micro


def test_csv_log_resume_keeps_rows_up_to_the_step(tmp_path):
    path = tmp_path / "log.csv"
    log = CSVLog(path, LOG_COLUMNS)
    for step in (5, 10, 15):
        log.append({"step": step, "train_loss": 1.0 / step, "val_loss": None})
    assert [r["step"] for r in log.rows()] == ["5", "10", "15"] and log.rows()[0]["val_loss"] == ""
    assert log.rows()[0]["train_loss"] == "0.2"  # floats as %.6g
    again = CSVLog(path, LOG_COLUMNS, resume_step=10)  # resumed from the checkpoint of step 10
    assert [r["step"] for r in again.rows()] == ["5", "10"]
    assert path.read_text().splitlines()[0] == ",".join(LOG_COLUMNS)
    assert CSVLog(path, LOG_COLUMNS).rows() == []  # a fresh run starts a fresh series
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_text_log_only_on_the_master(tmp_path, capsys):
    log = TextLog(tmp_path / "a" / "train.log")
    log.write("resumed\n", echo=True)
    assert not (tmp_path / "a").exists()  # nothing on disk before the run has state to record
    log.start()
    log.write("next")
    off = TextLog(tmp_path / "b" / "train.log", enabled=False)
    off.write("ignored")
    off.start()
    assert (tmp_path / "a" / "train.log").read_text() == "resumed\nnext\n" and not (tmp_path / "b").exists()
    assert "resumed" in capsys.readouterr().err


def test_csv_log_touches_the_old_series_only_from_start(tmp_path):
    path = tmp_path / "log.csv"
    old = CSVLog(path, LOG_COLUMNS)
    old.append({"step": 5, "train_loss": 1.0})
    before = path.read_bytes()
    new = CSVLog(path, LOG_COLUMNS, resume_step=0)  # a new run that has not recorded anything yet
    assert path.read_bytes() == before and not new.started
    new.append({"step": 1, "train_loss": 2.0})
    assert [r["step"] for r in new.rows()] == ["1"]


def test_wandb_disabled_never_imports_wandb(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # an import would raise
    params = type("W", (), {"mode": "disabled"})()
    assert type(make_logger(params, {})) is NullLogger
    assert type(make_logger(type("W", (), {"mode": "offline"})(), {}, enabled=False)) is NullLogger


def test_wandb_offline_writes_a_run_folder(tokens_dir, tmp_path, monkeypatch):
    from hamt.train import train

    wandb_dir = tmp_path / "wandb-home"
    wandb_dir.mkdir()
    monkeypatch.setenv("WANDB_DIR", str(wandb_dir))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    s = train(micro(tokens_dir, tmp_path, "train.wandb.mode=offline", "train.max_steps=5", "train.log_every=1"))
    runs = list((wandb_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))
    assert s["wandb_run_dir"].startswith(str(runs[0]))
