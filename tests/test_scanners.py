"""zizmor, check-jsonschema and checkov over every CI file mlops_nb generates, not only this repository's own: the
files a project gets with the default settings, and with stored secrets instead of OIDC and workload identity
federation, a namespace and a bundle. Each finding is fixed or explained in a skip list with its reason (zizmor's
below, checkov's in test_checkov); a finding that is in no list fails the test, and so does a listed one that no
longer occurs (its reason is stale: remove it). A generated file of a kind no scanner here knows fails too, so a new
target cannot ship unscanned.

checkov runs in tests/test_checkov.py, in its one run (it takes about 10 s to start): its GitHub Actions, GitLab CI,
Azure Pipelines and secrets checks over `ci_trees` below (the committed files and every variant), beside the
Kubernetes manifests `mlops-nb deploy` renders with its defaults, with the deploy pipeline's line and for production,
and the image's Dockerfile; its skip list (SKIPS) is there. zizmor and check-jsonschema on this repository's committed
files are in test_pipelines, the bundle against the Databricks CLI's schema in test_bundle.
"""
import json, subprocess
from pathlib import Path
import pytest, yaml
from conftest import ROOT
from mlops_nb.pipeline import PipelineSettings
from mlops_nb.pipeline_files import render_pipelines
from test_pipelines import tool, _azure_scalars

# the settings a project can choose that change what is generated (this repository's own are committed and scanned too)
VARIANTS = {
    "new-project": PipelineSettings("churn-model"),
    "secrets-auth": PipelineSettings("churn-model", github_auth="secret", gitlab_auth="secret", azure_auth="secret",
                                     namespace="scoring", bundle=True, optional=("docs",)),
}

ZIZMOR_SKIPS = {  # finding -> why it stays (zizmor --offline, every severity)
    "self-repository": "Low: `uses: ./.github/workflows/deploy.yml` is GitHub's documented form for calling a reusable "
                       "workflow of the same repository; pinning it by SHA would call a stale copy",
}
SCHEMAS = {  # what a generated path is: check-jsonschema's --builtin-schema, checkov's --framework (in test_checkov)
    ".github/workflows/": ("vendor.github-workflows", "github_actions"),
    "pipelines/azure/": ("vendor.azure-pipelines", "azure_pipelines"),
    ".gitlab-ci.yml": ("vendor.gitlab-ci", "gitlab_ci"),
    ".github/dependabot.yml": ("vendor.dependabot", None),
}


def kind(rel:str # a generated file's path in its project
        )->tuple:
    "(check-jsonschema's built-in schema, checkov's framework) for a generated file; fails for a kind unknown here."
    found = next((v for k, v in SCHEMAS.items() if rel == k or (k.endswith("/") and rel.startswith(k))), None)
    assert found, f"{rel}: a generated file no scanner here knows: add it to SCHEMAS (and the test_pipelines checks)"
    return found


def ci_trees(tmp_path_factory)->dict:
    "Each variant's generated files written as a project holds them, and this repository's own as committed."
    out = {"repository": ROOT}
    for name, settings in VARIANTS.items():
        d = tmp_path_factory.mktemp(name)
        for rel, text in render_pipelines(settings).items():
            (d/rel).parent.mkdir(parents=True, exist_ok=True)
            (d/rel).write_text(text)
        out[name] = d
    return out


@pytest.fixture(scope="module")
def trees(tmp_path_factory): return ci_trees(tmp_path_factory)


def generated(tree:Path # a project folder
             )->list:
    "Paths (relative) of the generated CI files under `tree`."
    patterns = (".github/workflows/*.yml", "pipelines/azure/*.yml", ".gitlab-ci.yml", ".github/dependabot.yml")
    return sorted(str(p.relative_to(tree)) for pat in patterns for p in tree.glob(pat))


def test_every_generated_file_has_a_scanner(trees):
    for name, tree in trees.items():
        files = generated(tree)
        assert files and all(kind(f) for f in files), name
    for settings in VARIANTS.values():
        for rel in render_pipelines(settings): kind(rel)  # anything render_pipelines writes, wherever it goes


def test_zizmor_on_every_variant(trees):
    found = {}
    for name in VARIANTS:
        p = subprocess.run([tool("zizmor"), "--offline", "--format", "json", str(trees[name]/".github")],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode in (0, 10, 11, 12, 13, 14), p.stderr[-2000:]  # 1x: findings (judged below)
        for f in json.loads(p.stdout):
            found.setdefault(f["ident"], []).append(f"{name}: {f['determinations']['severity']} "
                                                    f"{f['locations'][0]['symbolic']['key']}")
    new = {k: v for k, v in found.items() if k not in ZIZMOR_SKIPS}
    assert not new, f"zizmor findings to fix, or to list in ZIZMOR_SKIPS with a reason: {new}"
    assert not set(ZIZMOR_SKIPS) - set(found), f"stale ZIZMOR_SKIPS: {sorted(set(ZIZMOR_SKIPS) - set(found))}"


def test_check_jsonschema_on_every_variant(trees, tmp_path):
    "Azure files as Azure reads them, scalars as strings (test_pipelines' Azure schema test says why)."
    by_schema = {}
    for name in VARIANTS:
        for rel in generated(trees[name]):
            schema, _ = kind(rel)
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
