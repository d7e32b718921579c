"""The pipelines: the cloud files (ci, train, deploy, monitor, batch on GitHub, Azure DevOps and GitLab; docs on GitHub
only) are exactly what
`mlops_nb.pipeline` generates from its one definition; every job has a timeout; every step is one line naming a real
command; untrusted values reach commands only as quoted environment variables; pull requests get no production secret;
actions are pinned; only the Pages deployment and the jobs calling Databricks (GitHub's OIDC federation: `id-token:
write`, no client secret) get more than `contents: read`, and a job calling another workflow grants exactly what that
workflow's jobs request (derived from the files); a change of any tracked file runs ci on both platforms (derived from
`git ls-files` and the path filters); zizmor and check-jsonschema pass; dry
runs of `mlops_nb.pipeline`; the local train, monitor and batch pipelines end to end in a fresh state folder."""
import difflib, importlib.util, json, os, re, shlex, stat, subprocess, sys
from functools import cache
from pathlib import Path
import pytest, yaml
from conftest import ROOT, cli_json

AZURE = sorted((ROOT/"pipelines"/"azure").glob("*.yml"))
GITHUB = sorted((ROOT/".github"/"workflows").glob("*.yml"))
FILES = AZURE + GITHUB
GITLAB = ROOT/".gitlab-ci.yml"  # GitLab: one file, every pipeline (its own tests below)
BIN = Path(sys.executable).parent
HOSTILE_BRANCH = "feature/x;echo${IFS}INJECTED-$((6*7))"  # a valid git branch name
CLUSTER_JSON = '{"spark_version": "15.4.x-cpu-ml-scala2.12", "node_type_id": "Standard_DS3_v2", "num_workers": 1}'
ids = lambda p: str(p.relative_to(ROOT))


def load(path): return yaml.safe_load(path.read_text())


def on(doc): return doc.get("on", doc.get(True))  # YAML 1.1 reads a bare key `on` as True


def jobs(path):
    "Every job of a GitHub workflow or an Azure DevOps pipeline (top-level jobs or jobs of stages)."
    doc = load(path)
    if path in GITHUB: return list(doc["jobs"].values())
    return doc.get("jobs") or [j for s in doc["stages"] for j in s["jobs"]]


def steps(job):
    "The steps of a job, including those of an Azure deployment job's strategy."
    if "strategy" in job: return [s for hook in job["strategy"]["runOnce"].values() for s in hook["steps"]]
    return job.get("steps", [])


def text_of(s):
    "The command text of a run:/script:/bash: step or of an AzureCLI@2 task's inline script (None for other steps)."
    return s.get("run") or s.get("script") or s.get("bash") or s.get("inputs", {}).get("inlineScript")


def scripts(path):
    "(step, command text) of every run:/script:/bash: step and AzureCLI@2 task."
    return [(s, text_of(s)) for j in jobs(path) for s in steps(j) if text_of(s)]


def commands(text):
    "The commands of a one-line shell step (quoted environment variables stay as `$NAME` arguments)."
    for seg in re.split(r"\s*(?:&&|\|\||\||;)\s*", text.strip()):
        seg = seg.split(">>")[0].strip()
        if seg: yield shlex.split(seg)


@cache
def script_help(rel):
    "Exit code of `python pipelines/x.py --help`."
    return subprocess.run([sys.executable, str(ROOT/rel), "--help"], capture_output=True, cwd=ROOT,
                          timeout=60).returncode


def tool(name):
    "A checker of the dev extra, beside this interpreter."
    exe = BIN/name
    if not exe.exists():
        pytest.fail(f"{name} is not installed: it is in the dev extra (bash scripts/setup, or pip install -e '.[dev]')")
    return str(exe)


# --- one definition ---------------------------------------------------------------------------------------------------

def test_the_files_exist():
    assert [p.name for p in AZURE] == ["batch.yml", "ci.yml", "deploy.yml", "monitor.yml", "train.yml"]
    # docs: GitHub Pages, GitHub only
    assert [p.name for p in GITHUB] == ["batch.yml", "ci.yml", "deploy.yml", "docs.yml", "monitor.yml", "train.yml"]
    assert GITLAB.exists()


def test_the_files_are_generated_from_the_one_definition():
    "Regenerate every cloud file from mlops_nb.pipeline (PIPELINES, CLOUD) and fail on any difference."
    from mlops_nb.pipeline import project_settings
    from mlops_nb.pipeline_files import render_pipelines
    expected = render_pipelines(project_settings(ROOT))
    assert sorted(expected) == sorted([*map(ids, FILES), ".gitlab-ci.yml", ".github/dependabot.yml"])
    diffs = []
    for rel, text in expected.items():
        have = (ROOT/rel).read_text()
        if have != text:
            diffs += difflib.unified_diff(have.splitlines(), text.splitlines(), f"{rel} (in the repository)",
                                          f"{rel} (generated)", lineterm="")
    assert not diffs, ("the cloud pipelines differ from mlops_nb.pipeline: edit nbs/12_pipeline.ipynb, export, then "
                       "run `python pipelines/generate.py`\n" + "\n".join(diffs[:200]))


def test_generate_check_agrees():
    p = subprocess.run([sys.executable, "pipelines/generate.py", "--check"], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert "up to date" in p.stderr


@pytest.mark.parametrize("name", ["ci", "train", "deploy", "monitor", "batch"])
def test_both_platforms_run_the_definitions_steps_in_order(name):
    from mlops_nb.pipeline import cloud_steps
    want = [s.label for s in cloud_steps(name)]
    gh = [s["name"] for j in jobs(ROOT/".github"/"workflows"/f"{name}.yml") for s in steps(j) if "run" in s
          and s["name"] not in ("setup", "kubeconfig")]
    az = [s["displayName"] for j in jobs(ROOT/"pipelines"/"azure"/f"{name}.yml") for s in steps(j)
          if text_of(s) and s["displayName"] not in ("setup", "databricks cli")]
    assert gh == az == want


# --- structure
# ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", FILES, ids=ids)
def test_parses_and_every_job_has_a_timeout(path):
    js = jobs(path)
    assert js
    key = "timeout-minutes" if path in GITHUB else "timeoutInMinutes"
    for j in js:
        if "uses" in j:  # a call of a reusable workflow: its own jobs carry the timeouts
            assert (ROOT/j["uses"]).resolve() in GITHUB, j
            continue
        # 360: the longest a hosted job may run
        assert isinstance(j.get(key), int) and 0 < j[key] <= 360, (path.name, j)


@pytest.mark.parametrize("path", FILES, ids=ids)
def test_every_step_is_one_line_naming_a_real_command(path):
    from mlops_nb.cli import parser
    from mlops_nb.pipeline import DATABRICKS_CLI
    seen, targets = [], load(ROOT/"databricks.yml")["targets"]
    for step, text in scripts(path):
        assert "\n" not in text.strip(), f"{path.name}: a step is one line: {text!r}"
        # Azure: the pinned release's install script (test_the_databricks_cli_is_pinned)
        if text == DATABRICKS_CLI: continue
        for args in commands(text):
            if args[0] == "mlops-nb":
                a = parser().parse_args(args[1:])  # SystemExit: unknown subcommand or flag
                assert hasattr(a, "fn"), text
            elif args[:2] == ["python", "-m"]: assert importlib.util.find_spec(args[2]), text
            elif args[:2] == ["databricks", "bundle"]:
                assert args[2:4] in (["validate", "-t"], ["deploy", "-t"]) and args[4] in targets, text
            elif args[0] == "python":
                assert args[1].startswith(("pipelines/", "scripts/")) and (ROOT/args[1]).exists(), text
                assert script_help(args[1]) == 0, f"{args[1]} --help failed"
            else:
                assert args[0] in ("bash", "echo"), f"{path.name}: {text!r} is neither mlops-nb nor a pipelines/ script"
            seen.append(args[0])
    assert "mlops-nb" in seen or "python" in seen


def test_triggers():
    az, gh = {p.name: load(p) for p in AZURE}, {p.name: load(p) for p in GITHUB}
    assert az["ci.yml"]["trigger"] == "none" and "pull_request" in on(gh["ci.yml"])  # which changes: the test below
    assert az["train.yml"]["schedules"][0]["cron"] and on(gh["train.yml"])["schedule"][0]["cron"]
    assert {"repository_dispatch", "workflow_dispatch"} <= set(on(gh["train.yml"]))
    assert [s["stage"] for s in az["deploy.yml"]["stages"]] == ["Test", "Build", "Deploy", "Bundle"]
    assert az["deploy.yml"]["trigger"]["branches"]["include"] == ["main"] and on(gh["deploy.yml"])["push"][
        "branches"
    ] == ["main"]
    # the bundle after the tests
    assert [j.get("needs") for j in gh["deploy.yml"]["jobs"].values()] == [None, "test", "build", "test"]
    # a successful re-training deploys: GitHub calls the deploy workflow after the training job; Azure triggers on train
    # runs of main
    call = gh["train.yml"]["jobs"]["deploy"]
    assert (call["needs"], call["uses"]) == (["retrain"], "./.github/workflows/deploy.yml")
    assert "workflow_call" in on(gh["deploy.yml"])
    assert az["deploy.yml"]["resources"]["pipelines"][0]["trigger"] == {"branches": {"include": ["main"]}}
    # monitoring starts the re-training only when it advises it: GitHub calls train.yml under an if, Azure triggers on a
    # tag
    assert on(gh["monitor.yml"])["schedule"][0]["cron"] and az["monitor.yml"]["schedules"][0]["cron"]
    call = gh["monitor.yml"]["jobs"]["train"]
    assert (call["needs"], call["if"], call["uses"]) == (["monitor"], "needs.monitor.outputs.retrain == 'true'",
                                                         "./.github/workflows/train.yml")
    assert "workflow_call" in on(gh["train.yml"])
    assert az["train.yml"]["resources"]["pipelines"][0] == {"pipeline": "monitor", "source": "mlops-nb-monitor",
                                                            "trigger": {"branches": {"include": ["main"]},
                                                                        "tags": ["retrain"]}}
    # the nightly batch: on its schedule or by hand, nothing else starts it, and it starts nothing
    assert on(gh["batch.yml"]) == {"schedule": [{"cron": "0 2 * * *"}], "workflow_dispatch": {}}
    assert az["batch.yml"]["schedules"][0]["cron"] == "0 2 * * *" and az["batch.yml"]["schedules"][0]["branches"] == {
        "include": ["main"]
    }
    assert (az["batch.yml"]["trigger"], az["batch.yml"]["pr"]) == ("none",
                                                                   "none") and "resources" not in az["batch.yml"]
    assert list(gh["batch.yml"]["jobs"]) == ["batch"] and not any("uses" in j for j in gh["batch.yml"]["jobs"].values())
    # the databricks runner for the pull-request and re-training runs
    for f in ("ci.yml", "train.yml"):
        for path in (ROOT/"pipelines"/"azure"/f, ROOT/".github"/"workflows"/f):
            assert any("--runner databricks" in t for _, t in scripts(path)), path


# --- safe pipelines (finding 5)
# -------------------------------------------------------------------------------------------

def _env_refs(text):
    "Names of the environment variables a command line expands, and whether each expansion is inside double quotes."
    refs, quoted, i = [], False, 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "'" and not quoted:
            i = text.index("'", i + 1) + 1
            continue
        if c == '"': quoted = not quoted
        m = re.match(r"\$\{?(\w+)", text[i:]) if c == "$" else None
        if m:
            refs.append((m.group(1), quoted))
            i += len(m.group(0))
            continue
        i += 1
    return refs


RUNNER_VARS = {"PWD", "GITHUB_PATH"}  # set by bash or the runner, not by anyone who can open a pull request



# --- which pull requests run ci: derived from the tracked files and the two systems' path filters ---------------------

def _glob(pattern):
    "A path filter's pattern as a regex: `**` any characters, `*` and `?` any but '/' (GitHub's and Azure's globs)."
    out = ""
    for part in re.split(r"(\*\*/?|\*|\?)", pattern):
        out += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(part, re.escape(part))
    return re.compile(out)


def _github_runs_ci(trigger, path):
    "Whether GitHub starts a `pull_request` trigger for a change of `path` alone (paths / paths-ignore, `!` negations)."
    if "paths-ignore" in trigger: return not any(_glob(p).fullmatch(path) for p in trigger["paths-ignore"])
    hit = False
    for p in trigger.get("paths", ["**"]):  # the last matching pattern decides
        if _glob(p.removeprefix("!")).fullmatch(path): hit = not p.startswith("!")
    return hit


def _azure_runs_ci(pr, path):
    "Whether Azure DevOps starts a `pr` trigger for a change of `path` alone (include / exclude: prefixes or globs)."
    if pr == "none": return False
    paths = pr.get("paths", {}) if isinstance(pr, dict) else {}
    hit = lambda p: _glob(p).fullmatch(path) or path == p.rstrip("/") or path.startswith(p.rstrip("/") + "/")
    included = "include" not in paths or any(hit(p) for p in paths["include"])  # no include: every path
    return included and not any(hit(p) for p in paths.get("exclude", []))


def test_the_path_filter_readers_see_what_a_filter_leaves_out():
    "The two readers above fail the test below for any filter that misses a file (here: the old one, nbs/** and so on)."
    old = ["nbs/**", "mlops_nb/**", "api/**", "pipelines/**", "tests/**", "pyproject.toml"]
    for path, runs in [("nbs/12_pipeline.ipynb", True), ("pyproject.toml", True), ("scripts/setup", False),
                       ("conftest.py", False), (".github/workflows/ci.yml", False), ("requirements.lock", False),
                       ("resources/train.yml", False)]:
        assert _github_runs_ci({"branches": ["main"], "paths": old}, path) is runs, path
        assert bool(_azure_runs_ci({"branches": {"include": ["main"]}, "paths": {"include": old}}, path)) is runs, path
    assert not _github_runs_ci({"paths-ignore": ["**/*.md"]}, "docs/x.md")
    assert _github_runs_ci({"paths": ["**", "!*.md"]}, "a/b.md")  # `*` stops at '/'
    assert not _azure_runs_ci({"paths": {"exclude": ["docs"]}}, "docs/x.md")
    assert not _azure_runs_ci("none", "nbs/x.ipynb")


def test_every_tracked_file_runs_ci_on_both_platforms():
    """A pull request that changes any one tracked file alone runs ci, on GitHub and on Azure DevOps. No file is
    exempt as documentation: the README and CHANGELOG are checked by the tests too (tests/test_project.py); the
    workflows, scripts/setup, the lock files, conftest.py and the bundle decide what the tests run with."""
    if not (ROOT/".git").exists(): pytest.skip("not a git checkout: no tracked files to derive the paths from")
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert len(tracked) > 100 and "scripts/setup" in tracked
    gh = on(load(ROOT/".github"/"workflows"/"ci.yml"))["pull_request"]
    az = load(ROOT/"pipelines"/"azure"/"ci.yml")["pr"]
    assert not [f for f in tracked if not _github_runs_ci(gh, f)], "GitHub's ci skips pull requests changing only these"
    assert not [f for f in tracked if not _azure_runs_ci(az, f)], "Azure's ci skips pull requests changing only these"


@pytest.mark.parametrize("path", FILES, ids=ids)
def test_no_value_is_expanded_into_a_script_only_quoted_env_vars(path):
    for step, text in scripts(path):
        assert "${{" not in text, f"{path.name}: a GitHub expression inside run: ({text!r}): map it into env"
        assert not re.search(r"\$\(|\$\[",
                             text), f"{path.name}: an Azure macro inside script: ({text!r}): map it into env"
        for name, quoted in _env_refs(text):
            assert quoted, f"{path.name}: ${name} is not double-quoted in {text!r}"
            assert name in RUNNER_VARS or name in step.get("env", {}), (f"{path.name}: ${name} is not in the "
                                                                        f"step's env: {text!r}")


@pytest.fixture
def stub_cli(tmp_path):
    "A folder with a stand-in `mlops-nb` that prints its arguments as JSON."
    exe = tmp_path/"mlops-nb"
    exe.write_text(f"#!{sys.executable}\nimport json, sys; print(json.dumps(sys.argv[1:]))\n")
    exe.chmod(0o755)
    return tmp_path


def _bash(script, folder, env):
    p = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30,
                       env={"PATH": f"{folder}:{os.environ['PATH']}", **env})
    return p.stdout + p.stderr


def _ci_step(path):
    return next(s for j in jobs(path) for s in steps(j) if "--branch" in (text_of(s) or ""))


def test_a_hostile_branch_name_reaches_the_command_only_as_text(stub_cli):
    "Run the pull-request step as each platform would, with a branch name that is shell code, and JSON for the cluster."
    # GitHub: the runner evaluates the env: expressions, then bash runs the run: line
    gh = _ci_step(ROOT/".github"/"workflows"/"ci.yml")
    values = {"${{ github.head_ref }}": HOSTILE_BRANCH, "${{ vars.DATABRICKS_CLUSTER_CI }}": CLUSTER_JSON}
    env = {k: values.get(v, "x") for k, v in gh["env"].items()}
    # Azure DevOps: macros are pasted into the script text first (there must be none), then into env: values
    az = _ci_step(ROOT/"pipelines"/"azure"/"ci.yml")
    macros = {"System.PullRequest.SourceBranch": HOSTILE_BRANCH, "DATABRICKS_CLUSTER_CI": CLUSTER_JSON}
    paste = lambda s: re.sub(r"\$\(([\w.]+)\)", lambda m: macros.get(m.group(1), "x"), s)
    for script, env in [(gh["run"], env), (paste(text_of(az)), {k: paste(v) for k, v in az["env"].items()})]:
        out = _bash(script, stub_cli, env)
        assert "INJECTED-42" not in out, out
        args = json.loads(out)
        assert args[args.index("--branch") + 1] == HOSTILE_BRANCH
        assert json.loads(args[args.index("--cluster") + 1]) == json.loads(CLUSTER_JSON)


def test_the_old_azure_step_was_injectable(stub_cli):
    "The step these files replaced: the macro pasted into bash runs the branch's command and splits the cluster's JSON."
    old = ('mlops-nb train --mode test --runner databricks --branch $(System.PullRequest.SourceBranch) '
           '--cluster "$(DATABRICKS_CLUSTER)" --library "$(MLOPS_NB_LIBRARY)" --timeout 3600 --json')
    macros = {"System.PullRequest.SourceBranch": HOSTILE_BRANCH, "DATABRICKS_CLUSTER": CLUSTER_JSON,
              "MLOPS_NB_LIBRARY": "mlops_nb"}
    out = _bash(re.sub(r"\$\(([\w.]+)\)", lambda m: macros[m.group(1)], old), stub_cli, {})
    assert "INJECTED-42" in out
    args = json.loads(out.splitlines()[0])
    assert args[args.index("--branch") + 1] == "feature/x" and "--cluster" not in args


def test_pull_requests_get_no_production_secrets():
    from mlops_nb.pipeline import CLOUD_ENV
    production = [n for n, v in CLOUD_ENV.items()
                  if v.kind in ("secret", "file")] + [v.github for v in CLOUD_ENV.values() if v.github]
    gh = load(ROOT/".github"/"workflows"/"ci.yml")
    text = (ROOT/".github"/"workflows"/"ci.yml").read_text()
    refs = re.findall(r"\b(secrets|vars)\.(\w+)", text)
    assert refs and all(n.endswith("_CI") for _, n in refs), refs
    assert not [n for _, n in refs if n in production]
    for j in gh["jobs"].values():
        env = {k: v for s in j["steps"] for k, v in s.get("env", {}).items()}
        assert all("_CI }}" in v or v in ("${{ github.head_ref }}", "github-oidc") for v in env.values()), env
        if any("secrets." in v for v in env.values()): assert j["environment"] == "ci"
        if env.get("DATABRICKS_AUTH_TYPE") == "github-oidc":  # the identity token's subject names environment ci: the
            # PR service principal's policy trusts only it
            assert j["environment"] == "ci" and "DATABRICKS_CLIENT_SECRET" not in env
    az = load(ROOT/"pipelines"/"azure"/"ci.yml")
    assert az["variables"] == [{"group": "mlops-nb-ci"}]
    for s in [s for j in jobs(ROOT/"pipelines"/"azure"/"ci.yml") for s in steps(j)]:
        for var, v in s.get("env", {}).items():
            if (var, v) == ("DATABRICKS_AUTH_TYPE", "azure-cli"): continue  # the CI service connection's identity
            name = re.fullmatch(r"\$\(([\w.]+)\)", v).group(1)
            assert name.endswith("_CI") or name.startswith("System."), (s["displayName"], v)
        if "task" in s:  # no secure file: only the CI service connection (workload identity federation)
            assert (s["task"], s["inputs"]["azureSubscription"]) == ("AzureCLI@2", "mlops-nb-databricks-ci"), s


def test_production_secrets_live_in_protected_environments():
    "A GitHub job that reads a production secret names the environment holding it (deployment branches: main only)."
    for name in ("train", "deploy", "monitor", "batch"):
        for jid, j in load(ROOT/".github"/"workflows"/f"{name}.yml")["jobs"].items():
            if any("secrets." in v for s in j.get("steps", []) for v in s.get("env", {}).values()):
                assert j.get("environment") in ("trusted", "production"), (name, jid)
            assert "secrets" not in j, (name, jid)  # nothing handed on to a called workflow


def test_the_batch_job_reads_the_stores_secrets_only_in_its_scoring_step():
    ("Scoring loads the champion: the store's secrets, nothing of the image "
     "registry or the cluster; the data locations are variables.")
    from mlops_nb.pipeline import CLOUD_ENV, STORE
    want = {"MLOPS_NB_BATCH_INPUT", "MLOPS_NB_BATCH_OUTPUT", *STORE}
    gh = load(ROOT/".github"/"workflows"/"batch.yml")["jobs"]["batch"]
    score = [s for s in gh["steps"] if s.get("name") == "score/batch"]
    # GitHub's OIDC federation: no client secret
    federated = want - {"DATABRICKS_CLIENT_SECRET"} | {"DATABRICKS_AUTH_TYPE"}
    assert (
        len(score) == 1
        and set(score[0]["env"]) == federated
        and score[0]["env"]["DATABRICKS_AUTH_TYPE"] == "github-oidc"
    )
    for s in gh["steps"]:
        if s is not score[0]: assert "env" not in s, s  # checkout, python, setup: no secret
    for var, v in score[0]["env"].items():
        if var == "DATABRICKS_AUTH_TYPE": continue
        kind = CLOUD_ENV[var].kind
        assert v == (f"${{{{ secrets.{var} }}}}" if kind == "secret" else f"${{{{ vars.{var} }}}}"), (var, v)
    assert CLOUD_ENV["MLOPS_NB_BATCH_INPUT"].kind == CLOUD_ENV["MLOPS_NB_BATCH_OUTPUT"].kind == "variable"
    assert gh["environment"] == "trusted" and gh["permissions"] == {"contents": "read", "id-token": "write"}
    # a manual run from a branch scores with main's code
    assert gh["steps"][0]["with"] == {"persist-credentials": False, "ref": "main"}
    az = load(ROOT/"pipelines"/"azure"/"batch.yml")
    # not the registry's, no secure file
    assert az["variables"] == [{"group": "mlops-nb-data"}, {"group": "mlops-nb-tracking"}]
    steps_ = az["jobs"][0]["steps"]
    score = [s for s in steps_ if s.get("displayName") == "score/batch"]
    assert [s.get("task") for s in steps_ if "task" in s] == ["AzureCLI@2"] == [score[0]["task"]]  # no secure file
    # the service connection's identity
    wif = want - {"DATABRICKS_CLIENT_SECRET", "DATABRICKS_CLIENT_ID"} | {"DATABRICKS_AUTH_TYPE"}
    assert (
        len(score) == 1
        and set(score[0]["env"]) == wif
        and score[0]["inputs"]["azureSubscription"] == "mlops-nb-databricks"
    )
    assert all(v == f"$({k})" for k, v in score[0]["env"].items() if k != "DATABRICKS_AUTH_TYPE")
    assert [s for s in steps_ if "env" in s] == score
    for line in (gh["steps"][-1]["run"], text_of(score[0])):
        assert line == ('mlops-nb score --model champion --input "$MLOPS_NB_BATCH_INPUT" --output '
                        '"$MLOPS_NB_BATCH_OUTPUT" --overwrite --json')


def test_github_hardening():
    for path in GITHUB:
        doc, text = load(path), path.read_text()
        assert set(on(doc)) & {"workflow_run", "pull_request_target"} == set(), path.name
        assert doc["permissions"] == {}, path.name
        for jid, j in doc["jobs"].items():
            if (path.name, jid) == ("docs.yml", "deploy"): continue  # the Pages deployment: test_docs_workflow
            if "uses" in j: continue  # a call of another workflow: test_callers_grant_what_the_called_workflows_request
            federated = any(s.get("env", {}).get("DATABRICKS_AUTH_TYPE") == "github-oidc" for s in j.get("steps", []))
            assert j["permissions"] == {"contents": "read",
                                        **({"id-token": "write"} if federated else {})}, (path.name, jid)
            # OIDC: none stored
            assert not any("DATABRICKS_CLIENT_SECRET" in s.get("env", {}) for s in j.get("steps", [])), (path.name, jid)
            for s in j.get("steps", []):
                if s.get("uses", "").startswith("actions/checkout@"):
                    assert s["with"]["persist-credentials"] is False, (path.name, jid)
        for line in re.findall(r"^\s*(?:- )?uses: (.*)$", text, flags=re.M):
            if line.startswith("./"): continue
            m = re.fullmatch(r"([\w.-]+/[\w.-]+)@([0-9a-f]{40}) # (v\d+\.\d+\.\d+)", line)
            assert m, f"{path.name}: {line!r} is not pinned by a full commit SHA with its version in a comment"
            assert len(set(m.group(2))) > 4 and not re.search(r"dead|beef|placeholder", line, re.I), (f"{path.name}: "
                                                                                                      f"{line!r} "
                                                                                                      "looks like a "
                                                                                                      "placeholder SHA")
        assert "defaults:\n  run:\n    shell: bash" in text  # bash -eo pipefail: a failing command fails its pipe



_LEVEL = {"none": 0, "read": 1, "write": 2}  # a GitHub token permission's levels


def _widest(*grants):
    "Per scope, the strongest level of `grants` (scopes at none left out)."
    out = {}
    for g in grants:
        for scope, level in g.items():
            if _LEVEL[level] > _LEVEL[out.get(scope, "none")]: out[scope] = level
    return out


def _permissions(doc, job):
    "A job's own `permissions`, else its workflow's (a called workflow's job without either requests nothing more)."
    p = job.get("permissions", doc.get("permissions", {}))
    assert isinstance(p, dict), f"{p!r}: use per-scope permissions, never read-all / write-all"
    return p


def _requested(docs, name, calls=()):
    "What the jobs of workflow `name` request, per scope the strongest; a calling job also what its callee's request."
    assert name not in calls, f"workflows call one another in a loop: {calls + (name,)}"
    doc, wants = docs[name], []
    for j in doc["jobs"].values():
        wants.append(_permissions(doc, j))
        if j.get("uses", "").startswith("./.github/workflows/"):
            wants.append(_requested(docs, Path(j["uses"]).name, calls + (name,)))
    return _widest(*wants)


def _caller_violations(docs):
    "(workflow, job, grants, needs) of each job calling a workflow of this repository granting other than it needs."
    bad = []
    for name, doc in docs.items():
        for jid, j in doc["jobs"].items():
            if not j.get("uses", "").startswith("./.github/workflows/"): continue
            grants = {k: v for k, v in _permissions(doc, j).items() if v != "none"}
            needs = _requested(docs, Path(j["uses"]).name)
            if grants != needs: bad.append((name, jid, grants, needs))  # less: GitHub refuses the run; more: excess
    return bad


def test_callers_grant_what_the_called_workflows_request():
    """GitHub refuses to start a called workflow's job that requests more than the calling job grants ("is requesting
    'id-token: write', but is only allowed 'id-token: none'"): every job with `uses: ./.github/workflows/X.yml` grants,
    per scope, the strongest level X's jobs request (through the workflows X calls), and nothing more."""
    docs = {p.name: load(p) for p in GITHUB}
    callers = [(n, jid) for n, d in docs.items() for jid, j in d["jobs"].items() if "uses" in j]
    assert sorted(callers) == [("monitor.yml", "train"), ("train.yml", "deploy")]  # the check below is not vacuous
    assert _caller_violations(docs) == []
    # the check catches the defect it replaced: a caller granting only contents: read to jobs needing an identity token
    docs["monitor.yml"]["jobs"]["train"]["permissions"] = {"contents": "read"}
    want = {"contents": "read", "id-token": "write"}
    assert _caller_violations(docs) == [("monitor.yml", "train", {"contents": "read"}, want)]
    docs["monitor.yml"]["jobs"]["train"]["permissions"] = {**want, "contents": "write"}  # and more than needed
    assert [v[:2] for v in _caller_violations(docs)] == [("monitor.yml", "train")]


def test_a_new_projects_workflows_too(tmp_path):
    """What `mlops-nb new` writes for a team's table: its callers grant what their callees request, and a change of any
    of its files runs ci on both platforms; with the OAuth pair instead of OIDC (`github_auth="secret"`) the callers
    too."""
    from mlops_nb.examples.sklearn_tables import table
    from mlops_nb.pipeline import PipelineSettings
    from mlops_nb.pipeline_files import render_pipelines
    from mlops_nb.scaffold import new_project
    table("breast-cancer").to_csv(tmp_path/"cells.csv", index=False)
    proj = Path(new_project(tmp_path/"tumours", tmp_path/"cells.csv", "target")["path"])
    docs = {p.name: load(p) for p in sorted((proj/".github"/"workflows").glob("*.yml"))}
    assert docs["train.yml"]["jobs"]["deploy"]["uses"] == "./.github/workflows/deploy.yml"
    assert _caller_violations(docs) == []
    # no bundle: no bundle jobs
    assert not (proj/"databricks.yml").exists() and "bundle-validate" not in docs["ci.yml"]["jobs"]
    assert (
        "bundle" not in docs["deploy.yml"]["jobs"]
        and "databricks bundle" not in (proj / "pipelines" / "azure" / "deploy.yml").read_text()
    )
    gl = load(proj/".gitlab-ci.yml")  # GitLab too, from the same definitions, without the bundle's jobs
    assert "deploy:deploy" in gl and "databricks bundle" not in (proj/".gitlab-ci.yml").read_text()
    gh, az = on(docs["ci.yml"])["pull_request"], load(proj/"pipelines"/"azure"/"ci.yml")["pr"]
    files = [str(f.relative_to(proj)) for f in proj.rglob("*") if f.is_file()]
    assert "scripts/setup" in files and not [f for f in files if not (_github_runs_ci(gh, f) and _azure_runs_ci(az, f))]
    m2m = render_pipelines(PipelineSettings("tumours", github_auth="secret"))
    docs = {Path(rel).name: yaml.safe_load(text) for rel, text in m2m.items() if rel.startswith(".github/workflows/")}
    assert _caller_violations(docs) == []
    assert docs["monitor.yml"]["jobs"]["train"]["permissions"] == {"contents": "read"}


def test_the_pinned_shas_are_the_declared_ones():
    from mlops_nb.pipeline import ACTIONS
    for action, (sha, version) in ACTIONS.items():
        assert re.fullmatch(r"[0-9a-f]{40}", sha) and re.fullmatch(r"v\d+\.\d+\.\d+", version), action
    assert ACTIONS["actions/checkout"][1].startswith("v4.") and ACTIONS["actions/setup-python"][1].startswith("v5.")
    # upload-pages-artifact v5 uploads with upload-artifact v7; deploy-pages v5 (Node 24) deploys such artifacts
    assert ACTIONS["actions/upload-pages-artifact"][1].startswith("v5.") and ACTIONS["actions/deploy-pages"][
        1
    ].startswith("v5.")
    text = "".join(p.read_text() for p in GITHUB)
    assert set(re.findall(r"uses: ([\w.-]+/[\w.-]+)@",
                          text)) == set(ACTIONS), "every pinned action is used, every used one pinned"


def test_docs_workflow():
    "Build and check the site with the docs pipeline's step, upload it, deploy it from a job that runs no project code."
    from mlops_nb.pipeline import ACTIONS, DOCS_SITE, cloud_steps
    doc = load(ROOT/".github"/"workflows"/"docs.yml")
    assert set(on(doc)) == {"push", "workflow_dispatch"} and on(doc)["push"]["branches"] == ["main"]  # no pull request
    assert doc["concurrency"] == {"group": "docs", "cancel-in-progress": False}  # a deployment is never cut short
    build, deploy = doc["jobs"]["build"], doc["jobs"]["deploy"]
    runs = [s["run"] for s in build["steps"] if "run" in s]
    assert runs[1:] == [s.cmd for s in cloud_steps("docs")] and f"--out {DOCS_SITE} --check" in runs[1]
    upload = build["steps"][-1]
    assert upload["uses"] == f"actions/upload-pages-artifact@{ACTIONS['actions/upload-pages-artifact'][0]}"
    assert upload["with"] == {"path": DOCS_SITE}
    assert build["permissions"] == {"contents": "read"} and "environment" not in build
    assert not any("secrets." in json.dumps(j) for j in doc["jobs"].values())
    # the deployment: the only job with more than contents: read, and exactly what deploy-pages needs
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert (deploy["needs"], deploy["environment"]) == ("build", "github-pages")
    assert deploy["steps"] == [{"id": "deployment",
                                "uses": f"actions/deploy-pages@{ACTIONS['actions/deploy-pages'][0]}"}]
    assert not (ROOT/"pipelines"/"azure"/"docs.yml").exists()


def test_a_project_without_the_docs_script_gets_no_docs_pipeline(tmp_path):
    from mlops_nb.pipeline import PipelineSettings, project_settings
    from mlops_nb.pipeline_files import render_pipelines
    assert project_settings(ROOT).optional == ("docs",)
    files = render_pipelines(PipelineSettings("churn-model"))  # a project without scripts/docs.py: no optional pipeline
    assert sorted(files) == sorted([*(f"{d}/{n}.yml" for d in (".github/workflows", "pipelines/azure")
                                      for n in ("batch", "ci", "deploy", "monitor", "train")),
                                    ".gitlab-ci.yml", ".github/dependabot.yml"])


def test_the_cli_runs_every_pipeline():
    ("`mlops-nb pipeline NAME` for every pipeline of the definition (each "
     "generated file says it is the local equivalent).")
    from mlops_nb.cli import parser
    from mlops_nb.pipeline import PIPELINES
    choices = next(a for a in parser()._subparsers._group_actions[0].choices["pipeline"]._actions
                   if a.dest == "name").choices
    assert sorted(choices) == sorted(PIPELINES), ("the choices of `mlops-nb pipeline` are a list in "
                                                  "nbs/06_cli.ipynb: keep it equal to PIPELINES")


def test_zizmor_finds_nothing_at_medium_or_above():
    p = subprocess.run([tool("zizmor"), "--offline", "--format", "json", ".github/workflows/",
                        ".github/dependabot.yml"], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    findings = json.loads(p.stdout)
    serious = [(f["ident"], f["determinations"]["severity"], f["locations"][0]["symbolic"]["key"]) for f in findings
               if f["determinations"]["severity"] in ("Medium", "High")]
    assert not serious, serious
    # what is left is below the bar and known: `uses: ./.github/workflows/deploy.yml` (self-repository, Low) is the
    # documented form for a reusable workflow of the same repository
    assert {f["ident"] for f in findings} <= {"self-repository"}, findings


def test_github_workflows_match_the_public_schema():
    p = subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", *map(str, GITHUB)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr


def _azure_scalars(x):
    "A document as Azure DevOps reads it: every scalar is a string (`30` is '30', `true` is 'true')."
    if isinstance(x, dict): return {str(k): _azure_scalars(v) for k, v in x.items()}
    if isinstance(x, list): return [_azure_scalars(v) for v in x]
    if isinstance(x, bool): return str(x).lower()
    return x if x is None else str(x)


def test_azure_pipelines_match_the_public_schema(tmp_path):
    # Where the public schema is wrong for plain YAML: Azure DevOps's parser reads every scalar as a string and its
    # schema (vendor.azure-pipelines, from the Azure Pipelines VS Code extension) types every field accordingly:
    # `timeoutInMinutes` is a "nonEmptyString" and booleans (`always: true`, `persistCredentials: false`) are strings
    # matching ^true$|^false$|^yes$...; a YAML 1.2 loader hands check-jsonschema integers and booleans instead, so valid
    # pipelines (`timeoutInMinutes: 30`, as Microsoft's own documentation writes it) fail with "30 is not of type
    # 'string'", and the deepest other branch of the job's anyOf is reported, e.g. "'runOnce' was unexpected" for a
    # deployment job. We do not quote numbers to please the schema: we validate the documents as Azure reads them,
    # scalars as strings, and nothing else is relaxed (an unknown key, a misplaced step or a wrong trigger still fails).
    files = []
    for path in AZURE:
        f = tmp_path/f"{path.stem}.json"
        f.write_text(json.dumps(_azure_scalars(load(path))))
        files.append(str(f))
    p = subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.azure-pipelines", "--regex-variant",
                        "python", *files],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr


def test_the_azure_schema_check_catches_real_mistakes(tmp_path):
    "The scalar conversion relaxes nothing else: a misspelt key fails."
    doc = _azure_scalars(load(ROOT/"pipelines"/"azure"/"ci.yml"))
    doc["jobs"][0]["timeoutInMinute"] = doc["jobs"][0].pop("timeoutInMinutes")
    f = tmp_path/"bad.json"
    f.write_text(json.dumps(doc))
    p = subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.azure-pipelines", "--regex-variant",
                        "python", str(f)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1


def test_publish_output_refuses_values_that_span_lines(tmp_path):
    out = tmp_path/"out"
    p = subprocess.run([sys.executable, "pipelines/publish_output.py", "tag"], input='{"tag": "r/x:1\\nother=forged"}',
                       capture_output=True, text=True, cwd=ROOT, env={**os.environ, "GITHUB_OUTPUT": str(out)},
                       timeout=60)
    assert p.returncode == 1 and "spans several lines" in p.stderr and not out.exists()


def test_publish_output_writes_booleans_as_both_systems_compare_them_and_tags_azure_runs(tmp_path):
    out = tmp_path/"out"
    pub = lambda env, *args: subprocess.run([sys.executable, "pipelines/publish_output.py", "retrain", *args],
                                            input='{"retrain": true, "drift": false}',
                                            capture_output=True, text=True, cwd=ROOT, env={**os.environ, **env},
                                            timeout=60)
    p = pub({"GITHUB_OUTPUT": str(out)}, "--tag", "retrain")
    assert p.returncode == 0 and out.read_text() == "retrain=true\n" and "##vso" not in p.stdout
    p = pub({"TF_BUILD": "True"}, "--tag", "retrain")
    assert p.stdout.splitlines() == ["##vso[task.setvariable variable=retrain;isOutput=true]true",
                                     "##vso[build.addbuildtag]retrain"]
    p = subprocess.run([sys.executable, "pipelines/publish_output.py", "retrain", "--tag", "retrain"],
                       input='{"retrain": false}',
                       capture_output=True, text=True, cwd=ROOT, env={**os.environ, "TF_BUILD": "True"}, timeout=60)
    # no tag: nothing starts
    assert p.stdout.splitlines() == ["##vso[task.setvariable variable=retrain;isOutput=true]false"]
    p = pub({"TF_BUILD": "True"}, "--tag", "x]##vso[task.setvariable variable=a]b")
    assert p.returncode == 1 and "is not allowed" in p.stderr and "##vso" not in p.stdout


def test_secret_file_writes_a_private_file_and_prints_nothing_of_it(tmp_path):
    target = tmp_path/"kubeconfig"
    target.write_text("old")
    secret = "apiVersion: v1\nclusters: []\nusers: [{name: u, user: {token: s3cr3t}}]\n"
    p = subprocess.run([sys.executable, "pipelines/secret_file.py", "KUBE_CONFIG", str(target)], capture_output=True,
                       text=True,
                       cwd=ROOT, env={**os.environ, "KUBE_CONFIG": secret}, timeout=60)
    assert p.returncode == 0, p.stderr
    assert target.read_text() == secret and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert "s3cr3t" not in p.stdout + p.stderr
    p = subprocess.run([sys.executable, "pipelines/secret_file.py", "KUBE_CONFIG", str(target)], capture_output=True,
                       text=True,
                       cwd=ROOT, env={k: v for k, v in os.environ.items() if k != "KUBE_CONFIG"}, timeout=60)
    assert p.returncode == 1 and "KUBE_CONFIG is empty or not set" in p.stderr


# --- local runs
# -----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["ci", "train", "deploy", "monitor", "batch", "docs"])
def test_dry_run_lists_and_checks_the_commands(name, tmp_path, monkeypatch):
    from mlops_nb.pipeline_run import run_pipeline
    monkeypatch.setenv("MLOPS_NB_HOME", str(tmp_path))
    lines = []
    from mlops_nb.cli import parser
    r = run_pipeline(name, dry_run=True, say=lines.append, parse=parser().parse_args)
    assert r.rc == 0 and r.error is None, lines
    ran = [l for l in lines if "would run: " in l]
    assert ran and all(l.startswith(f"[{name}/") for l in ran)
    assert all(s["status"] in ("checked", "skipped") for s in r.steps)
    assert not list(tmp_path.glob("**/*.parquet")) and not (tmp_path/"mlflow.db").exists()  # nothing ran


def test_cli_pipeline_dry_run():
    p = subprocess.run([str(BIN/"mlops-nb"), "pipeline", "train", "--dry-run"], capture_output=True,
                       text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "would run: mlops-nb train --mode full" in p.stderr


def test_a_failing_step_stops_the_pipeline(state):
    from mlops_nb.pipeline_run import run_pipeline
    lines = []
    r = run_pipeline("train", rows=0, say=lines.append)
    assert r.rc == 1 and [s["status"] for s in r.steps] == ["failed"]
    assert r.error.startswith("step data/generate exited 2: mlops-nb data generate --period 2021 --rows 0")
    assert r.error.endswith("error: --rows 0 is not allowed: use 1 to 50000000 rows")


@pytest.fixture(scope="module")
def trained(state):
    "The train pipeline, run once here on generated data: (result, its progress lines)."
    from mlops_nb.pipeline_run import run_pipeline
    lines = []
    return run_pipeline("train", rows=1500, epochs=1, say=lines.append), lines


def test_local_train_pipeline_registers_and_promotes(trained, state):
    from mlops_nb.tracking import list_versions
    r, lines = trained
    assert r.rc == 0, "\n".join(lines)
    assert [s["status"] for s in r.steps] == ["ok", "skipped", "ok", "ok", "ok", "skipped"]
    assert r.outputs["run"]["registered_version"] == 1 and r.outputs["run"]["train_rows"] == 1200
    assert r.outputs["champion"]["version"] == 1
    assert (state/"data"/"ottawa-housing-2021.parquet").exists()
    vs = list_versions()
    assert [v.version for v in vs] == [1] and "champion" in vs[0].aliases
    assert any(l.startswith("[train/select/promote] ok") for l in lines)


def _log_traffic(folder, tmp, period, rows, seed):
    "Serve the champion with an inference log in `folder`, ask it about `rows` generated listings of `period`, stop it."
    from test_live_traffic import _listings
    from test_server import Server
    s = Server(tmp, "--model", "champion", "--log-dir", folder)
    recs = _listings(period, rows, seed)[1]
    try:
        for i in range(0, rows, 50):
            st, body = s.score(recs[i:i + 50])
            assert st == 200, body
    finally: s.stop()
    return folder


def test_local_monitor_pipeline_retrains_on_a_drifted_week_only(trained, state, tmp_path, monkeypatch):
    "The monitor pipeline, end to end here: live traffic like the training data leaves the champion alone (through the "
    "CLI); a drifted week starts the train pipeline, which registers and selects a version on the fresh data."
    from mlops_nb import tracking
    from mlops_nb.data import write_table
    from mlops_nb.examples.ottawa import generate_listings
    from mlops_nb.pipeline_run import run_pipeline
    monkeypatch.delenv("MLOPS_NB_INFERENCE_LOG", raising=False)
    r, lines = trained
    assert r.rc == 0, "\n".join(lines)
    before = sorted(v.version for v in tracking.list_versions())
    same = _log_traffic(tmp_path/"log-same", tmp_path, 2021, 600, seed=11)
    out = cli_json("pipeline", "monitor", "--current", same)
    assert out["ok"] and [s["status"] for s in out["steps"]] == ["ok", "skipped"], out
    assert out["outputs"]["monitor"]["retrain"] is False and out["outputs"]["monitor"]["rows"]["current"] == 600
    assert "--window 7 --model champion --json" in out["steps"][0]["cmd"]

    drifted = _log_traffic(tmp_path/"log-drifted", tmp_path, 2023, 600, seed=12)
    write_table(generate_listings(2023, 1500, seed=13), tmp_path/"fresh.parquet")  # the labelled refresh to retrain on
    lines = []
    r = run_pipeline("monitor", current=str(drifted), data=str(tmp_path/"fresh.parquet"), epochs=1, say=lines.append)
    assert r.rc == 0, "\n".join(lines)
    assert r.outputs["monitor"]["retrain"] is True and r.outputs["monitor"]["drift"] is True
    assert [s["status"] for s in r.steps] == ["ok", "ok"]
    assert any(l.startswith("[train/train/train-full] ok")
               for l in lines) and any(l.startswith("[train/select/promote] ok") for l in lines)
    assert sorted(v.version for v in tracking.list_versions()) == [*before, before[-1] + 1]  # one more version
    assert any(l.startswith("[train/data/check]") for l in lines)  # the given data, checked: not generated


def test_local_batch_pipeline_scores_with_the_champion(trained, state, tmp_path, monkeypatch):
    "The batch pipeline, end to end here: the champion scores every row of the given files into the output folder, a "
    ("second (nightly) run replaces the scores, and by default it scores "
     "the train pipeline's data into the state folder.")
    import pandas as pd
    from mlops_nb import tracking
    from mlops_nb.examples.ottawa import generate_listings
    from mlops_nb.pipeline_run import run_pipeline
    for k in ("MLOPS_NB_BATCH_INPUT", "MLOPS_NB_BATCH_OUTPUT"): monkeypatch.delenv(k, raising=False)
    r, lines = trained
    assert r.rc == 0, "\n".join(lines)
    (tmp_path/"in").mkdir()
    df = generate_listings(2022, 1200, seed=21)
    df.iloc[:700].to_parquet(tmp_path/"in"/"a.parquet", row_group_size=300)
    df.iloc[700:].to_csv(tmp_path/"in"/"b.csv", index=False)
    out = tmp_path/"scores"
    for night in (1, 2):  # the second night replaces the first night's scores
        if night == 1:  # through the CLI, the locations from the variables the cloud pipelines set
            r = cli_json("pipeline", "batch",
                         env={**os.environ, "MLOPS_NB_BATCH_INPUT": str(tmp_path/"in"),
                              "MLOPS_NB_BATCH_OUTPUT": str(out)})
            assert r["ok"], r
            steps_, res = r["steps"], r["outputs"]["score"]
        else:
            lines = []
            r = run_pipeline("batch", input=str(tmp_path/"in"), output=str(out), say=lines.append)
            assert r.rc == 0, "\n".join(lines)
            steps_, res = r.steps, r.outputs["score"]
        assert [s["status"] for s in steps_] == ["ok"] and steps_[0]["cmd"].endswith("--overwrite --json"), steps_
        assert (res["rows"], res["files"], res["engine"], res["output"]) == (1200, 2, "local", str(out.resolve())), res
        got = pd.read_parquet(out)
        assert got["listing_id"].tolist() == df["listing_id"].tolist()  # every row once, in input order
        assert set(got["version"]) == {res["version"]} and set(got["model"]) == {res["model"]}
        assert (out/"_SUCCESS").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".scores.")]
    versions = {str(v.version): v.aliases for v in tracking.list_versions()}
    assert "champion" in versions[res["version"]]  # scored by the champion
    # the defaults: the train pipeline's generated data, into the state folder's batch/scores
    lines = []
    r = run_pipeline("batch", say=lines.append)
    assert r.rc == 0, "\n".join(lines)
    assert r.outputs["score"]["rows"] == 1500 and r.outputs["score"]["output"] == str(
        (state / "batch" / "scores").resolve()
    )
    # a folder that mlops-nb score did not write is never replaced
    (tmp_path/"mine").mkdir()
    (tmp_path/"mine"/"keep.txt").write_text("keep")
    r = run_pipeline("batch", input=str(tmp_path/"in"), output=str(tmp_path/"mine"), say=lambda *_: None)
    assert (
        r.rc == 1
        and "not an output of mlops-nb score" in r.error
        and (tmp_path / "mine" / "keep.txt").read_text() == "keep"
    )


def test_the_bundle_is_validated_on_pull_requests_and_deployed_from_main():
    """ci validates the bundle's test target with the CI credentials; deploy deploys prod with the production ones; both
    install the Databricks CLI pinned to one release (GitHub: the action by commit SHA; Azure: that commit's install
    script)."""
    from mlops_nb.pipeline import ACTIONS, DATABRICKS_CLI
    sha = ACTIONS["databricks/setup-cli"][0]
    assert sha in DATABRICKS_CLI and DATABRICKS_CLI.endswith("/install.sh | sudo sh")
    for name, line, creds in (("ci", "databricks bundle validate -t test", "_CI"),
                              ("deploy", "databricks bundle deploy -t prod", "")):
        gh = [j for j in jobs(ROOT/".github"/"workflows"/f"{name}.yml") if any(s.get("run") == line for s in steps(j))]
        assert len(gh) == 1, name
        uses = [s.get("uses", "") for s in steps(gh[0])]
        assert f"databricks/setup-cli@{sha}" in uses and uses.index(f"databricks/setup-cli@{sha}") < len(uses) - 1, name
        step = next(s for s in steps(gh[0]) if s.get("run") == line)
        assert step["env"]["DATABRICKS_HOST"] == f"${{{{ secrets.DATABRICKS_HOST{creds} }}}}", name
        az = [j for j in jobs(ROOT/"pipelines"/"azure"/f"{name}.yml") if any(text_of(s) == line for s in steps(j))]
        assert len(az) == 1, name
        texts = [text_of(s) for s in steps(az[0])]
        assert texts.index(DATABRICKS_CLI) < texts.index(line), name
        assert next(s for s in steps(az[0])
                    if text_of(s) == line)["env"]["DATABRICKS_HOST"] == f"$(DATABRICKS_HOST{creds})", name


# --- GitLab CI/CD: one file, every pipeline ---------------------------------------------------------------------------

def gitlab_jobs(doc):
    "The jobs of a .gitlab-ci.yml (top-level keys with a script or a trigger)."
    return {k: v for k, v in doc.items() if isinstance(v, dict) and ("script" in v or "trigger" in v)}


PROTECTED_MAIN = '$CI_COMMIT_BRANCH == "main" && $CI_COMMIT_REF_PROTECTED == "true"'
MERGE_REQUEST = '$CI_PIPELINE_SOURCE == "merge_request_event"'


def _schema_check(*files):
    return subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.gitlab-ci", *map(str, files)],
                          capture_output=True, text=True, timeout=120)


def test_gitlab_matches_the_public_schema(tmp_path):
    "The file, and the two child pipelines the monitor job can write (pipelines/publish_output.py --tag on GitLab)."
    children = []
    for verdict in ("true", "false"):
        d = tmp_path/verdict
        d.mkdir()
        p = subprocess.run([sys.executable, str(ROOT/"pipelines"/"publish_output.py"), "retrain", "--name", "monitor",
                            "--tag", "retrain"],
                           input=f'{{"retrain": {verdict}}}', capture_output=True, text=True, cwd=d,
                           env={**os.environ, "GITLAB_CI": "true"}, timeout=60)
        assert p.returncode == 0, p.stderr
        assert (d/"mlops-nb-outputs.env").read_text() == f"MONITOR_RETRAIN={verdict}\n"
        children.append(d/"mlops-nb-next.yml")
    # retrain: this very file, as a child pipeline
    assert load(children[0]) == {"include": [{"local": ".gitlab-ci.yml"}]}
    assert list(load(children[1])) == ["not-started"]
    p = _schema_check(GITLAB, *children)
    assert p.returncode == 0, p.stdout + p.stderr


def test_the_gitlab_schema_check_catches_real_mistakes(tmp_path):
    doc = load(GITLAB)
    doc["deploy:deploy"]["timout"] = doc["deploy:deploy"].pop("timeout")
    f = tmp_path/".gitlab-ci.yml"
    f.write_text(yaml.safe_dump(doc))
    assert _schema_check(f).returncode == 1


def test_gitlab_runs_every_job_of_the_definitions_in_order():
    ("Every job of every pipeline's plan is a job PIPELINE:JOB in its "
     "pipeline's stage, running the plan's lines in order.")
    from mlops_nb.pipeline import CLOUD, cloud_plan, generated, project_settings, started_by
    from mlops_nb.gitlab_ci import DATABRICKS_CLI_GITLAB
    s, doc = project_settings(ROOT), load(GITLAB)
    jobs_ = gitlab_jobs(doc)
    names = generated(s, "gitlab")
    assert sorted(names) == sorted(doc["stages"]) == ["batch", "ci", "deploy", "monitor", "train"]  # docs: GitHub only
    for n in names:
        if CLOUD[n].after: assert doc["stages"].index(CLOUD[n].after) < doc["stages"].index(n), n
        for j, rows in cloud_plan(n, s):
            job = jobs_.pop(f"{n}:{j.id}")
            assert job["stage"] == n and job["timeout"] == f"{j.timeout} minutes"
            lines = [l.split(" | python pipelines/publish_output.py")[0] for l in job["script"]
                     if l != DATABRICKS_CLI_GITLAB]
            assert lines == [r["line"] for r in rows], (n, j.id)
            if j.needs: assert job["needs"] == [f"{n}:{j.needs}"]
    # what is left: the job that starts the re-training as a child pipeline, only when monitoring advises it
    assert list(jobs_) == ["monitor:train"] and started_by("train") == ("monitor", "retrain")
    trigger = jobs_["monitor:train"]
    assert trigger["trigger"] == {"include": [{"artifact": "mlops-nb-next.yml", "job": "monitor:monitor"}],
                                  "strategy": "depend"}
    assert trigger["variables"] == {"MLOPS_NB_PIPELINE": "train"} and trigger["needs"] == ["monitor:monitor"]
    assert doc["monitor:monitor"]["script"][-1].endswith("--name monitor --tag retrain")
    assert doc["monitor:monitor"]["artifacts"]["paths"] == ["mlops-nb-next.yml"]
    # a successful re-training deploys, in the same pipeline: deploy's first jobs wait for it when it is there
    assert doc["deploy:test"]["needs"] == [{"job": "train:retrain", "optional": True}]
    assert doc["default"]["before_script"] == ["bash scripts/setup", 'export PATH="$PWD/.venv/bin:$PATH"']


def _rules(job): return [r["if"] for r in job["rules"]]


def test_gitlab_production_runs_only_on_the_protected_main_branch():
    """Merge requests run ci and nothing else; every other job runs only on the protected main branch (the production
    variables are protected: GitLab does not even give them to other refs); the rollout is a deployment of the
    environment production, one at a time (resource_group), and so is the bundle's deployment."""
    doc = load(GITLAB)
    assert _rules(doc["workflow"]) == [MERGE_REQUEST, PROTECTED_MAIN]
    for name, job in gitlab_jobs(doc).items():
        assert job["rules"] and all(set(r) == {"if"} for r in job["rules"]), name  # no when: never, no changes:
        if name.startswith("ci:"):
            assert _rules(job) == [f'{MERGE_REQUEST} && $CI_MERGE_REQUEST_TARGET_BRANCH_NAME == "main"'], name
        else: assert all(r.endswith(f" && {PROTECTED_MAIN}") for r in _rules(job)), name
    rollout = doc["deploy:deploy"]
    assert rollout["environment"] == {"name": "production", "deployment_tier": "production"}
    assert rollout["resource_group"] == doc["deploy:bundle"]["resource_group"] == "production"
    assert [n for n, j in gitlab_jobs(doc).items() if "resource_group" in j] == ["deploy:deploy", "deploy:bundle"]
    assert _rules(rollout) == [f'$CI_PIPELINE_SOURCE == "push" && {PROTECTED_MAIN}',
                               f'$MLOPS_NB_PIPELINE == "deploy" && {PROTECTED_MAIN}',
                               f'$MLOPS_NB_PIPELINE == "train" && {PROTECTED_MAIN}']


def _keys(x):
    "Every mapping key anywhere in a document."
    if isinstance(x, dict): return set(x) | {k for v in x.values() for k in _keys(v)}
    if isinstance(x, list): return {k for v in x for k in _keys(v)}
    return set()


def test_gitlab_no_change_skips_the_tests_and_merge_requests_get_no_production_names():
    from mlops_nb.pipeline import CLOUD_ENV
    doc = load(GITLAB)
    assert not _keys(doc) & {"changes", "only", "except"}  # no path filter, no legacy only/except
    for name, job in gitlab_jobs(doc).items():
        if not name.startswith("ci:"): continue
        assert job.get("environment", {"name": "ci"})["name"] == "ci", name
        for var, v in job.get("variables", {}).items():  # every value read is the *_CI one, the branch, or a constant
            assert v in ("env-oidc",
                         "$CI_MERGE_REQUEST_SOURCE_BRANCH_NAME") or (v == f"${var}_CI"
                                                                     and var in CLOUD_ENV), (name, var, v)
        for token in job.get("id_tokens", {}).values(): assert token == {"aud": "$DATABRICKS_HOST_CI"}, name


def test_gitlab_calls_databricks_with_an_id_token_not_a_secret():
    """With the default gitlab_auth="oidc", every job calling Databricks gets an ID token for the workspace URL in the
    variable databricks-sdk's env-oidc auth reads by default, and no client secret is read; "secret" maps the pair."""
    import inspect
    from databricks.sdk import config, credentials_provider
    from mlops_nb.gitlab_ci import OIDC_TOKEN, gitlab_ci
    from mlops_nb.pipeline import PipelineSettings
    src = inspect.getsource(credentials_provider.env_oidc)
    assert '"env-oidc"' in inspect.getsource(credentials_provider) and f'env_var = "{OIDC_TOKEN}"' in src
    attr = next(a for a in config.Config.attributes() if a.name == "oidc_token_env")
    # unset in the jobs: the default name above
    assert (attr.env, attr.auth) == ("DATABRICKS_OIDC_TOKEN_ENV", "env-oidc")
    doc, text = load(GITLAB), GITLAB.read_text()
    assert "DATABRICKS_CLIENT_SECRET" not in text
    callers = [n for n, j in gitlab_jobs(doc).items()
               if j.get("variables", {}).get("DATABRICKS_AUTH_TYPE") == "env-oidc"]
    assert sorted(callers) == sorted(n for n, j in gitlab_jobs(doc).items() if "id_tokens" in j)
    assert {"ci:notebook-test-mode", "train:retrain", "deploy:bundle", "batch:batch"} <= set(callers)
    for n in callers:
        aud = "$DATABRICKS_HOST_CI" if n.startswith("ci:") else "$DATABRICKS_HOST"
        assert doc[n]["id_tokens"] == {OIDC_TOKEN: {"aud": aud}}, n
    m2m = yaml.safe_load(gitlab_ci(PipelineSettings("churn", gitlab_auth="secret")))
    assert not any("id_tokens" in j for j in gitlab_jobs(m2m).values())
    assert m2m["ci:notebook-test-mode"]["variables"]["DATABRICKS_CLIENT_SECRET"] == "$DATABRICKS_CLIENT_SECRET_CI"


def test_gitlab_scripts_expand_only_quoted_variables_the_job_has(stub_cli):
    ("Every line names a real command (as on the other platforms), and "
     "every $NAME is double-quoted and given to the job.")
    from mlops_nb.cli import parser
    from mlops_nb.gitlab_ci import DATABRICKS_CLI_GITLAB
    from mlops_nb.pipeline import CLOUD_ENV
    doc = load(GITLAB)
    for name, job in gitlab_jobs(doc).items():
        have = set(CLOUD_ENV) | set(job.get("variables", {})) | {"PWD", "PATH"}
        for need in job.get("needs", []):  # the dotenv reports of the jobs it needs: NAME_KEY
            for line in doc[need if isinstance(need, str) else need["job"]].get("script", []):
                m = re.search(r"publish_output\.py ([\w ]+?) --name (\w+)", line)
                if m: have |= {f"{m.group(2)}_{k}".upper() for k in m.group(1).split()}
        for text in job.get("script", []):
            assert "\n" not in text and "${{" not in text and "$(" not in text, (name, text)
            if text == DATABRICKS_CLI_GITLAB: continue
            for var, quoted in _env_refs(text):
                assert quoted and var in have, (name, var, text)
            for args in commands(text):
                if args[0] == "mlops-nb": assert hasattr(parser().parse_args(args[1:]), "fn"), text
                else: assert args[0] in ("python", "databricks"), text
    # a hostile branch name reaches the command as text: GitLab puts it in the job's environment, bash expands it once
    job = doc["ci:notebook-test-mode"]
    assert job["variables"]["BRANCH"] == "$CI_MERGE_REQUEST_SOURCE_BRANCH_NAME"
    out = _bash(job["script"][0], stub_cli, {"BRANCH": HOSTILE_BRANCH, "DATABRICKS_CLUSTER": CLUSTER_JSON})
    args = json.loads(out)
    assert "INJECTED-42" not in out and args[args.index("--branch") + 1] == HOSTILE_BRANCH


# --- shorter-lived credentials: Azure DevOps through workload identity federation, one deployment at a time, Dependabot
# ---

def test_azure_calls_databricks_through_a_federated_service_connection_only():
    """No Azure DevOps step reads a Databricks client secret (or client id): every step that calls Databricks is an
    AzureCLI@2 task under the service connection of its credentials (PREFIX-databricks-ci for pull requests), with
    databricks-sdk's azure-cli auth; every other step is a plain script or a secure file's download."""
    for path in AZURE:
        ci = path.name == "ci.yml"
        for j in jobs(path):
            for s in steps(j):
                env = s.get("env", {})
                assert not {"DATABRICKS_CLIENT_SECRET",
                            "DATABRICKS_CLIENT_ID"} & set(env), (path.name, s["displayName"])
                if "DATABRICKS_HOST" in env:
                    assert s["task"] == "AzureCLI@2" and env["DATABRICKS_AUTH_TYPE"] == "azure-cli", (path.name, s)
                    assert s["inputs"] == {"azureSubscription": "mlops-nb-databricks" + ("-ci" if ci else ""),
                                           "scriptType": "bash",
                                           "scriptLocation": "inlineScript", "inlineScript": text_of(s)}
                else: assert s.get("task") in (None, "DownloadSecureFile@1"), (path.name, s)
    # the OAuth pair stays one setting away, for connections that cannot be federated
    from mlops_nb.azure_devops import azure_pipeline
    from mlops_nb.pipeline import PipelineSettings
    m2m = yaml.safe_load(azure_pipeline("batch", PipelineSettings("churn", azure_auth="secret")))
    assert m2m["jobs"][0]["steps"][-1]["env"]["DATABRICKS_CLIENT_SECRET"] == "$(DATABRICKS_CLIENT_SECRET)"


def test_azure_deploys_one_run_at_a_time():
    "A pipeline with a deployment job waits for the environment's exclusive lock in order (lockBehavior: sequential)."
    for path in AZURE:
        doc = load(path)
        deploys = any("deployment" in j for j in jobs(path))
        assert doc.get("lockBehavior") == ("sequential" if deploys else None), path.name
    assert load(ROOT/"pipelines"/"azure"/"deploy.yml")["lockBehavior"] == "sequential"
    assert "Exclusive Lock" in (ROOT/"pipelines"/"azure"/"deploy.yml").read_text()  # the check to add, documented


def test_dependabot_keeps_the_actions_and_python_dependencies_current():
    "Both ecosystems, weekly, from the repository root; the file matches Dependabot's public schema."
    doc = load(ROOT/".github"/"dependabot.yml")
    assert doc["version"] == 2
    assert [(u["package-ecosystem"], u["directory"], u["schedule"]["interval"]) for u in doc["updates"]] == [
        ("github-actions", "/", "weekly"), ("pip", "/", "weekly")]
    p = subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.dependabot",
                        str(ROOT/".github"/"dependabot.yml")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    doc["updates"][0]["schedule"]["interval"] = "hourly"  # the schema check is not vacuous
    assert subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.dependabot", "-"],
                          input=yaml.safe_dump(doc),
                          capture_output=True, text=True, timeout=120).returncode == 1
