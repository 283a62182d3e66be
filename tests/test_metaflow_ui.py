"""The Metaflow UI shows a HAMT run: its DAG and the branch taken, an artifact, a step's log line, the report card.

Needs the UI of ``scripts/metaflow_ui.sh up`` (PostgreSQL, metaflow-service, metaflow-ui on 127.0.0.1; ports
from the same MF_UI_* variables), Chromium, and aiohttp, whose websocket client drives Chromium over the
DevTools protocol (no WebDriver to install). Without any of them the module is skipped with the reason
before any work, so ``.ci/run`` spends nothing here. The test runs the flow (``micro`` on a corpus made
here, in a repository copy) against the metadata service, then reads the run back through the UI as a
user would. ``HAMT_UI_SCREENSHOTS=<dir>`` keeps the screenshots (docs/ holds two of them).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT

HOST = "127.0.0.1"
METADATA_URL = f"http://{HOST}:{os.environ.get('MF_UI_METADATA_PORT', '8080')}/"
UI_URL = f"http://{HOST}:{os.environ.get('MF_UI_PORT', '8083')}"
UI_ROOT = Path(os.environ.get("MF_UI_ROOT", ROOT / ".metaflow-ui"))
DATASTORE_ROOT = Path(os.environ.get("MF_UI_DATASTORE_ROOT", ROOT))  # where the UI backend reads .metaflow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
STEPS = ["start", "download", "tokenize", "validate_small", "train", "primary_ok", "fallback", "register_model",
         "compare", "compare_join", "report", "end"]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _why_skip() -> str | None:
    if CHROMIUM is None:
        return "chromium not installed (apt-get install -y chromium)"
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        return "aiohttp not installed (drives Chromium over the DevTools protocol)"
    if not (_answers(UI_URL + "/ping") and _answers(METADATA_URL + "ping")):
        return f"Metaflow UI not running on {UI_URL} (scripts/metaflow_ui.sh up)"
    if DATASTORE_ROOT.resolve() not in UI_ROOT.resolve().parents:
        return f"the test's flow runs under {UI_ROOT}, which must lie inside the UI's datastore root {DATASTORE_ROOT}"
    return None


_REASON = _why_skip()
pytestmark = [pytest.mark.ui, pytest.mark.slow, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]


class Browser:
    """Headless Chromium, one page, driven over the DevTools protocol."""

    def __init__(self, profile: Path, width: int = 1400, height: int = 1400):
        self.proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
                                      f"--window-size={width},{height}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file, deadline = profile / "DevToolsActivePort", time.time() + 30
        while not port_file.is_file() or not port_file.read_text().strip():
            assert time.time() < deadline and self.proc.poll() is None, "chromium did not open its DevTools port"
            time.sleep(0.2)
        port = port_file.read_text().split()[0]
        with urllib.request.urlopen(f"http://{HOST}:{port}/json/list", timeout=10) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        self.loop = asyncio.new_event_loop()
        self.ws = self.loop.run_until_complete(self._connect(page["webSocketDebuggerUrl"]))
        self.ids = 0
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    async def _connect(self, url: str):
        import aiohttp

        self.session = aiohttp.ClientSession()
        return await self.session.ws_connect(url, max_msg_size=0)

    async def _call(self, method: str, params: dict) -> dict:
        self.ids += 1
        await self.ws.send_json({"id": self.ids, "method": method, "params": params})
        while True:  # events arrive in between; the answer carries our id
            msg = json.loads((await self.ws.receive()).data)
            if msg.get("id") == self.ids:
                assert "error" not in msg, f"{method}: {msg['error']}"
                return msg["result"]

    def call(self, method: str, **params) -> dict:
        return self.loop.run_until_complete(self._call(method, params))

    def js(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def wait_for(self, expression: str, what: str, timeout: float = 60):
        """Poll a JS expression until it is truthy (the UI fetches and renders asynchronously)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.5)
        text = self.js("document.body.innerText") or ""
        pytest.fail(f"{what} not shown within {timeout:.0f} s; page text: {text[:1500]!r}")

    def wait_for_text(self, *needles: str, timeout: float = 60) -> str:
        cond = " && ".join(f"t.includes({json.dumps(n)})" for n in needles)
        return self.wait_for(f"(t => ({cond}) && t)(document.body.innerText)", f"{needles}", timeout)

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        self.loop.run_until_complete(self.session.close())
        self.loop.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)


def api(path: str) -> list:
    """The UI backend's REST API (what the front end reads)."""
    with urllib.request.urlopen(f"{UI_URL}{path}", timeout=30) as r:
        return json.load(r)["data"]


@pytest.fixture(scope="module")
def service_run(tmp_path_factory):
    """The flow run through the metadata service, datastore in the UI's .metaflow; returns its run id."""
    from test_dvc import make_repo, tool_env

    # Inside the UI's datastore root and without a .metaflow of its own, so the cards, written under the
    # first .metaflow above the step's folder, land in the datastore the UI backend reads.
    (UI_ROOT / "test-runs").mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="flow-", dir=UI_ROOT / "test-runs"))
    try:
        repo = make_repo(work / "repo", with_flows=True)
        env = tool_env(tmp_path_factory.mktemp("ui-flow-env"))
        env.update(METAFLOW_DEFAULT_METADATA="service", METAFLOW_SERVICE_URL=METADATA_URL,
                   METAFLOW_DATASTORE_SYSROOT_LOCAL=str(DATASTORE_ROOT))
        id_file = work / "run-id"
        out = subprocess.run([sys.executable, "flows/hamt_flow.py", "--no-pylint", "--metadata", "service", "run",
                              "--max-workers", "2", "--run-id-file", str(id_file)],
                             cwd=repo, env=env, capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, f"flow run failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        yield id_file.read_text().strip()
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the run itself stays in the datastore, for the UI


@pytest.fixture
def browser(tmp_path):
    b = Browser(tmp_path / "chromium-profile")
    yield b
    b.close()


def _task(run_id: str, step: str) -> str:
    tasks = api(f"/flows/HAMTFlow/runs/{run_id}/steps/{step}/tasks")
    assert tasks, f"no task of {step} in the UI backend"
    return str(tasks[0]["task_id"])


def _shots() -> Path | None:
    d = os.environ.get("HAMT_UI_SCREENSHOTS")
    return Path(d) if d else None


def test_ui_shows_the_run(service_run, browser):
    run = f"{UI_URL}/HAMTFlow/{service_run}"
    # The DAG: every step of the flow, both branches of the switch.
    browser.goto(f"{run}/view/dag")
    browser.wait_for_text(*STEPS)
    if _shots():
        time.sleep(2)  # let the layout settle
        browser.screenshot(_shots() / "metaflow_ui_run.png")
    # The branch taken: the timeline lists the steps that ran, primary_ok and not fallback.
    browser.goto(f"{run}/view/timeline")
    text = browser.wait_for_text("primary_ok", "register_model", "end")
    assert "fallback" not in text



# scripts/metaflow_ui.sh patches the two upstream bugs that made this fail with a local datastore: the UI
# backend moved log files out of .metaflow on the first view ("No logs"), and metaflow's client cache stored
# an empty artifact index once a log size was read ("Artifact not currently displayable").
def test_ui_shows_an_artifact_value_and_a_log_line(service_run, browser):
    run = f"{UI_URL}/HAMTFlow/{service_run}"
    browser.goto(f"{run}/end/{_task(service_run, 'end')}")
    browser.wait_for_text("train_branch", "Artifacts")  # the artifact table lists it
    browser.wait_for("[...document.querySelectorAll('tr')].some(r => r.innerText.startsWith('train_branch')"
                     " && r.innerText.includes('primary_ok'))", "train_branch's value", timeout=60)
    browser.wait_for("[...document.querySelectorAll('tr')].some(r => r.innerText.startsWith('run_profile')"
                     " && r.innerText.includes('micro'))", "run_profile's value", timeout=60)
    browser.wait_for_text("DVC: committed")  # the end step's stdout
    if _shots():
        time.sleep(2)
        browser.screenshot(_shots() / "metaflow_ui_task.png")


def test_ui_renders_the_report_card(service_run, browser):
    browser.goto(f"{UI_URL}/HAMTFlow/{service_run}/report/{_task(service_run, 'report')}")
    # The card is an iframe served by the UI backend; its document holds the report's text.
    card = "[...document.querySelectorAll('iframe')].map(f => f.contentDocument?.body?.innerText || '').join('\\n')"
    text = browser.wait_for(f"(t => t.includes('perplexity') && t)({card})", "the report card", timeout=90)
    assert "HAMT" in text
    if _shots():
        for _ in range(2):  # the artifact table above it grows while it loads
            time.sleep(4)
            browser.js("document.querySelector('iframe').scrollIntoView({block: 'start'})")
        browser.screenshot(_shots() / "metaflow_ui_report_card.png")
