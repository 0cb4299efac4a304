"""report.html in a real browser: headless Chromium (Debian's package) opens a small run's report from
disk, with no network, and it renders: a page of the expected height, no console error, no request
beyond the file itself, every figure decoded. The full-page screenshot is kept in test-artifacts/
for a person to look at. And `fedsim report` on a damaged copy of the run folder."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from fedsim.loading import validate_scenario
from fedsim.runner import run_scenario
from tests.conftest import REPO, tiny_scenario

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]  # this machine's network is closed: ask for nothing
ARTEFACTS = REPO / "test-artifacts"  # not build/: `make package-check` empties that


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny run with a membership attack (learning curves and a ROC figure)."""
    raw = tiny_scenario(membership={"eval_size": 4, "aux_samples": 4, "targets": ["global_model"]},
                        attacks=[{"name": "mia_loss_threshold"}])
    return run_scenario(validate_scenario(raw), out_dir=tmp_path_factory.mktemp("runs"), log=lambda _: None).run_dir


def _report(folder: Path, capsys) -> tuple[int, str]:
    from fedsim.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["report", str(folder)])
    return exit_.value.code, capsys.readouterr().err.strip()


def test_a_damaged_run_folder_gets_the_report_it_can_and_one_line_naming_what_is_missing(run: Path, tmp_path: Path,
                                                                                        capsys):
    damaged = tmp_path / "damaged"
    shutil.copytree(run, damaged)
    (damaged / "partitions.json").unlink()
    (damaged / "metrics.jsonl").unlink()
    code, err = _report(damaged, capsys)
    assert code == 2 and err.count("\n") == 0 and "metrics.jsonl is missing or unreadable" in err, err
    assert "partitions.json" in err
    page = (damaged / "report.html").read_text()
    assert "partitions.json</code> is missing" in page and "metrics.jsonl</code> is missing" in page
    assert 'id="membership-inference"' in page  # the sections whose data is there are all written
    (damaged / "figures" / "curves.png").unlink()
    (damaged / "summary.json").write_text('{"status": "completed", ')  # torn
    code, err = _report(damaged, capsys)
    assert code == 2 and err.startswith(f"fedsim: error: {damaged / 'summary.json'}: not readable (JSONDecodeError: ")
    assert err.count("\n") == 0
    (damaged / "summary.json").unlink()
    assert _report(damaged, capsys) == (2, f"fedsim: error: not a run folder (no summary.json): {damaged}")
    shutil.copy(run / "summary.json", damaged / "summary.json")
    scenario = yaml.safe_load((damaged / "scenario.yaml").read_text())
    del scenario["task"]["model"]  # a hand-edited scenario.yaml
    (damaged / "scenario.yaml").write_text(yaml.safe_dump(scenario))
    code, err = _report(damaged, capsys)
    assert code == 2 and err.startswith(f"fedsim: error: {damaged}: cannot write its report") and "\n" not in err


def test_html_in_the_report_text_is_shown_as_text(tmp_path: Path):
    from fedsim.html_report import render_page

    page = render_page("# r\n\nerror: cannot pickle <function <lambda>> <img src=x onerror=alert(1)>\n\n"
                       "| MAE | note |\n|---|---|\n| 1.0 | <b>x</b> |\n", tmp_path, title="r", kind="run report",
                       source="here")
    assert "&lt;lambda&gt;" in page and "<img src=x" not in page and "<b>x</b>" not in page
    assert '<thead>\n<tr>\n<th><abbr title="Mean absolute error' in page  # the tooltip sits inside its <th>


def test_the_run_report_renders_in_chromium(run: Path):
    if not Path(CHROMIUM).is_file():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    page_file = run / "report.html"
    html = page_file.read_text()
    assert "src=\"figures/" not in html and html.count("data:image/png;base64,") >= 2  # curves and ROC inlined
    assert 'id="membership-inference"' in html and "What the numbers mean" in html and "<abbr title=" in html

    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTEFACTS / "report.png"
    start = time.perf_counter()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        requests: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(page_file.as_uri(), wait_until="load")
        images = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
        height = page.evaluate("document.documentElement.scrollHeight")
        toc = page.evaluate("Array.from(document.querySelectorAll('nav a')).map(a => a.textContent)")
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    print(f"\nreport.html {page_file.stat().st_size / 1e3:.0f} kB, {height} px high, {len(images)} figures; "
          f"browser {time.perf_counter() - start:.1f} s; screenshot {shot}")
    assert errors == []
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
    assert len(images) >= 2 and all(ok and w > 100 and h > 100 for ok, w, h in images), images
    assert {"Setup", "Result", "Membership inference", "What the numbers mean"} <= set(toc)
    assert height > 1500
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.shape[0] == pytest.approx(height, abs=2) and pixels.shape[1] == 1280
    assert float(np.std(pixels[..., :3])) > 0.05  # not a blank page
