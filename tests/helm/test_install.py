"""The Helm chart (charts/probeset) installed for real, through helm-python-sdk's install API, on the
session's kube-apiserver: the objects it creates, the release it records, and that the operator's
ServiceAccount has exactly enough RBAC for its job (no Secrets; it reconciles a ProbeSet)."""

import os
import sys
import time
from pathlib import Path

import pytest
import yaml

try:
    import helm_python as helm
except (ImportError, OSError) as e:   # not installed, or its bundled libhelm_c.so does not load
    pytest.skip(f"PyPI package helm-python-sdk is not importable ({e}); pip install helm-python-sdk",
                allow_module_level=True)

from kubernetes import client  # noqa: E402
from kubernetes.client.exceptions import ApiException  # noqa: E402
from kubernetes.dynamic import DynamicClient  # noqa: E402
from kubernetes.dynamic.exceptions import NotFoundError, ResourceNotFoundError  # noqa: E402

from tests.k8s.operator_env import (Process, condition, free_port, get_ds, probeset,  # noqa: E402
                                    remove_agent_daemonset, service_account_kubeconfig, wait_established,
                                    wait_for)

pytestmark = pytest.mark.k8s

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "probeset"
NS = "probeset-system"
RELEASE = "probeset"
GROUP, VERSION, PLURAL = "probeset.io", "v1alpha1", "probesets"


def rendered_objects(chart):
    out = chart.render({}, name=RELEASE, namespace=NS)
    docs = []
    for path, text in out.items():
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def chart_crds(chart):
    return [yaml.safe_load(c["data"]) for c in chart.crds]


def remove_foreign_crds(api, crds):
    """Helm applies crds/ server-side as field manager "helm": a CRD created by someone else
    (tests/k8s, test_chart.py's dry run) conflicts on .spec. Delete those; the install brings them."""
    ext = client.ApiextensionsV1Api(api)
    deleted = []
    for crd in crds:
        name = crd["metadata"]["name"]
        try:
            live = ext.read_custom_resource_definition(name)
        except ApiException as e:
            if e.status == 404:
                continue
            raise
        managers = {m.manager for m in live.metadata.managed_fields or [] if m.operation != "Update"
                    or not (m.subresource == "status" or m.manager == "kube-apiserver")}
        if managers <= {"helm"}:
            continue
        ext.delete_custom_resource_definition(name)
        deleted.append(name)

    def gone(name):
        try:
            ext.read_custom_resource_definition(name)
            return False
        except ApiException as e:
            if e.status == 404:
                return True
            raise
    for name in deleted:
        wait_for(f"CRD {name} deleted", lambda: gone(name), timeout=60)
    return [("CustomResourceDefinition", n) for n in deleted]


def remove_unowned(api, docs):
    """Objects the chart creates that exist already without belonging to this release (tests/k8s
    creates the same ServiceAccounts, RBAC and peering directly) make `helm install` refuse to take
    them over. Delete them: the install recreates them."""
    dyn = DynamicClient(api)
    deleted = []
    for doc in docs:
        try:
            res = dyn.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
        except ResourceNotFoundError:   # its CRD is not there yet (the chart's crds/ bring it)
            continue
        ns = doc["metadata"].get("namespace") if res.namespaced else None
        if res.namespaced and not ns:
            ns = NS
        try:
            live = res.get(name=doc["metadata"]["name"], namespace=ns)
        except NotFoundError:
            continue
        annotations = dict(live.metadata.annotations or {})
        if annotations.get("meta.helm.sh/release-name") == RELEASE:
            continue
        res.delete(name=doc["metadata"]["name"], namespace=ns)
        deleted.append((res, doc["metadata"]["name"], ns))

    def gone(res, name, ns):
        try:
            res.get(name=name, namespace=ns)
            return False
        except NotFoundError:
            return True
    for res, name, ns in deleted:
        wait_for(f"{res.kind} {name} deleted", lambda: gone(res, name, ns))
    return [(r.kind, n) for r, n, _ in deleted]


@pytest.fixture(scope="module")
def release(kube):
    """`helm install probeset charts/probeset -n probeset-system --create-namespace`; uninstalled after
    the module's tests (the CRDs stay, as with Helm)."""
    with helm.Chart.load(CHART) as chart, kube.api_client() as api, \
            helm.Config(kubeconfig_path=kube.kubeconfig, namespace=NS) as cfg:
        cfg.uninstall(RELEASE, ignore_not_found=True)   # a leftover of an interrupted run
        removed = remove_unowned(api, rendered_objects(chart)) + remove_foreign_crds(api, chart_crds(chart))
        if removed:
            print(f"\nremoved pre-existing objects not owned by the release: {removed}", file=sys.stderr)
        rel = cfg.install(chart, RELEASE, {}, namespace=NS, create_namespace=True, timeout=120)
        try:
            yield cfg, rel
        finally:
            cfg.uninstall(RELEASE, timeout=120)
            assert not cfg.list(all_states=True, name_filter=f"^{RELEASE}$")
            # Helm never deletes the CRDs it installed from crds/.
            ext = client.ApiextensionsV1Api(api)
            ext.read_custom_resource_definition("probesets.probeset.io")
            ext.read_custom_resource_definition("clusterkopfpeerings.kopf.dev")
            with pytest.raises(ApiException) as e:
                client.AppsV1Api(api).read_namespaced_deployment("probeset-operator", NS)
            assert e.value.status == 404


def test_install_creates_the_charts_objects(kube, release):
    cfg, rel = release
    assert rel["name"] == RELEASE and rel["namespace"] == NS
    assert "kind: Deployment" in rel["manifest"]
    with kube.api_client() as api:
        wait_established(api, "probesets.probeset.io", "clusterkopfpeerings.kopf.dev")

        dep = client.AppsV1Api(api).read_namespaced_deployment("probeset-operator", NS)
        (container,) = dep.spec.template.spec.containers
        with helm.Chart.load(CHART) as chart:
            app_version = chart.metadata["appVersion"]
        assert container.image == f"probeset:{app_version}"
        assert dep.spec.template.spec.service_account_name == "probeset-operator"
        assert (dep.metadata.annotations or {}).get("meta.helm.sh/release-name") == RELEASE

        core = client.CoreV1Api(api)
        for sa in ("probeset-operator", "probeset-agent"):
            core.read_namespaced_service_account(sa, NS)
        rbac = client.RbacAuthorizationV1Api(api)
        for name in ("probeset-operator", "probeset-agent"):
            rbac.read_cluster_role(name)
            binding = rbac.read_cluster_role_binding(name)
            assert [(s.kind, s.name, s.namespace) for s in binding.subjects] == [("ServiceAccount", name, NS)]
        rbac.read_namespaced_role("probeset-operator", NS)
        rbac.read_namespaced_role_binding("probeset-operator", NS)
        client.CustomObjectsApi(api).get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", "probeset")

    releases = cfg.list(name_filter=f"^{RELEASE}$")
    assert len(releases) == 1, releases
    summary = releases[0]
    assert summary["name"] == RELEASE and summary["namespace"] == NS
    status = summary.get("info", {}).get("status", summary.get("status"))
    assert status == "deployed", summary


def test_operator_service_account_cannot_read_secrets(kube, release, tmp_path):
    kubeconfig = service_account_kubeconfig(kube, tmp_path, "probeset-operator")
    cfg = client.Configuration()
    from kubernetes import config as kconfig
    kconfig.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    with client.ApiClient(cfg) as api:
        core = client.CoreV1Api(api)
        with pytest.raises(ApiException) as e:
            core.list_namespaced_secret(NS)
        assert e.value.status == 403
        with pytest.raises(ApiException) as e:
            core.list_secret_for_all_namespaces()
        assert e.value.status == 403


def test_operator_with_the_charts_rbac_reconciles_a_probeset(kube, release, tmp_path):
    kubeconfig = service_account_kubeconfig(kube, tmp_path, "probeset-operator")
    peering = f"probeset-helm-{int(time.time() * 1000) % 10**8}"
    ns = f"t-helm-install-{int(time.time() * 1000) % 10**6}"
    with kube.api_client() as api:
        objs = client.CustomObjectsApi(api)
        core = client.CoreV1Api(api)
        objs.create_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", {
            "apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": peering}})
        core.create_namespace({"metadata": {"name": ns}})
        remove_agent_daemonset(api)     # one an earlier test's operator left
        env = dict(os.environ, KUBECONFIG=kubeconfig, PROBESET_OPERATOR_NAMESPACE=NS,
                   PROBESET_AGENT_IMAGE="registry.example/probeset:test", PROBESET_PEERING=peering,
                   PROBESET_OPERATOR_DEPLOYMENT="probeset-operator")     # as the chart's Deployment sets it
        port = free_port()
        op = Process([sys.executable, "-m", "probeset_cli", "operator",
                      "--liveness", f"http://127.0.0.1:{port}/healthz"], env, tmp_path / "operator.log")
        try:
            objs.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, probeset(
                "helm", [{"name": "t", "tracepoint": "sched:sched_process_exec"}],
                nodeSelector={"probeset-test": "none"}))
            ds = wait_for("the operator's DaemonSet", lambda: get_ds(api), timeout=60)
            assert ds.metadata.namespace == NS
            # Owned by the chart's Deployment (read with the chart's RBAC): uninstalling removes it.
            dep = client.AppsV1Api(api).read_namespaced_deployment("probeset-operator", NS)
            assert [(o.kind, o.name, o.uid) for o in ds.metadata.owner_references] == [
                ("Deployment", "probeset-operator", dep.metadata.uid)]
            obj = wait_for("Valid=True", lambda: (o := objs.get_namespaced_custom_object(
                GROUP, VERSION, ns, PLURAL, "helm")) and (c := condition(o, "Valid")) and
                c["status"] == "True" and o, timeout=60)
            assert condition(obj, "Valid")["status"] == "True"
            assert op.proc.poll() is None, "the operator exited"
            text = op.text()
            assert "403" not in text and "Forbidden" not in text, text[-3000:]
        finally:
            try:
                objs.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "helm")
                wait_for("ProbeSet finalized", lambda: get_ds(api) is None and
                         not objs.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"],
                         timeout=30)
            except (ApiException, AssertionError) as e:
                print(f"cleanup of ProbeSet helm: {e}", file=sys.stderr)
            op.stop()
            text = open(op.log_path).read()
            print(f"----- operator.log (tail) -----\n{text[-4000:]}", file=sys.stderr)
            try:
                core.delete_namespace(ns)
            except ApiException:
                pass
            try:
                objs.delete_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", peering)
            except ApiException:
                pass
