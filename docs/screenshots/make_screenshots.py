"""The README's screenshots, re-made by one command whenever the MLflow UI or the plots change.

    python docs/screenshots/make_screenshots.py --project PATH [--out docs/screenshots]

PATH is a project that has run `dvc repro` and then one `dvc exp run -S ...` (its result applied in the
workspace, as `dvc exp run` leaves it). The script starts the MLflow UI on the project's store (as `cola ui`
does, on a free port), and headless Chromium (Debian `chromium`) photographs:

- ``mlflow_runs.png``: the experiment's runs, each pipeline execution with its stage runs nested under it;
- ``mlflow_compare.png``: the two newest pipeline executions compared (the param that changed, its effect);
- ``dvc_plots_diff.png``: `dvc plots diff` of the workspace against HEAD (or of ``--revs``), rendered from the
  offline template.

Nothing here needs the network: the MLflow UI is served locally and the plots page carries Vega inline.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PLOT_TARGETS = ("plots/rl/cola-math.json",)


# What to click before a picture, each a JavaScript expression for one element (clicked as a person would, by
# mouse events at its centre; React ignores a scripted element.click() on some controls): the model-training
# view of the sidebar, the assistant panel closed, the newest pipeline's stage runs unfolded, and on the
# comparison only what differs (MLflow's own "Show diff only" switches, the other sections folded).
FIND = """
const byText = (selector, text) => Array.from(document.querySelectorAll(selector))
    .find(e => e.innerText.trim() === text);
"""
MODEL_TRAINING_VIEW = "byText('[role=button]', 'Model training')"
CLOSE_ASSISTANT = "Array.from(document.querySelectorAll('button[aria-label=\"Close\"]')).pop()"
UNFOLD_NEWEST_PIPELINE = "document.querySelector('.ag-row button[data-component-id*=runnamecellrenderer]')"
DIFF_ONLY = [*(f"byText('[role=button]', '{section}')" for section in ("Visualizations", "Run details",
                                                                      "Artifacts", "Tags")),
             "document.querySelector('[aria-label=\"Parameters - Show diff only\"]')",
             "document.querySelector('[aria-label=\"Metrics - Show diff only\"]')",
             "document.querySelector('h2')"]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    sys.exit("error: no Chromium found: install Debian's `chromium` (apt install chromium)")


class Browser:
    """Headless Chromium driven over the DevTools protocol (aiohttp's websocket, a DVC dependency): open a
    page, run its scripts, photograph it."""

    def __init__(self, port: int) -> None:
        self.profile = tempfile.mkdtemp(prefix="cola-chromium-")
        self.process = subprocess.Popen(
            [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--remote-debugging-port={port}", f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.port, self.calls = port, 0

    def close(self) -> None:
        os.killpg(self.process.pid, 15)
        self.process.wait(timeout=30)
        shutil.rmtree(self.profile, ignore_errors=True)

    async def shoot(self, url: str, path: Path, clicks: list[str], width: int = 1500, height: int = 900,
                    settle: float = 12.0) -> None:
        import aiohttp

        page = next(t for t in wait_json(f"http://127.0.0.1:{self.port}/json") if t["type"] == "page")
        async with aiohttp.ClientSession() as session, \
                session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            async def call(method: str, **params):
                self.calls += 1
                await ws.send_json({"id": self.calls, "method": method, "params": params})
                while True:
                    message = await ws.receive_json()
                    if message.get("id") == self.calls:
                        return message.get("result", {})

            await call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                       mobile=False)
            await call("Page.navigate", url=url)
            await asyncio.sleep(settle)  # the UI fetches its runs after the page loads
            for target in clicks:
                found = await call("Runtime.evaluate", returnByValue=True, expression=(
                    f"(() => {{ {FIND} const e = {target}; if (!e) return null;"
                    " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
                    " return [r.x + r.width / 2, r.y + r.height / 2]; })()"))
                point = found.get("result", {}).get("value")
                if point is None:
                    print(f"note: {path.name}: nothing to click for {target}")
                    continue
                for kind in ("mousePressed", "mouseReleased"):
                    await call("Input.dispatchMouseEvent", type=kind, x=point[0], y=point[1], button="left",
                               clickCount=1)
                await asyncio.sleep(2)
            shot = await call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))
        print(f"wrote {path}")


def wait_json(url: str, tries: int = 100):
    for _ in range(tries):
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return json.load(response)
        except OSError:
            time.sleep(0.3)
    sys.exit(f"error: {url} did not answer")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def mlflow_ui(project: Path):
    """The MLflow UI on the project's store, as `cola ui` starts it; yields its address."""
    from cola.cli.runs import ui_command

    port = free_port()
    process = subprocess.Popen(ui_command(port), cwd=project, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{address}/health", timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        else:
            sys.exit("error: the MLflow UI did not start within a minute")
        yield address
    finally:
        os.killpg(process.pid, 15)
        process.wait(timeout=30)


def pipeline_runs(project: Path) -> tuple[str, list[str]]:
    """The experiment's id and its two newest pipeline executions (parent runs)."""
    from mlflow import MlflowClient

    from cola.tracking import experiment_name, tracking_uri

    os.chdir(project)
    client = MlflowClient(tracking_uri())
    experiment = client.get_experiment_by_name(experiment_name())
    if experiment is None:
        sys.exit(f"error: {project} has no MLflow experiment {experiment_name()!r}: run `dvc repro` there")
    parents = client.search_runs([experiment.experiment_id], "tags.`cola.run_type` = 'pipeline'",
                                 order_by=["attributes.start_time DESC"], max_results=2)
    if len(parents) < 2:
        sys.exit("error: two pipeline executions are needed: `dvc repro`, then `dvc exp run -S rl.lr=1e-6`")
    return experiment.experiment_id, [run.info.run_id for run in parents]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, required=True, help="a project after repro + one exp run")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots", help="where the PNGs go")
    parser.add_argument("--revs", nargs="+", default=["HEAD"],
                        help="revisions for `dvc plots diff` (default: HEAD against the workspace; give two, "
                             "e.g. HEAD and an experiment's name, to compare those)")
    args = parser.parse_args()
    project, out = args.project.resolve(), args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    experiment, runs = pipeline_runs(project)

    browser = Browser(free_port())
    try:
        with mlflow_ui(project) as ui:
            runs_page = f"{ui}/#/experiments/{experiment}/runs"
            query = urllib.parse.urlencode({"runs": json.dumps(runs),
                                            "experiments": json.dumps([experiment])})
            asyncio.run(browser.shoot(runs_page, out / "mlflow_runs.png",
                                      [MODEL_TRAINING_VIEW, CLOSE_ASSISTANT, UNFOLD_NEWEST_PIPELINE]))
            asyncio.run(browser.shoot(f"{ui}/#/compare-runs?{query}", out / "mlflow_compare.png",
                                      [CLOSE_ASSISTANT, *DIFF_ONLY], height=1000))
        with tempfile.TemporaryDirectory() as html:
            targets = [t for t in PLOT_TARGETS if (project / t).is_file()]
            subprocess.run([sys.executable, "-m", "dvc", "plots", "diff", *args.revs, "--targets", *targets,
                            "-o", html], cwd=project, check=True, capture_output=True)
            asyncio.run(browser.shoot(Path(html, "index.html").as_uri(), out / "dvc_plots_diff.png", [],
                                      width=700, height=420, settle=5))
    finally:
        browser.close()


if __name__ == "__main__":
    main()
