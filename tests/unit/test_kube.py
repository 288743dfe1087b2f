"""The agent's own Kubernetes client (probeset_api.kube) without an API server: kubeconfig
parsing, paths, error bodies; and against small local HTTP(S) servers: credentials as the server
sees them, watch streaming, the size and time bounds, and `stop`."""

import base64
import http.server
import json
import shutil
import ssl
import subprocess
import threading
import time
import tracemalloc

import pytest
import yaml

from probeset_api import kube
from probeset_api.kube import Kube, KubeError, TokenFile, api_path, status_error


# --- paths and error bodies -------------------------------------------------------------------

@pytest.mark.parametrize("path, params, want", [
    ("/api/v1/nodes/n1", None, "/api/v1/nodes/n1"),
    ("/api/v1/pods", {"fieldSelector": "spec.nodeName=n1"}, "/api/v1/pods?fieldSelector=spec.nodeName%3Dn1"),
    ("/api/v1/pods?limit=5", {"labelSelector": "app in (a,b)"},
     "/api/v1/pods?limit=5&labelSelector=app+in+%28a%2Cb%29"),
    ("/apis/probeset.io/v1alpha1/probesets", {}, "/apis/probeset.io/v1alpha1/probesets"),
])
def test_api_path(path, params, want):
    assert api_path(path, params) == want


def test_api_path_must_be_absolute():
    with pytest.raises(ValueError, match="starts with '/'"):
        api_path("api/v1/pods")


STATUS_403 = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403,
              "message": 'pods is forbidden: User "x" cannot list resource "pods"'}


@pytest.mark.parametrize("status, body, reason", [
    (403, json.dumps(STATUS_403).encode(), STATUS_403["message"]),
    (404, b'{"kind": "Status", "message": "probesets.probeset.io \\"a\\" not found"}',
     'probesets.probeset.io "a" not found'),
    (500, b"<html>oops</html>", "Internal Server Error"),
    (502, b'{"kind": "Pod"}', "Internal Server Error"),        # JSON, but not a Status
    (503, b'{"kind": "Status"}', "Internal Server Error"),     # a Status without a message
    (401, b"", "Internal Server Error"),
])
def test_status_error_takes_the_status_message(status, body, reason):
    e = status_error(status, "Internal Server Error", body, "GET /api/v1/pods")
    assert (e.status, e.reason) == (status, reason)
    assert str(e) == f"GET /api/v1/pods: HTTP {status}: {reason}"


def test_token_file_is_read_again_after_a_minute(tmp_path):
    path, now = tmp_path / "token", [0.0]
    path.write_text("one\n")
    token = TokenFile(str(path), clock=lambda: now[0])
    assert token() == "one"
    path.write_text("two\n")
    now[0] = 59.0
    assert token() == "one"
    now[0] = 60.0
    assert token() == "two"
    path.unlink()
    now[0] = 200.0
    with pytest.raises(KubeError, match="cannot read the token file .*token: No such file"):
        token()


# --- kubeconfig -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """Two CAs; a server certificate for 127.0.0.1 and a client certificate (CN=client) from the first."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (apt-get install openssl)")
    d = tmp_path_factory.mktemp("pki")

    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)
    for ca in ("ca", "other-ca"):
        run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
            "-subj", f"/CN={ca}", "-keyout", f"{ca}.key", "-out", f"{ca}.crt")
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr")
        (d / f"{name}.ext").write_text(ext + "\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt")
    return d


def b64(path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(directory, cluster, user, context=None, current="c"):
    path = directory / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": current,
        "clusters": [{"name": "k", "cluster": cluster}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "c", "context": context or {"cluster": "k", "user": "u"}}]}))
    return str(path)


class Handler(http.server.BaseHTTPRequestHandler):
    """Answers with what `self.server.route(handler)` does; records each request."""
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.server.requests.append((self.command, self.path, dict(self.headers), self.body()))
        self.server.route(self)
    do_PATCH = do_POST = do_GET

    def body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def send_json(self, status, doc):
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def start_chunks(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def chunk(self, data: bytes):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    """serve(route, tls=None) -> the server's URL; `route(handler)` answers each request."""
    servers, release = [], threading.Event()

    def start(route, tls=None):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        server.route, server.requests, server.release = route, [], release
        if tls is not None:
            server.socket = tls.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}", server
    yield start
    release.set()
    for server in servers:
        server.shutdown()
        server.server_close()


def whoami(handler):
    """The credentials the client presented: its bearer token and its certificate's CN."""
    peer = handler.connection.getpeercert() if isinstance(handler.connection, ssl.SSLSocket) else None
    cn = dict(x[0] for x in peer["subject"])["commonName"] if peer else None
    handler.send_json(200, {"authorization": handler.headers.get("Authorization"), "cn": cn})


@pytest.fixture
def tls_server(pki, serve):
    """An HTTPS server with the first CA's certificate that asks for (but does not require) a client certificate."""
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(pki / "server.crt", pki / "server.key")
    tls.load_verify_locations(pki / "ca.crt")
    tls.verify_mode = ssl.CERT_OPTIONAL
    return serve(whoami, tls)[0]


@pytest.mark.parametrize("cluster, user, authorization, cn", [
    ({"certificate-authority": "ca.crt"}, {"token": "t1"}, "Bearer t1", None),
    ({"certificate-authority-data": "ca.crt"}, {"tokenFile": "token"}, "Bearer from-file", None),
    ({"certificate-authority": "ca.crt"}, {"client-certificate": "client.crt", "client-key": "client.key"},
     None, "client"),
    ({"certificate-authority-data": "ca.crt"},
     {"client-certificate-data": "client.crt", "client-key-data": "client.key"}, None, "client"),
    ({"certificate-authority": "ca.crt"}, {"client-certificate-data": "client.crt", "client-key": "client.key"},
     None, "client"),
    ({"certificate-authority": "other-ca.crt", "insecure-skip-tls-verify": True}, {"token": "t3"}, "Bearer t3", None),
    ({"certificate-authority": "ca.crt"}, {}, None, None),
])
def test_kubeconfig_credentials_reach_the_server(pki, tls_server, tmp_path, cluster, user, authorization, cn):
    """Relative file names are relative to the kubeconfig; *-data fields hold the file's base64."""
    for name in ("ca.crt", "other-ca.crt", "client.crt", "client.key"):
        shutil.copy(pki / name, tmp_path / name)
    (tmp_path / "token").write_text("from-file\n")
    data = {k: b64(tmp_path / v) if k.endswith("-data") else v for k, v in {**cluster, **user}.items()}
    cluster = {"server": tls_server, **{k: data[k] for k in cluster}}
    user = {k: data[k] for k in user}
    client = Kube.from_environment(write_kubeconfig(tmp_path, cluster, user))
    assert client.get("/whoami") == {"authorization": authorization, "cn": cn}


def test_client_certificate_data_leaves_no_file_behind(pki, tmp_path, monkeypatch):
    monkeypatch.setattr(kube.tempfile, "tempdir", str(tmp_path))
    config = write_kubeconfig(tmp_path, {"server": "https://127.0.0.1:1",
                                         "certificate-authority-data": b64(pki / "ca.crt")},
                              {"client-certificate-data": b64(pki / "client.crt"),
                               "client-key-data": b64(pki / "client.key")})
    Kube.from_environment(config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kubeconfig"]


def test_a_server_signed_by_another_ca_is_refused(pki, tls_server, tmp_path):
    config = write_kubeconfig(tmp_path, {"server": tls_server, "certificate-authority": str(pki / "other-ca.crt")},
                              {"token": "t"})
    with pytest.raises(KubeError, match="CERTIFICATE_VERIFY_FAILED") as e:
        Kube.from_environment(config).get("/whoami")
    assert e.value.status is None


@pytest.mark.parametrize("cluster, user, context, current, message", [
    ({"server": "https://h:6443"}, {"token": "t"}, None, "", "has no current-context"),
    ({"server": "https://h:6443"}, {"token": "t"}, None, "other", "has no context named 'other'"),
    ({"server": "https://h:6443"}, {"token": "t"}, {"cluster": "nope", "user": "u"}, "c",
     "has no cluster named 'nope'"),
    ({"server": "https://h:6443"}, {"token": "t"}, {"cluster": "k", "user": "nobody"}, "c",
     "has no user named 'nobody'"),
    ({"certificate-authority": "ca.crt"}, {"token": "t"}, None, "c", "cluster 'k' has no server"),
    ({"server": "ftp://h"}, {"token": "t"}, None, "c", "is not an http\\(s\\) URL"),
    ({"server": "https://h:99999"}, {"token": "t"}, None, "c", "is not an http\\(s\\) URL"),
    ({"server": "https://h:6443"}, {"exec": {"command": "aws"}}, None, "c",
     "user 'u' uses exec credentials, which the agent does not support"),
    ({"server": "https://h:6443"}, {"auth-provider": {"name": "gcp"}}, None, "c", "uses auth-provider credentials"),
    ({"server": "https://h:6443", "certificate-authority": "missing.crt"}, {"token": "t"}, None, "c",
     "cannot read certificate-authority missing.crt: No such file"),
    ({"server": "https://h:6443", "certificate-authority-data": "not base64!"}, {"token": "t"}, None, "c",
     "certificate-authority-data is not base64"),
    ({"server": "https://h:6443", "certificate-authority-data": base64.b64encode(b"junk").decode()},
     {"token": "t"}, None, "c", "certificate-authority is not a PEM certificate"),
    ({"server": "https://h:6443"}, {"client-certificate-data": base64.b64encode(b"x").decode()}, None, "c",
     "user 'u' has a client-certificate but no client-key"),
    ({"server": "https://h:6443"}, {"client-key-data": base64.b64encode(b"x").decode()}, None, "c",
     "user 'u' has a client-key but no client-certificate"),
    ({"server": "https://h:6443"}, {"client-certificate-data": base64.b64encode(b"x").decode(),
                                    "client-key-data": base64.b64encode(b"y").decode()}, None, "c",
     "the client certificate and key do not load"),
])
def test_unusable_kubeconfigs_say_what_is_wrong(tmp_path, cluster, user, context, current, message):
    path = write_kubeconfig(tmp_path, cluster, user, context, current)
    with pytest.raises(KubeError, match=message) as e:
        Kube.from_environment(path)
    assert e.value.status is None and f"kubeconfig {path}" in str(e.value)


def test_kubeconfig_that_is_not_yaml_or_missing(tmp_path):
    (tmp_path / "bad").write_text("clusters: [unclosed\n")
    with pytest.raises(KubeError, match="is not YAML"):
        Kube.from_environment(str(tmp_path / "bad"))
    with pytest.raises(KubeError, match="cannot read kubeconfig .*missing: No such file"):
        Kube.from_environment(str(tmp_path / "missing"))


def test_environment_in_a_pod_then_kubeconfig(pki, tmp_path, monkeypatch):
    sa = tmp_path / "sa"
    sa.mkdir()
    shutil.copy(pki / "ca.crt", sa / "ca.crt")
    (sa / "token").write_text("pod-token")
    monkeypatch.setattr(kube, "SERVICE_ACCOUNT_DIR", str(sa))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "unused"))
    in_pod = Kube.from_environment()
    assert in_pod.server == "https://[fd00::1]:443" and in_pod._token() == "pod-token"
    # Outside a pod (no token file): $KUBECONFIG, else ~/.kube/config.
    (sa / "token").unlink()
    config = write_kubeconfig(tmp_path, {"server": "http://127.0.0.1:1"}, {"token": "t"})
    monkeypatch.setenv("KUBECONFIG", config + ":" + str(tmp_path / "second"))
    assert Kube.from_environment().server == "http://127.0.0.1:1"
    monkeypatch.delenv("KUBECONFIG")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(KubeError, match="no Kubernetes credentials: not in a pod .* no kubeconfig at "
                                        f"{tmp_path}/home/.kube/config"):
        Kube.from_environment()


# --- calls against a local server -------------------------------------------------------------

def event(kind, obj):
    return json.dumps({"type": kind, "object": obj}).encode() + b"\n"


def pod(name, rv):
    return {"kind": "Pod", "metadata": {"name": name, "resourceVersion": rv}}


def test_get_patch_post_send_json_with_token_and_user_agent(serve):
    url, server = serve(lambda h: h.send_json(200, {"kind": "Pod", "metadata": {"name": "p"}}))
    client = Kube(url, token="secret")
    assert client.get("/api/v1/pods", {"fieldSelector": "spec.nodeName=n1"})["metadata"]["name"] == "p"
    client.patch("/apis/probeset.io/v1alpha1/namespaces/a/probesets/b/status", {"status": {"x": 1}})
    client.post("/api/v1/namespaces/a/events", {"kind": "Event"})
    (m1, p1, h1, b1), (m2, p2, h2, b2), (m3, p3, h3, b3) = server.requests
    assert (m1, p1, b1) == ("GET", "/api/v1/pods?fieldSelector=spec.nodeName%3Dn1", b"")
    assert h1["Authorization"] == "Bearer secret" and h1["User-Agent"] == f"probeset-agent/{kube.__version__}"
    assert (m2, h2["Content-Type"], json.loads(b2)) == ("PATCH", "application/merge-patch+json", {"status": {"x": 1}})
    assert (m3, p3, h3["Content-Type"], json.loads(b3)) == ("POST", "/api/v1/namespaces/a/events",
                                                           "application/json", {"kind": "Event"})


def test_errors_carry_status_and_message(serve):
    def route(h):
        if h.path.startswith("/missing"):
            h.send_json(404, {"kind": "Status", "code": 404, "message": 'pods "x" not found'})
        elif h.path.startswith("/html"):
            h.send_response(502)
            h.send_header("Content-Length", "5")
            h.end_headers()
            h.wfile.write(b"<bad>")
        else:
            h.send_json(200, [1, 2])
    url, _ = serve(route)
    client = Kube(url)
    with pytest.raises(KubeError) as e:
        client.get("/missing")
    assert (e.value.status, e.value.reason) == (404, 'pods "x" not found')
    with pytest.raises(KubeError) as e:
        client.post("/html", {})
    assert (e.value.status, e.value.reason) == (502, "Bad Gateway")
    with pytest.raises(KubeError, match="not a JSON object") as e:
        client.get("/list")
    assert e.value.status is None


def test_network_errors_have_no_status():
    with pytest.raises(KubeError, match="Connection refused") as e:
        Kube("http://127.0.0.1:1").get("/api")
    assert e.value.status is None and e.value.reason.endswith("Connection refused")


def test_a_stalled_server_times_out(serve, monkeypatch):
    monkeypatch.setattr(kube, "READ_TIMEOUT", 0.3)
    url, server = serve(lambda h: server.release.wait(10))
    t = time.monotonic()
    with pytest.raises(KubeError, match="timed out"):
        Kube(url).get("/api")
    assert time.monotonic() - t < 3


def test_watch_streams_events_skips_bookmarks_and_raises_on_error(serve):
    def route(h):
        h.start_chunks()
        h.chunk(event("ADDED", pod("a", "11")))
        h.chunk(event("BOOKMARK", {"kind": "Pod", "metadata": {"resourceVersion": "12"}}))
        # One event split over chunks, two events in one chunk, an empty line.
        line = event("MODIFIED", pod("a", "13"))
        h.chunk(line[:10])
        h.chunk(line[10:] + b"\n" + event("DELETED", pod("a", "14")))
        h.chunk(event("ERROR", {"kind": "Status", "code": 410, "reason": "Expired",
                                "message": "too old resource version: 10 (14)"}))
        h.chunk(b"")
    url, server = serve(route)
    seen = []
    with pytest.raises(KubeError) as e:
        for item in Kube(url).watch("/api/v1/pods", "10", {"fieldSelector": "spec.nodeName=n1"}, timeout_seconds=5):
            seen.append(item)
    assert seen == [("ADDED", pod("a", "11")), ("MODIFIED", pod("a", "13")), ("DELETED", pod("a", "14"))]
    assert (e.value.status, e.value.reason) == (410, "too old resource version: 10 (14)")
    assert server.requests[0][1] == ("/api/v1/pods?fieldSelector=spec.nodeName%3Dn1&watch=1&resourceVersion=10"
                                     "&timeoutSeconds=5&allowWatchBookmarks=true")


def test_watch_yields_bookmarks_when_asked(serve):
    mark = {"kind": "Pod", "metadata": {"resourceVersion": "12"}}

    def route(h):
        h.start_chunks()
        h.chunk(event("BOOKMARK", mark) + event("ADDED", pod("a", "13")))
        h.chunk(b"")
    url, _ = serve(route)
    assert list(Kube(url).watch("/api/v1/pods", "1", bookmarks=True)) == [("BOOKMARK", mark), ("ADDED", pod("a", "13"))]


def test_watch_ends_when_the_server_closes_it(serve):
    def route(h):
        h.start_chunks()
        h.chunk(event("ADDED", pod("a", "2")))
        h.chunk(b"")
    url, _ = serve(route)
    assert list(Kube(url).watch("/api/v1/pods", "1")) == [("ADDED", pod("a", "2"))]


def test_stop_ends_a_watch_blocked_in_a_read(serve):
    def route(h):
        h.start_chunks()
        h.chunk(event("BOOKMARK", {"kind": "Pod", "metadata": {"resourceVersion": "5"}}))
        h.server.release.wait(30)
    url, _ = serve(route)
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    t = time.monotonic()
    assert list(Kube(url).watch("/api/v1/pods", "1", timeout_seconds=60, stop=stop)) == []
    assert 0.3 <= time.monotonic() - t < 2


def endless(h, chunked):
    """Send `x` until the client goes away; remember how much was sent."""
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.send_header("Transfer-Encoding" if chunked else "Connection", "chunked" if chunked else "close")
    h.end_headers()
    block, h.server.sent = b"x" * 65536, 0
    try:
        while h.server.sent < 1 << 30:
            h.chunk(block) if chunked else h.wfile.write(block)
            h.server.sent += len(block)
    except OSError:
        pass


@pytest.mark.parametrize("chunked", [False, True])
def test_an_endless_body_is_cut_off(serve, monkeypatch, chunked):
    monkeypatch.setattr(kube, "MAX_BODY_BYTES", 4 << 20)
    url, server = serve(lambda h: endless(h, chunked))
    tracemalloc.start()
    try:
        with pytest.raises(KubeError, match=f"a response larger than {4 << 20} bytes") as e:
            Kube(url).get("/api/v1/pods")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert e.value.status is None
    assert peak < 12 << 20                  # the 4 MiB read, not the 1 GiB offered
    time.sleep(0.2)
    assert server.sent < 24 << 20           # the rest was never read (loopback buffers hold a few MiB)


def test_a_declared_oversized_body_is_refused_unread(serve):
    def route(h):
        h.send_response(200)
        h.send_header("Content-Length", str(65 << 20))
        h.end_headers()
        h.server.release.wait(10)
    url, _ = serve(route)
    t = time.monotonic()
    with pytest.raises(KubeError, match=f"a response larger than {64 << 20} bytes"):
        Kube(url).get("/api/v1/pods")
    assert time.monotonic() - t < 2


def test_an_endless_watch_line_is_cut_off(serve):
    """At the real limit (16 MiB), with a line that never ends."""
    url, server = serve(lambda h: endless(h, chunked=True))
    tracemalloc.start()
    try:
        with pytest.raises(KubeError, match=f"a watch event longer than {16 << 20} bytes"):
            list(Kube(url).watch("/api/v1/pods", "1"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 48 << 20
    time.sleep(0.2)
    assert server.sent < 40 << 20
