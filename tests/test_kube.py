"""mlops_nb.kube against a fake Kubernetes API server, driven by the real `kubernetes` client.

No kube-apiserver can run here, so `FakeKube` answers the endpoints the client calls with responses shaped like a real
server's (Status objects for errors, omitted zero counts, ownerReferences, revision annotations) and plays the
Deployment controller: a changed pod template bumps `metadata.generation` and, when the controller next looks,
gets a ReplicaSet (a new revision, or an old one re-used, as after a rollback). Whether pods become ready depends on
the image: `fake.bad_images[image] = "deadline"` (Progressing=False, ProgressDeadlineExceeded) or "never_ready".
Every request is recorded (method, path, query, content type, parsed body).
"""
import copy, hashlib, json, os, re, threading, time, uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit, parse_qs

import pytest, yaml

kubernetes = pytest.importorskip("kubernetes")
pytest.importorskip("kubernetes_validate")
from kubernetes.client import ApiClient, Configuration
from mlops_nb.core import MlopsNbError
from mlops_nb.kube import (render_manifests, validate_manifests, write_manifests, apply, wait_for_rollout, rollback,
                           deploy,
                           dry_run, RolloutFailed, RolloutTimeout, KubeError, ManifestInvalid, SERVER_DRAIN_S)

REV = "deployment.kubernetes.io/revision"
IMG1, IMG2 = "127.0.0.1:5000/ottawa-housing:1-abc1234", "127.0.0.1:5000/ottawa-housing:2-def5678"
PIN1, PIN2 = f"{IMG1}@sha256:{'1a' * 32}", f"{IMG2}@sha256:{'2b' * 32}"  # as `package --push` prints them (`image`)

DISCOVERY = {
    "/api": {"kind": "APIVersions", "versions": ["v1"],
             "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}]},
    "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
        {"name": "apps", "versions": [{"groupVersion": "apps/v1", "version": "v1"}],
         "preferredVersion": {"groupVersion": "apps/v1", "version": "v1"}},
        {"name": "autoscaling",
         "versions": [{"groupVersion": "autoscaling/v2", "version": "v2"},
                      {"groupVersion": "autoscaling/v1", "version": "v1"}],
         "preferredVersion": {"groupVersion": "autoscaling/v2", "version": "v2"}},
        {"name": "policy", "versions": [{"groupVersion": "policy/v1", "version": "v1"}],
         "preferredVersion": {"groupVersion": "policy/v1", "version": "v1"}},
        {"name": "networking.k8s.io", "versions": [{"groupVersion": "networking.k8s.io/v1", "version": "v1"}],
         "preferredVersion": {"groupVersion": "networking.k8s.io/v1", "version": "v1"}}]},
    "/api/v1": {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
        {"name": "namespaces", "singularName": "namespace", "namespaced": False, "kind": "Namespace",
         "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"], "shortNames": ["ns"]},
        {"name": "services", "singularName": "service", "namespaced": True, "kind": "Service",
         "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
         "shortNames": ["svc"], "categories": ["all"]},
        {"name": "services/status", "singularName": "", "namespaced": True, "kind": "Service",
         "verbs": ["get", "patch", "update"]}]},
    "/apis/apps/v1": {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "apps/v1", "resources": [
        {"name": "deployments", "singularName": "deployment", "namespaced": True, "kind": "Deployment",
         "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
         "shortNames": ["deploy"], "categories": ["all"]},
        {"name": "deployments/scale", "singularName": "", "namespaced": True, "group": "autoscaling", "version": "v1",
         "kind": "Scale", "verbs": ["get", "patch", "update"]},
        {"name": "deployments/status", "singularName": "", "namespaced": True, "kind": "Deployment",
         "verbs": ["get", "patch", "update"]},
        {"name": "replicasets", "singularName": "replicaset", "namespaced": True, "kind": "ReplicaSet",
         "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
         "shortNames": ["rs"], "categories": ["all"]},
        {"name": "replicasets/status", "singularName": "", "namespaced": True, "kind": "ReplicaSet",
         "verbs": ["get", "patch", "update"]}]},
    "/apis/autoscaling/v2": {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "autoscaling/v2",
                             "resources": [
        {"name": "horizontalpodautoscalers", "singularName": "horizontalpodautoscaler", "namespaced": True,
         "kind": "HorizontalPodAutoscaler",
         "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
         "shortNames": ["hpa"], "categories": ["all"]},
        {"name": "horizontalpodautoscalers/status", "singularName": "", "namespaced": True,
         "kind": "HorizontalPodAutoscaler", "verbs": ["get", "patch", "update"]}]},
    "/apis/policy/v1": {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "policy/v1", "resources": [
        {"name": "poddisruptionbudgets", "singularName": "poddisruptionbudget", "namespaced": True,
         "kind": "PodDisruptionBudget",
         "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
         "shortNames": ["pdb"]},
        {"name": "poddisruptionbudgets/status", "singularName": "", "namespaced": True, "kind": "PodDisruptionBudget",
         "verbs": ["get", "patch", "update"]}]},
    "/apis/networking.k8s.io/v1": {"kind": "APIResourceList", "apiVersion": "v1",
                                   "groupVersion": "networking.k8s.io/v1", "resources": [
        {"name": "networkpolicies", "singularName": "networkpolicy", "namespaced": True, "kind": "NetworkPolicy",
         "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
         "shortNames": ["netpol"]}]},
    "/version": {"major": "1", "minor": "30", "gitVersion": "v1.30.4",
                 "gitCommit": "a51b3b711150f57ffc1f526a640ec058514ed596", "gitTreeState": "clean",
                 "buildDate": "2024-08-14T19:04:27Z", "goVersion": "go1.22.5", "compiler": "gc",
                 "platform": "linux/amd64"},
}
# (collection path, kind, apiVersion, group for Status details)
COLLECTIONS = {
    r"/apis/apps/v1/namespaces/([^/]+)/deployments": ("deployments", "Deployment", "apps/v1", "apps"),
    r"/apis/apps/v1/namespaces/([^/]+)/replicasets": ("replicasets", "ReplicaSet", "apps/v1", "apps"),
    r"/api/v1/namespaces/([^/]+)/services": ("services", "Service", "v1", ""),
    r"/apis/autoscaling/v2/namespaces/([^/]+)/horizontalpodautoscalers": (
        "horizontalpodautoscalers",
        "HorizontalPodAutoscaler",
        "autoscaling/v2",
        "autoscaling",
    ),
    r"/apis/policy/v1/namespaces/([^/]+)/poddisruptionbudgets": (
        "poddisruptionbudgets",
        "PodDisruptionBudget",
        "policy/v1",
        "policy",
    ),
    r"/apis/networking.k8s.io/v1/namespaces/([^/]+)/networkpolicies": (
        "networkpolicies",
        "NetworkPolicy",
        "networking.k8s.io/v1",
        "networking.k8s.io",
    ),
}


def status_obj(code, reason, message, name=None, kind=None, group=None):
    "A metav1.Status as the API server sends it with an error."
    d = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
         "reason": reason, "code": code}
    if name or kind:
        d["details"] = {k: v for k, v in (("name", name), ("group", group), ("kind", kind)) if v is not None}
    return d


def _now(): return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _json_patch(doc, ops):
    "RFC 6902 add/replace/remove, enough for rollbacks."
    doc = copy.deepcopy(doc)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent = doc
        for p in parts[:-1]: parent = parent[int(p)] if isinstance(parent, list) else parent[p]
        last = parts[-1]
        if op["op"] in ("add", "replace"):
            if isinstance(parent, list):
                parent.insert(int(last),
                              op["value"]) if op["op"] == "add" else parent.__setitem__(int(last), op["value"])
            else:
                if op["op"] == "replace" and last not in parent: raise KeyError(op["path"])
                parent[last] = op["value"]
        elif op["op"] == "remove": del parent[int(last) if isinstance(parent, list) else last]
        else: raise ValueError(op["op"])
    return doc


def _defaulted_template(t):
    "Server-side defaults on a pod template (what a GET shows beyond what was applied)."
    t = copy.deepcopy(t)
    s = t.setdefault("spec", {})
    s.setdefault("restartPolicy", "Always")
    s.setdefault("dnsPolicy", "ClusterFirst")
    s.setdefault("schedulerName", "default-scheduler")
    for c in s.get("containers", []):
        c.setdefault("terminationMessagePath", "/dev/termination-log")
        c.setdefault("terminationMessagePolicy", "File")
        for p in ("startupProbe", "readinessProbe", "livenessProbe"):
            if p in c:
                c[p].setdefault("successThreshold", 1)
                c[p]["httpGet"].setdefault("scheme", "HTTP")
    return t


class FakeKube:
    "A fake Kubernetes API server on 127.0.0.1 with a toy Deployment controller."

    def __init__(self):
        self.namespaces = {"default", "kube-system"}
        self.objects = {}  # (collection, ns, name) -> object
        self.requests = []
        self.bad_images = {}  # image -> "deadline" | "never_ready"
        self.inject = []  # [method, path regex, code, reason, message, times left]
        self.rv = 1000
        self.seen = {}  # (ns, name) -> generation the controller has looked at once
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            def log_message(self, *a): pass
            def _any(self):
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                code, obj = fake.handle(self.command, self.path, self.headers.get("Content-Type"), raw)
                out = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Audit-Id", str(uuid.uuid4()))
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)
            do_GET = do_PATCH = do_POST = do_PUT = do_DELETE = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def client(self):
        "A real ApiClient pointed at this server."
        return ApiClient(Configuration(host=f"http://127.0.0.1:{self.port}"))

    # ---- helpers for tests
    def sent(self, method=None, path=None):
        return [r for r in self.requests if (method is None or r["method"] == method)
                and (path is None or re.search(path, r["path"]))]

    def deployment(self, name="ottawa-housing", ns="default"): return self.objects[("deployments", ns, name)]

    def replicasets(self, ns="default"):
        return [o for (c, n, _), o in self.objects.items() if c == "replicasets" and n == ns]

    def add_foreign_rs(self, labels, image, rev="7", ns="default"):
        "A ReplicaSet matching the selector but owned by another Deployment (must be ignored by rollbacks)."
        t = {"metadata": {"labels": {**labels, "pod-template-hash": "f0e1d2c3b4"}},
             "spec": {"containers": [{"name": "server", "image": image}]}}
        self.objects[("replicasets", ns, "other-f0e1d2c3b4")] = {"metadata": {"name": "other-f0e1d2c3b4",
                                                                              "namespace": ns, "uid": str(uuid.uuid4()),
            "labels": t["metadata"]["labels"], "annotations": {REV: rev}, "resourceVersion": self._rv(),
            "generation": 1, "creationTimestamp": _now(),
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "other",
                                 "uid": str(uuid.uuid4()), "controller": True, "blockOwnerDeletion": True}]},
            "spec": {"replicas": 0, "selector": {"matchLabels": t["metadata"]["labels"]}, "template": t},
            "status": {"replicas": 0, "observedGeneration": 1}}

    # ---- HTTP
    def _rv(self):
        self.rv += 1
        return str(self.rv)

    def handle(self, method, raw_path, ctype, raw):
        u = urlsplit(raw_path)
        path, q = u.path, {k: v[-1] for k, v in parse_qs(u.query).items()}
        body = None
        if raw:
            try: body = yaml.safe_load(raw) if ctype and "yaml" in ctype else json.loads(raw)
            except Exception: return 400, status_obj(400, "BadRequest", "the body of the request could not be decoded")
        with self.lock:
            self.requests.append({"method": method, "path": path, "query": q, "content_type": ctype,
                                  "body": copy.deepcopy(body)})
            for inj in self.inject:
                if inj[0] == method and re.search(inj[1], path) and inj[5] > 0:
                    inj[5] -= 1
                    return inj[2], status_obj(inj[2], inj[3], inj[4])
            try: return self._route(method, path, q, ctype, body)
            except Exception as e:  # a bug in the fake shows up as a 500 with its message
                return 500, status_obj(500, "InternalError", f"fake server: {type(e).__name__}: {e}")

    def _route(self, method, path, q, ctype, body):
        if method == "GET" and path in DISCOVERY: return 200, DISCOVERY[path]
        for rx, (coll, kind, api_version, group) in COLLECTIONS.items():
            m = re.fullmatch(rx + r"(?:/([^/]+))?(/status)?", path)
            if not m: continue
            ns, name, sub = m.group(1), m.group(2), m.group(3)
            if ns not in self.namespaces:
                return 404, status_obj(404, "NotFound", f'namespaces "{ns}" not found', name=ns, kind="namespaces")
            key = (coll, ns, name)
            if name is None and method == "GET":  # list with an equality label selector
                sel = dict(kv.split("=", 1) for kv in q.get("labelSelector", "").split(",") if kv)
                items = [copy.deepcopy(o) for (c, n, _), o in sorted(self.objects.items()) if c == coll and n == ns
                         and all(o["metadata"].get("labels", {}).get(k) == v for k, v in sel.items())]
                return 200, {"kind": f"{kind}List", "apiVersion": api_version,
                             "metadata": {"resourceVersion": str(self.rv)}, "items": items}
            if name is None:
                return 405, status_obj(405, "MethodNotAllowed",
                                       "the server does not allow this method on the requested resource")
            if method == "GET":
                if key not in self.objects:
                    return 404, status_obj(404, "NotFound",
                                           f'{coll}.{group or "core"} "{name}" not found'.replace(".core", ""),
                                           name=name, kind=coll, group=group or None)
                if kind == "Deployment": self._reconcile(ns, name)
                return 200, self._out(key, kind, api_version)
            if method == "PATCH" and not sub:
                return self._patch(key, kind, api_version, group, q, ctype, body)
            return 405, status_obj(405, "MethodNotAllowed",
                                   "the server does not allow this method on the requested resource")
        return 404, status_obj(404, "NotFound", "the server could not find the requested resource")

    def _out(self, key, kind, api_version):
        o = {"apiVersion": api_version, "kind": kind, **copy.deepcopy(self.objects[key])}
        # the API omits zero counts
        if kind == "Deployment": o["status"] = {k: v for k, v in o["status"].items() if v != 0}
        return o

    def _patch(self, key, kind, api_version, group, q, ctype, body):
        coll, ns, name = key
        ctype = (ctype or "").split(";")[0]
        old = self.objects.get(key)
        if ctype == "application/apply-patch+yaml":
            if not q.get("fieldManager"):
                return 400, status_obj(400, "BadRequest", 'PatchOptions.meta.k8s.io "" is invalid: fieldManager: '
                                                          'Required value: is required for apply patch')
            if (
                body.get("kind") != kind
                or body.get("apiVersion") != api_version
                or body.get("metadata", {}).get("name") != name
            ):
                return 400, status_obj(400, "BadRequest", "the apply body's kind/apiVersion/name do not "
                                                          f"match {api_version} {kind} {name}")
            md = body["metadata"]
            if old is None:
                new = {"metadata": {"name": name, "namespace": ns, "uid": str(uuid.uuid4()),
                                    "creationTimestamp": _now(), "generation": 1},
                       "spec": {}, "status": {}}
            else: new = copy.deepcopy(old)
            for k in ("labels", "annotations"):  # apply owns its labels/annotations; server-set annotations stay
                kept = {a: v for a, v in (new["metadata"].get(k) or {}).items()
                        if a.startswith("deployment.kubernetes.io/")}
                if md.get(k) or kept: new["metadata"][k] = {**(md.get(k) or {}), **kept}
            new["spec"] = copy.deepcopy(body.get("spec", {}))
            manager, op = q["fieldManager"], "Apply"
        elif ctype == "application/json-patch+json":
            if old is None:
                return 404, status_obj(404, "NotFound", f'{coll}.{group} "{name}" not found', name=name, kind=coll,
                                       group=group)
            if not isinstance(body, list):
                return 400, status_obj(400, "BadRequest",
                                       "json: cannot unmarshal object into Go value of type []handlers.jsonPatchOp")
            try: new = _json_patch(old, body)
            except (KeyError, IndexError, ValueError) as e:
                return 422, status_obj(422, "Invalid",
                                       f"the server rejected our request due to an error in our request: {e}")
            manager, op = q.get("fieldManager", "OpenAPI-Generator"), "Update"
        else:
            return 415, status_obj(415, "UnsupportedMediaType", 'the body of the request was in an unknown format - '
                                                                'accepted media types include: '
                                                                'application/json-patch+json, '
                                                                'application/merge-patch+json, '
                                                                f'application/apply-patch+yaml (got "{ctype}")')
        if kind == "Deployment":
            new["spec"].setdefault("replicas", (old or {}).get("spec", {}).get("replicas", 1))
            new["spec"]["template"] = _defaulted_template(new["spec"].get("template", {}))
            if old is not None and new["spec"] != old["spec"]: new["metadata"]["generation"] += 1
        if kind == "Service":
            new["spec"].setdefault("clusterIP", (old or {}).get("spec", {}).get("clusterIP", "10.96.14.2"))
            new["spec"]["clusterIPs"] = [new["spec"]["clusterIP"]]
            new["spec"].setdefault("sessionAffinity", "None")
            new["spec"].setdefault("ipFamilies", ["IPv4"])
            new["spec"].setdefault("internalTrafficPolicy", "Cluster")
            new["status"] = {"loadBalancer": {}}
        if kind == "HorizontalPodAutoscaler": new["status"] = {"desiredReplicas": 0}
        if kind == "PodDisruptionBudget":  # the disruption controller's counts (never omitted for this kind)
            new["status"] = {"observedGeneration": 1, "disruptionsAllowed": 0, "currentHealthy": 0, "desiredHealthy": 1,
                             "expectedPods": 0}
        if kind == "NetworkPolicy": new.pop("status", None)  # a NetworkPolicy has no status
        new["metadata"]["resourceVersion"] = self._rv()
        mf = [e for e in new["metadata"].get("managedFields", []) if (e["manager"], e["operation"]) != (manager, op)]
        new["metadata"]["managedFields"] = mf + [{"manager": manager, "operation": op, "apiVersion": api_version,
                                                  "time": _now(), "fieldsType": "FieldsV1", "fieldsV1": {}}]
        self.objects[key] = new
        return (201 if old is None else 200), self._out(key, kind, api_version)

    # ---- the Deployment controller: one step each time a Deployment is read
    def _owned(self, ns, md):
        return [o for (c, n, _), o in self.objects.items() if c == "replicasets" and n == ns
                and any(r["uid"] == md["uid"] and r.get("controller")
                        for r in o["metadata"].get("ownerReferences", []))]

    def _current_rs(self, ns, d):
        ("The ReplicaSet for the Deployment's template: re-used (and given the "
         "next revision) or created, as the controller does.")
        md, spec, name = d["metadata"], d["spec"], d["metadata"]["name"]
        h = hashlib.sha256(json.dumps(spec["template"], sort_keys=True).encode()).hexdigest()[:10]
        owned = self._owned(ns, md)
        top = max([int(o["metadata"]["annotations"][REV]) for o in owned] + [0])
        cur = self.objects.get(("replicasets", ns, f"{name}-{h}"))
        if cur is None:
            t = copy.deepcopy(spec["template"])
            t.setdefault("metadata", {}).setdefault("labels", {})["pod-template-hash"] = h
            cur = {"metadata": {"name": f"{name}-{h}", "namespace": ns, "uid": str(uuid.uuid4()), "generation": 1,
                                "creationTimestamp": _now(),
                                "labels": t["metadata"]["labels"], "annotations": {},
                                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": name,
                                                     "uid": md["uid"], "controller": True,
                                                     "blockOwnerDeletion": True}]},
                   "spec": {"replicas": 0,
                            "selector": {"matchLabels": {**spec["selector"]["matchLabels"], "pod-template-hash": h}},
                            "template": t},
                   "status": {"replicas": 0, "observedGeneration": 1}}
            self.objects[("replicasets", ns, f"{name}-{h}")] = cur
        if int(cur["metadata"]["annotations"].get(REV, 0)) != top or len(owned) == 0:
            ann = {k: v for k, v in (md.get("annotations") or {}).items()
                   if not k.startswith("deployment.kubernetes.io/")
                   and k != "kubectl.kubernetes.io/last-applied-configuration"}
            want = spec.get("replicas", 1)
            cur["metadata"]["annotations"] = {**ann, REV: str(top + 1),
                                              "deployment.kubernetes.io/desired-replicas": str(want),
                                              "deployment.kubernetes.io/max-replicas": str(want + 1)}
            cur["metadata"]["resourceVersion"] = self._rv()
        md.setdefault("annotations", {})[REV] = cur["metadata"]["annotations"][REV]
        return cur

    def _scale(self, ns, d, cur, new_count, new_ready):
        "Set ReplicaSet sizes and the Deployment's status counts."
        want = d["spec"].get("replicas", 1)
        old = [o for o in self._owned(ns, d["metadata"]) if o is not cur]
        old_count = sum(o["spec"]["replicas"] for o in old)
        if new_ready >= want:
            for o in old:
                o["spec"]["replicas"] = 0
                o["status"] = {"replicas": 0, "observedGeneration": 1}
            old_count = 0
        cur["spec"]["replicas"] = new_count
        cur["status"] = {"replicas": new_count, "readyReplicas": new_ready, "availableReplicas": new_ready,
                         "observedGeneration": 1}
        avail = old_count + new_ready
        st = d["status"]
        st.update({"observedGeneration": d["metadata"]["generation"], "replicas": old_count + new_count,
                   "updatedReplicas": new_count,
                   "readyReplicas": avail, "availableReplicas": avail, "unavailableReplicas": max(0, want - avail)})
        done = new_ready >= want
        st["conditions"] = [
            {"type": "Available", "status": "True" if avail >= want else "False",
             "reason": "MinimumReplicasAvailable" if avail >= want else "MinimumReplicasUnavailable",
             "message": "Deployment has minimum availability." if avail >= want
             else "Deployment does not have minimum availability.",
             "lastUpdateTime": _now(), "lastTransitionTime": _now()},
            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable" if done
             else "ReplicaSetUpdated",
             "message": f'ReplicaSet "{cur["metadata"]["name"]}" ' + ("has successfully progressed." if done
                                                                      else "is progressing."),
             "lastUpdateTime": _now(), "lastTransitionTime": _now()}]

    def _reconcile(self, ns, name):
        d = self.objects[("deployments", ns, name)]
        md, st = d["metadata"], d.setdefault("status", {})
        want = d["spec"].get("replicas", 1)
        if st.get("observedGeneration", 0) < md["generation"]:
            if self.seen.get((ns, name)) != md["generation"]:  # first look: the new spec is not observed yet
                self.seen[(ns, name)] = md["generation"]
                return
            cur = self._current_rs(ns, d)
            if cur["status"].get("readyReplicas", 0) >= want:
                self._scale(ns, d, cur, want, want)
                return  # nothing to roll
            old_count = sum(o["spec"]["replicas"] for o in self._owned(ns, md) if o is not cur)
            self._scale(ns, d, cur, max(1, min(want, want + 1 - old_count)), 0)  # maxSurge 1, maxUnavailable 0
            return
        cur = self._current_rs(ns, d)
        fate = self.bad_images.get(d["spec"]["template"]["spec"]["containers"][0]["image"])
        if fate == "deadline":
            st["conditions"][-1].update(
                {
                    "status": "False",
                    "reason": "ProgressDeadlineExceeded",
                    "message": f'ReplicaSet "{cur["metadata"]["name"]}" has timed out progressing.',
                }
            )
        elif fate is None: self._scale(ns, d, cur, want, want)

@pytest.fixture
def fake():
    f = FakeKube()
    yield f
    f.close()


@pytest.fixture
def api(fake):
    c = fake.client()
    yield c
    c.close()


def manifests(image, version, **kw):
    return render_manifests(image, labels={"model-version": version, "git-commit": image[-7:]},
                            api_key_secret="scoring-api-key", **kw)


# ---------------------------------------------------------------- offline

def test_render_validate_write(tmp_path):
    for i, kw in enumerate(({}, {"hpa": True},
                            {"network_policy": True, "allow_from": ["ingress-nginx:*", "monitoring:app=prometheus"]},
                            {"replicas": 1, "network_policy": True,
                             "allow_egress": [{"ports": [{"protocol": "TCP", "port": 5432}]}]})):
        ms = manifests(PIN1, 1, **kw)
        for v in ("1.30", "1.33"): validate_manifests(ms, v)  # strict: unknown fields are refused
        paths = write_manifests(ms, tmp_path/str(i))
        assert [yaml.safe_load(p.read_text()) for p in paths] == ms
    assert sorted(p.name for p in (tmp_path/"2").iterdir()) == ["deployment.yaml", "networkpolicy.yaml", "pdb.yaml",
                                                                "service.yaml"]
    bad = manifests(IMG1, 1)
    bad[0]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = {"cores": 1}
    with pytest.raises(ManifestInvalid, match=r"Deployment ottawa-housing: "
                                              r"spec\.template\.spec\.containers\[0\]\.resources\.limits\.cpu"):
        validate_manifests(bad)
    bad = manifests(IMG1, 1)
    bad[1]["spec"]["selectr"] = {}
    with pytest.raises(ManifestInvalid, match=r"Service ottawa-housing: spec: Additional properties are "
                                              r"not allowed \('selectr' was unexpected\)"):
        validate_manifests(bad)


def test_service_stable_across_versions():
    a, b = manifests(IMG1, 1, hpa=True), manifests(IMG2, 2, hpa=True)
    assert a[1] == b[1] and a[2] == b[2] and a[3] == b[3]  # Service, HPA, PDB
    p1, p2 = manifests(PIN1, 1, network_policy=True), manifests(PIN2, 2, network_policy=True)
    assert [m for m in p1 if m["kind"] != "Deployment"] == [m for m in p2 if m["kind"] != "Deployment"]
    assert a[1]["metadata"]["name"] == "ottawa-housing" and a[1]["spec"]["ports"][0]["targetPort"] == 8080
    assert a[0]["spec"]["selector"] == b[0]["spec"]["selector"]
    assert "scoring-api-key" in json.dumps(a[0]) and "MLOPS_NB_API_KEY" in json.dumps(a[0])


def test_pinned_image_keeps_the_tag_for_the_version():
    "REGISTRY/NAME:TAG@sha256:DIGEST: the digest is what runs, the tag names the version (before: no version label)."
    d = manifests(PIN2, 2)[0]
    assert d["spec"]["template"]["spec"]["containers"][0]["image"] == PIN2
    assert d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/version"] == "2-def5678"
    with pytest.raises(KubeError, match="is not a digest"): render_manifests(f"{IMG1}@sha256:1234")
    with pytest.raises(KubeError, match="no version tag"): render_manifests("127.0.0.1:5000/ottawa-housing")


def test_stopping_pod_keeps_serving_within_its_grace_period():
    import inspect, mlops_nb.server
    # the drain kube plans for
    assert f"timeout_graceful_shutdown={SERVER_DRAIN_S}" in inspect.getsource(mlops_nb.server.serve)
    for pre in (5, 40):
        pod = manifests(IMG1, 1, pre_stop_s=pre)[0]["spec"]["template"]["spec"]
        cmd = pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
        assert cmd == ["python3", "-c", f"import time; time.sleep({pre})"]
        # the kubelet does not kill the pod mid-drain
        assert pod["terminationGracePeriodSeconds"] >= pre + SERVER_DRAIN_S
    assert "lifecycle" not in manifests(IMG1, 1, pre_stop_s=0)[0]["spec"]["template"]["spec"]["containers"][0]


def test_disruption_budget_only_with_two_pods():
    kinds = lambda **kw: [m["kind"] for m in manifests(IMG1, 1, **kw)]
    assert "PodDisruptionBudget" in kinds() and "PodDisruptionBudget" in kinds(hpa=True, min_replicas=2)
    assert "PodDisruptionBudget" not in kinds(replicas=1) and "PodDisruptionBudget" not in kinds(
        hpa=True, min_replicas=1
    )
    ms = manifests(IMG1, 1, replicas=3)
    assert ms[-1]["spec"] == {"minAvailable": 1, "selector": ms[0]["spec"]["selector"],
                              "unhealthyPodEvictionPolicy": "AlwaysAllow"}


def test_network_policy_opens_only_the_server_port():
    np_ = manifests(IMG1, 1, network_policy=True)[0]
    assert np_["kind"] == "NetworkPolicy" and np_["spec"]["podSelector"] == {
        "matchLabels": {"app.kubernetes.io/name": "ottawa-housing"}
    }
    # the namespace
    assert np_["spec"]["ingress"] == [{"from": [{"podSelector": {}}], "ports": [{"protocol": "TCP", "port": 8080}]}]
    assert np_["spec"]["policyTypes"] == ["Ingress", "Egress"]
    # DNS only
    assert np_["spec"]["egress"] == [{"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}]
    np_ = manifests(IMG1, 1, port=9000, network_policy=True, allow_from=["ingress-nginx:*", "app=gateway"],
                    allow_egress=True)[0]
    assert np_["spec"]["ingress"] == [{"from": [
        {"podSelector": {}, "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}},
        {"podSelector": {"matchLabels": {"app": "gateway"}}}], "ports": [{"protocol": "TCP", "port": 9000}]}]
    assert np_["spec"]["policyTypes"] == ["Ingress"] and "egress" not in np_["spec"]
    assert "NetworkPolicy" not in [m["kind"] for m in manifests(IMG1, 1)]  # optional
    for kw, words in (({"allow_from": ["app=x"]}, "pass network_policy=True"),
                      ({"network_policy": True, "allow_from": ["app"]}, "not a label selector"),
                      ({"network_policy": True, "allow_from": []}, "allow_from is empty")):
        with pytest.raises(KubeError, match=words): manifests(IMG1, 1, **kw)


# ---------------------------------------------------------------- against the fake API server

def test_apply_is_server_side_apply(fake, api):
    out = apply(manifests(IMG1, 1, hpa=True, network_policy=True), api)
    assert [o["kind"] for o in out] == ["NetworkPolicy", "Deployment", "Service", "HorizontalPodAutoscaler",
                                        "PodDisruptionBudget"]
    patches = fake.sent("PATCH")
    assert [p["path"] for p in patches] == [
        "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies/ottawa-housing",
        "/apis/apps/v1/namespaces/default/deployments/ottawa-housing",
        "/api/v1/namespaces/default/services/ottawa-housing",
        "/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers/ottawa-housing",
        "/apis/policy/v1/namespaces/default/poddisruptionbudgets/ottawa-housing",
    ]
    for p in patches:
        assert p["content_type"] == "application/apply-patch+yaml"
        assert p["query"] == {"fieldManager": "mlops-nb", "force": "true"}
    assert patches[1]["body"]["spec"]["template"]["spec"]["containers"][0]["image"] == IMG1
    assert out[2]["spec"]["clusterIP"] == "10.96.14.2"  # the server's answer, parsed by the typed client
    assert out[4]["spec"]["minAvailable"] == 1 and out[4]["status"]["expectedPods"] == 0
    assert out[0]["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 8080}]
    assert not fake.sent("GET", r"^/(version|apis|api)$")  # the typed client needs no discovery


def test_healthy_rollout(fake, api):
    r1 = deploy(manifests(IMG1, 1), api, timeout_s=10, poll_s=0.01)
    assert r1 == {"name": "ottawa-housing", "namespace": "default", "image": IMG1, "revision": 1, "status": "done",
                  "applied": ["Deployment default/ottawa-housing", "Service default/ottawa-housing",
                              "PodDisruptionBudget default/ottawa-housing"]}
    r2 = deploy(manifests(IMG2, 2), api, timeout_s=10, poll_s=0.01)
    assert (r2["image"], r2["revision"]) == (IMG2, 2)
    d = fake.deployment()
    assert d["metadata"]["generation"] == 2 and d["status"]["observedGeneration"] == 2
    assert d["metadata"]["annotations"]["mlops-nb/model-version"] == "2"
    assert sorted(rs["metadata"]["annotations"][REV] for rs in fake.replicasets()) == ["1", "2"]
    assert [p["content_type"] for p in fake.sent("PATCH", r"deployments")] == ["application/apply-patch+yaml"]*2
    # the status reads went to the /status subresource, and saw the pending phase first
    assert fake.sent("GET", r"/deployments/ottawa-housing/status$")


def test_wait_for_rollout_waits_then_done(fake, api):
    apply(manifests(IMG1, 1), api)
    assert wait_for_rollout(api, "ottawa-housing", "default", timeout_s=10, poll_s=0.01) == "done"
    assert len(fake.sent("GET", r"/status$")) == 3  # pending, waiting (1 of 2 updated), done


def test_failed_rollout_is_rolled_back(fake, api):
    deploy(manifests(IMG1, 1), api, timeout_s=10, poll_s=0.01)
    fake.add_foreign_rs({"app.kubernetes.io/name": "ottawa-housing"}, "127.0.0.1:5000/other:7-0000000")
    fake.bad_images[IMG2] = "deadline"
    n = len(fake.requests)
    with pytest.raises(RolloutFailed) as ei:
        deploy(manifests(IMG2, 2), api, timeout_s=10, poll_s=0.01)
    msg = str(ei.value)
    assert "\n" not in msg
    assert f"new image {IMG2} failed" in msg and "exceeded its progress deadline" in msg
    assert f"rolled back to revision 1 ({IMG1}), which is serving" in msg
    # the rollback: list ReplicaSets by the selector, then one JSON patch of template + annotations
    lists = [r for r in fake.requests[n:] if r["method"] == "GET" and r["path"].endswith("/replicasets")]
    assert lists and lists[0]["query"]["labelSelector"] == "app.kubernetes.io/name=ottawa-housing"
    jp = [r for r in fake.requests[n:] if r["content_type"] == "application/json-patch+json"]
    assert len(jp) == 1 and [op["path"] for op in jp[0]["body"]] == ["/spec/template", "/metadata/annotations"]
    assert jp[0]["body"][0]["value"]["spec"]["containers"][0]["image"] == IMG1
    assert "pod-template-hash" not in jp[0]["body"][0]["value"]["metadata"]["labels"]
    assert jp[0]["body"][1]["value"]["mlops-nb/model-version"] == "1"
    assert jp[0]["body"][1]["value"][REV] == "2"  # the Deployment keeps its own revision annotation
    # the Deployment runs the previous image again, as a new revision re-using the old ReplicaSet
    d = fake.deployment()
    assert d["spec"]["template"]["spec"]["containers"][0]["image"] == IMG1
    assert d["metadata"]["annotations"][REV] == "3" and d["metadata"]["annotations"]["mlops-nb/model-version"] == "1"
    assert wait_for_rollout(api, "ottawa-housing", timeout_s=5, poll_s=0.01) == "done"


def test_never_ready_times_out_and_rolls_back(fake, api):
    deploy(manifests(IMG1, 1), api, timeout_s=10, poll_s=0.01)
    fake.bad_images[IMG2] = "never_ready"
    t = time.monotonic()
    with pytest.raises(RolloutFailed) as ei:
        deploy(manifests(IMG2, 2), api, timeout_s=0.5, poll_s=0.05)
    assert time.monotonic() - t < 5
    msg = str(ei.value)
    assert "rollout not done after 0.5s (1 of 2 new replicas updated)" in msg
    assert f"rolled back to revision 1 ({IMG1}), which is serving" in msg
    assert fake.deployment()["spec"]["template"]["spec"]["containers"][0]["image"] == IMG1


def test_wait_timeout(fake, api):
    fake.bad_images[IMG1] = "never_ready"
    apply(manifests(IMG1, 1), api)
    with pytest.raises(RolloutTimeout, match=r"default/ottawa-housing: rollout not done after 0.3s "
                                             r"\(0 of 2 updated replicas available\)"):
        wait_for_rollout(api, "ottawa-housing", timeout_s=0.3, poll_s=0.05)


def test_first_deploy_failure_has_nothing_to_roll_back(fake, api):
    fake.bad_images[IMG1] = "deadline"
    with pytest.raises(RolloutFailed, match="there is no earlier version to roll back to"):
        deploy(manifests(IMG1, 1), api, timeout_s=5, poll_s=0.01)
    # Deployment, Service, PDB: no rollback patch
    assert [p["content_type"] for p in fake.sent("PATCH")] == ["application/apply-patch+yaml"]*3


def test_rollback_like_kubectl_undo(fake, api):
    for img, v in ((IMG1, 1), (IMG2, 2)): deploy(manifests(img, v), api, timeout_s=5, poll_s=0.01)
    assert rollback(api, "ottawa-housing") == 1
    assert wait_for_rollout(api, "ottawa-housing", timeout_s=5, poll_s=0.01) == "done"
    assert fake.deployment()["spec"]["template"]["spec"]["containers"][0]["image"] == IMG1
    assert rollback(api, "ottawa-housing", to_revision=3) == 3  # already current: no patch
    assert len(fake.sent("PATCH", r"deployments")) == 3


@pytest.mark.parametrize("code,reason,message,words", [
    (409, "Conflict", 'Apply failed with 1 conflict: conflict with "kubectl-edit" using apps/v1: '
                      '.spec.template.spec.containers[name="server"].image',
     ["HTTP 409 Conflict", 'conflict with "kubectl-edit"', "force=True"]),
    (500, "InternalError", "Internal error occurred: etcdserver: request timed out",
     ["HTTP 500 Internal Server Error", "etcdserver", "control plane"]),
])
def test_api_errors_are_one_line(fake, api, code, reason, message, words):
    fake.inject.append(["PATCH", r"/deployments/", code, reason, message, 1])
    with pytest.raises(KubeError) as ei:
        apply(manifests(IMG1, 1), api)
    msg = str(ei.value)
    assert msg.startswith("apply Deployment default/ottawa-housing: ") and "\n" not in msg
    for w in words: assert w in msg
    assert isinstance(ei.value, MlopsNbError)


def test_missing_namespace_and_deployment(fake, api):
    with pytest.raises(KubeError, match=r'^apply Deployment prod/ottawa-housing: HTTP 404 Not Found: '
                                        r'namespaces "prod" not found; .*kubectl create namespace'):
        apply(render_manifests(IMG1, namespace="prod"), api)
    with pytest.raises(KubeError, match=r'^read rollout status of Deployment default/nope: HTTP 404 '
                                        r'Not Found: deployments.apps "nope" not found'):
        wait_for_rollout(api, "nope", timeout_s=1, poll_s=0.01)
    with pytest.raises(KubeError, match=r'^roll back Deployment default/nope: HTTP 404'):
        rollback(api, "nope")


def test_unreachable_server():
    c = ApiClient(Configuration(host="http://127.0.0.1:9"))
    with pytest.raises(KubeError, match="cannot reach the Kubernetes API"):
        apply(render_manifests(IMG1), c)


def test_dry_run(fake, api):
    out = dry_run(manifests(IMG1, 1), api)
    assert (
        out.startswith("+ Deployment default/ottawa-housing: would be created")
        and "+ Service default/ottawa-housing: would be created" in out
    )
    deploy(manifests(IMG1, 1), api, timeout_s=5, poll_s=0.01)
    n = len(fake.sent("PATCH"))
    out = dry_run(manifests(IMG2, 2), api)
    assert f"    spec.template.spec.containers[server].image: '{IMG1}' -> '{IMG2}'" in out.splitlines()
    assert "= Service default/ottawa-housing: no changes" in out.splitlines()
    assert len(fake.sent("PATCH")) == n  # nothing was changed
    assert dry_run(manifests(IMG1, 1), api).splitlines() == ["= Deployment default/ottawa-housing: no changes",
                                                             "= Service default/ottawa-housing: no changes",
                                                             "= PodDisruptionBudget default/ottawa-housing: no changes"]
    assert dry_run(manifests(IMG2, 2)).count("kind: ") == 3  # no client: the YAML


def test_hpa_deploy_leaves_replicas_to_the_autoscaler(fake, api):
    r = deploy(manifests(IMG1, 1, hpa=True), api, timeout_s=5, poll_s=0.01)
    assert r["applied"][-2:] == ["HorizontalPodAutoscaler default/ottawa-housing",
                                 "PodDisruptionBudget default/ottawa-housing"]
    sent = fake.sent("PATCH", r"/deployments/")[0]["body"]["spec"]
    assert "replicas" not in sent
    hpa = fake.sent("PATCH", r"/horizontalpodautoscalers/")[0]
    assert hpa["body"]["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                                     "name": "ottawa-housing"}


def test_rollback_api_failure_still_says_new_version_failed(fake, api):
    deploy(manifests(IMG1, 1), api, timeout_s=5, poll_s=0.01)
    fake.bad_images[IMG2] = "deadline"
    fake.inject.append(["GET", r"/replicasets$", 500, "InternalError",
                        "Internal error occurred: etcdserver: leader changed", 1])
    with pytest.raises(RolloutFailed) as ei:
        deploy(manifests(IMG2, 2), api, timeout_s=5, poll_s=0.01)
    msg = str(ei.value)
    assert (
        f"new image {IMG2} failed" in msg
        and "the rollback failed" in msg
        and "etcdserver: leader changed" in msg
        and "\n" not in msg
    )


def test_pinned_deploy_with_policy_and_budget(fake, api):
    """Pinned images with a NetworkPolicy and a budget: applied and diffed with the Deployment; a failed version is
    rolled
    back by digest, and the rollback leaves the policy and the budget alone (they are the same for every version)."""
    kw = dict(network_policy=True, allow_from=["ingress-nginx:*"])
    out = dry_run(manifests(PIN1, 1, **kw), api).splitlines()
    assert out[0] == "+ NetworkPolicy default/ottawa-housing: would be created" and ("+ PodDisruptionBudget "
                                                                                     "default/ottawa-housing: "
                                                                                     "would be created") in out
    r = deploy(manifests(PIN1, 1, **kw), api, timeout_s=10, poll_s=0.01)
    assert r["image"] == PIN1 and r["applied"] == [f"{k} default/ottawa-housing"
                                                   for k in ("NetworkPolicy", "Deployment", "Service",
                                                             "PodDisruptionBudget")]
    out = dry_run(manifests(PIN2, 2, **kw), api).splitlines()
    assert "= NetworkPolicy default/ottawa-housing: no changes" in out and ("= PodDisruptionBudget "
                                                                            "default/ottawa-housing: no changes") in out
    assert f"    spec.template.spec.containers[server].image: '{PIN1}' -> '{PIN2}'" in out
    fake.bad_images[PIN2] = "deadline"
    n = len(fake.requests)
    with pytest.raises(RolloutFailed, match=re.escape(f"rolled back to revision 1 ({PIN1}), which is serving")):
        deploy(manifests(PIN2, 2, **kw), api, timeout_s=10, poll_s=0.01)
    t = fake.deployment()["spec"]["template"]
    assert (
        t["spec"]["containers"][0]["image"] == PIN1
        and t["metadata"]["labels"]["app.kubernetes.io/version"] == "1-abc1234"
    )
    later = [r["path"].rsplit("/", 2)[-2] for r in fake.requests[n:] if r["method"] == "PATCH"]
    # apply, then the rollback's one patch
    assert later == ["networkpolicies", "deployments", "services", "poddisruptionbudgets", "deployments"]
    assert fake.objects[("networkpolicies", "default", "ottawa-housing")]["spec"]["ingress"][0]["from"] == \
        [{"podSelector": {}, "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}]


def _kubeconfig(tmp_path, fake):
    "A kubeconfig whose current context is the fake API server."
    p = tmp_path/"kubeconfig"
    p.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{fake.port}"}}],
        "users": [{"name": "u", "user": {"token": "not-a-secret"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u", "namespace": "default"}}]}))
    return p


def test_cli_deploy_rolls_out_and_rolls_back(tmp_path, fake, state):
    "`mlops-nb deploy --target kubernetes` as a real process against the fake API server, with a kubeconfig."
    import os
    from conftest import run_cli
    env = {**os.environ, "KUBECONFIG": str(_kubeconfig(tmp_path, fake))}
    args = ["deploy", "--target", "kubernetes", "--timeout", "60", "--manifests", tmp_path/"k8s", "--json"]
    p = run_cli(*args, "--image", PIN1, env=env)  # pinned by digest, as `package --push` prints it
    assert p.returncode == 0, p.stderr
    assert (
        json.loads(p.stdout)["image"] == PIN1
        and (tmp_path / "k8s" / "service.yaml").exists()
        and (tmp_path / "k8s" / "pdb.yaml").exists()
    )
    p = run_cli(*args, "--dry-run", "--image", PIN2, env=env)
    assert p.returncode == 0 and PIN2 in p.stdout and PIN1 in p.stdout  # the diff names both images
    fake.bad_images[PIN2] = "deadline"
    p = run_cli(*args, "--image", PIN2, env=env)
    assert p.returncode == 1 and "rolled back" in p.stderr and "Traceback" not in p.stderr, p.stderr
    d = ApiClient(Configuration(host=f"http://127.0.0.1:{fake.port}"))
    from kubernetes import client
    dep = client.AppsV1Api(d).read_namespaced_deployment("ottawa-housing", "default")
    assert dep.spec.template.spec.containers[0].image == PIN1  # the old version serves again
    p = run_cli("deploy", "--target", "kubernetes", "--image", IMG1,
                env={**os.environ, "KUBECONFIG": str(tmp_path/"missing")})
    assert p.returncode == 2 and "no usable kubeconfig" in p.stderr


# --- audit finding 11: a documentation cell that deploys must not deploy under "Run All" or nbconvert ---------------

def test_executing_the_kube_notebook_with_nbconvert_deploys_nothing(tmp_path, monkeypatch):
    """nbconvert (like papermill and "Run All") ignores `#| eval: false`: the example deploy cell must do nothing unless
    MLOPS_NB_DOC_DEPLOY_CONTEXT names a context. Every kubeconfig context points at a recorder; executing the whole
    notebook reaches it zero times, and the same cell with the variable set does reach it (the check can fail)."""
    import subprocess, sys
    import nbformat
    from nbconvert.preprocessors import ExecutePreprocessor
    from conftest import ROOT, Recorder
    rec = Recorder()
    monkeypatch.setenv("KUBECONFIG", str(rec.kubeconfig(tmp_path/"kubeconfig")))
    monkeypatch.delenv("MLOPS_NB_DOC_DEPLOY_CONTEXT", raising=False)
    # the one library notebook with cells nbdev skips (`eval: false`) is this one: a new one must be covered here too
    skipping = {f.name for f in (ROOT/"nbs").glob("*.ipynb")
                if any(c.cell_type == "code" and "#| eval: false" in c.source
                                                                    for c in nbformat.read(f, as_version=4).cells)}
    assert skipping == {"10_kube.ipynb"}, skipping
    try:
        nb = nbformat.read(ROOT/"nbs"/"10_kube.ipynb", as_version=4)
        ExecutePreprocessor(timeout=600, kernel_name="python3").preprocess(nb, {"metadata": {"path": str(ROOT/"nbs")}})
        assert rec.seen == [], rec.seen
        cell = next(c.source for c in nb.cells if c.cell_type == "code" and "MLOPS_NB_DOC_DEPLOY_CONTEXT" in c.source)
        p = subprocess.run([sys.executable, "-c", "from mlops_nb.kube import *\n" + cell.replace("#| eval: false", "")],
                           env={**os.environ, "MLOPS_NB_DOC_DEPLOY_CONTEXT": "staging"}, capture_output=True, text=True,
                           timeout=300)
        assert p.returncode != 0 and rec.seen, (p.returncode, rec.seen)  # with the variable it went to the cluster
    finally: rec.close()
