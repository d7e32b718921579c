"""The shape of the package: the machinery never imports an example problem nor names it, modules import each other
without cycles, and `import mlops_nb` loads nothing heavy."""
import ast, subprocess, sys
import pytest
from conftest import ROOT

PKG = ROOT/"mlops_nb"
GENERIC = sorted(p for p in PKG.glob("*.py") if p.name != "_modidx.py")  # everything but mlops_nb/examples/
EXAMPLE_WORDS = ("ottawa", "listing", "neighbourhood", "sold_above", "sqft", "breast", "wine", "diabetes")


def _imports(path):
    "The mlops_nb modules `path` imports, anywhere in it (top level or inside functions)."
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import): names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level: base = "mlops_nb." + base if base else "mlops_nb"
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else: continue
        out |= {n for n in names if n.startswith("mlops_nb")}
    return out


@pytest.mark.parametrize("path", GENERIC, ids=lambda p: p.name)
def test_the_machinery_never_imports_an_example(path):
    bad = sorted(n for n in _imports(path) if n.startswith("mlops_nb.examples"))
    assert not bad, f"{path.name} imports {bad}: read the problem declaration (mlops_nb.problem.load_problem) instead"


@pytest.mark.parametrize("path", GENERIC, ids=lambda p: p.name)
def test_the_machinery_never_names_an_example(path):
    "Not in code, not in help texts: a generic module does not know the example problems exist."
    text = path.read_text().lower()
    found = [w for w in EXAMPLE_WORDS if w in text]
    assert not found, f"{path.name} names {found}"


def test_the_check_catches_a_leak(tmp_path):
    "The import check itself: a module that imports the example is caught."
    leak = tmp_path/"leak.py"
    leak.write_text("def f():\n    from mlops_nb.examples.ottawa import PROBLEM\n    return PROBLEM\n")
    assert "mlops_nb.examples.ottawa" in _imports(leak)


def _graph():
    mods = {f"mlops_nb.{p.stem}": p for p in GENERIC}
    return {m: {n if n in mods else n.rsplit(".", 1)[0] for n in _imports(p)} & set(mods) - {m} for m,
            p in mods.items()}


def test_no_import_cycle():
    "Module dependencies form a DAG (imports inside functions count too: a hidden import is still a dependency)."
    g, state, path = _graph(), {}, []
    def visit(m):
        state[m] = "open"
        path.append(m)
        for n in sorted(g[m]):
            if state.get(n) == "open": raise AssertionError(" -> ".join(path[path.index(n):] + [n]))
            if n not in state: visit(n)
        state[m] = "done"
        path.pop()
    for m in sorted(g):
        if m not in state: visit(m)


def test_import_mlops_nb_loads_nothing_heavy():
    "`import mlops_nb` (and the CLI's module, for --help) must not load pandas, scikit-learn, MLflow or uvicorn."
    code = ("import sys, mlops_nb, mlops_nb.cli; print(sorted(m for m in ('pandas', 'sklearn', 'mlflow', 'uvicorn', "
            "'scipy') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"
