"""Images for real: podman's Docker-compatible service and a registry on loopback (started by scripts/containers),
the build context, build, run and HTTP-test the container, push, pull back by digest, the image policy."""
import json, os, socket, subprocess, threading, time, urllib.request, zipfile
from pathlib import Path
import pytest
from conftest import ROOT, GOOD, BAD_REQUESTS, cli_json, container_services, run_cli


@pytest.fixture(scope="module")
def containers(monkeypatch_module):
    "Start (or reuse) the engine and registry; skip the module with the script's reason where they cannot run."
    p, env = container_services("up")
    if p.returncode == 3: pytest.skip(f"no container engine here: {p.stderr.strip().splitlines()[-1]}")
    assert p.returncode == 0, p.stderr[-3000:]
    for k, v in env.items(): monkeypatch_module.setenv(k, v)
    from mlops_nb.package import engine
    return engine()


def test_context_only_needs_no_engine(tmp_path, model_dir, state):
    out = cli_json("package", "--model", model_dir, "--context-only", tmp_path/"ctx", "--registry", "reg.example:5000",
                   "--base-image", "python:3.11-slim")
    ctx = Path(out["context"])
    assert out["tag"] == "reg.example:5000/ottawa-housing-classifier:1" and out["image_id"] is None
    df = (ctx/"Dockerfile").read_text()
    assert "USER 10001:10001" in df and "HEALTHCHECK" in df
    assert [l for l in df.splitlines() if l.startswith("FROM")] == ["FROM python:3.11-slim AS runtime",
                                                                    "FROM python:3.11-slim"]  # checkov sees the tag
    copies = [l for l in df.splitlines() if l.startswith("COPY")]
    assert copies[-1] == "COPY model/ /model/"  # the model is the last layer
    reqs = (ctx/"requirements.txt").read_text().split()
    assert not any(r.startswith(("mlflow", "pandas")) for r in reqs) and any(r.startswith("scikit-learn==")
                                                                             for r in reqs)
    [own] = (ctx/"wheels").glob("mlops_nb-*.whl")
    assert list((ctx/"wheels").glob("scikit_learn-*.whl"))
    # the package data the server reads (its /docs page) is in the wheel the image installs
    with zipfile.ZipFile(own) as z:
        assert "mlops_nb/static/scoring_api.html" in z.namelist()
    meta = json.loads((ctx/"model"/"mlops_nb_model.json").read_text())
    assert meta["version"] == "1" and meta["fast_path_max_abs_diff"] <= 1e-9
    assert (ctx/"app"/"score.py").read_text() == (ROOT/"api"/"score.py").read_text()
    assert out["labels"]["io.mlops-nb.model.version"] == "1"


@pytest.fixture(scope="module")
def built(containers, model_dir, model_dir_v2, state):
    "The v1 image, built and pushed through the CLI, then the v2 image (a model-only change) with its layers."
    t0 = time.time()
    out = cli_json("package", "--model", model_dir, "--push", timeout=1500)
    out["seconds"] = time.time() - t0
    print(f"\nbuild+push {out['tag']}: {out['seconds']:.1f} s, {out['size_mb']} MB")
    t0 = time.time()
    v2 = cli_json("package", "--model", model_dir_v2, timeout=1500)
    print(f"model-only rebuild: {time.time() - t0:.1f} s (target <= 20 s)")
    out["layers"] = {t: containers.images.get(t).attrs["RootFS"]["Layers"] for t in (out["tag"], v2["tag"])}
    out["v2"] = v2["tag"]
    return out


def test_image_is_labelled_non_root_and_small(built, containers):
    img = containers.images.get(built["tag"])
    labels = img.labels
    assert (
        labels["io.mlops-nb.model.name"] == "ottawa-housing-classifier" and labels["io.mlops-nb.model.version"] == "1"
    )
    assert labels["io.mlops-nb.model.run-id"] == "run-1" and labels["org.opencontainers.image.version"] == "1"
    assert img.attrs["Config"]["User"] == "10001:10001"
    print(f"image size {built['size_mb']} MB (target <= 300 MB)")


def test_container_answers_the_http_cases(built, containers, model_dir, monkeypatch):
    import http.client, importlib.util
    from mlops_nb.package import run_image
    monkeypatch.setenv("MLOPS_NB_MODEL", str(model_dir))
    spec = importlib.util.spec_from_file_location("score_ref", ROOT/"api"/"score.py")
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    ref.init()
    t0 = time.time()
    c, url = run_image(built["tag"], containers)
    print(f"container start to ready: {time.time() - t0:.2f} s")
    try:
        host, port = url.split("//")[1].split(":")
        def post(body, ctype="application/json"):
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
            conn.request("POST", "/score", body=body, headers={"content-type": ctype})
            r = conn.getresponse()
            return r.status, json.loads(r.read())
        st, body = post(json.dumps([GOOD, {**GOOD, "property_type": "condo"}]).encode())
        want = ref.run(json.dumps([GOOD, {**GOOD, "property_type": "condo"}]))["predictions"]
        assert st == 200 and [round(p["probability"], 9)
                              for p in body["predictions"]] == [round(p["probability"], 9) for p in want]
        for name, raw, ctype, status, words in BAD_REQUESTS:
            st, body = post(raw, ctype)
            assert st == status, (name, body)
            for w in words: assert w in json.dumps(body), (name, w)
        assert post(json.dumps(GOOD).encode(), "text/plain")[0] == 415
        c.reload()
        assert c.attrs["Config"]["User"] == "10001:10001"
    finally:
        logs = c.logs().decode(errors="replace")
        c.remove(force=True)
    assert '"event": "model_loaded"' in logs


def test_push_pull_digest(built, containers):
    """The pushed digest is what the registry serves, pulled by that digest: a tag is mutable, and the local deploy
    pipeline of test_pipelines (on the other worker) pushes its own champion under the same name and version."""
    assert built["digest"].startswith("sha256:")
    repo = built["tag"].rsplit(":", 1)[0]
    containers.images.remove(built["tag"], force=True)
    img = containers.images.pull(f"{repo}@{built['digest']}")
    assert any(d.endswith(built["digest"]) for d in img.attrs["RepoDigests"]), img.attrs["RepoDigests"]
    img.tag(repo, built["tag"].rsplit(":", 1)[1])  # the later tests find it by its tag again


def test_pinned_reference_is_what_the_registry_serves(built, containers):
    ("The reference to deploy, TAG@DIGEST: the registry serves that "
     "manifest, it pulls, and kube keeps the tag as the version.")
    from mlops_nb.package import pinned_reference
    from mlops_nb.kube import render_manifests, validate_manifests
    pinned = pinned_reference(built["tag"], built["digest"])
    # `package --push --json` prints it as `image`
    assert pinned == f"{built['tag']}@{built['digest']}" == built["image"]
    registry, _, repo = built["tag"].partition("/")
    req = urllib.request.Request(f"http://{registry}/v2/{repo.rsplit(':', 1)[0]}/manifests/{built['digest']}",
                                 method="HEAD", headers={"Accept": ", ".join((
        "application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.index.v1+json"))})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200 and r.headers["Docker-Content-Digest"] == built["digest"]
    img = containers.images.pull(pinned)  # NAME:TAG@DIGEST, as the manifests give it to a kubelet: the digest decides
    assert img.id == containers.images.get(built["tag"]).id
    dep = render_manifests(pinned, name="ottawa-housing-classifier")[0]
    validate_manifests([dep])
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == pinned
    assert dep["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/version"] == "1"


def test_pre_stop_hook_runs_in_the_image(built, containers):
    "The rendered preStop command runs in the image as its user, on a read-only root filesystem, and waits."
    from mlops_nb.kube import render_manifests
    from mlops_nb.package import run_image
    cmd = render_manifests(built["tag"], pre_stop_s=1)[0]["spec"]["template"]["spec"]["containers"][0]["lifecycle"][
        "preStop"
    ]["exec"]["command"]
    c, _ = run_image(built["tag"], containers)
    try:
        t0 = time.time()
        r = c.exec_run(cmd, user="10001:10001")
        assert r.exit_code == 0 and time.time() - t0 >= 1, r.output
    finally:
        c.remove(force=True)


class _Forwarder:
    "A TCP forwarder on a free loopback port to `target`: the same registry under another name."
    def __init__(self, target):
        self.target, self.connections = target, 0
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.port = self.srv.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try: c, _ = self.srv.accept()
            except OSError: return
            self.connections += 1
            u = socket.create_connection(self.target)
            for a, b in ((c, u), (u, c)): threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b):
        try:
            while (d := a.recv(65536)): b.sendall(d)
        except OSError: pass
        finally:
            for x in (a, b):
                try: x.shutdown(socket.SHUT_RDWR)
                except OSError: pass

    def close(self): self.srv.close()


def test_image_policy_accepts_only_the_loopback_registry(built, containers):
    ("scripts/containers scopes /etc/containers/policy.json: the default "
     "rejects; another registry name is refused by policy.")
    pol = json.loads(open("/etc/containers/policy.json").read())
    registry = os.environ["MLOPS_NB_REGISTRY"]
    assert pol["default"] == [{"type": "reject"}]
    assert sorted(pol["transports"]["docker"]) == sorted([registry, "localhost:" + registry.rsplit(":", 1)[1]])
    assert "insecureAcceptAnything" not in json.dumps(pol["default"])
    host, port = registry.rsplit(":", 1)
    fwd = _Forwarder((host, int(port)))
    try:
        other = built["tag"].replace(registry, f"127.0.0.1:{fwd.port}", 1)
        p = subprocess.run(["podman", "pull", "--tls-verify=false", other], capture_output=True, text=True, timeout=120)
        assert p.returncode != 0 and "rejected by policy" in p.stderr, p.stderr
        # the registry answered through the other name: the refusal is the policy's, not the network's
        assert fwd.connections >= 1
    finally:
        fwd.close()


def test_model_only_change_rebuilds_only_the_model_layer(built):
    l1, l2 = built["layers"][built["tag"]], built["layers"][built["v2"]]
    assert len(l1) == len(l2) and l1[:-1] == l2[:-1] and l1[-1] != l2[-1]  # every layer shared but the model's


@pytest.fixture(scope="module")
def broken(tmp_path_factory, containers, model_dir, state):
    "The tag of an image whose model file is not a model (its init() fails), built once for the tests below."
    from mlops_nb.package import write_context, build_image
    ctx = write_context(model_dir, tmp_path_factory.mktemp("broken")/"ctx",
                        base_image=os.environ["MLOPS_NB_BASE_IMAGE"])
    (ctx.path/"model"/"model.skops").write_bytes(b"not a model")
    ctx.tag = ctx.tag.rsplit(":", 1)[0] + ":broken"
    build_image(ctx, containers)
    return ctx.tag


def test_broken_model_image_never_becomes_ready(broken, containers):
    "A version whose init() fails does not get ready; its logs are kept and the container is removed."
    from mlops_nb.package import run_image, PackageError
    with pytest.raises(PackageError, match="did not become ready"):
        run_image(broken, containers, timeout=20)
    assert not [c for c in containers.containers.list(all=True) if c.image.tags and c.image.tags[0] == broken]


def test_deploy_local_image_replaces_only_when_ready(built, broken, containers):
    "`deploy --target local --image`: v1, then v2 on the same port; a broken image is refused and v2 keeps serving."
    import socket, urllib.request
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    version = lambda: json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/version",
                                                        timeout=5).read())["version"]
    v2 = built["v2"]
    args = ["deploy", "--target", "local", "--port", port, "--name", "test-local", "--timeout", "40"]
    try:
        assert run_cli(*args, "--image", built["tag"]).returncode == 0 and version() == "1"
        p = run_cli(*args, "--image", v2)
        assert p.returncode == 0 and "now serves" in p.stdout and version() == "2", p.stderr
        p = run_cli(*args, "--image", broken)
        assert p.returncode == 2 and "did not become ready" in p.stderr and version() == "2"
    finally:
        for c in containers.containers.list(all=True, filters={"name": "mlops-nb-test-local"}): c.remove(force=True)


@pytest.mark.parametrize("ref",
                         ["mlops_nb.examples.boosters:BREAST_CANCER_LIGHTGBM",
                          "mlops_nb.examples.boosters:WINE_XGBOOST"],
                         ids=["lightgbm", "xgboost"])
def test_boosting_library_images_answer(ref, tmp_path, containers, state, monkeypatch):
    """A LightGBM and an XGBoost model's images on the minimal base image: the library installed from the model's
    requirements (LightGBM pointed at the venv's OpenMP runtime: the base has no libgomp), answers equal to the
    pipeline's."""
    import numpy as np
    from mlops_nb.examples.boosters import table
    from mlops_nb.package import build_image, run_image, write_context
    from mlops_nb.problem import load_problem
    from mlops_nb.serving import load_runtime
    from conftest import save_model
    problem = load_problem(ref)
    pytest.importorskip(problem.name.rsplit("-", 1)[1])
    d = tmp_path/"model"
    save_model(d, problem=problem, data=table(problem), epochs=2)
    (d/"mlops_nb_model.json").write_text(json.dumps({"name": problem.name, "version": "1", "run_id": "run-1"}))
    # no MLOPS_NB_PROBLEM in the image: the example module declares its problems from pandas frames, and the image has
    # no pandas
    monkeypatch.delenv("MLOPS_NB_PROBLEM", raising=False)
    monkeypatch.chdir(tmp_path)
    ctx = write_context(d, tmp_path/"ctx", registry="localhost")
    assert ("libgomp.so.1" in (ctx.path/"Dockerfile").read_text()) == problem.name.endswith("lightgbm")
    build_image(ctx, containers)
    c, url = run_image(ctx.tag, containers, timeout=120)
    try:
        records = [{k: float(v) for k, v in r.items()}
                   for r in table(problem)[list(problem.inputs)].head(30).to_dict("records")]
        req = urllib.request.Request(url + "/score", data=json.dumps(records).encode(),
                                     headers={"content-type": "application/json"})
        answers = json.loads(urllib.request.urlopen(req, timeout=60).read())["predictions"]
        version = json.loads(urllib.request.urlopen(url + "/version", timeout=10).read())
    finally:
        c.remove(force=True)
        containers.images.remove(ctx.tag, force=True)
    assert version["fast_path"] is True, version
    got = np.array([[a["probabilities"][l] for l in problem.class_labels] for a in answers])
    assert np.abs(got - load_runtime(d).pipeline_predict(records)).max() <= 1e-6
