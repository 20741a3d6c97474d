"""The explorer where learners use it: JupyterLab in a real browser (headless Chromium, driven by Playwright).

JupyterLab serves a temporary copy of notebook 09 on 127.0.0.1 with a temporary token, settings and
runtime folder, so nothing in the repository or the home folder changes. The test clears the copy's
outputs, runs every cell, checks that no cell failed and the explorer shows its figure, drags the
query slider and checks that the figure changed. Screenshots go to $M3LITE_ARTIFACTS/browser
(default test-artifacts/browser, git-ignored). Chromium is Debian's (`make test` installs it where
it can); Playwright never downloads a browser here.
"""
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
NOTEBOOK = ROOT / "notebooks" / "09_sparsity_explorer.ipynb"
CHROMIUM = Path(os.environ.get("M3LITE_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(os.environ.get("M3LITE_ARTIFACTS", ROOT / "test-artifacts")) / "browser"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                  "--disable-background-networking", "--disable-component-update"]   # the network is closed here
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},         # every cell stays in the page
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
}

if not CHROMIUM.exists():
    pytest.skip(f"no Chromium at {CHROMIUM}: `make test` installs Debian's chromium with apt-get where it can "
                "(as root, with apt-get); install it, or point M3LITE_CHROMIUM at one", allow_module_level=True)

from playwright.sync_api import TimeoutError as PlaywrightTimeout  # noqa: E402  (needed only with a browser)
from playwright.sync_api import sync_playwright  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_settings(folder):
    for plugin, values in LAB_SETTINGS.items():
        path = folder / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server on 127.0.0.1 serving a copy of notebook 09: yields (url, token, log path)."""
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(NOTEBOOK, root)
    write_settings(tmp_path / "settings")
    port, token = free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"), JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
               IPYTHONDIR=str(tmp_path / "ipython"), MPLBACKEND="Agg")
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={root}", "--ServerApp.allow_root=True", "--LabApp.expose_app_in_browser=True",
               f"--LabApp.user_settings_dir={tmp_path / 'settings'}", f"--LabApp.workspaces_dir={tmp_path / 'ws'}",
               "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    log = tmp_path / "lab.log"
    with open(log, "w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(url, token, server, log)
        yield url, token, log
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def wait_for_server(url, token, server, log, timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


# JavaScript run in the page, through the JupyterLab app that expose_app_in_browser puts on window.
KERNEL_IDLE = """() => { const nb = window.jupyterapp?.shell.currentWidget;
    const kernel = nb?.sessionContext?.session?.kernel;
    return !!kernel && kernel.connectionStatus === 'connected' && kernel.status === 'idle'; }"""
RUN_ALL = """async () => { const app = window.jupyterapp;
    await app.commands.execute('notebook:clear-all-cell-outputs');
    await app.commands.execute('notebook:run-all-cells'); }"""
DONE = """() => { const nb = window.jupyterapp.shell.currentWidget; const cells = nb.content.model.cells;
    let pending = false, failed = false;
    for (let i = 0; i < cells.length; i++) { const cell = cells.get(i); if (cell.type !== 'code') continue;
        pending ||= cell.executionCount === null;
        for (let j = 0; j < cell.outputs.length; j++) failed ||= cell.outputs.get(j).type === 'error'; }
    return (failed || !pending) && nb.sessionContext.session.kernel.status === 'idle'; }"""
CELLS = """() => { const cells = window.jupyterapp.shell.currentWidget.content.model.cells; const found = [];
    for (let i = 0; i < cells.length; i++) { const cell = cells.get(i);
        if (cell.type !== 'code') continue;
        const outputs = []; for (let j = 0; j < cell.outputs.length; j++) outputs.push(cell.outputs.get(j).toJSON());
        found.push({index: i, count: cell.executionCount, outputs}); }
    return found; }"""


def test_explorer_runs_and_responds_in_jupyterlab(lab):
    url, token, log = lab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(f"{url}/lab/tree/{NOTEBOOK.name}?token={token}")
            page.wait_for_function(KERNEL_IDLE, timeout=60_000)
            page.evaluate(RUN_ALL)
            try:                                        # every cell ran, or one failed and stopped the run
                page.wait_for_function(DONE, timeout=120_000)
            except PlaywrightTimeout:
                pass                                    # say which cells did not run, below
            cells = page.evaluate(CELLS)
            check_every_cell_ran_without_error(cells)
            image = page.locator(".widget-image")
            image.scroll_into_view_if_needed()
            page.wait_for_timeout(300)
            page.screenshot(path=ARTIFACTS / "1-notebook-run.png")
            before = image.screenshot(path=ARTIFACTS / "2-explorer-before.png")
            explorer = page.locator(".jp-OutputArea-output", has=image)
            explorer.screenshot(path=ARTIFACTS / "explorer.png")          # the README's picture comes from here
            query = page.locator(".widget-slider", has=page.locator("label", has_text="query"))
            readout = query.locator(".widget-readout")
            value = readout.inner_text()
            drag(page, query.locator(".noUi-handle"), dx=-120)
            after = wait_for_new_picture(image, before)
            assert readout.inner_text() != value, "the query slider did not move"
            page.screenshot(path=ARTIFACTS / "3-notebook-after.png")
            (ARTIFACTS / "4-explorer-after.png").write_bytes(after)
            assert page.get_by_text("Error displaying widget").count() == 0
        except Exception:
            page.screenshot(path=ARTIFACTS / "failure.png")
            shutil.copy(log, ARTIFACTS / "lab.log")
            raise
        finally:
            browser.close()


def check_every_cell_ran_without_error(cells):
    assert cells, "the notebook shows no code cell"
    errors = [f"cell {c['index']}: {o['ename']}: {o['evalue']}" for c in cells for o in c["outputs"]
              if o["output_type"] == "error"]
    assert not errors, "\n".join(errors)
    not_run = [c["index"] for c in cells if c["count"] is None]
    assert not not_run, f"cells {not_run} did not run within the time allowed"
    widget = "application/vnd.jupyter.widget-view+json"
    widgets = [c for c in cells for o in c["outputs"] if widget in o.get("data", {})]
    assert len(widgets) == 1, f"expected the explorer once, found {len(widgets)} widget outputs"


def drag(page, handle, dx):
    """Drag a slider handle by dx pixels with the mouse, as a person would."""
    handle.scroll_into_view_if_needed()
    box = handle.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + dx, y, steps=8)
    page.mouse.up()


def wait_for_new_picture(image, before, timeout=30):
    """The widget image's screenshot once it differs from `before`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = image.screenshot()
        if now != before:
            return now
        time.sleep(0.5)
    raise AssertionError(f"the explorer's figure did not change within {timeout} s of moving the slider")
