"""`evalharness report`: one self-contained HTML page per comparison, built from fake-backend runs made by the
real run loop (three models x sentiment, KL, AlpacaEval, Arena-Hard, MT-Bench, a judge over real HTTP), and
driven in a real headless Chromium: the viewer, its sort and filters, and hostile model outputs shown as text."""

from __future__ import annotations

import json
import math
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from evalharness.backends.fake import FakeBackend
from evalharness.analysis.compare import build_table, records, resolve
from evalharness.analysis.html_report import render_html, report_data, script_json, write_report
from evalharness.core.prompts import write_prompts
from evalharness.core.records import Generation, GenRequest
from evalharness.pipeline.runner import plan_from_spec, run
from evalharness.store import RunStore
from evalharness.testing import FakeOpenAI, Fault
from evalharness.testing.fake_openai import benchmark_judge, request_text

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "benchmarks" / "demo_data"
# Hostile text in a prompt, in model c's answers and in judge outputs: each would set window.__pwned or the title.
XSS = ("<script>window.__pwned=1;document.title='pwned'</script> "
       "<img src=x onerror=\"window.__pwned=2;document.title='pwned'\"> "
       "<a href=\"javascript:window.__pwned=3\">click me</a> [link](javascript:window.__pwned=4)")
FAILING = "Explain the difference between weather and climate."  # its Arena-Hard games fail (HTTP 500)


class HostileBackend(FakeBackend):
    """The fake policy, its answers carrying the XSS payload."""

    def generate(self, requests: list[GenRequest]) -> list[Generation]:
        out = super().generate(requests)
        for g in out:
            g.text = f"{g.text} {XSS}"
        return out


def judge(body: dict[str, Any]) -> Any:
    """benchmark_judge's verdicts, with the payload in every MT-Bench and Arena-Hard judge text; one question's
    Arena-Hard games answered with no label (unparsed)."""
    text = request_text(body)
    reply = benchmark_judge(body)
    if "Assistant A" in text and "Is 91 a prime number" in text:
        return f"I cannot decide. {XSS}"
    if isinstance(reply, str):
        return f"{XSS}\n{reply}"
    return reply


def _spec(tmp: Path, url: str) -> Path:
    """test_pipeline's spec (three models, every task, judge over HTTP) with two samples per prompt and the
    payload in prompt q0."""
    from test_pipeline import spec_file
    spec = spec_file(tmp, url)
    spec.write_text(spec.read_text().replace("n: 1}", "n: 2}"))
    write_prompts([{"id": "q0", "prompt": f"{XSS} The film was"}] +
                  [{"id": f"q{i}", "prompt": f"The film number {i} was"} for i in range(1, 5)], tmp / "prompts.jsonl")
    return spec


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run of three models through the real run loop, and its report written by the CLI."""
    tmp = tmp_path_factory.mktemp("report")
    results = tmp / "results"
    with FakeOpenAI(judge) as server:
        server.on(FAILING, Fault.http(500))
        plan = plan_from_spec(_spec(tmp, server.url), results_dir=results, progress=False)
        plan.backends = {"c": HostileBackend("c")}
        res = run(plan)
    out = tmp / "report.html"
    p = subprocess.run([sys.executable, "-m", "evalharness.cli", "report", str(res.path), "--against", "a",
                        "--results-dir", str(results), "--out", str(out)], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == f"report: {out}"
    return {"run": res.path, "results": results, "out": out, "html": out.read_text(encoding="utf-8"),
            "store": RunStore(res.path)}


def _blob(page: str) -> dict[str, Any]:
    m = re.search(r'<script id="report-data" type="application/json">(.*?)</script>', page, re.S)
    assert m is not None
    return json.loads(m.group(1))


# ---------------------------------------------------------------- the file itself
def test_one_file_no_external_urls_and_a_strict_csp(built: dict[str, Any]) -> None:
    page = built["html"]
    assert not re.search(r'(src|href)\s*=\s*["\']?\s*(https?:|//)', page, re.I)
    assert "<link" not in page and "@import" not in page and "url(" not in page
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    nonce = re.search(r"script-src 'nonce-([\w-]+)'", csp).group(1)  # type: ignore[union-attr]
    assert "default-src 'none'" in csp and "img-src data:" in csp and "unsafe" not in csp
    scripts = re.findall(r"<script([^>]*)>", page)
    assert scripts == [' id="report-data" type="application/json"', f' nonce="{nonce}"']
    assert page.count(f'nonce="{nonce}"') == 2  # the one style and the one script
    # The payload never appears as markup: the blob escapes every '<'.
    assert "<script>window.__pwned" not in page and "<img src=x" not in page


def test_embedded_json_round_trips_and_holds_compares_numbers(built: dict[str, Any]) -> None:
    data = _blob(built["html"])
    table = build_table(resolve([str(built["run"])], built["results"]), against="a")
    assert data["table"]["records"] == json.loads(json.dumps(records(table)))
    assert [m["label"] for m in data["models"]] == ["a", "b", "c"] and data["against"] == 0
    # AlpacaEval per-item scores are the official annotations' preferences as the policy's win %.
    ann = json.loads((built["run"] / "alpaca_eval" / "b" / "annotations.json").read_text())
    scores = sorted(it["score"] for it in data["tasks"]["alpaca_eval"]["items"][1].values())
    assert scores == pytest.approx(sorted(100 * (r["preference"] - 1) for r in ann))
    # Sentiment per-prompt scores: the mean of the stored verdicts of the prompt's two samples.
    store: RunStore = built["store"]
    vs = [v.value for v in store.verdicts("sentiment", "c") if v.item_id == "q3"]
    assert len(vs) == 2 and data["tasks"]["sentiment"]["items"][2]["q3"]["score"] == pytest.approx(sum(vs) / 2)
    assert len(data["tasks"]["sentiment"]["items"][2]["q3"]["answers"]) == 2
    assert data["tasks"]["sentiment"]["prompts"]["q0"]["text"] == [f"{XSS} The film was"]
    # MT-Bench: both turns' questions and answers under one question; failed Arena-Hard games counted.
    mt = data["tasks"]["mt_bench"]
    unit = next(iter(mt["items"][0]))
    assert len(mt["prompts"][unit]["text"]) == 2 and len(mt["items"][0][unit]["answers"]) == 2
    failed = sum(v.status == "error" for v in store.verdicts("arena_hard", "b"))
    unparsed = sum(v.status == "unparsed" for v in store.verdicts("arena_hard", "b"))
    assert failed == 2 and unparsed == 2
    items = data["tasks"]["arena_hard"]["items"][1].values()
    assert sum(it["failed"] for it in items) == failed and sum(it["unparsed"] for it in items) == unparsed
    titles = [f["title"] for f in data["figures"]]
    assert "Reward vs KL frontier" in titles and "Length vs score: alpaca_eval" in titles
    assert all(f["uri"].startswith("data:image/svg+xml;base64," if f["title"] == "Reward vs KL frontier" else
                                   "data:image/png;base64,") for f in data["figures"])
    prov = data["provenance"][0]
    assert prov["run"] == built["run"].name and prov["judge"]["name"] == "judge-x"
    assert {t: v["version"] for t, v in prov["tasks"].items()}["alpaca_eval"] == "2"


def test_script_json_cannot_close_its_block() -> None:
    nasty = {"a": "</script><script>alert(1)</script>", "b": "<!-- x --> ]]> & \u2028\u2029", "c": [1.5, None]}
    text = script_json(nasty)
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == nasty
    page = render_html({"x": nasty["a"]})
    assert page.count("</script>") == 2  # the blob's and the script's own closing tags, nothing from data


def test_unknown_run_exits_nonzero_with_a_clear_message(tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    p = subprocess.run([sys.executable, "-m", "evalharness.cli", "report", "no-such-run", "--results-dir",
                        str(tmp_path), "--out", str(out)], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 2
    assert "'no-such-run' is neither a run" in p.stderr and not out.exists()


def test_unknown_against_row_names_the_rows(built: dict[str, Any], tmp_path: Path) -> None:
    from evalharness.core.errors import EvalHarnessError
    with pytest.raises(EvalHarnessError, match="rows: a, b, c"):
        write_report([str(built["run"])], tmp_path / "r.html", against="zzz", results_dir=built["results"])
    assert not (tmp_path / "r.html").exists()


# ---------------------------------------------------------------- in a real headless Chromium
def _browser_paths() -> tuple[str, str] | None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Any:
    paths = _browser_paths()
    if paths is None:
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    opts = Options()
    opts.binary_location = paths[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                "--window-size=1400,1000", f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(paths[1]), options=opts)
    yield driver
    driver.quit()


def _open(browser: Any, built: dict[str, Any]) -> None:
    from selenium.webdriver.support.ui import WebDriverWait
    browser.get(built["out"].as_uri())
    WebDriverWait(browser, 30).until(lambda d: d.execute_script("return window.__reportReady === true"))


def _select(browser: Any, id_: str, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    Select(browser.find_element(By.ID, id_)).select_by_value(value)


def _rows(browser: Any) -> list[Any]:
    from selenium.webdriver.common.by import By
    return browser.find_elements(By.CSS_SELECTOR, "#viewer-rows tr.item-row")


def _deltas(browser: Any) -> list[float]:
    from selenium.webdriver.common.by import By
    out = []
    for r in _rows(browser):
        text = r.find_elements(By.TAG_NAME, "td")[5].text
        out.append(math.nan if text == "—" else float(text))
    return out


def test_click_a_prompt_shows_both_answers_and_the_judge_text(browser: Any, built: dict[str, Any]) -> None:
    from selenium.webdriver.common.by import By
    _open(browser, built)
    assert browser.find_element(By.ID, "viewer-a").get_attribute("value") == "0"  # the --against row
    _select(browser, "viewer-task", "arena_hard")
    _select(browser, "viewer-b", "2")
    _select(browser, "viewer-sort", "item")
    first = _rows(browser)[0]
    first.click()
    detail = browser.find_element(By.CSS_SELECTOR, "#viewer-rows tr.detail-row")
    sides = detail.find_elements(By.CSS_SELECTOR, ".side")
    assert len(sides) == 2
    answers = [s.find_elements(By.CSS_SELECTOR, "pre.answer") for s in sides]
    assert all(len(a) == 1 and a[0].text.strip() for a in answers)
    assert XSS.split(" <img")[0] in answers[1][0].text  # model c's answer carries the payload, as text
    raws = [r.text for r in detail.find_elements(By.CSS_SELECTOR, "pre.judge-raw")]
    assert len(raws) == 4 and all("My final verdict is [[B>A]]" in r for r in raws)  # two games per model
    prompt = detail.find_element(By.CSS_SELECTOR, "pre.prompt-text").text
    store: RunStore = built["store"]
    uid = next(v.item_id for v in sorted(store.verdicts("arena_hard", "a"), key=lambda v: v.item_id))
    questions = {json.loads(line)["uid"]: json.loads(line)["prompt"]
                 for line in (DEMO / "arena_hard" / "questions.jsonl").read_text().splitlines() if line.strip()}
    assert prompt == questions[uid]
    baseline = json.loads((DEMO / "arena_hard" / "arena-hard-v0.1" / "model_answer" / "demo-baseline.jsonl")
                          .read_text().splitlines()[0])
    assert baseline["uid"] == uid
    shown = detail.find_element(By.CSS_SELECTOR, "details.baseline")
    shown.find_element(By.TAG_NAME, "summary").click()
    assert shown.find_element(By.CSS_SELECTOR, "pre.answer").text == baseline["messages"][1]["content"]["answer"].strip()
    first.click()  # a second click closes it
    assert not browser.find_elements(By.CSS_SELECTOR, "#viewer-rows tr.detail-row")


def test_sort_and_filters_change_what_is_shown(browser: Any, built: dict[str, Any]) -> None:
    from selenium.webdriver.common.by import By
    _open(browser, built)
    store: RunStore = built["store"]
    _select(browser, "viewer-task", "arena_hard")
    n_items = len({v.item_id for v in store.verdicts("arena_hard", "a")})
    assert len(_rows(browser)) == n_items
    summary = browser.find_element(By.ID, "viewer-summary").text
    assert "Failed judgments: A 2, B 2" in summary and "unparsed: A 2, B 2" in summary
    # failed or unparsed: exactly the questions with such a judgment in the store
    bad = {v.item_id for m in ("a", "b") for v in store.verdicts("arena_hard", m) if v.status != "ok"}
    _select(browser, "viewer-verdict", "failed")
    assert len(_rows(browser)) == len(bad) == 2
    _select(browser, "viewer-verdict", "all")
    # |Δ| sort on sentiment (models a and c differ per prompt): non-increasing magnitudes, item order differs
    _select(browser, "viewer-task", "sentiment")
    _select(browser, "viewer-b", "2")
    _select(browser, "viewer-sort", "absdiff")
    d = _deltas(browser)
    assert len(d) == 5 and all(abs(x) >= abs(y) - 1e-9 for x, y in zip(d, d[1:]))
    _select(browser, "viewer-sort", "diff-asc")
    assert _deltas(browser) == sorted(d)
    # MT-Bench: the category filter shows that category's questions only
    _select(browser, "viewer-task", "mt_bench")
    assert len(_rows(browser)) == 4
    _select(browser, "viewer-category", "math")
    [row] = _rows(browser)
    assert row.find_elements(By.TAG_NAME, "td")[1].text == "What is 15% of 80?"
    _select(browser, "viewer-category", "")
    # AlpacaEval: text search over prompts, answers and judge texts
    _select(browser, "viewer-task", "alpaca_eval")
    eval_set = json.loads((DEMO / "alpaca_eval" / "eval_set.json").read_text())
    assert len(_rows(browser)) == len(eval_set)
    word = eval_set[2]["instruction"].split()[-1].strip(".?!")
    browser.find_element(By.ID, "viewer-search").send_keys(word)
    shown = [r.find_elements(By.TAG_NAME, "td")[1].text for r in _rows(browser)]
    expected = [e["instruction"] for e in eval_set if word.lower() in e["instruction"].lower()]
    assert 1 <= len(shown) < len(eval_set) and set(shown) <= set(expected)


def test_hostile_outputs_show_as_text_and_nothing_runs(browser: Any, built: dict[str, Any], tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    _open(browser, built)
    _select(browser, "viewer-task", "mt_bench")
    _select(browser, "viewer-b", "2")
    _rows(browser)[0].click()
    _select(browser, "viewer-task", "sentiment")  # prompt q0 carries the payload
    _select(browser, "viewer-sort", "item")
    _rows(browser)[0].click()
    body = browser.find_element(By.TAG_NAME, "body").text
    for part in ("<script>window.__pwned=1;document.title='pwned'</script>", "onerror=\"window.__pwned=2",
                 "href=\"javascript:window.__pwned=3\"", "[link](javascript:window.__pwned=4)"):
        assert part in body
    assert browser.execute_script("return window.__pwned") is None
    assert browser.title.startswith("evalharness report")
    assert not browser.find_elements(By.CSS_SELECTOR, "#app a, #app script, #app img:not(figure img)")
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []  # no CSP violation, no script error
    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot))
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 1000 and height >= 600 and len(data) > 30_000


def test_report_data_defaults_to_the_against_row_and_the_best_row(built: dict[str, Any]) -> None:
    from evalharness.analysis.compare import best_checkpoint
    data = report_data([str(built["run"])], against="a", results_dir=built["results"])
    table = build_table(resolve([str(built["run"])], built["results"]), against="a")
    best = best_checkpoint(table, "sentiment")  # the table's first column with a direction
    assert best is not None and data["best"]["best_model"] == best["best_model"] in ("b", "c")
    assert data["default_a"] == 0 and data["default_b"] == ["a", "b", "c"].index(best["best_model"])


# ---------------------------------------------------------------- the sweep (and so the quickstart) writes one
def test_sweep_writes_the_report_beside_the_frontier(tmp_path: Path, tiny_model: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from test_sweep import _spec

    from evalharness.cli import _print_sweep
    from evalharness.workflows.sweep import load_train_spec, run_sweep
    path = _spec(tmp_path, tiny_model)
    path.write_text(path.read_text().replace("  dpo: {beta: [0.1, 0.5]}\n  simpo: {gamma: 0.5}\n", "  dpo: {beta: 0.1}\n"))
    spec, runs = load_train_spec(path)
    res = run_sweep(spec, runs, results_dir=tmp_path / "results", progress=False)
    assert res.report == res.path / "report.html" and res.plots[0].parent == res.path
    data = _blob(res.report.read_text(encoding="utf-8"))
    assert [m["label"] for m in data["models"]] == ["sft", "dpo-beta0.1-s0@1", "dpo-beta0.1-s0@2"]
    assert data["against"] == 0 and data["best"]["best_model"] == res.verdict["best_model"]
    shown = {(r["model"], r["metric"]): r for r in data["table"]["records"]}
    assert all(shown[(r["model"], r["metric"])] == r for r in res.table)  # the sweep's own comparison numbers
    titles = [f["title"] for f in data["figures"]]
    assert "Reward vs KL frontier" in titles and any(t.startswith("Trend over checkpoints: sentiment") for t in titles)
    _print_sweep(res)
    assert f"report: {res.report}" in capsys.readouterr().out.splitlines()
