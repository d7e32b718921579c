"""checkov (PyPI) on what mlops-nb ships: the Kubernetes manifests `mlops-nb deploy --target kubernetes` writes (a real
process: with the CLI's defaults, with the deploy pipeline's own rollout line, and with the options a production deploy
adds), the Dockerfile `mlops_nb.package.write_context` writes, and every generated CI file (this repository's
committed workflows, .gitlab-ci.yml and Azure pipelines, and the variants of tests/test_scanners.py) with checkov's
GitHub Actions, GitLab CI and Azure Pipelines checks; its secrets checks over all of it.

checkov runs from its own venv (scripts/checkov-venv: its pins conflict with the development environment), offline
(BC_SKIP_MAPPING and --skip-download: no call to its platform's API; it would otherwise try one and print a traceback),
and once for all frameworks, since it takes about 10 s to start. Every check that fails but does not apply is listed in
SKIPS with its reason. Any other failure fails the test, and so does a listed check that no longer fails (its reason is
then stale: remove it).
"""
import json, os, subprocess, sys
from pathlib import Path
import pytest
from conftest import ROOT, run_cli, side_venv
from test_scanners import ci_trees, generated, kind

pytest.importorskip("kubernetes_validate")

PINNED = "127.0.0.1:5000/ottawa-housing:3-b287060@sha256:" + "4c" * 32  # as `mlops-nb package --push` prints it

SKIPS = {
    "kubernetes": {
        "CKV_K8S_21": "The default namespace should not be used: the namespace is the deploying team's choice "
                      "(`deploy --namespace`); the CLI's own default is `default`, which only the cli-defaults set "
                      "uses: the deploy pipeline names one (MLOPS_NB_NAMESPACE), and test_kubernetes_manifests holds "
                      "its set and the production set to this check",
    },
    "dockerfile": {},
    "github_actions": {
        "CKV_GHA_7": "The build output cannot be affected by user parameters: train.yml's workflow_dispatch input "
                     "data_path names the data file to re-train on by hand, which is the point of that input; it "
                     "reaches the command only as a quoted environment variable, in the environment trusted "
                     "(deployment branches: main), on main's code (the checkout's ref)",
    },
    "gitlab_ci": {},
    "azure_pipelines": {},
    "secrets": {},
}


# what `mlops-nb deploy --target kubernetes` writes with a pushed image: with every default of the CLI; and as a
# production deploy would: an autoscaler, a policy admitting the ingress controller, the API key, an inference log on a
# claim, a namespace of its own. The deploy pipeline's set ("pipeline") is rendered from its generated rollout line.
_DEPLOY = ("deploy", "--target", "kubernetes", "--image", PINNED)
MANIFEST_SETS = {
    "cli-defaults": _DEPLOY,
    "production": (*_DEPLOY, "--namespace", "scoring", "--hpa", "--allow-from", "ingress-nginx:*", "--api-key-secret",
                   "scoring-api-key", "--inference-log", "--log-claim", "scoring-logs"),
}


def _env_without_a_cluster():
    "This environment without KUBECONFIG: a dry run then renders, validates and writes, and contacts nothing."
    return {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}


def _pipeline_rollout():
    """(line, env): the deploy pipeline's cloud rollout step as both generated files run it, and the environment its
    variables have there when the project sets nothing (the image as `package --push` prints it)."""
    from mlops_nb.pipeline import cloud_command, cloud_steps, project_settings
    settings = project_settings(ROOT)
    line, env = cloud_command(next(s for s in cloud_steps("deploy") if s.name == "rollout"), settings)
    assert set(env) == {"PACKAGE_IMAGE", "MLOPS_NB_NAMESPACE", "KUBECONFIG"}, env
    values = {"PACKAGE_IMAGE": PINNED, "MLOPS_NB_NAMESPACE": env["MLOPS_NB_NAMESPACE"][2]}  # the variable's default
    return line, {**_env_without_a_cluster(), **values, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


@pytest.fixture(scope="module")
def checkov():
    "The checkov executable of its own venv (built once per machine, then instant)."
    return side_venv("checkov-venv", "checkov's venv")


@pytest.fixture(scope="module")
def scanned(checkov, tmp_path_factory, model_dir, state, monkeypatch_module):
    "checkov's JSON report per framework, for three manifest sets (k8s/SET/) and a Dockerfile written by write_context."
    import mlops_nb.package as package
    root = tmp_path_factory.mktemp("checkov")
    for name, argv in MANIFEST_SETS.items():
        p = run_cli(*argv, "--dry-run", "--manifests", root/"scan"/"k8s"/name, env=_env_without_a_cluster())
        assert p.returncode == 0 and "validated (strict)" in p.stderr, (name, p.stderr[-2000:])
    line, env = _pipeline_rollout()
    p = subprocess.run(["bash", "-c", f"{line} --dry-run --manifests {root/'scan'/'k8s'/'pipeline'}"], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "validated (strict)" in p.stderr, p.stderr[-2000:]
    # the wheels do not change the Dockerfile: skip collecting them (pip download and a wheel build)
    monkeypatch_module.setattr(package, "collect_wheels", lambda reqs, dest,
                               progress=None: dest.mkdir(parents=True, exist_ok=True))
    ctx = package.write_context(model_dir, root/"image", base_image="python:3.11-slim", registry="127.0.0.1:5000")
    (root/"scan"/"docker").mkdir()
    # alone: the model folder holds YAML files too
    (root/"scan"/"docker"/"Dockerfile").write_text((ctx.path/"Dockerfile").read_text())
    # checkov finds an Azure pipeline only under the name azure-pipelines.yml: each in a folder of its own
    for name, tree in ci_trees(tmp_path_factory).items():
        for rel in generated(tree):
            framework = kind(rel)[1]
            if framework is None: continue
            azure = f"azure/{Path(rel).stem}/azure-pipelines.yml"
            dest = root/"scan"/"ci"/name/(azure if framework == "azure_pipelines" else rel)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text((tree/rel).read_text())
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "LOG_LEVEL": "WARNING"}
    p = subprocess.run([checkov, "--directory", str(root/"scan"),  # one folder: one JSON report per framework
                        "--framework", *SKIPS, "--skip-download", "--compact", "--output", "json"],
                       capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode in (0, 1), p.stderr[-2000:]  # 1: some check failed (judged below)
    assert "prismacloud" not in p.stderr and "Traceback" not in p.stderr, p.stderr[-2000:]  # offline, quietly
    reports = json.loads(p.stdout)
    return {r["check_type"]: r for r in (reports if isinstance(reports, list) else [reports])}


def _judge(report, framework):
    failed = {}
    # checkov omits a framework with nothing
    if report is None: report = {"results": {"failed_checks": []}, "summary": {}}
    for c in report["results"]["failed_checks"]:
        failed.setdefault(c["check_id"], []).append(f"{c['resource']} ({c['file_path']})")
    new = {k: v for k, v in failed.items() if k not in SKIPS[framework]}
    stale = sorted(set(SKIPS[framework]) - set(failed))
    assert not new, "checkov failures to fix, or to skip in SKIPS with a reason: " + "; ".join(
        f"{k} {next(c['check_name'] for c in report['results']['failed_checks'] if c['check_id'] == k)}: {', '.join(v)}"
        for k, v in new.items()
    )
    assert not stale, f"checks in SKIPS that no longer fail (remove them): {stale}"
    s = report["summary"]
    if not s: return s
    print(f"\ncheckov {framework}: {s['passed']} passed, {len(failed)} skipped with a reason ("
          f"{', '.join(sorted(failed))}), {s['resource_count']} resources, checkov {s['checkov_version']}")
    return s


def test_kubernetes_manifests(scanned):
    s = _judge(scanned["kubernetes"], "kubernetes")
    assert s["parsing_errors"] == 0 and s["passed"] >= 80  # the checks ran (84 pass with checkov 3.3.30)
    results = scanned["kubernetes"]["results"]
    passed = {c["check_id"] for c in results["passed_checks"]}
    # image by digest (so pulled by digest), pods covered by a NetworkPolicy, the API key a file
    assert {"CKV_K8S_43", "CKV2_K8S_6", "CKV_K8S_15", "CKV_K8S_35"} <= passed
    sets = lambda checks, check_id: {Path(c["file_path"]).parent.name for c in checks if c["check_id"] == check_id}
    # every set, the CLI's defaults included, has its pods covered by a NetworkPolicy
    assert sets(results["passed_checks"], "CKV2_K8S_6") == {"cli-defaults", "pipeline", "production"}
    # the skipped namespace check fails only where the CLI's default is used: the pipeline's and production's pass it
    assert sets(results["failed_checks"], "CKV_K8S_21") == {"cli-defaults"}
    assert {"pipeline", "production"} <= sets(results["passed_checks"], "CKV_K8S_21")


def test_dockerfile(scanned):
    s = _judge(scanned["dockerfile"], "dockerfile")
    assert s["parsing_errors"] == 0 and s["resource_count"] == 1 and s["passed"] >= 40


def test_the_generated_pipelines(scanned):
    """The generated CI files, as each framework finds them (in the one run of `scanned`): GitHub's workflows,
    .gitlab-ci.yml, each Azure DevOps pipeline under the name checkov looks for (azure-pipelines.yml), committed and
    as every variant of tests/test_scanners.py renders them; the secrets checks over everything scanned. No failure but
    the ones explained in SKIPS."""
    assert {"azure_pipelines", "github_actions", "gitlab_ci"} <= set(scanned), sorted(scanned)
    for framework in ("azure_pipelines", "github_actions", "gitlab_ci"):
        s = _judge(scanned[framework], framework)
        assert s["parsing_errors"] == 0 and s["passed"] > 0, (framework, s)  # the checks ran on the files
    _judge(scanned.get("secrets"), "secrets")  # checkov omits the report when nothing was found
