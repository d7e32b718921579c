"""The docs site (scripts/docs.py, the nbconvert fallback for nbdev-docs): every page, links, no network assets,
and a real render in headless Chromium."""
import functools, http.server, json, os, re, shutil, subprocess, sys, threading, time
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT/"nbs"
PY = sys.executable

@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")/"_site"
    r = subprocess.run([PY, ROOT/"scripts"/"docs.py", "--out", out], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"\d+ pages written", r.stdout), r.stdout
    return out

def test_every_notebook_has_a_page(site):
    assert (site/"index.html").is_file()
    for nb in sorted(NBS.glob("[0-9]*.ipynb")): assert (site/f"{nb.stem}.html").is_file(), nb.name
    tuts = sorted((NBS/"tutorials").glob("*.ipynb"))
    assert len(tuts) >= 5
    for nb in tuts: assert (site/"tutorials"/f"{nb.stem}.html").is_file(), nb.name

def test_check_finds_no_broken_links(site):
    r = subprocess.run([PY, ROOT/"scripts"/"docs.py", "--out", site, "--check", "--no-build"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr

def test_check_reports_a_broken_link(tmp_path, site):
    bad = tmp_path/"s"; shutil.copytree(site, bad)
    (bad/"index.html").write_text((bad/"index.html").read_text().replace("</main>", '<a href="nope.html">x</a></main>'))
    r = subprocess.run([PY, ROOT/"scripts"/"docs.py", "--out", bad, "--check", "--no-build"], capture_output=True, text=True)
    assert r.returncode == 1 and "index.html: broken link nope.html" in r.stderr, r.stderr

def test_no_external_scripts_or_stylesheets(site):
    pat = re.compile(r'<(script|link)\b[^>]*\b(src|href)=["\']?(https?:)?//', re.I)
    for page in site.rglob("*.html"):
        text = page.read_text()
        assert not pat.search(text), f"{page.name}: {pat.search(text).group(0)}"
        assert "cdnjs" not in text and "mathjax" not in text.lower() and "require.js" not in text

def test_processing(site):
    core = (site/"00_core.html").read_text()
    assert "#|" not in core and "default_exp" not in core          # directives never shown
    assert "MlopsNbError" in core                                  # show_doc of an exported class
    assert "from fastcore.test import" not in core                  # `#| hide` cell dropped
    assert ".ipynb" not in re.sub(r"<footer>.*?</footer>", "", (site/"tutorials"/"01_getting_started.html").read_text(), flags=re.S)

# ---------------------------------------------------------------- headless Chromium
def _find(*names):
    return next((shutil.which(n) for n in names if shutil.which(n)), None)

@pytest.fixture(scope="module")
def browser_bins():
    chrome, driver = _find("chromium", "chromium-browser", "google-chrome"), _find("chromedriver")
    if not (chrome and driver):
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            pytest.skip("chromium/chromium-driver missing and not root with apt-get: cannot install them")
        t = time.time()
        r = subprocess.run(["apt-get", "install", "-y", "chromium", "chromium-driver"], capture_output=True, text=True, timeout=900,
                           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        print(f"apt-get install chromium chromium-driver: rc={r.returncode} in {time.time()-t:.0f}s")
        chrome, driver = _find("chromium", "chromium-browser"), _find("chromedriver")
        if not (chrome and driver): pytest.skip(f"could not install chromium: {r.stderr[-500:]}")
    try: import selenium  # noqa: F401
    except ImportError: pytest.skip("selenium not installed (pip install selenium; it is in the dev extra)")
    return chrome, driver

@pytest.fixture(scope="module")
def server(site):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a): pass
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown(); httpd.server_close()

@pytest.fixture(scope="module")
def driver(browser_bins, tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    chrome, chromedriver = browser_bins
    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for f in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--window-size=1280,900",
              f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(f)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(chromedriver), options=opts)
    d.set_page_load_timeout(20)
    yield d
    d.quit()

def _errors(driver):
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]

def test_site_renders_in_chromium(driver, server, site, tmp_path):
    from selenium.webdriver.common.by import By
    driver.get(server + "/index.html")
    assert "mlops_nb" in driver.title
    assert driver.find_element(By.TAG_NAME, "h1").text.startswith("mlops_nb")
    side = driver.find_elements(By.CSS_SELECTOR, "nav.sidebar li a")
    hrefs = [a.get_attribute("href") for a in side]
    labels = [a.text for a in side]
    assert "Home" in labels and any("core" in l for l in labels) and any("Getting started" in l for l in labels), labels
    assert not _errors(driver), _errors(driver)
    shot = tmp_path/"screenshot.png"
    driver.get(server + "/02_params.html")                               # an API page
    assert "params" in driver.title and driver.find_element(By.TAG_NAME, "h1").text.startswith("params")
    assert driver.find_elements(By.CSS_SELECTOR, "nav.sidebar a.active")
    assert "read_params" in driver.find_element(By.ID, "content").text   # its show_doc
    # the stylesheet applied: the sidebar is laid out beside the content
    assert driver.find_element(By.CSS_SELECTOR, "nav.sidebar").size["width"] >= 200
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 5000
    shutil.copy(shot, site/"screenshot.png")
    print(f"screenshot: {shot} (copied to {site/'screenshot.png'})")
    assert not _errors(driver), _errors(driver)
    for href in hrefs:                                                   # every sidebar link gives a 200 page
        driver.get(href)
        status = driver.execute_script(
            "const e = performance.getEntriesByType('navigation')[0]; return e ? e.responseStatus : null")
        assert status in (200, None), (href, status)
        assert driver.find_elements(By.CSS_SELECTOR, "nav.sidebar") and driver.find_element(By.TAG_NAME, "h1").text, href
        assert "404" not in driver.title, href
        assert not _errors(driver), (href, _errors(driver))
