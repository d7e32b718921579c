"""Issue 18, audit 2 finding 4: any column name either gives a project whose every file parses and declares that name
exactly, or is refused with one line; names that clash with the columns mlops_nb adds are refused by `Problem`."""
import ast, json, tomllib
from pathlib import Path
import nbformat, pandas as pd, pytest, yaml
from conftest import run_cli
from mlops_nb.core import MlopsNbError
from mlops_nb.data import ColumnSpec
from mlops_nb.problem import Problem, ProblemError, load_problem
from mlops_nb.scaffold import new_project

WRITTEN = ['la"bel', "it's", "both'\"", "back\\slash", "tail\\", "{brace}", "{{name}}", "}{", "#hash", "`tick`",
           "x" * 1000, "ünïcode ✓", "emoji 😀", "$(echo hi)", " spaced ", "tab-less\u00a0nbsp", '"""', "'''"]
REFUSED = ["\x01", "a\x85b", "line\nbreak", "cr\rhere", "tab\there", "del\x7f", "sep\u2028arator", "para\u2029"]


def _table(name:str, role:str)->pd.DataFrame:
    "A labelled table whose target (`role='target'`) or one input column is called `name`."
    n = 40
    df = pd.DataFrame({"num": [float(i % 7) for i in range(n)], "cat": ["a", "b", "c", "d"] * (n // 4),
                       "y": [i % 2 for i in range(n)]})
    if role == "target": return df.rename(columns={"y": name})
    return df.assign(**{name: [float(i % 5) for i in range(n)]})


def _parse_all(root:Path):
    "Parse every generated file that has a parser; return the parsed pyproject.toml."
    for f in root.rglob("*"):
        if f.suffix == ".py": ast.parse(f.read_text(), str(f))
        elif f.suffix == ".ipynb": nbformat.validate(nbformat.read(f, as_version=4))
        elif f.suffix in (".yml", ".yaml"): yaml.safe_load(f.read_text())
        elif f.suffix == ".json": json.loads(f.read_text())
    nb = nbformat.read(root/"nbs"/"00_problem.ipynb", as_version=4)
    for c in nb.cells:
        if c.cell_type == "code": ast.parse(c.source)
    return tomllib.loads((root/"pyproject.toml").read_text())


@pytest.mark.parametrize("role", ["target", "input"])
@pytest.mark.parametrize("i,name", list(enumerate(WRITTEN)), ids=[repr(n)[:20] for n in WRITTEN])
def test_any_representable_name_gives_files_that_parse_and_declare_it(tmp_path, i, name, role):
    data = tmp_path/"t.parquet"
    _table(name, role).to_parquet(data)
    root = Path(new_project(tmp_path/f"hostile-{role}-{i}", data, name if role == "target" else "y")["path"])
    toml = _parse_all(root)
    p = load_problem(start=root)
    if role == "target": assert p.target == name and "num" in p.inputs
    else: assert name in p.inputs and p.target == "y"
    assert toml["project"]["description"] == p.description and (role == "input" or repr(name) in p.description)
    ns = {"__file__": str(root/"tests"/"test_project.py")}
    exec(compile((root/"tests"/"test_project.py").read_text(), "test_project.py", "exec"), ns)
    for test in [v for k, v in ns.items() if k.startswith("test_")]: test()  # the project's own tests pass


@pytest.mark.parametrize("name", REFUSED, ids=[repr(n) for n in REFUSED])
def test_a_name_that_cannot_be_written_is_refused_with_one_line(tmp_path, name):
    for role in ("target", "input"):
        data = tmp_path/f"{role}.parquet"
        _table(name, role).to_parquet(data)
        dest = tmp_path/f"p-{role}"
        with pytest.raises(MlopsNbError) as e: new_project(dest, data, name if role == "target" else "y")
        msg = str(e.value)
        assert "\n" not in msg and repr(name) in msg and "rename" in msg, msg
        assert not dest.exists()


def test_the_cli_refuses_a_control_character_and_writes_a_quote(tmp_path):
    data = tmp_path/"t.parquet"
    _table("a\x85b", "input").to_parquet(data)
    p = run_cli("new", tmp_path/"bad", "--data", data, "--target", "y")
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert p.returncode == 2 and "Traceback" not in p.stderr and lines[-1].startswith("error: "), p.stderr
    assert "control" in lines[-1] and not (tmp_path/"bad").exists()
    _table('la"bel', "target").to_parquet(data)
    run_cli("new", tmp_path/"good", "--data", data, "--target", 'la"bel', check=True)
    assert tomllib.loads((tmp_path/"good"/"pyproject.toml").read_text())["project"]["description"].startswith("Predict")


def _problem(inputs=None, keys=None, **kw):
    "A small binary problem with `inputs` (default one float) and `keys`."
    return Problem(name="clash", inputs=inputs or {"x": ColumnSpec("float")}, keys=keys or {},
                   target=kw.pop("target", "y"), kind="binary", classes=["no", "yes"], **kw)


@pytest.mark.parametrize("where", ["inputs", "keys", "target"])
@pytest.mark.parametrize("col", ["_row", "_prediction", "_request_id", "_shadow_probabilities"])
def test_columns_the_inference_log_adds_are_refused(where, col):
    kw = {"target": {"target": col}, "inputs": {"inputs": {"x": ColumnSpec("float"), col: ColumnSpec("float")}},
          "keys": {"keys": {col: ColumnSpec("str")}}}[where]
    with pytest.raises(ProblemError) as e: _problem(**kw)
    msg = str(e.value)
    assert "\n" not in msg and repr(col) in msg and "inference log" in msg and "rename" in msg, msg


def test_a_date_input_and_its_default_features_cannot_share_names():
    inputs = {"d": ColumnSpec("datetime"), "d_year": ColumnSpec("float")}
    with pytest.raises(ProblemError) as e: _problem(inputs)
    assert "'d_year'" in str(e.value) and "'d'" in str(e.value) and "rename" in str(e.value), str(e.value)
    with pytest.raises(ProblemError): _problem({"d": ColumnSpec("datetime"), "d_dayofweek": ColumnSpec("str")})
    _problem({"d": ColumnSpec("datetime"), "d_week": ColumnSpec("float")})  # not a feature of d: fine
    _problem(inputs, derive=lambda df: df)  # its own features: raw_features does not run


@pytest.mark.parametrize("key", ["model", "version", "label", "probability", "probability_yes"])
def test_keys_that_batch_output_adds_are_refused(key):
    with pytest.raises(ProblemError) as e: _problem(keys={key: ColumnSpec("str")})
    assert repr(key) in str(e.value) and "batch" in str(e.value) and "rename" in str(e.value), str(e.value)
    _problem(extra={key: ColumnSpec("str")})  # extra columns are not in the output
    _problem({"x": ColumnSpec("float"), key: ColumnSpec("str")})  # nor are inputs


def test_regression_keys_clash_with_its_value_column():
    reg = lambda keys: Problem(name="r", inputs={"x": ColumnSpec("float")}, keys=keys, target="y", kind="regression")
    with pytest.raises(ProblemError, match="'value'"): reg({"value": ColumnSpec("str")})
    reg({"label": ColumnSpec("str")})  # a regression's output has no label


def test_new_refuses_a_reserved_column_with_one_line(tmp_path):
    data = tmp_path/"t.parquet"
    _table("_row", "input").to_parquet(data)
    p = run_cli("new", tmp_path/"p", "--data", data, "--target", "y")
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert p.returncode == 2 and "Traceback" not in p.stderr and "'_row'" in lines[-1], p.stderr
    assert not (tmp_path/"p").exists()
