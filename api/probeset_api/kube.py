"""A small Kubernetes API client on the standard library: get, watch, patch and post of JSON, with a
pod's service-account credentials or a kubeconfig. The node agent makes only these calls (the
`kubernetes` package would cost it ~30 MB of memory for them); the operator's watches (its
ClusterCache) use the same client and reflector.

Bounded against a broken or hostile server: every connect and read has a timeout, response bodies
and watch events a maximum size. One connection per call: the agent calls rarely (a listing at start, a watch every few minutes,
a status patch per change), and threads share no connection state. The reflector that lists
and watches with it is reflector.follow."""

from __future__ import annotations

import base64
import binascii
import http.client
import json
import os
import socket
import ssl
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator

from probeset_api import __version__

USER_AGENT = f"probeset-agent/{__version__}"
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 30.0                # get, patch, post
WATCH_READ_SLACK = 30.0            # a watch waits timeoutSeconds plus this for the server's next line
MAX_BODY_BYTES = 64 << 20
MAX_WATCH_LINE_BYTES = 16 << 20
MAX_ERROR_BODY_BYTES = 1 << 20
TOKEN_REREAD_SECONDS = 60.0        # bound service-account tokens rotate
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
WATCHED_EVENTS = ("ADDED", "MODIFIED", "DELETED")


class KubeError(Exception):
    """A failed call: `status` is the HTTP status, None when no usable answer came (network error,
    oversized or malformed response, unusable configuration); `reason` the server's Status message,
    else the HTTP reason, else what went wrong."""

    def __init__(self, status: int | None, reason: str, request: str = ""):
        self.status, self.reason = status, reason
        prefix = f"{request}: " if request else ""
        super().__init__(f"{prefix}HTTP {status}: {reason}" if status is not None else prefix + reason)


def api_path(path: str, params: dict | None = None) -> str:
    """`path` (which may carry a query already) with `params` url-encoded after it."""
    if not path.startswith("/"):
        raise ValueError(f"an API path starts with '/': {path!r}")
    if not params:
        return path
    return path + ("&" if "?" in path else "?") + urllib.parse.urlencode(params)


def status_error(status: int, http_reason: str, body: bytes, request: str = "") -> KubeError:
    """The error for an HTTP error answer: the message of a Status body, else the HTTP reason."""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and doc.get("kind") == "Status" and doc.get("message"):
        return KubeError(status, str(doc["message"]), request)
    return KubeError(status, http_reason, request)


class TokenFile:
    """A bearer token read from a file again at most every `every` seconds."""

    def __init__(self, path: str, every: float = TOKEN_REREAD_SECONDS, clock=time.monotonic):
        self.path, self.every, self._clock = path, every, clock
        self._token, self._read_at = "", 0.0
        self._lock = threading.Lock()

    def __call__(self) -> str:
        with self._lock:
            now = self._clock()
            if not self._token or now - self._read_at >= self.every:
                try:
                    with open(self.path) as f:
                        self._token = f.read().strip()
                except OSError as e:
                    raise KubeError(None, f"cannot read the token file {self.path}: {e.strerror}") from e
                self._read_at = now
            return self._token


class Kube:
    """`server` is an http(s) URL; `tls` verifies it (and may hold a client certificate); `token`
    is a bearer token or a TokenFile. Safe to call from several threads."""

    def __init__(self, server: str, tls: ssl.SSLContext | None = None, token: str | TokenFile | None = None):
        url = urllib.parse.urlsplit(server)
        try:
            self._host, self._port = url.hostname, url.port
        except ValueError:   # a port that is no number or out of range
            self._host = None
        if url.scheme not in ("http", "https") or not self._host:
            raise KubeError(None, f"the API server {server!r} is not an http(s) URL")
        self.server = server
        self._https = url.scheme == "https"
        self._prefix = url.path.rstrip("/")
        self._tls = tls if tls is not None or not self._https else ssl.create_default_context()
        self._token = token

    @classmethod
    def from_environment(cls, kubeconfig: str | None = None) -> "Kube":
        """In a pod, its service account; else `kubeconfig`, $KUBECONFIG or ~/.kube/config."""
        if kubeconfig is not None:
            return from_kubeconfig(kubeconfig)
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
        token_path = os.path.join(SERVICE_ACCOUNT_DIR, "token")
        if host and port and os.path.exists(token_path):
            return in_pod(host, port)
        path = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or os.path.expanduser("~/.kube/config")
        if not os.path.exists(path):
            raise KubeError(None, f"no Kubernetes credentials: not in a pod (no KUBERNETES_SERVICE_HOST/PORT "
                                  f"or no {token_path}) and no kubeconfig at {path} (set $KUBECONFIG)")
        return from_kubeconfig(path)

    def get(self, path: str, params: dict | None = None) -> dict:
        return self._call("GET", path, params)

    def patch(self, path: str, body: dict, content_type: str = "application/merge-patch+json") -> dict:
        return self._call("PATCH", path, None, body, content_type)

    def post(self, path: str, body: dict) -> dict:
        return self._call("POST", path, None, body, "application/json")

    def watch(self, path: str, resource_version: str, params: dict | None = None, timeout_seconds: int = 60,
              stop: threading.Event | None = None, bookmarks: bool = False) -> Iterator[tuple[str, dict]]:
        """(type, object) for each ADDED, MODIFIED and DELETED event (and BOOKMARK with
        `bookmarks`: an object with only metadata.resourceVersion), until the server ends the
        watch (after `timeout_seconds`) or `stop` is set. An ERROR event raises KubeError with its
        code (410: `resource_version` is too old, list again)."""
        query = {**(params or {}), "watch": "1", "resourceVersion": resource_version,
                 "timeoutSeconds": str(timeout_seconds), "allowWatchBookmarks": "true"}
        request = f"watch {path}"
        sock, response = self._open("GET", path, query, None, "", timeout_seconds + WATCH_READ_SLACK)
        done = threading.Event()
        if stop is not None:   # a blocked read ends only when its socket is shut down
            threading.Thread(target=_shut_down_when, args=(stop, done, sock), daemon=True,
                             name="probeset-watch-stop").start()
        try:
            while stop is None or not stop.is_set():
                try:
                    line = response.readline(MAX_WATCH_LINE_BYTES + 1)
                except (OSError, http.client.HTTPException) as e:
                    if stop is not None and stop.is_set():
                        return
                    raise KubeError(None, str(e) or type(e).__name__, request) from e
                if not line:
                    return
                if len(line) > MAX_WATCH_LINE_BYTES:
                    raise KubeError(None, f"a watch event longer than {MAX_WATCH_LINE_BYTES} bytes", request)
                if not line.strip():
                    continue
                event = _json_object(line, request)
                kind, obj = event.get("type"), event.get("object")
                if not isinstance(obj, dict):
                    raise KubeError(None, f"a watch event without an object: {line[:200]!r}", request)
                if kind == "ERROR":
                    raise KubeError(obj.get("code"), str(obj.get("message") or "watch error"), request)
                if kind in WATCHED_EVENTS or (bookmarks and kind == "BOOKMARK"):
                    yield kind, obj
        finally:
            done.set()
            _close(sock, response)

    def _call(self, method: str, path: str, params: dict | None, body: dict | None = None,
              content_type: str = "") -> dict:
        request = f"{method} {path}"
        sock, response = self._open(method, path, params, body, content_type, READ_TIMEOUT)
        try:
            return _json_object(_read_at_most(response, MAX_BODY_BYTES, request), request)
        finally:
            _close(sock, response)

    def _open(self, method: str, path: str, params: dict | None, body: dict | None, content_type: str,
              read_timeout: float) -> tuple[socket.socket, http.client.HTTPResponse]:
        """Send the request; its socket and response once the status is a success, else KubeError.
        The socket is kept here: http.client forgets it when the server will close the connection."""
        request, target = f"{method} {path}", self._prefix + api_path(path, params)
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token if isinstance(self._token, str) else self._token()}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        if self._https:
            conn = http.client.HTTPSConnection(self._host, self._port, timeout=CONNECT_TIMEOUT, context=self._tls)
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=CONNECT_TIMEOUT)
        try:
            conn.connect()                        # TCP and TLS handshake under the connect timeout
            sock = conn.sock
            sock.settimeout(read_timeout)
            conn.request(method, target, body=data, headers=headers)
            response = conn.getresponse()
            if response.status >= 400:
                raise status_error(response.status, response.reason,
                                   response.read(MAX_ERROR_BODY_BYTES), request)
        except (OSError, http.client.HTTPException, ValueError) as e:   # ValueError: a header http.client refuses
            conn.close()
            raise KubeError(None, str(e) or type(e).__name__, request) from e
        except KubeError:
            conn.close()
            raise
        return sock, response


def _shut_down_when(stop: threading.Event, done: threading.Event, sock: socket.socket) -> None:
    while not done.is_set():
        if stop.wait(0.5):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:   # already closed
                pass
            return


def _close(sock: socket.socket, response: http.client.HTTPResponse) -> None:
    response.close()
    sock.close()


def _read_at_most(response: http.client.HTTPResponse, limit: int, request: str) -> bytes:
    too_long = KubeError(None, f"a response larger than {limit} bytes", request)
    if response.length is not None and response.length > limit:
        raise too_long
    chunks, size = [], 0
    try:
        while chunk := response.read(1 << 16):
            size += len(chunk)
            if size > limit:
                raise too_long
            chunks.append(chunk)
    except (OSError, http.client.HTTPException) as e:
        raise KubeError(None, str(e) or type(e).__name__, request) from e
    return b"".join(chunks)


def _json_object(data: bytes, request: str) -> dict:
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise KubeError(None, f"the answer is not JSON ({e}): {data[:200]!r}", request) from e
    if not isinstance(doc, dict):
        raise KubeError(None, f"the answer is not a JSON object: {data[:200]!r}", request)
    return doc


def in_pod(host: str, port: str) -> Kube:
    """The pod's service account: the API server's address from the environment the kubelet sets."""
    host = f"[{host}]" if ":" in host else host   # IPv6
    try:
        tls = ssl.create_default_context(cafile=os.path.join(SERVICE_ACCOUNT_DIR, "ca.crt"))
    except (OSError, ssl.SSLError) as e:
        raise KubeError(None, f"cannot load the service account's CA {SERVICE_ACCOUNT_DIR}/ca.crt: {e}") from e
    return Kube(f"https://{host}:{port}", tls, TokenFile(os.path.join(SERVICE_ACCOUNT_DIR, "token")))


def from_kubeconfig(path: str) -> Kube:
    """The kubeconfig's current context: server, CA (or insecure), and a token, token file or
    client certificate."""
    import yaml   # here, not at the top: an agent in a pod never pays for it
    where = f"kubeconfig {path}"
    try:
        with open(path) as f:
            config = yaml.safe_load(f)
    except OSError as e:
        raise KubeError(None, f"cannot read {where}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise KubeError(None, f"{where} is not YAML: {e}") from e
    if not isinstance(config, dict) or not config.get("current-context"):
        raise KubeError(None, f"{where} has no current-context")
    context = _named(config, "context", config["current-context"], where)
    cluster = _named(config, "cluster", context.get("cluster"), where)
    user = _named(config, "user", context["user"], where) if context.get("user") else {}
    if not cluster.get("server"):
        raise KubeError(None, f"{where}: cluster {context.get('cluster')!r} has no server")
    base = os.path.dirname(os.path.abspath(path))
    who = f"{where}: user {context.get('user')!r}"
    has_certificate = any(user.get(k) for k in ("client-certificate", "client-certificate-data"))
    if not (user.get("token") or user.get("tokenFile") or has_certificate):
        for unsupported in ("exec", "auth-provider", "username"):
            if user.get(unsupported):
                raise KubeError(None, f"{who} uses {unsupported} credentials, which the agent does not "
                                      "support (use token, tokenFile or client-certificate)")
    tls = None
    if cluster["server"].startswith("https:"):
        tls = _tls(cluster, base, where)
        _load_client_certificate(tls, user, base, who)
    token = TokenFile(os.path.join(base, user["tokenFile"])) if user.get("tokenFile") else user.get("token")
    try:
        return Kube(cluster["server"], tls, token)
    except KubeError as e:   # a server URL that is none
        raise KubeError(None, f"{where}: {e.reason}") from None


def _named(config: dict, kind: str, name, where: str) -> dict:
    """The `kind` (context, cluster, user) called `name` in the kubeconfig's list of them."""
    for entry in config.get(kind + "s") or []:
        if isinstance(entry, dict) and entry.get("name") == name and isinstance(entry.get(kind), dict):
            return entry[kind]
    raise KubeError(None, f"{where} has no {kind} named {name!r}")


def _pem(section: dict, field: str, base: str, where: str) -> bytes | None:
    """The PEM of `field`-data (base64) or of the file `field` names (relative to the kubeconfig)."""
    try:
        if section.get(field + "-data"):
            return base64.b64decode("".join(str(section[field + "-data"]).split()), validate=True)
        if section.get(field):
            with open(os.path.join(base, section[field]), "rb") as f:
                return f.read()
    except (binascii.Error, ValueError) as e:
        raise KubeError(None, f"{where}: {field}-data is not base64: {e}") from e
    except OSError as e:
        raise KubeError(None, f"{where}: cannot read {field} {section[field]}: {e.strerror}") from e
    return None


def _tls(cluster: dict, base: str, where: str) -> ssl.SSLContext:
    if cluster.get("insecure-skip-tls-verify"):
        tls = ssl.create_default_context()
        tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
        return tls
    ca = _pem(cluster, "certificate-authority", base, where)
    try:
        return ssl.create_default_context(cadata=ca.decode("ascii") if ca else None)
    except (ssl.SSLError, UnicodeDecodeError) as e:
        raise KubeError(None, f"{where}: certificate-authority is not a PEM certificate: {e}") from e


def _load_client_certificate(tls: ssl.SSLContext, user: dict, base: str, who: str) -> None:
    if not any(user.get(k) for k in ("client-certificate", "client-certificate-data", "client-key",
                                     "client-key-data")):
        return
    try:
        if user.get("client-certificate") and user.get("client-key"):
            tls.load_cert_chain(os.path.join(base, user["client-certificate"]),
                                os.path.join(base, user["client-key"]))
            return
        cert, key = _pem(user, "client-certificate", base, who), _pem(user, "client-key", base, who)
        if not cert or not key:
            raise KubeError(None, f"{who} has a client-{'key' if key else 'certificate'} "
                                  f"but no client-{'certificate' if key else 'key'}")
        # load_cert_chain takes only a path: a private file (mode 0600), gone once loaded.
        fd, path = tempfile.mkstemp(prefix="probeset-kube-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(cert + b"\n" + key)
            tls.load_cert_chain(path)
        finally:
            os.unlink(path)
    except (ssl.SSLError, OSError) as e:
        raise KubeError(None, f"{who}: the client certificate and key do not load: {e}") from e
