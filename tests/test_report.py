"""`mlops-nb monitor --html`: the real monitor on an inference log written by the real writer, its page opened in
headless
Chromium (what a person sees: the verdict, the drifted feature's bar and name, the windows; no console error, no
request), and a page of hostile names that must show them, never run or fetch them."""
# ruff: noqa: F811  (the Chromium fixtures are imported from test_docs and named as parameters)
import json
import pandas as pd
import pytest
from conftest import Recorder, run_cli
from test_docs import _errors, browser_bins, driver  # noqa: F401  (the headless Chromium fixtures)

DAYS = (2021, 2021, 2023)  # the listings each logged day holds: the third day's market has moved


def _listings(year, n, seed):
    "Listings and the request records a client sends for them (dates as text)."
    from mlops_nb.examples.ottawa import PROBLEM, generate_listings
    df = generate_listings(year, n, seed=seed)
    recs = json.loads(df[["listing_id", *PROBLEM.inputs]].assign(listing_date=df.listing_date.dt.strftime("%Y-%m-%d"))
                      .to_json(orient="records"))
    return df, recs


@pytest.fixture(scope="module")
def monitored(tmp_path_factory, model_dir, data_dir, state):
    ("Three days of requests in an inference log (the real writer), "
     "labels for the last two, then `monitor --html --json`.")
    from mlops_nb.examples.ottawa import TARGET
    from mlops_nb.inference_log import InferenceLog
    from mlops_nb.problem import predict_outputs
    from mlops_nb.serving import load_runtime
    t = tmp_path_factory.mktemp("report")
    rt = load_runtime(str(model_dir))
    log, labels = InferenceLog(t/"log", rt.request_schema, rt.kind, rt.labels), []
    day0 = pd.Timestamp.now(tz="UTC").floor("D") - pd.Timedelta(days=3)
    try:
        for day, year in enumerate(DAYS):
            df, recs = _listings(year, 400, seed=day)
            outputs = predict_outputs(rt.pipeline, df, rt.kind)
            for i in range(40):
                rid, at = f"d{day}-{i}", day0 + pd.Timedelta(days=day, minutes=10 + i)
                meta = {"request_id": rid, "time": at.timestamp(), "latency_ms": 1.0, "model": "m", "version": "1"}
                assert log.put(recs[i*10:(i+1)*10], outputs[i*10:(i+1)*10], meta, sampled=True)
                if day:
                    labels += [{"request_id": rid, "row": r, TARGET: v} for r,
                               v in enumerate(df[TARGET][i*10:(i+1)*10])]
    finally: log.close()
    assert log.rows_written == 1200, log.dropped
    pd.DataFrame(labels).to_csv(t/"labels.csv", index=False)
    p = run_cli("monitor", "--reference", data_dir/"2021.parquet", "--current", t/"log", "--labels", t/"labels.csv",
                "--model", model_dir, "--html", t/"report.html", "--json")
    assert p.returncode == 0, p.stderr
    return dict(t=t, out=json.loads(p.stdout), stderr=p.stderr)


def test_the_report_holds_the_monitor_and_its_windows(monitored):
    from mlops_nb.report import render
    out, page = monitored["out"], (monitored["t"]/"report.html").read_text()
    assert f"report: {monitored['t']/'report.html'}" in monitored["stderr"]
    assert out["drift"] and out["drifted"] and out["decay"] and out["rows"]["current"] == 800  # the labelled rows
    assert list(out["distributions"]) == sorted(out["drifted"], key=lambda n: -out["features"][n]["psi"])
    wins = out["windows"]
    assert [(w["rows"], w["labelled"]) for w in wins] == [(400, 0), (400, 400), (400, 400)]
    assert wins[0]["measured"] is None and 0.5 < wins[1]["measured"]["roc_auc"] <= 1
    assert set(wins[2]["drifted"]) & set(out["drifted"]) and wins[2]["max_psi"] > wins[1]["max_psi"]  # the moved day
    assert render(out) == page  # the saved --json renders the same page


def test_a_person_sees_the_verdict_the_drifted_bars_and_the_windows(monitored, driver):
    from selenium.webdriver.common.by import By
    out, path = monitored["out"], monitored["t"]/"report.html"
    driver.get(path.as_uri())
    verdict = driver.find_element(By.ID, "verdict").text
    assert ("Retraining advised" if out["retrain"] else "No retraining needed") in verdict and "drift: yes" in verdict
    rows = driver.find_elements(By.CSS_SELECTOR, "#drift tr.feature")
    assert len(rows) == len(out["features"])
    top = max(out["drifted"], key=lambda n: out["features"][n]["psi"])
    first = rows[0]
    assert first.find_element(By.TAG_NAME, "td").text == top and first.text.endswith("drifted")  # drifted first
    bar, mark = first.find_element(By.CSS_SELECTOR, ".bar"), first.find_element(By.CSS_SELECTOR, ".thr")
    assert bar.size["width"] > mark.location["x"] - bar.location["x"] > 0  # the bar crosses the threshold line
    assert bar.value_of_css_property("background-color") == "rgba(192, 57, 43, 1)"  # drawn red
    quiet = [r for r in rows if r.text.endswith(" ok")]
    if quiet: assert quiet[-1].find_element(By.CSS_SELECTOR, ".bar").size["width"] < bar.size["width"]
    heads = [h.text for h in driver.find_elements(By.CSS_SELECTOR, "#distributions h3")]
    assert heads[0].startswith(top) and len(heads) == len(out["distributions"])
    decay = driver.find_element(By.ID, "decay").text
    assert "roc_auc" in decay and "not available" not in decay
    for key in ("estimated", "output"):  # the monitor's own keys, when it reports them
        assert ("not available" in driver.find_element(By.ID, key).text) == (not out.get(key))
    lines = driver.find_elements(By.CSS_SELECTOR, "#windows tr")[1:]
    assert len(lines) == 3 and [td.text for td in lines[0].find_elements(By.TAG_NAME, "td")][1:3] == ["400", "0"]
    assert f"{out['windows'][1]['measured']['roc_auc']:.4f}" in lines[1].text
    assert not _errors(driver), _errors(driver)
    assert driver.execute_script("return performance.getEntriesByType('resource').length") == 0  # nothing fetched


def test_hostile_names_are_shown_never_run_nor_fetched(driver, tmp_path):
    from selenium.webdriver.common.by import By
    from mlops_nb.report import write_html
    rec = Recorder()
    try:
        names = ["<script>window.pwned = 1</script>", f'<img src="{rec.url}/img" onerror="window.pwned = 2">',
                 f'"><link rel="stylesheet" href="{rec.url}/css">']
        report = {"drift": True, "retrain": True, "reasons": [f"feature drift: {names[0]}"], "drifted": names,
                  "rows": {"reference": 10, "current": 10}, "thresholds": {"psi": 0.2},
                  "features": {n: {"kind": "categorical", "psi": 0.5 + i, "drifted": True} for i,
                               n in enumerate(names)},
                  "distributions": {n: {"kind": "categorical", "bins": [n], "reference": [1.0], "current": [1.0]}
                                    for n in names},
                  "estimated": {names[1]: {"value": 0.9, "calibration_error": 0.01, "method": names[0]}},
                  "output": {"psi": 0.1, "drifted": False, "note": names[2]},
                  "windows": [{"start": names[0], "rows": 1, "drifted": names, "notes": [names[1]]}]}
        driver.get(write_html(tmp_path/"hostile.html", report).as_uri())
        assert driver.execute_script("return window.pwned === undefined")
        cells = [r.find_element(By.TAG_NAME, "td").text
                 for r in driver.find_elements(By.CSS_SELECTOR, "#drift tr.feature")]
        assert cells == names[::-1]  # shown as text, the highest PSI first
        assert names[0] in driver.find_element(By.ID, "verdict").text
        assert not driver.find_elements(By.CSS_SELECTOR, "script, img, link, iframe")
        assert driver.execute_script("return performance.getEntriesByType('resource').length") == 0
        assert not rec.seen, rec.seen
    finally: rec.close()


@pytest.mark.parametrize("args, msg", [(["--report-window", "soon"], "report window 'soon' is not allowed"),
                                       (["--html", "/nonexistent/dir/r.html"], "cannot write the report")])
def test_bad_report_options_are_one_line(monitored, data_dir, args, msg):
    a = {"--html": str(monitored["t"]/"other.html"), "--report-window": "1D"}
    a.update(dict(zip(args[::2], args[1::2])))
    p = run_cli("monitor", "--reference", data_dir/"2021.parquet", "--current", monitored["t"]/"log",
                *[x for kv in a.items() for x in kv])
    assert p.returncode == 2 and msg in p.stderr and "Traceback" not in p.stderr, p.stderr
