"""JupyterLab in a real browser: notebooks 01 and 05 at smoke sizes, run all, the try-it box, saved and reopened.

What a new user does after `make lab`: open the notebook, Run All, read the plots, type a sentence into
the try-it box, save, and open the notebook again later. Driven in Debian's headless chromium through
JupyterLab's own commands (`window.jupyterapp`, exposed with `--LabApp.expose_app_in_browser`), so
the test follows the interface rather than pixel positions.

No step waits on a JavaScript promise or a short fixed timeout: how long a notebook takes depends on the
machine (a cold first run on 2 busy cores builds stand-ins and fills caches). A command is started and
returns at once; the test then polls JupyterLab's state (kernel idle, every code cell run) under generous
deadlines, fails early when a cell errors, and on any failure leaves a screenshot, the JupyterLab server
and kernel log, the cells' outputs and the browser console in the test's tmp_path, named in the message.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import chrome_available, open_chrome

ROOT = Path(__file__).resolve().parent.parent
# (notebook, what a user types into its try-it box, words one of which the answer must contain)
CASES = {
    "01": ("01_finbert_financial_sentiment.ipynb",
           "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn, beating forecasts.",
           ("positive", "negative", "neutral")),
    "05": ("05_t5_lora_xsum.ipynb",
           "The city council approved a new budget on Tuesday that raises spending on schools and roads. "
           "Officials said the plan would be paid for by a small increase in property taxes.", ("summary", "stand-in")),
}
SETTINGS = Path(sys.prefix) / "share" / "jupyter" / "lab" / "settings" / "overrides.json"

# Deadlines, not waits: each poll returns as soon as the state is reached. Generous on purpose: a warm run of
# notebook 05 takes about 70 s, a cold one on a busy 2-core machine several times that.
START_S = 300  # the server answering; the page loaded with an idle kernel
RUN_ALL_S = 900  # Run All, every cell of one notebook at smoke sizes
STEP_S = 300  # one interaction: a prediction, a save, a kernel shutdown, saved outputs rendering
POLL_S = 0.5

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not chrome_available(),
                                 reason="needs chromium + chromium-driver (make test installs them when run as root)")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError as err:
        return f"({path}: {err})"


@pytest.fixture(params=sorted(CASES))
def lab(request, tmp_path):
    """JupyterLab on 127.0.0.1 over a folder holding a copy of one notebook (the tracked one stays clean)."""
    notebook, typed, expected = CASES[request.param]
    assert SETTINGS.exists() and json.loads(SETTINGS.read_text()) == json.loads(
        (ROOT / "jupyter" / "overrides.json").read_text()), f"{SETTINGS}: run make setup (it installs the settings)"
    folder = tmp_path / "notebooks"
    folder.mkdir()
    shutil.copy(ROOT / "notebooks" / notebook, folder / notebook)
    port, token = _free_port(), "workbook-test"
    env = {**os.environ, "WORKBOOK_SMOKE": "1", "WORKBOOK_RUNS_DIR": str(tmp_path / "runs"),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"),
           "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    log = tmp_path / "lab.log"  # the server's log and, inherited, its kernels' stderr
    with open(log, "w") as log_file:
        server = subprocess.Popen(
            [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
             f"--ServerApp.root_dir={folder}", f"--IdentityProvider.token={token}", "--allow-root",
             "--LabApp.expose_app_in_browser=True", "--ServerApp.disable_check_xsrf=False"],
            env=env, stdout=subprocess.DEVNULL, stderr=log_file)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_S
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=10)
                break
            except OSError:
                if server.poll() is not None:
                    pytest.fail(f"jupyter lab exited with {server.returncode}; its log ({log}):\n{_tail(log)}")
                if time.monotonic() > deadline:
                    pytest.fail(f"jupyter lab did not answer within {START_S} s; its log ({log}):\n{_tail(log)}")
                time.sleep(POLL_S)
        yield {"url": f"{base}/lab/tree/{notebook}?token={token}", "file": folder / notebook, "typed": typed,
               "expected": expected, "log": log, "dir": tmp_path}
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


# JupyterLab's state, read through its application object (synchronous: returns at once).
_STATE = """
const nb = window.jupyterapp && window.jupyterapp.shell.currentWidget;
if (!nb || !nb.content || !nb.content.widgets || !nb.sessionContext || !nb.context) return null;
const session = nb.sessionContext.session;
const kernel = session ? session.kernel : null;
const code = nb.content.widgets.filter(c => c.model.type === 'code' && c.model.sharedModel.getSource().trim());
const errors = [];
for (const c of code) {
  for (const o of c.model.outputs.toJSON()) {
    if (o.output_type === 'error') errors.push(`${o.ename}: ${o.evalue}`);
  }
}
return {kernel: kernel ? kernel.status : null,
        cells: code.length,
        pending: code.filter(c => c.promptNode && c.promptNode.textContent.includes('*')).length,
        unrun: code.filter(c => c.model.executionCount === null).length,
        errors: errors,
        dirty: nb.context.model.dirty,
        commands: window.__workbookCommands || {}};
"""

# Widget views in the page (ipywidgets' renderer shows "Loading widget..." until its model is there, then the
# view or "Error displaying widget"; a closed widget's view is hidden): how many are still loading, how many
# failed, the try-it boxes shown.
_WIDGET_VIEWS = """
const outputs = [...document.querySelectorAll('.jp-OutputArea-output')].filter(o => !o.closest('.lm-mod-hidden'));
return {loading: outputs.filter(o => o.textContent.trim() === 'Loading widget...').length,
        errors: outputs.filter(o => o.textContent.includes('Error displaying widget')).length,
        widgets: document.querySelectorAll('.jp-OutputArea-output .jupyter-widgets').length,
        textareas: document.querySelectorAll('.widget-textarea textarea').length};
"""

# Every code cell as the page holds it: count, prompt and outputs (for the failure report).
_CELLS_DUMP = """
const nb = window.jupyterapp && window.jupyterapp.shell.currentWidget;
if (!nb || !nb.content || !nb.content.widgets) return null;
return nb.content.widgets.filter(c => c.model.type === 'code').map(c => ({
  source: c.model.sharedModel.getSource().slice(0, 200),
  execution_count: c.model.executionCount,
  prompt: c.promptNode ? c.promptNode.textContent : null,
  outputs: c.model.outputs.toJSON().map(o => JSON.stringify(o).slice(0, 4000))}));
"""


class LabTimeout(AssertionError):
    pass


def _state(driver):
    return driver.execute_script(_STATE)


def _wait(what, check, timeout, *, fail_fast=None):
    """Poll `check()` until it returns something truthy; `fail_fast()` returning a message stops at once."""
    from selenium.common.exceptions import TimeoutException

    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except TimeoutException:  # the page's main thread was busy past the script timeout: not yet
            value = None
        if value:
            return value
        if fail_fast and (reason := fail_fast()):
            raise AssertionError(f"while waiting for {what}: {reason}")
        if time.monotonic() > deadline:
            raise LabTimeout(f"timed out after {timeout} s waiting for {what}")
        time.sleep(POLL_S)


def _command(driver, name):
    """Start a JupyterLab command and return at once: its promise is recorded in the page, never awaited here
    (Run All's promise settles only when the last cell has run, far beyond any script timeout)."""
    driver.execute_script("""
        const name = arguments[0];
        const seen = window.__workbookCommands = window.__workbookCommands || {};
        seen[name] = 'started';
        Promise.resolve(window.jupyterapp.commands.execute(name)).then(
            () => { seen[name] = 'done'; }, (err) => { seen[name] = 'failed: ' + err; });
        return true;""", name)


def _command_failed(driver, name):
    status = ((_state(driver) or {}).get("commands") or {}).get(name, "")
    return status if status.startswith("failed") else None


def _open(driver, url):
    driver.get(url)
    _wait("the notebook and an idle kernel", lambda: (s := _state(driver)) and s["kernel"] == "idle", START_S)


def _run_all(driver):
    """Run All, then wait until the kernel is idle and every code cell has run (seen twice, a poll apart);
    a cell that errors (Run All stops there) or a refused command fails at once."""
    _command(driver, "notebook:run-all-cells")
    seen_done = []

    def finished():
        s = _state(driver)
        done = bool(s and s["kernel"] == "idle" and not s["pending"] and not s["unrun"] and s["cells"])
        seen_done.append(done)
        return s if done and seen_done[-2:] == [True, True] else None

    def failed():
        s = _state(driver) or {}
        if s.get("errors") and s.get("kernel") == "idle" and not s.get("pending"):
            return f"a cell failed: {s['errors']}"
        if s.get("kernel") in ("dead", "unknown"):
            return f"the kernel is {s['kernel']}"
        return _command_failed(driver, "notebook:run-all-cells")

    return _wait("every cell to run (Run All)", finished, RUN_ALL_S, fail_fast=failed)


def _save_evidence(driver, lab) -> str:
    """Screenshot, server + kernel log, cells and browser console into the test's folder; returns where."""
    folder = lab["dir"]
    saved = []
    with contextlib.suppress(Exception):
        driver.save_screenshot(str(folder / "failure.png"))
        saved.append(f"screenshot: {folder / 'failure.png'}")
    with contextlib.suppress(Exception):
        (folder / "cells.json").write_text(json.dumps(driver.execute_script(_CELLS_DUMP), indent=1))
        saved.append(f"cells and outputs in the page: {folder / 'cells.json'}")
    with contextlib.suppress(Exception):
        (folder / "state.json").write_text(json.dumps(
            {"lab": _state(driver), "widgets": driver.execute_script(_WIDGET_VIEWS)}, indent=1))
        saved.append(f"JupyterLab state: {folder / 'state.json'}")
    with contextlib.suppress(Exception):
        entries = driver.get_log("browser")
        (folder / "browser-console.log").write_text("\n".join(f"{e.get('level')} {e.get('message')}" for e in entries))
        saved.append(f"browser console: {folder / 'browser-console.log'}")
    saved.append(f"JupyterLab server and kernel log: {lab['log']}")
    return "\n".join(saved) + f"\nlast lines of {lab['log'].name}:\n{_tail(lab['log'], 2000)}"


@contextlib.contextmanager
def _evidence_on_failure(driver, lab):
    try:
        yield
    except Exception as err:  # an assertion, a deadline, selenium's own errors
        raise AssertionError(f"{type(err).__name__}: {err}\n{_save_evidence(driver, lab)}") from err
    except BaseException as err:  # pytest.fail / pytest.skip outcomes: keep their kind, still leave the evidence
        if type(err).__name__ == "Failed":
            raise AssertionError(f"{err}\n{_save_evidence(driver, lab)}") from err
        raise


def _widgets_settled(driver):
    w = driver.execute_script(_WIDGET_VIEWS)
    return w if w["errors"] or (w["textareas"] and not w["loading"]) else None


def test_notebook_in_jupyterlab(lab):
    from selenium.webdriver.common.by import By

    driver = open_chrome(window="1400,1000")
    try:
        driver.set_page_load_timeout(START_S)
        driver.set_script_timeout(120)  # only quick, synchronous state reads run in the page; a busy page: polled again
        with _evidence_on_failure(driver, lab):
            _open(driver, lab["url"])
            assert _state(driver)["unrun"], "the notebook copy already has execution counts (make strip)"
            _run_all(driver)
            page = driver.execute_script("return document.getElementById('main').textContent")
            assert "Error displaying widget" not in page
            # No cell errored, and nothing expected arrives as a red stderr box (errors render the same way).
            red = driver.find_elements(By.CSS_SELECTOR, "[data-mime-type='application/vnd.jupyter.stderr']")
            assert not [t for e in red if (t := e.get_attribute("textContent").strip())], "red output boxes"
            assert driver.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output img[src^='data:image/png']"), "no plot"
            # The try-it box is a live widget (a text repr would read "VBox(children=...)").
            box = _wait("the try-it box to render as a widget", lambda: driver.find_elements(
                By.CSS_SELECTOR, ".jp-OutputArea-output .widget-textarea textarea"), STEP_S)
            assert "VBox(" not in page
            box[-1].send_keys(lab["typed"])
            button = box[-1].find_element(By.XPATH, "ancestor::div[contains(@class,'widget-vbox')][1]"
                                                    "//button[contains(@class,'widget-button')]")
            button.click()
            answer = _wait("a prediction under the try-it box",
                           lambda: [e.text for e in driver.find_elements(
                               By.CSS_SELECTOR, ".widget-vbox .widget-output .jp-OutputArea-output")
                               if e.text.strip()], STEP_S)
            assert any(word in answer[-1] for word in lab["expected"]), answer
            driver.save_screenshot(str(lab["dir"] / "ran.png"))
            _command(driver, "docmanager:save")
            _wait("the notebook to be saved", lambda: _state(driver)["dirty"] is False, STEP_S,
                  fail_fast=lambda: _command_failed(driver, "docmanager:save"))
            _command(driver, "kernelmenu:shutdown")
            _wait("the kernel to shut down", lambda: (s := _state(driver)) is None or s["kernel"] in (None, "dead"),
                  STEP_S, fail_fast=lambda: _command_failed(driver, "kernelmenu:shutdown"))
            # Opened again later: a fresh page, widgets from the saved state, no model errors.
            _open(driver, lab["url"])
            _wait("the saved outputs", lambda: driver.find_elements(
                By.CSS_SELECTOR, ".jp-OutputArea-output img[src^='data:image/png']"), STEP_S)
            widgets = _wait("the saved widget views to render", lambda: _widgets_settled(driver), STEP_S)
            reopened = driver.execute_script("return document.getElementById('main').textContent")
            assert not widgets["errors"] and "Error displaying widget" not in reopened, widgets
            assert driver.find_elements(By.CSS_SELECTOR, ".widget-textarea textarea"), "try-it box lost on reopening"
            driver.save_screenshot(str(lab["dir"] / "reopened.png"))
    finally:
        driver.quit()
    saved = json.loads(lab["file"].read_text())
    assert not [o for c in saved["cells"] for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert saved["metadata"].get("widgets"), "widget state was not saved with the notebook"
