"""The viewer site: content and escaping in the HTML, then the real thing in headless Chromium."""

import json
import shutil
from pathlib import Path

import pytest

from bench.cli import main
from bench.report.viewer import write_site
from tests.report_fixtures import make_run

EVIL_TOKEN = "<script>window.PWNED=1</script>"
EVIL_EXPLANATION = '<script>document.title="pwned"</script><img src=x onerror="window.PWNED=2"> rain'


@pytest.fixture
def site(tmp_path: Path) -> Path:
    make_run(
        tmp_path,
        "run",
        [0.3, 0.7, 0.5],
        [0.0, 0.1, 0.2],
        explanation=EVIL_EXPLANATION,
        tokens=[EVIL_TOKEN, " rain", "\n", " fell"],
        layers=[10, 15, 15],
    )
    return write_site(tmp_path / "run", tmp_path / "site")


def test_pages_escape_everything_from_models_and_corpora(site):
    index = site.read_text()
    assert index.count("<script>") == 1  # the site's own sorting script, nothing else
    assert "&lt;script&gt;document.title=&#34;pwned&#34;&lt;/script&gt;&lt;img" in index
    unit = (site.parent / "units" / "mlp_neuron_L15_1.html").read_text()
    assert "<script>" not in unit and "<img" not in unit
    assert "&lt;script&gt;window.PWNED=1&lt;/script&gt;" in unit
    assert "script-src &#39;none&#39;" in unit  # unit pages run no script at all (CSP, attribute-escaped)


def test_unit_page_shows_explanation_control_scores_reasons_and_every_excerpt(site):
    unit = (site.parent / "units" / "mlp_neuron_L15_1.html").read_text()
    assert "other unit&#39;s words" in unit  # the control explanation
    assert "calibration failed: constant simulation" in unit  # a NaN score's reason
    assert unit.count('class="pair"') == 1 + 2  # one scored excerpt (real | simulated) + the train excerpts
    assert unit.count("real 3.500 · simulated 8.00") == 1 and unit.count("simulated 8.00 · real 3.500") == 1
    assert "↵" in unit  # a newline token is visible


def test_failed_unit_is_listed_with_its_stage_and_error(tmp_path):
    d = make_run(tmp_path, "run", [0.3, 0.5], [0.0, 0.1], train=False)
    lines = (d / "results.jsonl").read_text().splitlines()
    failed = json.loads(lines[1]) | {"status": "failed", "stage": "simulate", "error": "Timeout: <b>slow</b>"}
    failed["scores"], failed["simulation"] = {}, None
    (d / "results.jsonl").write_text(lines[0] + "\n" + json.dumps(failed) + "\n")
    index = write_site(d)
    assert index == d / "viewer" / "index.html"
    unit = (index.parent / "units" / "mlp_neuron_L15_1.html").read_text()
    assert "failed" in index.read_text() and "Timeout: &lt;b&gt;slow&lt;/b&gt;" in unit and "at simulate" in unit
    assert "not recorded in this run folder" in unit


def test_cli_view_logs_the_site_to_the_runs_mlflow_run(tmp_path, mlflow_store, capsys):
    from mlflow.tracking import MlflowClient

    d = make_run(tmp_path, "run", [0.3, 0.5], [0.0, 0.1])
    client = MlflowClient(tracking_uri=mlflow_store["uri"])
    exp = client.create_experiment("e", artifact_location=Path(mlflow_store["artifacts"]).as_uri())
    run_id = client.create_run(exp).info.run_id
    (d / "mlflow_run.json").write_text(json.dumps({"run_id": run_id, "tracking_uri": mlflow_store["uri"]}))
    assert main(["view", str(d), "--out", str(tmp_path / "site")]) == 0
    assert f"logged to MLflow run {run_id}" in capsys.readouterr().out
    logged = {a.path for a in client.list_artifacts(run_id, "viewer")}
    assert {"viewer/index.html", "viewer/units"} <= logged


def test_cli_view_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["view", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not a finished run folder" in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------ headless Chromium
CHROMIUM_FLAGS = (
    "--headless=new --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking "
    "--disable-component-update --disable-sync --disable-dev-shm-usage --window-size=1400,1000"
).split()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.fail(
            "viewer tests need Debian's chromium and chromium-driver: apt-get install -y chromium chromium-driver"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    yield driver
    driver.quit()


def _console_errors(driver) -> list[dict]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_index_loads_from_file_url_sorts_and_is_screenshotted(site, browser, tmp_path):
    browser.get(site.as_uri())
    assert _console_errors(browser) == []
    first_col = lambda: [r.text for r in browser.find_elements("css selector", "#units tbody td:first-child")]  # noqa: E731
    assert first_col() == ["mlp_neuron/L10/0", "mlp_neuron/L15/1", "mlp_neuron/L15/2"]
    header = next(th for th in browser.find_elements("css selector", "th") if th.text == "correlation/top_and_random")
    header.click()  # descending by score: 0.7, 0.5, 0.3
    assert first_col() == ["mlp_neuron/L15/1", "mlp_neuron/L15/2", "mlp_neuron/L10/0"]
    header.click()
    assert first_col() == ["mlp_neuron/L10/0", "mlp_neuron/L15/2", "mlp_neuron/L15/1"]
    shot = tmp_path / "index.png"
    assert browser.save_screenshot(str(shot)) and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _console_errors(browser) == []


def test_unit_page_injected_script_stays_inert_text(site, browser, tmp_path):
    browser.get(site.as_uri())
    browser.find_element("link text", "mlp_neuron/L15/1").click()
    assert browser.current_url.endswith("units/mlp_neuron_L15_1.html")
    assert browser.execute_script("return window.PWNED === undefined") is True
    assert browser.title != "pwned" and browser.title.startswith("mlp_neuron/L15/1")
    assert browser.find_elements("css selector", "script") == [] and browser.find_elements("css selector", "img") == []
    assert browser.find_element("id", "explanation").text.startswith('<script>document.title="pwned"</script>')
    assert EVIL_TOKEN in browser.find_element("css selector", ".pair .tokens").text
    assert _console_errors(browser) == []
    shot = tmp_path / "unit.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 1000


def test_pipeline_keeps_the_train_excerpts_the_viewer_shows(tmp_path):
    from bench.records import ActivationRecord, UnitId, UnitRecord, UnitStats
    from bench.run.folder import read_run, write_train_excerpts

    top = [ActivationRecord([f"t{i}", " x"], [float(10 - i), 0.0]) for i in range(20)]
    rand = [ActivationRecord([f"r{i}", " y"], [0.0, 0.1]) for i in range(15)]
    record = UnitRecord(UnitId(3, 7), top, rand, UnitStats(1, 0.0, 1.0, 0.0, 0.0))
    d = make_run(tmp_path, "run", [0.3], [0.0], train=False)
    path = write_train_excerpts(d, {record.unit.key: record}, examples_per_split=2)
    first = path.read_text()
    train = read_run(d).train[record.unit.key]
    assert [r["tokens"][0] for r in train["top"]] == ["t0", "t4"]  # top[0::4][:2]: the train split of method.md
    assert train["random"] == []  # the explainer sees top excerpts only
    write_train_excerpts(d, {}, examples_per_split=2)  # a resumed run keeps the file it has
    assert path.read_text() == first


def test_leaderboard_page_loads_with_its_plots(tmp_path, browser):
    from bench.leaderboard import write_leaderboard

    make_run(tmp_path / "runs", "a", [0.3, 0.5, 0.4], [0.0, 0.1, 0.0], explainer=EVIL_TOKEN)
    make_run(tmp_path / "runs", "b", [0.2, 0.4, 0.3], [0.0, 0.1, 0.0])
    page = write_leaderboard(tmp_path / "runs", tmp_path / "out", "T").with_suffix(".html")
    browser.get(page.as_uri())
    assert _console_errors(browser) == []
    sizes = browser.execute_script("return Array.from(document.images).map(i => i.naturalWidth)")
    assert len(sizes) == 2 and all(w > 100 for w in sizes)  # distributions and score-vs-cost PNGs shown
    assert browser.execute_script("return window.PWNED === undefined") is True
    assert EVIL_TOKEN in browser.find_element("css selector", "tbody tr td:nth-child(3)").text
