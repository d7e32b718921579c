"""The Databricks Asset Bundle (databricks.yml, resources/*.yml): generated from the pipeline definitions (no hand-kept
copy), valid against the bundle JSON schema of the Databricks CLI, every task naming a notebook, script or entry point
of this project, the targets mapping to Unity Catalog catalogs, and `mlops-nb train --runner databricks --job KEY`
running a bundle job now against the Databricks stand-in of tests/test_databricks.py.

The schema is `bundle/schema/jsonschema.json` of databricks/cli v1.13.0+4 (commit 7bbe2852131b, sha256 of the JSON
c3e8df8f2e13...), stored gzipped in tests/schemas/ so the check runs offline: what `databricks bundle validate` checks
against a workspace (paths resolved, variables interpolated, permissions, the workspace's node types) is not run here.
"""
import gzip, json, os, re, subprocess, sys, tomllib
import pytest, yaml
from conftest import ROOT, run_cli
from mlops_nb.bundle import BUNDLE_JOBS, TARGETS, quartz_cron, render_bundle
from mlops_nb.pipeline import project_settings

pytest.importorskip("databricks.sdk")
from test_databricks import TOKEN, fake, no_credentials  # noqa: F401  the Databricks stand-in and its fixtures, reused

FILES = ["databricks.yml", *(f"resources/{k}.yml" for k in BUNDLE_JOBS), "resources/ml_artifacts.yml"]
SCHEMA = ROOT/"tests"/"schemas"/"databricks-bundle.schema.json.gz"
PYPROJECT = tomllib.loads((ROOT/"pyproject.toml").read_text())


def load(rel): return yaml.safe_load((ROOT/rel).read_text())

def jobs():
    "Every job the bundle declares: key -> (file, job)."
    return {k: (rel, j) for rel in FILES[1:] for k, j in load(rel)["resources"].get("jobs", {}).items()}

def tasks():
    return [(key, t) for key, (_, j) in jobs().items() for t in j["tasks"]]

def resolve(s, target):
    "`s` with the bundle's ${var.NAME} references replaced by their values in `target` (defaults, then the target's)."
    root = load("databricks.yml")
    values = {**{k: v["default"] for k, v in root["variables"].items()}, **root["targets"][target].get("variables", {})}
    # ${resources.KIND.KEY.FIELD}: the declared value (no dev prefix here)
    arts = load("resources/ml_artifacts.yml")["resources"]
    for _ in range(10):
        s = re.sub(r"\$\{resources\.(\w+)\.(\w+)\.(\w+)\}", lambda m: str(arts[m.group(1)][m.group(2)][m.group(3)]), s)
        s = re.sub(r"\$\{var\.(\w+)\}", lambda m: str(values[m.group(1)]), s)
    return s.replace("${bundle.target}", target)


# --- one definition ---------------------------------------------------------------------------------------------------

def test_the_bundle_is_generated_from_the_pipeline_definitions():
    "Regenerate the bundle from mlops_nb.pipeline and mlops_nb.bundle; the repository's files are exactly that."
    files = render_bundle(ROOT)
    assert sorted(files) == sorted(FILES)
    stale = [rel for rel, text in files.items() if not (ROOT/rel).exists() or (ROOT/rel).read_text() != text]
    assert not stale, f"{stale} differ from what mlops_nb.bundle generates: run `python pipelines/generate.py`"
    extra = sorted(p.name for p in (ROOT/"resources").glob("*.yml") if f"resources/{p.name}" not in files)
    assert not extra, (f"resources/{extra} are not generated: declared_jobs would "
                       "find jobs the bundle generator does not make")


def test_generate_check_passes():
    p = subprocess.run([sys.executable, "pipelines/generate.py", "--check"], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
    assert p.returncode == 0, p.stderr


def test_generate_check_names_a_changed_bundle_file(tmp_path):
    "--check fails naming a bundle file edited by hand (a copy of the project, so nothing here changes)."
    import shutil
    for rel in ("pyproject.toml", "profiles", "databricks.yml", "resources", ".github", "pipelines"):
        (shutil.copytree if (ROOT/rel).is_dir() else shutil.copy)(ROOT/rel, tmp_path/rel)
    f = tmp_path/"resources"/"monitor.yml"
    f.write_text(f.read_text().replace("0 0 5 * * ?", "0 0 6 * * ?"))
    p = subprocess.run([sys.executable, str(ROOT/"pipelines"/"generate.py"), "--check", "--root", str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 1 and "differs: resources/monitor.yml" in p.stderr, p.stderr


# --- the files --------------------------------------------------------------------------------------------------------

def test_the_bundle_parses():
    root = load("databricks.yml")
    assert root["bundle"]["name"] == project_settings(ROOT).name and root["include"] == ["resources/*.yml"]
    assert set(jobs()) == {"train_test", "retrain", "retrain_on_data", "batch_score", "monitor"}
    for key, (rel, j) in jobs().items():
        assert j["name"] and j["tasks"], key
        assert len({t["task_key"] for t in j["tasks"]}) == len(j["tasks"]), key
        keys = {t["task_key"] for t in j["tasks"]}
        assert all(d["task_key"] in keys for t in j["tasks"] for d in t.get("depends_on", [])), key
        used = {t["job_cluster_key"] for t in j["tasks"] if "job_cluster_key" in t}
        assert used <= {c["job_cluster_key"] for c in j.get("job_clusters", [])}, key


def _check_jsonschema(tmp_path, *files):
    exe = os.path.join(os.path.dirname(sys.executable), "check-jsonschema")
    if not os.path.exists(exe):
        pytest.fail("check-jsonschema is not installed: it is in the dev extra (bash scripts/setup)")
    schema = tmp_path/"databricks-bundle.schema.json"
    schema.write_bytes(gzip.decompress(SCHEMA.read_bytes()))
    return subprocess.run([exe, "--schemafile", str(schema), *map(str, files)], capture_output=True, text=True,
                          timeout=120)


def test_the_bundle_matches_the_cli_schema(tmp_path):
    ("Every file of the bundle against the Databricks CLI's bundle schema "
     "(the schema holds for each configuration file).")
    p = _check_jsonschema(tmp_path, *(ROOT/rel for rel in FILES))
    assert p.returncode == 0, p.stdout + p.stderr


def test_the_schema_check_catches_real_mistakes(tmp_path):
    ("So the check above is not vacuous: a misspelt task field, an "
     "unknown pause status, a job field that does not exist.")
    bad = {"notebook_path:": "notebok_path:", "pause_status: UNPAUSED": "pause_status: RUNNING",
           "max_concurrent_runs:": "max_runs:"}
    for i, (good, wrong) in enumerate(bad.items()):
        rel = next(r for r in FILES if good in (ROOT/r).read_text())
        f = tmp_path/f"bad{i}.yml"
        f.write_text((ROOT/rel).read_text().replace(good, wrong, 1))
        p = _check_jsonschema(tmp_path, f)
        assert p.returncode == 1 and "is not valid" in p.stdout, (wrong, p.stdout)


# --- what the tasks run -----------------------------------------------------------------------------------------------

def test_every_task_names_a_notebook_script_or_entry_point_that_exists():
    from mlops_nb.cli import parser
    parse = parser().parse_args
    seen = set()
    for key, t in tasks():
        kind = next(k for k in ("notebook_task", "spark_python_task", "python_wheel_task", "run_job_task") if k in t)
        seen.add(kind)
        if kind == "notebook_task":
            nb = (ROOT/"resources"/t[kind]["notebook_path"]).resolve()
            assert nb.suffix == ".ipynb" and nb.is_file(), (key, nb)
            import nbformat
            cells = nbformat.read(nb, as_version=4).cells
            params = next(c.source for c in cells if "parameters" in c.metadata.get("tags", []))
            names = set(re.findall(r"^(\w+)\s*=", params, re.M))
            missing = set(t[kind].get("base_parameters", {})) - names
            assert not missing, f"{key}: {nb.name} has no parameter {missing}"
        elif kind == "spark_python_task":
            script = (ROOT/"resources"/t[kind]["python_file"]).resolve()
            assert script.is_file(), (key, script)
            h = subprocess.run([sys.executable, str(script), *t[kind]["parameters"], "--help"], capture_output=True,
                               cwd=ROOT, timeout=60)
            assert h.returncode == 0, (key, h.stderr)
        elif kind == "python_wheel_task":
            w = t[kind]
            assert w["package_name"] == PYPROJECT["project"]["name"], key
            assert w["entry_point"] in PYPROJECT["project"]["scripts"], (key, w["entry_point"])
            args = [re.sub(r"\$\{var\.\w+\}", "x", a) for a in w["parameters"]]
            assert hasattr(parse(args), "fn"), (key, args)  # the CLI takes these arguments (argparse exits otherwise)
        else:
            ref = re.fullmatch(r"\$\{resources\.jobs\.(\w+)\.id\}", t[kind]["job_id"])
            assert ref and ref.group(1) in jobs(), (key, t[kind])
        if kind != "run_job_task":
            assert t["libraries"] == [{"whl": "../dist/*.whl"}], key  # the wheel the bundle's artifact builds
    assert seen == {"notebook_task", "spark_python_task", "python_wheel_task", "run_job_task"}
    art = load("databricks.yml")["artifacts"]["mlops_nb_wheel"]
    assert art["type"] == "whl" and art["path"] == "." and "--wheel-dir dist" in art["build"]


def test_the_jobs_run_the_pipelines_cloud_steps():
    "The bundle's tasks are the cloud steps of each pipeline that run on a cluster, in the pipeline's order."
    from mlops_nb.bundle import on_cluster
    from mlops_nb.pipeline import PIPELINES, cloud_steps
    for key, j in BUNDLE_JOBS.items():
        if j.pipeline not in PIPELINES: continue
        have = [t["task_key"] for t in jobs()[key][1]["tasks"]]
        assert have == [s.name.replace("-", "_") for s in cloud_steps(j.pipeline) if on_cluster(s)], key
    assert [t["task_key"] for t in jobs()["retrain"][1]["tasks"]] == ["check", "train_full", "best", "promote"]
    test = jobs()["train_test"][1]["tasks"][0]["notebook_task"]
    assert test == {"notebook_path": "../nbs/train.ipynb", "base_parameters": {"mode": "test"}}


def test_schedules_and_the_file_arrival_trigger():
    ("Schedules from the pipeline settings (Quartz, UTC); new data in the "
     "data location starts retraining; one trigger per job.")
    st = project_settings(ROOT)
    j = {k: j for k, (_, j) in jobs().items()}
    assert j["retrain"]["schedule"]["quartz_cron_expression"] == quartz_cron(st.cron) == "0 30 6 ? * MON"
    assert j["monitor"]["schedule"]["quartz_cron_expression"] == quartz_cron(st.monitor_cron)
    assert all(s["schedule"]["timezone_id"] == "UTC" for s in j.values() if "schedule" in s)
    fa = j["retrain_on_data"]["trigger"]["file_arrival"]
    assert fa["url"] == "${var.data_location}" and fa["wait_after_last_change_seconds"] >= 60
    assert j["retrain_on_data"]["tasks"] == [{"task_key": "retrain",
                                              "run_job_task": {"job_id": "${resources.jobs.retrain.id}"}}]
    assert "schedule" not in j["train_test"] and "trigger" not in j["train_test"]  # pull requests run it
    # Databricks: one per job
    assert not [k for k, x in j.items() if sum(f in x for f in ("schedule", "trigger", "continuous")) > 1]


def test_targets_map_to_unity_catalog_catalogs():
    from mlops_nb.databricks import uc_model_name
    root = load("databricks.yml")
    assert list(root["targets"]) == ["dev", "staging", "prod", "test"] == list(TARGETS)
    assert {t: d["variables"]["catalog"] for t, d in root["targets"].items()} == {t: t for t in TARGETS}
    assert [t for t, d in root["targets"].items() if d.get("default")] == ["dev"]
    assert root["targets"]["dev"]["mode"] == "development" and root["targets"]["prod"]["mode"] == "production"
    assert root["targets"]["prod"]["workspace"]["root_path"].startswith("/Workspace/Shared/")
    for key, (_, j) in jobs().items():
        for c in j.get("job_clusters", []):
            env = c["new_cluster"]["spark_env_vars"]
            assert env["MLOPS_NB_REGISTRY_URI"] == "databricks-uc" and env["MLOPS_NB_TRACKING_URI"] == "databricks"
            for target in TARGETS:
                name = resolve(env["MLOPS_NB_MODEL_NAME"], target)
                assert uc_model_name(name) == name and name.startswith(f"{target}."), (key, target, name)
                assert resolve(c["new_cluster"]["node_type_id"], target)
    assert resolve("${var.data_location}", "prod").startswith("/Volumes/prod/")
    # prod trains where its profile says
    prod = yaml.safe_load((ROOT/"profiles"/"prod.yaml").read_text())["databricks"]["cluster"]
    assert resolve("${var.node_type_id}", "prod") == prod["node_type_id"]
    assert resolve("${var.spark_version}", "prod") == prod["spark_version"]


# --- the runner finds and runs them -----------------------------------------------------------------------------------

def test_declared_jobs_finds_the_bundle_jobs():
    from mlops_nb.databricks import declared_jobs
    assert declared_jobs(ROOT) == {k: j["name"] for k, (_, j) in jobs().items()}



def test_run_now_a_bundle_job_through_the_cli(fake, state):  # noqa: F811
    ("`mlops-nb train --runner databricks --job KEY` (a real process) finds "
     "the deployed job by the bundle's key and runs it now.")
    names = {k: j["name"] for k, (_, j) in jobs().items()}
    fake.jobs.update({701: names["train_test"], 702: names["retrain"]})
    env = {**os.environ, "DATABRICKS_HOST": fake.url, "DATABRICKS_TOKEN": TOKEN}
    fake.scenario = "SUCCESS"
    for key, job_id, extra in (("train_test", 701, ["--mode", "test"]),
                               ("retrain", 702,
                                ["--mode", "full", "--data", "/Volumes/staging/s/data/refresh/latest.parquet"])):
        n = len(fake.requests)
        p = run_cli("train", "--runner", "databricks", "--job", key, "--poll-s", "0.05", *extra, "--json", env=env)
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["run_id"] == "mlflow-run-1"
        sent = [(path, body) for m, path, q, body, a in fake.requests[n:] if m == "POST"]
        # no notebook import, no upload: the job runs as deployed
        assert [path for path, _ in sent] == ["/api/2.2/jobs/run-now"]
        body = sent[0][1]
        assert body["job_id"] == job_id and body["notebook_params"]["mode"] == extra[1]
        lists = [q for m, path, q, b, a in fake.requests[n:] if path == "/api/2.2/jobs/list"]
        # looked up by the name the bundle declares
        assert {"name": names[key]} in [{"name": q.get("name")} for q in lists]
        assert TOKEN not in p.stdout + p.stderr
    assert fake.runs[max(fake.runs)]["body"]["notebook_params"]["data_path"].endswith("latest.parquet")


def test_a_bundle_job_not_deployed_is_one_line(fake, state):  # noqa: F811
    env = {**os.environ, "DATABRICKS_HOST": fake.url, "DATABRICKS_TOKEN": TOKEN}
    p = run_cli("train", "--runner", "databricks", "--job", "monitor", "--mode", "test", env=env)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert (
        "no job named 'monitor' in the workspace: deploy the bundle first (databricks bundle deploy -t TARGET)"
        in p.stderr
    )


# --- who runs, who sees -----------------------------------------------------------------------------------------------

def test_jobs_outside_dev_run_as_the_service_principal():
    "dev runs as the deploying user (development mode); test, staging and prod as the service principal, on every job."
    from mlops_nb.bundle import ACCESS, bundle_access
    root = load("databricks.yml")
    assert (
        "run_as" not in root
        and "run_as" not in root["targets"]["dev"]
        and root["targets"]["dev"]["mode"] == "development"
    )
    for t in ("test", "staging", "prod"):
        assert root["targets"][t]["run_as"] == {"service_principal_name": "${var.service_principal}"}, t
        # an application id, not a name
        assert re.fullmatch(r"[0-9a-f-]{36}", resolve("${var.service_principal}", t)), t
        assert all("run_as" not in j for _, j in jobs().values())  # no job overrides its target's identity
    assert {k: root["variables"][k]["default"] for k in ACCESS} == bundle_access(ROOT)


def test_every_target_has_permissions_for_the_groups():
    root = load("databricks.yml")
    assert "permissions" not in root  # per target, so each can differ
    for t, d in root["targets"].items():
        levels = {p.get("group_name"): p["level"] for p in d["permissions"]}
        assert levels == {"${var.admin_group}": "CAN_MANAGE", "${var.reader_group}": "CAN_VIEW"}, t


def test_the_registered_model_and_experiment_are_declared_and_the_jobs_use_them():
    """The registered model is the Unity Catalog name the jobs register (MLOPS_NB_MODEL_NAME, what
    mlops_nb.tracking.registered_name checks) in every target's catalog, with EXECUTE granted; the experiment is the
    one the jobs log to."""
    from mlops_nb.databricks import uc_model_name
    from mlops_nb.problem import load_problem
    arts = load("resources/ml_artifacts.yml")["resources"]
    model, exp = arts["registered_models"]["model"], arts["experiments"]["experiment"]
    assert model["grants"] == [{"principal": "${var.model_readers}", "privileges": ["EXECUTE"]}]
    assert resolve(model["grants"][0]["principal"], "prod") == "account users"
    problem = load_problem(start=ROOT)
    for t in TARGETS:
        uc = resolve(f"{model['catalog_name']}.{model['schema_name']}.{model['name']}", t)
        assert (
            uc_model_name(uc) == uc
            and uc.startswith(f"{t}.")
            and uc.endswith(re.sub(r"\W", "_", problem.model_name or problem.name))
        )
        for key, (_, j) in jobs().items():
            for c in j.get("job_clusters", []):
                env = c["new_cluster"]["spark_env_vars"]
                assert resolve(env["MLOPS_NB_MODEL_NAME"], t) == uc and resolve(env["MLOPS_NB_EXPERIMENT"],
                                                                                t) == resolve(exp["name"], t)
    env = jobs()["retrain"][1]["job_clusters"][0]["new_cluster"]["spark_env_vars"]
    # the deployed (dev: prefixed) name
    assert env["MLOPS_NB_MODEL_NAME"].startswith("${resources.registered_models.model.")


def test_what_mlops_nb_registers_is_the_declared_model(monkeypatch):
    "With the job cluster's environment, mlops_nb.tracking registers under the bundle's model name."
    from mlops_nb import tracking
    env = jobs()["retrain"][1]["job_clusters"][0]["new_cluster"]["spark_env_vars"]
    for k in ("MLOPS_NB_MODEL_NAME", "MLOPS_NB_REGISTRY_URI"): monkeypatch.setenv(k, resolve(env[k], "prod"))
    arts = load("resources/ml_artifacts.yml")["resources"]["registered_models"]["model"]
    assert tracking.registered_name() == resolve(f"{arts['catalog_name']}.{arts['schema_name']}.{arts['name']}", "prod")


def test_a_bad_service_principal_is_one_line(tmp_path):
    "A display name where the application id belongs fails generation, naming the setting."
    import shutil
    for rel in ("pyproject.toml", "profiles"):
        (shutil.copytree if (ROOT/rel).is_dir() else shutil.copy)(ROOT/rel, tmp_path/rel)
    f = tmp_path/"pyproject.toml"
    f.write_text(f.read_text().replace("[tool.mlops_nb]\n", '[tool.mlops_nb]\nservice_principal = "ml-deployer"\n', 1))
    p = subprocess.run([sys.executable, str(ROOT/"pipelines"/"generate.py"), "--bundle", "--check", "--root",
                        str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 2 and "service_principal='ml-deployer'" in p.stderr and "Traceback" not in p.stderr, p.stderr
