"""Screenshots of the MLflow UI for the newest sweep in a store, taken in headless Chromium.

Usage (from the folder holding ``mlruns/``, after ``neuronbench run -m ...``)::

    python tools/mlflow_screenshots.py --out results/offline_default [--store sqlite:///mlruns/mlflow.db]

Starts ``mlflow ui`` on a free loopback port, opens the experiment's runs table (parent expanded),
the compare view of the sweep's children and one child, and saves ``mlflow_runs.png``,
``mlflow_compare.png`` and ``mlflow_child.png``.  Needs Debian's ``chromium`` and ``chromium-driver``
and the ``selenium`` package; not part of the test suite (it documents what a reader sees).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

VIEW = "workflowType=machine_learning"  # the UI's model-training pages (not GenAI traces)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(1)
    raise SystemExit(f"mlflow ui did not answer at {url}")


def browser(profile: str):  # noqa: ANN201 - selenium is a tool dependency, imported here only
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--window-size=1700,1150",
        f"--user-data-dir={profile}",
    ):
        opts.add_argument(flag)
    return webdriver.Chrome(options=opts, service=Service("/usr/bin/chromedriver"))


def expand_parents(driver) -> None:  # noqa: ANN001
    """Open the parent rows of the runs table so its children show."""
    from selenium.webdriver.common.by import By

    for button in driver.find_elements(By.CSS_SELECTOR, "button[data-component-id*='runnamecellrenderer']"):
        try:
            button.click()
        except Exception:  # noqa: BLE001, S112 - a hidden or stale element: the screenshot still helps
            continue
    time.sleep(3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--store", default="sqlite:///mlruns/mlflow.db")
    parser.add_argument("--experiment", default="neuronbench")
    parser.add_argument("--wait", type=float, default=12.0, help="seconds each page gets to render")
    args = parser.parse_args()

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=args.store)
    exp = client.get_experiment_by_name(args.experiment)
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])
    parent = next(r for r in runs if "neuronbench.sweep_key" in r.data.tags)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    children.sort(key=lambda r: r.info.run_name)
    port = free_port()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    cmd = ["mlflow", "ui", "--backend-store-uri", args.store, "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    args.out.mkdir(parents=True, exist_ok=True)
    base = f"http://127.0.0.1:{port}/#"
    ids = urllib.parse.quote(json.dumps([c.info.run_id for c in children]))
    experiments = urllib.parse.quote(json.dumps([exp.experiment_id]))
    pages = {
        "mlflow_runs.png": f"{base}/experiments/{exp.experiment_id}/runs?{VIEW}",
        "mlflow_compare.png": f"{base}/compare-runs?runs={ids}&experiments={experiments}&{VIEW}",
        "mlflow_child.png": f"{base}/experiments/{exp.experiment_id}/runs/{children[0].info.run_id}?{VIEW}",
    }
    try:
        wait_for(f"http://127.0.0.1:{port}/health")
        with tempfile.TemporaryDirectory() as profile:
            driver = browser(profile)
            try:
                driver.get(f"http://127.0.0.1:{port}/")
                # first visit: keep the assistant panel closed and the UI on model training
                driver.execute_script(
                    "for (const [k, v] of Object.entries(arguments[0])) localStorage.setItem(k, v);",
                    {
                        "mlflow.assistant.panelOpen_v1": "false",
                        "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true",
                        "mlflow.workflowType_v1": json.dumps("machine_learning"),
                    },
                )
                for name, url in pages.items():
                    driver.get(url)
                    time.sleep(args.wait)
                    if name == "mlflow_runs.png":
                        expand_parents(driver)
                    driver.save_screenshot(str(args.out / name))
                    print(f"{args.out / name}: {url}")
            finally:
                driver.quit()
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
