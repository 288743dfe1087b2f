"""/metrics behind the cluster's own authentication, against the real API server: the agent's
ServiceAccount (with exactly the rules rbac.py gives it when metrics authentication is on) reviews
scrapers' tokens; a scraper bound to probeset-metrics-reader may read, another may not."""

import base64
import ssl

from kubernetes import client, utils
from kubernetes.client.exceptions import ApiException

from probeset_agent.authz import TokenAuthorizer
from probeset_api.kube import Kube
from probeset_operator.rbac import role_objects
from tests.k8s.operator_env import OPERATOR_NS, api, installed, namespace, wait_for  # noqa: F401 (fixtures)


def token_of(api, ns, sa):
    core = client.CoreV1Api(api)
    secret = wait_for(f"token of {sa}", lambda: (core.read_namespaced_service_account(sa, ns).secrets or [None])[0])
    return base64.b64decode(core.read_namespaced_secret(secret.name, ns).data["token"]).decode()


def create(api, obj):
    try:
        utils.create_from_dict(api, obj)
    except utils.FailToCreateError as e:
        if not all(x.status == 409 for x in e.api_exceptions):
            raise


def test_scrapers_are_authorized_by_the_cluster(api, namespace, kube):  # noqa: F811
    rbac = client.RbacAuthorizationV1Api(api)
    wanted = {(o["kind"], o["metadata"]["name"]): o for o in role_objects(OPERATOR_NS, metrics_auth=True)}
    plain = {(o["kind"], o["metadata"]["name"]): o for o in role_objects(OPERATOR_NS)}
    rbac.patch_cluster_role("probeset-agent", {"rules": wanted[("ClusterRole", "probeset-agent")]["rules"]})
    create(api, wanted[("ClusterRole", "probeset-metrics-reader")])
    reader = f"{namespace}-reader"
    try:
        core = client.CoreV1Api(api)
        for sa in ("prometheus", "stranger"):
            core.create_namespaced_service_account(namespace, {"metadata": {"name": sa}})
        create(api, {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                     "metadata": {"name": reader},
                     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                 "name": "probeset-metrics-reader"},
                     "subjects": [{"kind": "ServiceAccount", "name": "prometheus", "namespace": namespace}]})
        agent_api = Kube(kube.server, ssl.create_default_context(cafile=str(kube.ca_file)),
                         token_of(api, OPERATOR_NS, "probeset-agent"))
        prometheus, stranger = token_of(api, namespace, "prometheus"), token_of(api, namespace, "stranger")
        # RBAC changes reach the API server's authorizer through its informers: wait for them.
        wait_for("the agent's and the reader's RBAC to take effect",
                 lambda: TokenAuthorizer(agent_api)(prometheus) == (200, ""))
        authorize = TokenAuthorizer(agent_api)
        assert authorize(prometheus) == (200, "")
        assert authorize(stranger) == (403, f"system:serviceaccount:{namespace}:stranger may not get /metrics")
        assert authorize("not-a-token") == (401, "the token is not valid")
        assert authorize(None)[0] == 401
        reviews = authorize.reviews
        assert authorize(prometheus) == (200, "") and authorize.reviews == reviews     # cached
        # Without the metrics-auth rules the agent cannot review tokens: refused, never allowed.
        rbac.patch_cluster_role("probeset-agent", {"rules": plain[("ClusterRole", "probeset-agent")]["rules"]})
        wait_for("the agent's narrower RBAC to take effect", lambda: TokenAuthorizer(agent_api)(prometheus)[0] == 500)
    finally:
        rbac.patch_cluster_role("probeset-agent", {"rules": plain[("ClusterRole", "probeset-agent")]["rules"]})
        try:
            rbac.delete_cluster_role_binding(reader)
        except ApiException as e:
            if e.status != 404:
                raise
