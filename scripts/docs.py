#!/usr/bin/env python
"""Build the documentation site without Quarto: `python scripts/docs.py [--out _site] [--check] [--engine auto]`.

The real thing, where Quarto is installed
-----------------------------------------
nbdev renders its docs with Quarto. Where Quarto can be installed, use it:

    pip install quarto-cli        # downloads Quarto from GitHub: needs network access to github.com
    # or install Quarto from https://quarto.org/docs/get-started/ (a .deb / tarball), then:
    nbdev-docs                    # processes nbs/ into _proc/ and renders the site into _docs/
    nbdev-preview                 # the same, served locally with live reload
    nbdev-readme                  # README.md from nbs/index.ipynb

nbdev reads its Quarto settings from nbs/_quarto.yml (written once, then ours to change) and nbs/nbdev.yml (rewritten
from pyproject.toml by every nbdev-docs / nbdev-prepare); both are committed, so nbdev-readme works on a fresh clone
(without nbs/nbdev.yml it stops with FileNotFoundError). nbs/sidebar.yml is not: nbdev-docs writes it from the
notebooks each time (custom_sidebar is off).

`--engine auto` (what the docs pipeline runs: .github/workflows/docs.yml, `run_pipeline("docs")`) uses Quarto's
`nbdev-docs` where `quarto` is on PATH and copies its _docs/ to `--out`; elsewhere it builds this fallback.
`--engine quarto` insists on Quarto; `--engine fallback` (the default) never uses it.

This fallback
-------------
Quarto is not installable on our CI machines (no package registry ships it), so this script renders the same
notebooks to a static HTML site with nbconvert. It processes the notebooks the way nbdev's processors do for
the docs, without executing any cell:

- cells with `#| hide` (or `#| include: false`) are dropped; `#| export`/`#| exporti` cells are not shown and,
  as nbdev's `add_show_docs` does, every public function and class an `#| export` cell defines gets its
  `show_doc` (signature, parameter comments, docstring: the exported module is imported, nothing is run);
- directive lines (`#| default_exp`, `#| eval: false`, ...) are removed from the code that is shown, and cells left
  empty are dropped; `#| echo: false` hides the code and keeps the outputs, `#| output: false` the reverse;
- links between notebooks (`05_runner.ipynb#x`) become links between pages (`05_runner.html#x`), and absolute links
  into the project's own site (`[project.urls] Documentation` of pyproject.toml, what the README links to) become
  relative ones, so the site works offline and `--check` verifies them.

(`nbdev-proc-nbs` is not used: it executes the notebooks' code cells to evaluate `show_doc`, which is slow here and
fails on notebooks whose test cells need state from hidden cells.)

The same file builds the docs of every project `mlops-nb new` makes (mlops_nb's templates hold a copy that
tests/test_library.py keeps equal to this one): the package and the site's title come from `[tool.nbdev]` in the
project's pyproject.toml (`lib_path`, `title`).

Pages: `nbs/index.ipynb` is the home page (a project without one gets its README.md), `nbs/manual/*.ipynb` the
manual (markdown notebooks), `nbs/tutorials/*.ipynb` the tutorials, the numbered library notebooks
the API reference (one page per module) and `nbs/train.ipynb` the training notebook. Each page is nbconvert's
`basic` template (no MathJax, no require.js, no CDN) inside one shared layout with a sidebar; the site is
self-contained: no asset outside it, no http(s) script or stylesheet, relative links only, so it works from a
file:// URL, any static host, or `python -m http.server -d _site`.

`--check` verifies that every relative link and asset in the site resolves to a file, and that no page loads an
external script or stylesheet (for Quarto's site: the links only; its assets are Quarto's choice); it exits 1 listing
what is wrong.
"""
from __future__ import annotations
import argparse, ast, html, importlib, os, re, shutil, subprocess, sys, time, tomllib
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit, unquote

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT/"nbs"
_PYPROJECT = tomllib.loads((ROOT/"pyproject.toml").read_text())
_NBDEV = _PYPROJECT.get("tool", {}).get("nbdev", {})
LIB = _NBDEV.get("lib_path", "mlops_nb")   # the package whose exported functions get their show_doc
TITLE = _NBDEV.get("title", LIB)           # the site's name (brand and page titles)
# where it is published
SITE_URL = str(_PYPROJECT.get("project", {}).get("urls", {}).get("Documentation", "")).rstrip("/")

_re_dir = re.compile(r"^\s*#\s*\|\s*(.*?)\s*$")
_re_ansi = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

# ---------------------------------------------------------------- notebooks -> processed notebooks
def directives(src: str) -> tuple[dict[str, str], str]:
    "Leading `#| key[: value]` lines of a cell as a dict, and the source without them."
    lines, ds = src.splitlines(), {}
    i = 0
    while i < len(lines):
        m = _re_dir.match(lines[i])
        if not m:
            if lines[i].strip() == "" and ds:
                i += 1
                continue
            break
        body = m.group(1)
        key, _, val = body.partition(":") if ":" in body.split(" ")[0] else body.partition(" ")
        ds[key.strip().replace("-", "_")] = val.strip()
        i += 1
    return ds, "\n".join(lines[i:]).strip("\n")

def _false(v: str) -> bool: return v.strip().lower() in ("false", "0", "no")

def _public_names(src: str) -> list[str]:
    "Top-level public functions and classes a cell defines (what nbdev's `add_show_docs` documents)."
    try: tree = ast.parse(src)
    except SyntaxError: return []
    return [n.name for n in tree.body
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not n.name.startswith("_")]

def _show_doc_md(module: str | None, name: str) -> str | None:
    if module is None: return None
    try:
        from nbdev.showdoc import show_doc
        obj = getattr(importlib.import_module(f"{LIB}.{module}"), name)
        md = show_doc(obj)._repr_markdown_()
    except Exception as e:  # an object that cannot be documented must not break the site
        print(f"  warning: no show_doc for {module}.{name}: {type(e).__name__}: {e}", file=sys.stderr)
        return f"### {name}\n"
    # nbdev's source link carries Quarto attributes ({target=...}) and needs line numbers: drop it
    md = re.sub(r"^\[source\]\([^)]*\)(\{[^}]*\})?\s*$", "", md, flags=re.M)
    return md.replace("\n---\n", "\n", 1).lstrip("-\n")

def process(nb):
    "Apply the docs processing to an nbformat notebook in place; returns it."
    import nbformat
    module = None
    cells = []
    for cell in nb.cells:
        if cell.cell_type == "raw": continue
        src = cell.source if isinstance(cell.source, str) else "".join(cell.source)
        ds, body = directives(src)
        if "default_exp" in ds: module = ds["default_exp"].split()[0] if ds["default_exp"] else module
        if "hide" in ds or _false(ds.get("include", "true")): continue
        if cell.cell_type == "markdown":
            cell.source = src
            cells.append(cell)
            continue
        if {"export", "exporti", "exports"} & ds.keys() and "exports" not in ds:
            if "export" in ds:
                for name in _public_names(body):
                    md = _show_doc_md(module, name)
                    if md: cells.append(nbformat.v4.new_markdown_cell(md))
            continue
        cell.source = body
        if _false(ds.get("output", "true")): cell.outputs = []
        for o in cell.get("outputs", []):
            if "text" in o:
                o["text"] = _re_ansi.sub("", o["text"] if isinstance(o["text"], str) else "".join(o["text"]))
            if "traceback" in o: o["traceback"] = [_re_ansi.sub("", t) for t in o["traceback"]]
        if _false(ds.get("echo", "true")): cell.metadata["transient"] = {"remove_source": True}
        if not body and not cell.get("outputs"): continue
        cells.append(cell)
    nb.cells = cells
    return nb

# ---------------------------------------------------------------- processed notebooks -> HTML pages
def title_summary(nb, fallback: str) -> tuple[str, str]:
    for cell in nb.cells:
        if cell.cell_type != "markdown": continue
        src = cell.source if isinstance(cell.source, str) else "".join(cell.source)
        t = re.search(r"^#\s+(.+)$", src, re.M)
        s = re.search(r"^>\s*(.+)$", src, re.M)
        if t: return t.group(1).strip(), (s.group(1).strip() if s else "")
    return fallback, ""

def exporter():
    from nbconvert import HTMLExporter
    from traitlets.config import Config
    c = Config()
    c.HTMLExporter.template_name = "basic"          # body only: no MathJax, require.js or CDN assets
    c.HTMLExporter.exclude_input_prompt = True
    c.HTMLExporter.exclude_output_prompt = True
    c.HTMLExporter.mathjax_url = ""
    c.HTMLExporter.require_js_url = ""
    c.HTMLExporter.jquery_url = ""
    c.HTMLExporter.widget_renderer_url = ""
    c.HTMLExporter.embed_images = True               # images become data: URIs, never external files
    c.TagRemovePreprocessor.enabled = True
    c.TagRemovePreprocessor.remove_input_tags = ("remove_input",)
    return HTMLExporter(config=c)

_re_href = re.compile(r'(\s(?:href|src)=")([^"#:?]+?)\.ipynb((?:[#?][^"]*)?")')
_re_ext_asset = re.compile(r'<(?:script[^>]*\ssrc|link[^>]*\shref)=["\'](?:https?:)?//', re.I)

def rewrite_links(body: str) -> str:
    "Relative `xx.ipynb` links -> `xx.html`."
    return _re_href.sub(lambda m: f"{m.group(1)}{m.group(2)}.html{m.group(3)}", body)

def localise_links(body: str, rel: str) -> str:
    "Absolute links into the published site (`SITE_URL/manual/x.html`) -> relative links from the page at `rel`."
    if not SITE_URL: return body
    pat = re.compile(r'(\s(?:href|src)=")' + re.escape(SITE_URL) + r'(?:/([^"#?]*))?((?:[#?][^"]*)?")')
    return pat.sub(lambda m: f"{m.group(1)}{relpath(m.group(2) or 'index.html', rel)}{m.group(3)}", body)

def strip_external_assets(body: str) -> str:
    "Outputs may carry <script src=https://...> (plotly, widgets...): the site must stay offline."
    body = re.sub(r'<script[^>]*\ssrc=["\'](?:https?:)?//[^>]*>\s*</script>', "", body, flags=re.I)
    return re.sub(r'<link[^>]*\shref=["\'](?:https?:)?//[^>]*>', "", body, flags=re.I)

CSS = """
*{box-sizing:border-box} body{margin:0;font:16px/1.55 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2330}
.layout{display:flex;min-height:100vh} nav.sidebar{width:260px;flex:none;background:#f4f6f9;border-right:1px solid #dde2ea;
padding:1.2rem 1rem;position:sticky;top:0;height:100vh;overflow-y:auto}
nav.sidebar .brand{font-weight:700;font-size:1.2rem;display:block;margin-bottom:1rem;color:#1d2330;text-decoration:none}
nav.sidebar h2{font-size:.75rem;text-transform:uppercase;letter-spacing:.06em;color:#5b6577;margin:1.2rem 0 .3rem}
nav.sidebar ul{list-style:none;margin:0;padding:0} nav.sidebar li a{display:block;padding:.18rem .5rem;border-radius:4px;
color:#27406b;text-decoration:none;font-size:.93rem} nav.sidebar li a:hover{background:#e3e8f0}
nav.sidebar li a.active{background:#27406b;color:#fff}
main{flex:1;min-width:0;padding:1.5rem 2.5rem 4rem;max-width:1000px}
main pre{background:#f6f8fa;border:1px solid #e3e7ee;border-radius:6px;padding:.7rem .9rem;overflow-x:auto;font-size:.85rem;line-height:1.45}
main code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.88em}
main :not(pre)>code{background:#f1f3f6;padding:.05em .3em;border-radius:3px}
main table{border-collapse:collapse;margin:1rem 0;font-size:.9rem} main th,main td{border:1px solid #dde2ea;padding:.3rem .6rem;text-align:left;vertical-align:top}
main blockquote{margin:0 0 1rem;padding:.2rem 1rem;border-left:4px solid #9fb3d1;color:#3d4658;background:#f7f9fc}
main h1{margin-top:0} main h3{margin-top:2rem;border-top:1px solid #e3e7ee;padding-top:1rem}
.jp-OutputArea-output pre{background:#fff} .anchor-link{visibility:hidden;margin-left:.3rem;text-decoration:none}
h1:hover .anchor-link,h2:hover .anchor-link,h3:hover .anchor-link{visibility:visible}
footer{margin-top:3rem;color:#7a8496;font-size:.8rem}
@media (max-width:800px){.layout{display:block} nav.sidebar{width:auto;height:auto;position:static}}
"""  # noqa: E501

def pygments_css() -> str:
    from pygments.formatters import HtmlFormatter
    return HtmlFormatter(style="default").get_style_defs(".highlight")

class Page:
    def __init__(self, src: Path, rel: str, section: str):
        # rel: output path under the site, e.g. "tutorials/x.html"
        self.src, self.rel, self.section = src, rel, section
        self.title = self.summary = ""

def collect_pages() -> list[Page]:
    home = NBS/"index.ipynb" if (NBS/"index.ipynb").exists() else ROOT/"README.md"
    pages = [Page(home, "index.html", "home")]
    pages += [Page(p, f"manual/{p.stem}.html", "manual") for p in sorted((NBS/"manual").glob("*.ipynb"))]
    pages += [Page(p, f"tutorials/{p.stem}.html", "tutorials") for p in sorted((NBS/"tutorials").glob("*.ipynb"))]
    pages += [Page(p, f"{p.stem}.html", "api") for p in sorted(NBS.glob("[0-9]*.ipynb"))]
    if (NBS/"train.ipynb").exists(): pages.append(Page(NBS/"train.ipynb", "train.html", "notebooks"))
    return [p for p in pages if p.src.exists()]

def relpath(target: str, frm: str) -> str:
    return os.path.relpath(target, os.path.dirname(frm) or ".").replace(os.sep, "/")

def sidebar(pages: list[Page], cur: Page) -> str:
    def link(p: Page, label: str) -> str:
        cls = ' class="active" aria-current="page"' if p is cur else ""
        return f'<li><a href="{relpath(p.rel, cur.rel)}"{cls}>{html.escape(label)}</a></li>'
    out = ['<nav class="sidebar" aria-label="Site"><a class="brand" href="'
           f'{relpath("index.html", cur.rel)}">{html.escape(TITLE)}</a>']
    for sec, head in (("home", None), ("manual", "Manual"), ("tutorials", "Tutorials"), ("api", "API reference"),
                      ("notebooks", "Notebooks")):
        ps = [p for p in pages if p.section == sec]
        if not ps: continue
        if head: out.append(f"<h2>{head}</h2>")
        out.append('<ul class="nav-' + sec + '">')
        for p in ps:
            label = "Home" if sec == "home" else (f"{p.src.stem[:2]} {p.title}" if sec == "api" else p.title)
            out.append(link(p, label))
        out.append("</ul>")
    out.append("</nav>")
    return "\n".join(out)

def layout(pages: list[Page], cur: Page, body: str) -> str:
    css = relpath("assets/style.css", cur.rel)
    desc = f'<meta name="description" content="{html.escape(cur.summary)}">' if cur.summary else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(cur.title)} – {html.escape(TITLE)}</title>{desc}
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{css}">
</head><body><div class="layout">
{sidebar(pages, cur)}
<main id="content">
{body}
<footer>Generated from <code>{cur.src.relative_to(ROOT).as_posix()}</code> by <code>scripts/docs.py</code> (nbconvert fallback for <code>nbdev-docs</code>).</footer>
</main></div></body></html>
"""  # noqa: E501

def read_page(src: Path):
    "A page's notebook: the notebook itself, or a markdown file (a README) as a notebook of one markdown cell."
    import nbformat
    if src.suffix == ".md": return nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(src.read_text())])
    return nbformat.read(src, as_version=4)

def build(out: Path) -> list[Page]:
    t0 = time.time()
    sys.path.insert(0, str(ROOT))      # show_doc imports the exported package from this checkout
    pages = collect_pages()
    exp = exporter()
    bodies = {}
    for p in pages:
        nb = read_page(p.src)
        p.title, p.summary = title_summary(nb, p.src.stem)
        nb = process(nb)
        body, _ = exp.from_notebook_node(nb)
        m = re.search(r"<body[^>]*>(.*)</body>", body, re.S)
        body = m.group(1) if m else body
        bodies[p.rel] = strip_external_assets(localise_links(rewrite_links(body), p.rel))
        print(f"  processed {p.src.relative_to(ROOT)}")
    if out.exists(): shutil.rmtree(out)
    (out/"assets").mkdir(parents=True)
    (out/"assets"/"style.css").write_text(CSS + pygments_css())
    for p in pages:
        dst = out/p.rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(layout(pages, p, bodies[p.rel]), encoding="utf-8")
        print(f"  wrote {dst.relative_to(out)}  ({p.title})")
    print(f"{len(pages)} pages written to {out} in {time.time()-t0:.1f}s")
    return pages

# ---------------------------------------------------------------- Quarto, where it is installed
def quarto_available() -> bool:
    return shutil.which("quarto") is not None

def doc_path() -> Path:
    "The folder nbdev-docs renders into: `[tool.nbdev] doc_path` (default _docs)."
    cfg = tomllib.loads((ROOT/"pyproject.toml").read_text()).get("tool", {}).get("nbdev", {})
    return ROOT/cfg.get("doc_path", "_docs")

def build_quarto(out: Path) -> None:
    "Render the site with Quarto's nbdev-docs, then copy it to `out`."
    here = str(Path(sys.executable).parent)            # the nbdev-docs of this environment first
    exe = shutil.which("nbdev-docs", path=os.pathsep.join([here, os.environ.get("PATH", "")]))
    if not exe: raise SystemExit("error: nbdev-docs is not installed (pip install nbdev; it is in the dev extra)")
    t0 = time.time()
    r = subprocess.run([exe], cwd=ROOT)
    if r.returncode: raise SystemExit(f"error: nbdev-docs exited {r.returncode}")
    src = doc_path()
    if not (src/"index.html").is_file(): raise SystemExit(f"error: nbdev-docs wrote no {src.name}/index.html")
    if out.resolve() != src.resolve():
        if out.exists(): shutil.rmtree(out)
        shutil.copytree(src, out)
    print(f"{len(list(out.rglob('*.html')))} pages rendered by Quarto (nbdev-docs) into {out} in {time.time()-t0:.1f}s")

# ---------------------------------------------------------------- checking the site
class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs, self.external_assets = [], []
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for k in ("href", "src"):
            if a.get(k): self.refs.append(a[k])
        url = a.get("src") if tag in ("script", "img", "iframe") else a.get("href") if tag == "link" else None
        if url and re.match(r"^(https?:)?//", url, re.I) and (tag != "img"):
            self.external_assets.append(f"<{tag}> {url}")

def check(out: Path, external_assets: bool = False) -> list[str]:
    "Broken relative links and (unless `external_assets`) external scripts/stylesheets in the site, as messages."
    problems = []
    for page in sorted(out.rglob("*.html")):
        p = _Links()
        p.feed(page.read_text(encoding="utf-8"))
        rel = page.relative_to(out).as_posix()
        if not external_assets: problems += [f"{rel}: external asset {a}" for a in p.external_assets]
        for ref in p.refs:
            u = urlsplit(ref)
            if u.scheme or u.netloc or not u.path: continue     # http(s):, mailto:, data:, #fragment
            target = (page.parent/unquote(u.path)).resolve()
            if target.is_dir(): target = target/"index.html"
            if not target.is_file() or out.resolve() not in target.parents:
                problems.append(f"{rel}: broken link {ref}")
    return problems

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT/"_site"),
                    help="output folder (default: _site/ in the project; git-ignored)")
    ap.add_argument("--check", action="store_true",
                    help="check links and assets of the site (builds it first unless --no-build)")
    ap.add_argument("--no-build", action="store_true",
                    help="with --check: check an existing site without rebuilding it")
    ap.add_argument("--engine", choices=["fallback", "quarto", "auto"], default="fallback",
                    help="fallback: this script's nbconvert site (default); quarto: Quarto's nbdev-docs; auto: Quarto "
                         "where `quarto` is on PATH, else the fallback")
    a = ap.parse_args(argv)
    out = Path(a.out).resolve()
    engine = a.engine if a.engine != "auto" else "quarto" if quarto_available() else "fallback"
    if a.engine == "auto":
        print(f"engine: {engine} ({'quarto is on PATH' if engine == 'quarto' else 'quarto is not on PATH'})")
    if engine == "quarto" and not quarto_available():
        print("error: --engine quarto: quarto is not on PATH (https://quarto.org/docs/get-started/)", file=sys.stderr)
        return 2
    if not a.no_build: build_quarto(out) if engine == "quarto" else build(out)
    if a.check:
        problems = check(out, external_assets=engine == "quarto")
        n = len(list(out.rglob("*.html")))
        if problems:
            print(f"check: {len(problems)} problem(s) in {n} pages:", *problems, sep="\n  ", file=sys.stderr)
            return 1
        print(f"check: {n} pages, every relative link resolves, no external script or stylesheet")
    return 0

if __name__ == "__main__":
    sys.exit(main())
