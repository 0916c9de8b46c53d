"""JupyterLab in a real browser: notebooks 01 and 05 at smoke sizes, run all, the try-it box, saved and reopened.

What a new user does after `make lab`: open the notebook, Run All, read the plots, type a sentence into
the try-it box, save, and open the notebook again later. Driven in Debian's headless chromium through
JupyterLab's own commands (`window.jupyterapp`, exposed with `--LabApp.expose_app_in_browser`), so
the test follows the interface rather than pixel positions.
"""

from __future__ import annotations

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

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not chrome_available(),
                                 reason="needs chromium + chromium-driver (make test installs them when run as root)")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
           "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"), "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         f"--ServerApp.root_dir={folder}", f"--IdentityProvider.token={token}", "--allow-root",
         "--LabApp.expose_app_in_browser=True", "--ServerApp.disable_check_xsrf=False"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "lab.log", "w"))
    base = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=1)
            break
        except OSError:
            if server.poll() is not None:
                pytest.fail(f"jupyter lab exited: {(tmp_path / 'lab.log').read_text()[-2000:]}")
            time.sleep(0.5)
    else:
        server.kill()
        pytest.fail("jupyter lab did not answer within 60 s")
    yield {"url": f"{base}/lab/tree/{notebook}?token={token}", "file": folder / notebook, "typed": typed,
           "expected": expected}
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()


# JupyterLab's state, read through its application object.
_CELLS = """
const nb = window.jupyterapp && window.jupyterapp.shell.currentWidget;
if (!nb || !nb.content || !nb.sessionContext || !nb.sessionContext.session) return null;
const kernel = nb.sessionContext.session.kernel;
return {kernel: kernel ? kernel.status : null,
        pending: nb.content.widgets.filter(c => c.model.type === 'code' && c.promptNode
                                            && c.promptNode.textContent.includes('*')).length,
        unrun: nb.content.widgets.filter(c => c.model.type === 'code' && c.model.executionCount === null
                                          && c.model.sharedModel.getSource().trim()).length,
        dirty: nb.context.model.dirty};
"""


def _wait(driver, what, check, timeout):
    end = time.time() + timeout
    while time.time() < end:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    driver.save_screenshot("/tmp/workbook-lab-failure.png")
    pytest.fail(f"timed out after {timeout} s waiting for {what} (screenshot: /tmp/workbook-lab-failure.png)")


def _open(driver, url):
    driver.get(url)
    _wait(driver, "the notebook and an idle kernel",
          lambda: (state := driver.execute_script(_CELLS)) and state["kernel"] == "idle", 90)


def _command(driver, name):
    driver.execute_script(f"return window.jupyterapp.commands.execute('{name}')")


def test_notebook_in_jupyterlab(lab, tmp_path):
    from selenium.webdriver.common.by import By

    driver = open_chrome(window="1400,1000")
    try:
        _open(driver, lab["url"])
        _command(driver, "notebook:run-all-cells")
        time.sleep(2)
        _wait(driver, "every cell to run",
                      lambda: (s := driver.execute_script(_CELLS)) and s["kernel"] == "idle"
                      and not s["pending"] and not s["unrun"] and s, 240)
        page = driver.execute_script("return document.getElementById('main').textContent")
        assert "Error displaying widget" not in page
        # No cell errored, and nothing expected arrives as a red stderr box (errors render the same way).
        red = driver.find_elements(By.CSS_SELECTOR, "[data-mime-type='application/vnd.jupyter.stderr']")
        assert not [t for e in red if (t := e.get_attribute("textContent").strip())], "red output boxes"
        assert driver.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output img[src^='data:image/png']"), "no plot"
        # The try-it box is a live widget (a text repr would read "VBox(children=...)").
        box = driver.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output .widget-textarea textarea")
        assert box, "the try-it box did not render as a widget"
        assert "VBox(" not in page
        box[-1].send_keys(lab["typed"])
        button = box[-1].find_element(By.XPATH, "ancestor::div[contains(@class,'widget-vbox')][1]"
                                                "//button[contains(@class,'widget-button')]")
        button.click()
        answer = _wait(driver, "a prediction under the try-it box",
                       lambda: [e.text for e in driver.find_elements(
                           By.CSS_SELECTOR, ".widget-vbox .widget-output .jp-OutputArea-output")
                           if e.text.strip()], 60)
        assert any(word in answer[-1] for word in lab["expected"]), answer
        driver.save_screenshot(str(tmp_path / "ran.png"))
        _command(driver, "docmanager:save")
        _wait(driver, "the notebook to be saved", lambda: driver.execute_script(_CELLS)["dirty"] is False, 30)
        _command(driver, "kernelmenu:shutdown")
        time.sleep(1)
        # Opened again later: a fresh page, widgets from the saved state, no model errors.
        _open(driver, lab["url"])
        _wait(driver, "the saved outputs", lambda: driver.find_elements(
            By.CSS_SELECTOR, ".jp-OutputArea-output img[src^='data:image/png']"), 30)
        time.sleep(3)  # widget views render after the outputs
        reopened = driver.execute_script("return document.getElementById('main').textContent")
        assert "Error displaying widget" not in reopened
        assert driver.find_elements(By.CSS_SELECTOR, ".widget-textarea textarea"), "try-it box lost on reopening"
        driver.save_screenshot(str(tmp_path / "reopened.png"))
    finally:
        driver.quit()
    saved = json.loads(lab["file"].read_text())
    assert not [o for c in saved["cells"] for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert saved["metadata"].get("widgets"), "widget state was not saved with the notebook"
