"""/metrics over TLS (server certificate, client certificates) and behind a bearer-token check, with
a real MetricsServer, real certificates (openssl) and Python's own TLS client."""

import http.client
import shutil
import socket
import ssl
import subprocess

import pytest

from probeset_agent.authz import SUBJECT_ACCESS_REVIEWS, TOKEN_REVIEWS, TokenAuthorizer
from probeset_api.kube import KubeError
from probeset_agent.httpmsg import bearer_token
from probeset_agent.server import MetricsServer


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (apt-get install openssl)")
    d = tmp_path_factory.mktemp("pki")

    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
        "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"))
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(d / f"{name}.key"),
            "-out", str(d / f"{name}.csr"))
        (d / f"{name}.ext").write_text(ext + "\n")
        run("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.crt"), "-CAkey", str(d / "ca.key"),
            "-CAcreateserial", "-days", "2", "-extfile", str(d / f"{name}.ext"), "-out", str(d / f"{name}.crt"))
    return d


def serve(tls=None, authorize=None):
    server = MetricsServer("127.0.0.1", 0, tls=tls, authorize=authorize, request_timeout=2.0)
    return server.start(lambda: b"probeset_events_total 1\n")


def server_tls(pki, client_ca=False):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki / "server.crt", pki / "server.key")
    if client_ca:
        ctx.load_verify_locations(pki / "ca.crt")
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def get(port, ctx=None, token=None):
    conn = (http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5) if ctx
            else http.client.HTTPConnection("127.0.0.1", port, timeout=5))
    conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {token}"} if token else {})
    r = conn.getresponse()
    return r.status, r.read()


def client_tls(pki, cert=False):
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if cert:
        ctx.load_cert_chain(pki / "client.crt", pki / "client.key")
    return ctx


def test_tls(pki):
    server = serve(tls=server_tls(pki))
    try:
        port = server.address[1]
        assert get(port, client_tls(pki)) == (200, b"probeset_events_total 1\n")
        with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
            get(port)                                    # plain HTTP is not answered
    finally:
        server.shutdown()


def test_client_certificates_required(pki):
    server = serve(tls=server_tls(pki, client_ca=True))
    try:
        port = server.address[1]
        assert get(port, client_tls(pki, cert=True))[0] == 200
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            get(port, client_tls(pki, cert=False))
    finally:
        server.shutdown()


def test_a_tls_request_larger_than_one_read_is_answered(pki):
    """OpenSSL may hold decrypted bytes that select() cannot see: a request head of 4-16 kB (a long
    bearer token) arrives in several reads, all of which the server takes."""
    server = serve(tls=server_tls(pki))
    try:
        for size in (3000, 4100, 6000, 12000):
            conn = http.client.HTTPSConnection("127.0.0.1", server.address[1], context=client_tls(pki), timeout=5)
            conn.request("GET", "/metrics", headers={"X-Padding": "p" * size})
            r = conn.getresponse()
            assert (r.status, r.read()) == (200, b"probeset_events_total 1\n"), size
    finally:
        server.shutdown()


def test_a_silent_tls_client_is_closed_within_the_request_timeout(pki):
    server = serve(tls=server_tls(pki))
    try:
        with socket.create_connection(server.address, timeout=10) as s:
            assert s.recv(1) == b""                      # no ClientHello: closed after 2 s
    finally:
        server.shutdown()


def test_bearer_token_check(pki):
    seen = []

    def authorize(token):
        seen.append(token)
        return {None: (401, "a bearer token is required"), "reader": (200, "")}.get(token, (403, "nope"))
    server = serve(tls=server_tls(pki), authorize=authorize)
    try:
        port, ctx = server.address[1], client_tls(pki)
        assert get(port, ctx) == (401, b"a bearer token is required\n")
        assert get(port, ctx, "stranger") == (403, b"nope\n")
        assert get(port, ctx, "reader") == (200, b"probeset_events_total 1\n")
        assert seen == [None, "stranger", "reader"]
    finally:
        server.shutdown()


@pytest.mark.parametrize("headers,token", [
    (b"GET / HTTP/1.1\r\nAuthorization: Bearer abc", "abc"), (b"GET / HTTP/1.1\r\nauthorization:  bearer  x.y ", "x.y"),
    (b"GET / HTTP/1.1\r\nAuthorization: Basic abc", None), (b"GET / HTTP/1.1\r\nAuthorization: Bearer ", None),
    (b"GET / HTTP/1.1\r\nHost: x", None)])
def test_bearer_token_parsing(headers, token):
    assert bearer_token(headers) == token


class FakeReviews:
    """Stands in for the API server's TokenReview and SubjectAccessReview endpoints (a Kube's post)."""

    def __init__(self, users, allowed, fail=False):
        self.users, self.allowed, self.fail, self.calls = users, allowed, fail, 0

    def post(self, path, body):
        if path == TOKEN_REVIEWS:
            self.calls += 1
            if self.fail:
                raise KubeError(None, "connection refused")
            user = self.users.get(body["spec"]["token"])
            return {"status": {"authenticated": user is not None,
                               "user": {"username": user, "groups": [], "uid": "", "extra": {}}}}
        assert path == SUBJECT_ACCESS_REVIEWS
        assert body["spec"]["nonResourceAttributes"] == {"path": "/metrics", "verb": "get"}
        return {"status": {"allowed": body["spec"]["user"] in self.allowed}}


def authorizer(fake, clock, **kw):
    return TokenAuthorizer(fake, **kw, clock=clock)


def test_token_answers_are_cached_bounded_and_failures_not_remembered():
    now = [0.0]
    fake = FakeReviews({"t1": "system:serviceaccount:monitoring:prometheus", "t2": "someone",
                        "t4": "system:serviceaccount:monitoring:other", "t5": "system:serviceaccount:monitoring:third"},
                       {"system:serviceaccount:monitoring:prometheus", "system:serviceaccount:monitoring:other",
                        "system:serviceaccount:monitoring:third"})
    a = authorizer(fake, lambda: now[0], ttl=60, max_entries=2)
    assert a("t1") == (200, "") and a("t1") == (200, "") and fake.calls == 1
    assert a("t2") == (403, "someone may not get /metrics")
    assert a("bad") == (401, "the token is not valid") and fake.calls == 3
    assert a("t1") == (200, "") and fake.calls == 3            # refusals are kept apart from answers allowed
    assert a("t4") == (200, "") and a("t5") == (200, "") and fake.calls == 5
    assert a("t1") == (200, "") and fake.calls == 6            # evicted: at most 2 allowed answers kept
    now[0] = 61
    assert a("t1") == (200, "") and fake.calls == 7            # expired after the ttl
    assert a(None)[0] == 401 and a("x" * 10000)[0] == 401 and fake.calls == 7
    fake.fail = True
    assert a("t3") == (500, "cannot review the token now") and a("t3")[0] == 500 and fake.calls == 9


def test_a_flood_of_unknown_tokens_neither_floods_the_api_server_nor_locks_out_the_scraper():
    """An anonymous client sending a new token per request: each costs a TokenReview, so they are
    reviewed at most `reviews_per_second` a second (a burst of `burst`), answered 429 beyond it, and
    kept apart from the allowed answers, which they cannot push out; the scraper's own token,
    once allowed, is reviewed again when its answer expires whatever the flood has spent."""
    now = [0.0]
    prometheus = "system:serviceaccount:monitoring:prometheus"
    fake = FakeReviews({"scraper": prometheus}, {prometheus})
    a = authorizer(fake, lambda: now[0], ttl=60, max_denied=8, reviews_per_second=5.0, burst=20)
    assert a("scraper") == (200, "") and fake.calls == 1
    answers = [a(f"random-{i}")[0] for i in range(2000)]
    assert answers.count(401) == 19 and answers.count(429) == 1981 and fake.calls == 20
    assert a("scraper") == (200, "") and fake.calls == 20      # still cached: no review
    now[0] = 2.0                                                # 2 s later: 10 more reviews allowed
    answers = [a(f"later-{i}")[0] for i in range(100)]
    assert answers.count(401) == 10 and fake.calls == 30
    now[0] = 61.0                                               # the scraper's answer expired, budget spent again
    assert [a(f"again-{i}")[0] for i in range(30)].count(401) == 20 and fake.calls == 50
    assert a("scraper") == (200, "") and fake.calls == 51      # a known token is reviewed anyway
    assert a("never-seen")[0] == 429
