"""checkov (PyPI) on what mlops-nb ships: the Kubernetes manifests `mlops_nb.kube` renders and the Dockerfile
`mlops_nb.package.write_context` writes.

checkov runs from its own venv (scripts/checkov-venv: its pins conflict with the development environment), offline
(BC_SKIP_MAPPING and --skip-download: no call to its platform's API; it would otherwise try one and print a traceback),
and once for both frameworks, since it takes about 10 s to start. Every check that fails but does not apply is listed in
SKIPS with its reason. Any other failure fails the test, and so does a listed check that no longer fails (its reason is
then stale: remove it).
"""
import json, os, subprocess
import pytest
from conftest import side_venv

pytest.importorskip("kubernetes_validate")
from mlops_nb.kube import render_manifests, validate_manifests, write_manifests

PINNED = "127.0.0.1:5000/ottawa-housing:3-b287060@sha256:" + "4c" * 32  # as `mlops-nb package --push` prints it

SKIPS = {
    "kubernetes": {
        "CKV_K8S_21": "The default namespace should not be used: the namespace is the deploying team's choice "
                      "(`deploy --namespace`, render_manifests(namespace=)); mlops-nb cannot pick one for them, and these "
                      "manifests are rendered with the CLI's default, `default`",
    },
    "dockerfile": {},
}


@pytest.fixture(scope="module")
def checkov():
    "The checkov executable of its own venv (built once per machine, then instant)."
    return side_venv("checkov-venv", "checkov's venv")


@pytest.fixture(scope="module")
def scanned(checkov, tmp_path_factory, model_dir, state, monkeypatch_module):
    "checkov's JSON report per framework, for two manifest sets and a Dockerfile written by write_context."
    import mlops_nb.package as package
    root = tmp_path_factory.mktemp("checkov")
    # what a deploy renders with a pushed image: an autoscaler, a policy admitting the ingress controller, the API key,
    # an inference log on a claim; and two plain replicas with the default policy
    for name, kw in (("hpa", dict(hpa=True, network_policy=True, allow_from=["ingress-nginx:*"], api_key_secret="scoring-api-key",
                                  inference_log=True, log_claim="scoring-logs", labels={"model-version": 3})),
                     ("replicas", dict(replicas=2, network_policy=True))):
        ms = render_manifests(PINNED, **kw)
        validate_manifests(ms)
        write_manifests(ms, root/"scan"/"k8s"/name)
    # the wheels do not change the Dockerfile: skip collecting them (pip download and a wheel build)
    monkeypatch_module.setattr(package, "collect_wheels", lambda reqs, dest, progress=None: dest.mkdir(parents=True, exist_ok=True))
    ctx = package.write_context(model_dir, root/"image", base_image="python:3.11-slim", registry="127.0.0.1:5000")
    (root/"scan"/"docker").mkdir()
    (root/"scan"/"docker"/"Dockerfile").write_text((ctx.path/"Dockerfile").read_text())  # alone: the model folder holds YAML files too
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "LOG_LEVEL": "WARNING"}
    p = subprocess.run([checkov, "--directory", str(root/"scan"),  # one folder: one JSON report per framework
                        "--framework", "kubernetes", "dockerfile", "--skip-download", "--compact", "--output", "json"],
                       capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode in (0, 1), p.stderr[-2000:]  # 1: some check failed (judged below)
    assert "prismacloud" not in p.stderr and "Traceback" not in p.stderr, p.stderr[-2000:]  # offline, quietly
    reports = json.loads(p.stdout)
    return {r["check_type"]: r for r in (reports if isinstance(reports, list) else [reports])}


def _judge(report, framework):
    failed = {}
    for c in report["results"]["failed_checks"]:
        failed.setdefault(c["check_id"], []).append(f"{c['resource']} ({c['file_path']})")
    new = {k: v for k, v in failed.items() if k not in SKIPS[framework]}
    stale = sorted(set(SKIPS[framework]) - set(failed))
    assert not new, "checkov failures to fix, or to skip in SKIPS with a reason: " + "; ".join(
        f"{k} {next(c['check_name'] for c in report['results']['failed_checks'] if c['check_id'] == k)}: {', '.join(v)}" for k, v in new.items())
    assert not stale, f"checks in SKIPS that no longer fail (remove them): {stale}"
    s = report["summary"]
    print(f"\ncheckov {framework}: {s['passed']} passed, {len(failed)} skipped with a reason ({', '.join(sorted(failed))}), "
          f"{s['resource_count']} resources, checkov {s['checkov_version']}")
    return s


def test_kubernetes_manifests(scanned):
    s = _judge(scanned["kubernetes"], "kubernetes")
    assert s["parsing_errors"] == 0 and s["passed"] >= 80  # the checks ran (84 pass with checkov 3.3.30)
    passed = {c["check_id"] for c in scanned["kubernetes"]["results"]["passed_checks"]}
    assert {"CKV_K8S_43", "CKV2_K8S_6", "CKV_K8S_15", "CKV_K8S_35"} <= passed  # image by digest (so pulled by digest), pods covered by a NetworkPolicy, the API key a file


def test_dockerfile(scanned):
    s = _judge(scanned["dockerfile"], "dockerfile")
    assert s["parsing_errors"] == 0 and s["resource_count"] == 1 and s["passed"] >= 40
