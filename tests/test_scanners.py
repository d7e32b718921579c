"""zizmor, check-jsonschema and checkov over every CI file mlops_nb generates, not only this repository's own: the files a
project gets with the default settings, with the OAuth secret instead of GitHub's OIDC, with a namespace and a bundle.
Each finding is fixed or explained in a skip list below with its reason; a finding that is in no list fails the test,
and so does a listed one that no longer occurs (its reason is stale: remove it). A generated file of a kind no scanner
here knows fails too, so a new target (GitLab CI, Dependabot) cannot ship unscanned.

What other tests already scan, not repeated here: zizmor and check-jsonschema on this repository's committed workflows
and Azure pipelines (test_pipelines), the bundle against the Databricks CLI's schema (test_bundle), checkov on the
Kubernetes manifests `mlops-nb deploy` renders with its defaults, with the deploy pipeline's line and for production,
and on the image's Dockerfile (test_checkov). checkov's CI frameworks (github_actions, azure_pipelines) and its secrets
scan run nowhere else: here on the committed files and on every variant.
"""
import json, os, subprocess
from pathlib import Path
import pytest, yaml
from conftest import ROOT, side_venv
from mlops_nb.pipeline import PipelineSettings, render_pipelines
from test_pipelines import tool, _azure_scalars

# the settings a project can choose that change what is generated (this repository's own are committed and scanned too)
VARIANTS = {
    "new-project": PipelineSettings("churn-model"),
    "secret-auth": PipelineSettings("churn-model", github_auth="secret", namespace="scoring", bundle=True, optional=("docs",)),
}

ZIZMOR_SKIPS = {  # finding -> why it stays (zizmor --offline, every severity)
    "self-repository": "Low: `uses: ./.github/workflows/deploy.yml` is GitHub's documented form for calling a reusable "
                       "workflow of the same repository; pinning it by SHA would call a stale copy",
}
CHECKOV_SKIPS = {  # check id -> why it stays
    "CKV_GHA_7": "SLSA build-integrity check ('workflow_dispatch inputs MUST be empty'): train.yml's dispatch inputs are "
                 "training parameters (mode, data window) validated by `mlops-nb train`, not a build of a release "
                 "artifact; a model version records its parameters as run lineage, and deploy.yml takes no inputs",
}
SCHEMAS = {  # what a generated path is, for check-jsonschema (--builtin-schema) and checkov (--framework)
    ".github/workflows/": ("vendor.github-workflows", "github_actions"),
    "pipelines/azure/": ("vendor.azure-pipelines", "azure_pipelines"),
    ".gitlab-ci.yml": ("vendor.gitlab-ci", "gitlab_ci"),
    ".github/dependabot.yml": ("vendor.dependabot", None),
}


def _kind(rel:str)->tuple:
    kind = next((v for k, v in SCHEMAS.items() if rel == k or (k.endswith("/") and rel.startswith(k))), None)
    assert kind, f"{rel}: a generated file no scanner here knows: add it to SCHEMAS (and the test_pipelines checks)"
    return kind


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    "Each variant's generated files written as a project holds them; this repository's own as committed."
    out = {"repository": ROOT}
    for name, settings in VARIANTS.items():
        d = tmp_path_factory.mktemp(name)
        for rel, text in render_pipelines(settings).items():
            (d/rel).parent.mkdir(parents=True, exist_ok=True)
            (d/rel).write_text(text)
        out[name] = d
    return out


def _generated(tree:Path)->list:
    "Paths (relative) of the generated CI files under `tree`."
    return sorted(str(p.relative_to(tree)) for pat in (".github/workflows/*.yml", "pipelines/azure/*.yml", ".gitlab-ci.yml",
                                                       ".github/dependabot.yml") for p in tree.glob(pat))


def test_every_generated_file_has_a_scanner(trees):
    for name, tree in trees.items():
        files = _generated(tree)
        assert files and all(_kind(f) for f in files), name
    for settings in VARIANTS.values():
        for rel in render_pipelines(settings): _kind(rel)  # anything render_pipelines writes, wherever it goes


def test_zizmor_on_every_variant(trees):
    found = {}
    for name in VARIANTS:
        p = subprocess.run([tool("zizmor"), "--offline", "--format", "json", str(trees[name]/".github"/"workflows")],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode in (0, 10, 11, 12, 13, 14), p.stderr[-2000:]  # 1x: findings (judged below)
        for f in json.loads(p.stdout):
            found.setdefault(f["ident"], []).append(f"{name}: {f['determinations']['severity']} "
                                                    f"{f['locations'][0]['symbolic']['key']}")
    new = {k: v for k, v in found.items() if k not in ZIZMOR_SKIPS}
    assert not new, f"zizmor findings to fix, or to list in ZIZMOR_SKIPS with a reason: {new}"
    assert not set(ZIZMOR_SKIPS) - set(found), f"stale ZIZMOR_SKIPS: {sorted(set(ZIZMOR_SKIPS) - set(found))}"


def test_check_jsonschema_on_every_variant(trees, tmp_path):
    "Azure files as Azure reads them (scalars as strings: see test_pipelines::test_azure_pipelines_match_the_public_schema)."
    by_schema = {}
    for name in VARIANTS:
        for rel in _generated(trees[name]):
            schema, _ = _kind(rel)
            f = trees[name]/rel
            if schema == "vendor.azure-pipelines":
                f = tmp_path/f"{name}-{Path(rel).stem}.json"
                f.write_text(json.dumps(_azure_scalars(yaml.safe_load((trees[name]/rel).read_text()))))
            by_schema.setdefault(schema, []).append(str(f))
    assert {"vendor.github-workflows", "vendor.azure-pipelines"} <= set(by_schema)
    for schema, files in by_schema.items():
        extra = ["--regex-variant", "python"] if schema == "vendor.azure-pipelines" else []
        p = subprocess.run([tool("check-jsonschema"), "--builtin-schema", schema, *extra, *files], capture_output=True,
                           text=True, timeout=120)
        assert p.returncode == 0, (schema, p.stdout[-3000:] + p.stderr[-2000:])


@pytest.fixture(scope="module")
def checkov_report(trees, tmp_path_factory):
    """checkov's reports over the committed files and every variant, in one run (it takes about 10 s to start). checkov
    finds Azure pipelines only under the name `azure-pipelines.yml`: each is scanned as such, in a folder of its own."""
    checkov = side_venv("checkov-venv", "checkov's venv")
    scan = tmp_path_factory.mktemp("ci-scan")
    frameworks = set()
    for name, tree in trees.items():
        for rel in _generated(tree):
            _, fw = _kind(rel)
            if fw is None: continue
            frameworks.add(fw)
            dest = scan/name/(rel if fw != "azure_pipelines" else f"azure/{Path(rel).stem}/azure-pipelines.yml")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text((tree/rel).read_text())
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "LOG_LEVEL": "WARNING"}
    p = subprocess.run([checkov, "--directory", str(scan), "--framework", *sorted(frameworks), "secrets", "--skip-download",
                        "--compact", "--output", "json"], capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode in (0, 1), p.stderr[-2000:]  # 1: some check failed (judged below)
    assert "Traceback" not in p.stderr, p.stderr[-2000:]
    reports = json.loads(p.stdout)
    return frameworks, {r["check_type"]: r for r in (reports if isinstance(reports, list) else [reports])}


def test_checkov_on_the_ci_files(checkov_report):
    frameworks, reports = checkov_report
    assert {"github_actions", "azure_pipelines"} <= set(reports) and frameworks <= set(reports), sorted(reports)
    failed = {}
    for kind, r in reports.items():
        assert r["summary"]["parsing_errors"] == 0, (kind, r["summary"])
        for c in r["results"]["failed_checks"]:
            failed.setdefault(c["check_id"], []).append(f"{c['check_name']}: {c['file_path']}")
    passed = {kind: r["summary"]["passed"] for kind, r in reports.items()}
    print(f"\ncheckov: passed per framework {passed}; skipped with a reason: {sorted(failed)}")
    assert passed["github_actions"] >= 100 and passed["azure_pipelines"] >= 10, passed  # the checks ran on every variant
    new = {k: v for k, v in failed.items() if k not in CHECKOV_SKIPS}
    assert not new, f"checkov failures to fix, or to list in CHECKOV_SKIPS with a reason: {new}"
    assert not set(CHECKOV_SKIPS) - set(failed), f"stale CHECKOV_SKIPS: {sorted(set(CHECKOV_SKIPS) - set(failed))}"
