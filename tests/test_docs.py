"""The docs site (scripts/docs.py, the nbconvert fallback for nbdev-docs): every page, links, no network assets,
and a real render in headless Chromium; the docs pipeline's command; nbdev's Quarto settings (nbs/_quarto.yml,
nbs/nbdev.yml) committed and what nbdev writes; every CLI example of the tutorials parses."""
import functools, http.server, importlib.util, json, os, re, shlex, shutil, subprocess, sys, threading, time
from pathlib import Path
import pytest, yaml

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT/"nbs"
PY = sys.executable

def _without_quarto():
    "PATH without any folder that holds a `quarto`."
    return os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep) if d
                           and not (Path(d)/"quarto").exists())

@pytest.fixture(scope="module")
def site_build(tmp_path_factory):
    """The docs pipeline's one command (.github/workflows/docs.yml runs it too) where Quarto is absent, with the site
    written elsewhere: (its arguments, its stdout, the site). One build serves every test of the site (a build is
    slow)."""
    from mlops_nb.pipeline import PIPELINES
    [step] = PIPELINES["docs"]
    args = shlex.split(step.cmd)
    out = tmp_path_factory.mktemp("site")/"_site"
    args[args.index("--out") + 1:args.index("--out") + 2] = [str(out)]
    r = subprocess.run([PY, *args[1:]], cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PATH": _without_quarto()})
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"\d+ pages written", r.stdout), r.stdout
    return args, r.stdout, out

@pytest.fixture(scope="module")
def site(site_build): return site_build[2]

def test_every_notebook_has_a_page(site):
    assert (site/"index.html").is_file()
    for nb in sorted(NBS.glob("[0-9]*.ipynb")): assert (site/f"{nb.stem}.html").is_file(), nb.name
    tuts = sorted((NBS/"tutorials").glob("*.ipynb"))
    assert len(tuts) >= 6 and "06_bring_your_own_problem.ipynb" in [t.name for t in tuts]
    for nb in tuts: assert (site/"tutorials"/f"{nb.stem}.html").is_file(), nb.name

def test_check_finds_no_broken_links(site):
    r = subprocess.run([PY, ROOT/"scripts"/"docs.py", "--out", site, "--check", "--no-build"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr

def test_check_reports_a_broken_link(tmp_path, site):
    bad = tmp_path/"s"
    shutil.copytree(site, bad)
    (bad/"index.html").write_text((bad/"index.html").read_text().replace("</main>", '<a href="nope.html">x</a></main>'))
    r = subprocess.run([PY, ROOT/"scripts"/"docs.py", "--out", bad, "--check", "--no-build"], capture_output=True,
                       text=True)
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
    assert ".ipynb" not in re.sub(r"<footer>.*?</footer>", "", (site/"tutorials"/"01_getting_started.html").read_text(),
                                  flags=re.S)

# ---------------------------------------------------------------- the README and the manual
SITE_URL = "https://mlops-nb.github.io/mlops_nb"
# The sections the README held until it became a short front door (issue 19), and the manual page (nbs/manual/) that
# holds each now: `heading` must be a heading (h1-h3) of `page`.
MOVED = [("Using the CLI", "manual/03_training.html"), ("The run-mode contract", "manual/03_training.html"),
         ("Tracking, registry and selection", "manual/03_training.html"), ("Serving", "manual/04_serving.html"),
         ("The clients teams already have, live traffic, and the closed loop", "manual/05_protocols.html"),
         ("Packaging and rollout", "manual/06_packaging.html"), ("Pipelines", "manual/07_pipelines.html"),
         ("Databricks", "manual/08_databricks.html"),
         ("Jobs as code: the Databricks Asset Bundle", "manual/08_databricks.html"),
         ("Unity Catalog models: what was exercised against what", "manual/08_databricks.html"),
         ("Profiles and Azure ML", "manual/09_azureml.html"), ("Monitoring drift", "manual/10_monitoring.html"),
         ("The closed loop over several periods", "manual/10_monitoring.html"),
         ("Batch scoring and drift at scale", "manual/11_batch.html"),
         ("Measured here (bench/bench_batch.py)", "manual/11_batch.html"),
         ("Security", "manual/12_security.html"),
         ("What runs for real, and what does not yet", "manual/13_status.html"),
         ("Performance", "manual/14_performance.html"),
         ("Developing: notebooks are the source", "manual/15_developing.html"),
         ("Docs", "manual/15_developing.html"), ("What mlops_nb does", "manual/01_overview.html"),
         ("Your own problem: the project and its declaration", "manual/02_problems.html")]

def _headings(page: Path) -> list[str]:
    import html as h
    return [h.unescape(re.sub(r"<[^>]+>", "", x)).replace("\N{PILCROW SIGN}", "").strip()
            for x in re.findall(r"<h[1-3][^>]*>(.*?)</h[1-3]>", page.read_text(), re.S)]

def _readme_site_links() -> list[str]:
    return re.findall(r"\]\((" + re.escape(SITE_URL) + r"/[^)\s]*)\)", (ROOT/"README.md").read_text())

def test_readme_is_a_short_front_door():
    "At most 200 lines: what it is, the two commands with their measured times, your own problem, the map, what next."
    text = (ROOT/"README.md").read_text()
    assert len(text.splitlines()) <= 200, len(text.splitlines())
    heads = re.findall(r"^## (.+)$", text, re.M)
    assert heads[:2] == ["The two commands", "Bring your own problem"] and "Where to go next" in heads, heads
    assert re.search(r"`bash scripts/demo` takes .*\d+ (s|min)",
                     text) and re.search(r"`bash scripts/test` about \d+ min", text)
    assert "bash scripts/demo --full" in text

def test_every_readme_link_to_the_site_is_a_built_page(site):
    "The README links to the published site; each link names a page this build writes (so it exists once published)."
    links = _readme_site_links()
    assert len(links) >= 15, links
    for url in links:
        path = url[len(SITE_URL):].split("#")[0].lstrip("/") or "index.html"
        assert (site/path).is_file(), f"README links to {url}, which the site does not have"
    for nb in sorted((NBS/"manual").glob("*.ipynb")):            # every manual page is reachable from the README
        assert f"{SITE_URL}/manual/{nb.stem}.html" in links, nb.name
    index = (site/"index.html").read_text()                      # on the site itself the links are relative
    assert 'href="manual/04_serving.html"' in index and f'href="{SITE_URL}/manual/' not in index

def test_the_manual_holds_every_section_the_readme_moved(site):
    for heading, page in MOVED:
        assert heading in _headings(site/page), f"{page} has no heading {heading!r}: {_headings(site/page)}"
    side = (site/"manual"/"13_status.html").read_text()
    assert '<ul class="nav-manual">' in side and "Not run against the real thing" in side

# ---------------------------------------------------------------- the docs pipeline's build
def test_the_docs_pipeline_builds_and_checks_the_fallback_where_quarto_is_absent(site_build):
    "The docs pipeline's one command, run by `site_build` (the site every test above reads): the fallback, checked."
    from mlops_nb.pipeline import DOCS_SITE, PIPELINES
    [step] = PIPELINES["docs"]
    args, stdout, out = site_build
    assert args[:2] == ["python", "scripts/docs.py"] and {"--engine", "--check"} <= set(args)
    assert DOCS_SITE in step.cmd
    assert "engine: fallback (quarto is not on PATH)" in stdout and re.search(r"check: \d+ pages, every "
                                                                              r"relative link resolves", stdout)
    page = (out/"tutorials"/"06_bring_your_own_problem.html").read_text()
    assert "<title>Bring your own problem" in page and "mlops-nb new wine-cultivars" in page
    assert 'href="06_bring_your_own_problem.html"' in (out/"tutorials"/"01_getting_started.html").read_text()

def _docs_module():
    spec = importlib.util.spec_from_file_location("docs_script", ROOT/"scripts"/"docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod

def test_auto_engine_uses_quarto_where_it_is_installed(tmp_path, monkeypatch, capsys):
    "Where `quarto` is on PATH, --engine auto builds with nbdev-docs (a stand-in here) and checks its links only."
    docs = _docs_module()
    built = []
    def fake_quarto_build(out):
        built.append(out)
        out.mkdir(parents=True)
        (out/"index.html").write_text('<html><script src="https://cdn.example/quarto.js"></script><a '
                                      'href="x.html">x</a></html>')
    monkeypatch.setattr(docs, "quarto_available", lambda: True)
    monkeypatch.setattr(docs, "build_quarto", fake_quarto_build)
    assert docs.main(["--engine", "auto", "--out", str(tmp_path/"q"), "--check"]) == 1   # x.html is missing
    assert built == [(tmp_path/"q").resolve()]
    captured = capsys.readouterr()
    assert "engine: quarto" in captured.out and "index.html: broken link x.html" in captured.err
    # Quarto's own assets are its choice
    assert "external asset" not in captured.err
    monkeypatch.setattr(docs, "quarto_available", lambda: False)
    assert docs.main(["--engine", "quarto", "--out", str(tmp_path/"q2")]) == 2         # insisting on Quarto without it

# ---------------------------------------------------------------- nbdev's Quarto settings
QUARTO_FILES = ("_quarto.yml", "nbdev.yml")

def test_quarto_settings_are_what_nbdev_writes(tmp_path):
    """nbs/_quarto.yml and nbs/nbdev.yml exist (on a fresh clone: they are committed), are not git-ignored, and are byte
    for byte what nbdev writes for this project (nbdev-docs and nbdev-prepare write them before calling Quarto;
    nbdev-readme stops without nbs/nbdev.yml)."""
    for f in QUARTO_FILES: assert (NBS/f).is_file(), f"nbs/{f} is missing: see how this test writes it, and commit it"
    if (ROOT/".git").exists() and shutil.which("git"):
        r = subprocess.run(["git", "check-ignore", *(f"nbs/{f}" for f in QUARTO_FILES)], cwd=ROOT, capture_output=True,
                           text=True)
        assert r.returncode == 1, f"git ignores {r.stdout.split()}: a fresh clone would not have them"
    (tmp_path/"nbs").mkdir()                                     # a copy of the project's settings, nothing else
    shutil.copy(ROOT/"pyproject.toml", tmp_path/"pyproject.toml")
    r = subprocess.run([PY, "-c", "from nbdev.quarto import refresh_quarto_yml; refresh_quarto_yml()"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for f in QUARTO_FILES:
        assert (NBS/f).read_text() == (tmp_path/"nbs"/f).read_text(), \
            (f"nbs/{f} is not what nbdev writes: delete it, run `python -c 'from nbdev.quarto import "
             "refresh_quarto_yml; refresh_quarto_yml()'`")

def test_quarto_settings_name_this_repository():
    import tomllib
    urls = tomllib.loads((ROOT/"pyproject.toml").read_text())["project"]["urls"]
    nbdev_yml = yaml.safe_load((NBS/"nbdev.yml").read_text())
    site = nbdev_yml["website"]
    assert site["site-url"].rstrip("/") == urls["Documentation"].rstrip("/") == "https://mlops-nb.github.io/mlops_nb"
    assert (
        site["repo-url"] == urls["Repository"] == "https://github.com/mlops-nb/mlops_nb"
        and site["repo-branch"] == "main"
    )
    assert site["title"] == "mlops_nb" and nbdev_yml["project"]["output-dir"] == "_docs"
    quarto = yaml.safe_load((NBS/"_quarto.yml").read_text())
    assert quarto["project"]["type"] == "website" and quarto["metadata-files"] == ["nbdev.yml", "sidebar.yml"]
    from nbdev.quarto import _chk_nbdev_yml
    _chk_nbdev_yml(NBS)                                          # what nbdev-readme checks before rendering

# ---------------------------------------------------------------- the tutorials' commands
def _tutorial_commands():
    ("(tutorial, line) of every `mlops-nb` command in the tutorials: shell "
     "blocks of markdown cells, `sh(...)` of code cells.")
    for nb in sorted((NBS/"tutorials").glob("*.ipynb")):
        for cell in json.loads(nb.read_text())["cells"]:
            src = "".join(cell["source"])
            if cell["cell_type"] == "markdown":
                for block in re.findall(r"```(?:sh|bash)\n(.*?)```", src, re.S):
                    for line in block.replace("\\\n", " ").splitlines(): yield nb.name, line
            else:
                for cmd in re.findall(r"\bsh(?:_json)?\(\"([^\"]+)\"", src): yield nb.name, cmd

def test_every_cli_example_in_the_tutorials_parses():
    from mlops_nb.cli import parser
    seen = 0
    for name, line in _tutorial_commands():
        for seg in re.split(r"\s*(?:&&|\|\||;|\|)\s*", line):
            try: args = shlex.split(seg, comments=True)
            # a shell line continued in prose (a JSON value spanning lines)
            except ValueError: continue
            if args and args[0].endswith("mlops-nb"):
                try: a = parser().parse_args(args[1:])
                except SystemExit: pytest.fail(f"{name}: {seg!r} does not parse with the current CLI")
                assert hasattr(a, "fn"), f"{name}: {seg!r} names no command"
                seen += 1
    assert seen >= 30, seen

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
        r = subprocess.run(["apt-get", "install", "-y", "chromium", "chromium-driver"], capture_output=True, text=True,
                           timeout=900,
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
    httpd.shutdown()
    httpd.server_close()

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
        assert driver.find_elements(By.CSS_SELECTOR,
                                    "nav.sidebar") and driver.find_element(By.TAG_NAME, "h1").text, href
        assert "404" not in driver.title, href
        assert not _errors(driver), (href, _errors(driver))
