"""A throw-away Kubernetes control plane for tests: etcd, kube-apiserver, kube-controller-manager
and kube-scheduler.

No kubelet runs. Node objects are created by the tests; the controllers (DaemonSet, garbage
collector, namespace, service-account tokens, ...) and the scheduler act on them as in a real
cluster, and the pods they create are bound to those nodes but stay Pending. Everything listens
on loopback, on free ports, with state in temporary directories, so several clusters can run side
by side. See README.md here for what that implies for tests.

The binaries come from tests/k8s/build-kube (v1.20.2, built from Debian bullseye's source tarball);
etcd from Debian's etcd-server package. ``missing_reason()`` says what is missing, if anything.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

DEFAULT_BIN_DIR = "/var/cache/probeset-kube/bin"
BUILD_HINT = "run tests/k8s/build-kube (as root)"
COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
# The address the apiserver publishes as the `kubernetes` Service's endpoint. It must not be loopback
# (Endpoints reject 127.0.0.0/8) and nothing here connects to it, so a documentation-only address
# (RFC 5737) keeps the cluster independent of this host's network interfaces.
ADVERTISE_ADDRESS = "192.0.2.1"
ETCD_DIR_PREFIX = "probeset-etcd-"
# How much of a component's log an error quotes.
LOG_TAIL_CHARS = 4000


def kube_bin_dir() -> Path:
    """Where build-kube puts the Kubernetes binaries (same default and variable as build-kube)."""
    return Path(os.environ.get("PROBESET_KUBE_CACHE") or DEFAULT_BIN_DIR)


def missing_reason() -> str | None:
    """Why no cluster can be started here, or None."""
    bin_dir = kube_bin_dir()
    for name in COMPONENTS:
        if not os.access(bin_dir / name, os.X_OK):
            return f"{bin_dir / name} not built: {BUILD_HINT}"
    if shutil.which("etcd") is None:
        return f"etcd is not installed (apt-get install etcd-server, or {BUILD_HINT})"
    if shutil.which("openssl") is None:
        return "openssl is not installed (apt-get install openssl)"
    return None


def free_ports(count: int = 1) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 right now (another process could still take
    one before we bind it). The sockets stay open until all are picked: bound and closed one after
    the other, the kernel may hand out the same port twice."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


_libc = ctypes.CDLL(None, use_errno=True)   # loaded here: the forked child should not dlopen
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL the child when the test process dies, even by SIGKILL (no stray servers).
    Strictly, when the *thread* that started it ends: start clusters from a long-lived thread."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _remove_stale_etcd_dirs(base: Path) -> None:
    """Delete etcd data dirs left in tmpfs by test processes that died without stopping their
    cluster (killed with -9): the directory name carries the owner's pid."""
    for path in base.glob(f"{ETCD_DIR_PREFIX}*-*"):
        pid = path.name.removeprefix(ETCD_DIR_PREFIX).split("-", 1)[0]
        if not pid.isdigit() or Path(f"/proc/{pid}").exists():
            continue
        shutil.rmtree(path, ignore_errors=True)


class ClusterError(RuntimeError):
    pass


class Component:
    """One server process, its log file, and how to stop it."""

    def __init__(self, name: str, argv: list[str], log_path: Path, stop_timeout: float):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.stop_timeout = stop_timeout
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                # Own session: a Ctrl-C in the terminal reaches pytest, which then stops us in order.
                start_new_session=True, preexec_fn=_die_with_parent)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-chars:].decode(errors="replace")

    def rss_bytes(self) -> int | None:
        """Resident set size now, from /proc."""
        if not self.running():
            return None
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return None

    def stop(self) -> None:
        """SIGTERM, wait, then SIGKILL: kube-apiserver can take many seconds to drain on SIGTERM."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class KubeCluster:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler on 127.0.0.1.

    After ``start()``: ``server`` (https URL), ``token`` (a bearer token in group system:masters),
    ``ca_file`` (PEM that signs the serving certificate) and ``kubeconfig`` (a file using both).
    Use as a context manager, or call ``stop()``.
    """

    def __init__(self, bin_dir: Path | None = None, workdir: Path | None = None, *,
                 apiserver_args: Sequence[str] = (), controller_manager_args: Sequence[str] = (),
                 scheduler_args: Sequence[str] = (), keep_workdir: bool = False,
                 kubelets: bool = False):
        """Extra ``*_args`` are appended to each component's command line (a later flag wins).

        ``kubelets=True`` prepares the API server for real kubelets (tests/cluster/node.py): it
        trusts client certificates signed by the cluster's CA (``--client-ca-file``, so a kubelet
        can log in as ``system:node:<name>``; see ``client_certificate()``) and reaches kubelets
        with a client certificate of its own in group system:masters (``--kubelet-client-*``: logs,
        exec), at their InternalIP first.
        """
        self.bin_dir = Path(bin_dir) if bin_dir else kube_bin_dir()
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="probeset-kube-"))
        self.keep_workdir = keep_workdir
        self.kubelets = kubelets
        self.apiserver_args = list(apiserver_args)
        self.controller_manager_args = list(controller_manager_args)
        self.scheduler_args = list(scheduler_args)
        self.token = secrets.token_hex(16)
        # Static tokens for the control-plane components' own identities.
        self._component_tokens = {"system:kube-controller-manager": secrets.token_hex(16),
                                  "system:kube-scheduler": secrets.token_hex(16)}
        self.port = 0
        self.server = ""
        self.ca_file = self.workdir / "ca.crt"
        self.kubeconfig = self.workdir / "kubeconfig"
        self.components: list[Component] = []
        self.timings: dict[str, float] = {}   # seconds from start() to each milestone
        self._etcd_data: Path | None = None

    # ---- lifecycle ----

    def __enter__(self) -> "KubeCluster":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, ready_timeout: float = 60.0, attempts: int = 3) -> None:
        """Start every component and wait until each works; on failure, stop them all and raise
        ClusterError with the end of the failing component's log."""
        try:
            self._write_pki()
            for attempt in range(1, attempts + 1):
                try:
                    self._start_components(ready_timeout)
                    return
                except ClusterError as e:
                    self._stop_components()
                    # free_ports() can only pick a port that is free *now*; another process may bind
                    # it first. That is worth another try with new ports; anything else is not.
                    if "address already in use" not in str(e) or attempt == attempts:
                        raise
        except BaseException:
            self.stop()
            raise

    def _start_components(self, ready_timeout: float) -> None:
        t0 = time.monotonic()
        self._start_etcd(ready_timeout)
        self.timings["etcd_ready"] = time.monotonic() - t0
        self._start_apiserver(ready_timeout)
        self.timings["apiserver_ready"] = time.monotonic() - t0
        self._start_scheduler()
        self._start_controller_manager(ready_timeout)
        self.timings["controllers_ready"] = time.monotonic() - t0
        self.check_running()

    def stop(self) -> None:
        """Stop every component and delete the state (the work directory too, unless kept)."""
        self._stop_components()
        if self._own_workdir and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _stop_components(self) -> None:
        # Reverse order: the controller manager and the apiserver exit faster with etcd still up.
        for component in reversed(self.components):
            component.stop()
        self.components.clear()
        if self._etcd_data is not None:
            shutil.rmtree(self._etcd_data, ignore_errors=True)
            self._etcd_data = None

    def check_running(self) -> None:
        """Raise ClusterError, quoting its log, if a component has exited (e.g. a rejected flag)."""
        for c in self.components:
            if not c.running():
                raise ClusterError(f"{c.name} exited with code {c.proc.returncode}; "
                                   f"end of {c.log_path}:\n{c.log_tail()}")

    def rss(self) -> dict[str, int | None]:
        """{component: resident bytes} now."""
        return {c.name: c.rss_bytes() for c in self.components}

    def api_client(self):
        """A kubernetes.client.ApiClient for the admin token, loaded from ``kubeconfig``."""
        from kubernetes import config
        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def api_client_for_token(self, token: str):
        """An ApiClient authenticating with another bearer token (e.g. a ServiceAccount's)."""
        from kubernetes import client
        configuration = client.Configuration()
        configuration.host = self.server
        configuration.ssl_ca_cert = str(self.ca_file)
        configuration.api_key = {"authorization": f"Bearer {token}"}
        return client.ApiClient(configuration)

    # ---- pieces ----

    def _openssl(self, *args: str) -> None:
        result = subprocess.run(["openssl", *args], cwd=self.workdir, capture_output=True, text=True)
        if result.returncode != 0:
            raise ClusterError(f"openssl {' '.join(args)} failed: {result.stderr.strip()}")

    def _write_pki(self) -> None:
        """A CA, a serving certificate for 127.0.0.1 signed by it, and the service-account key pair.

        A separate CA (rather than one self-signed leaf) keeps strict verifiers happy: Python's ssl
        with VERIFY_X509_STRICT, Go, and kubectl all accept a normal two-level chain.
        """
        w = self.workdir
        self._openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                      "-keyout", "ca.key", "-out", "ca.crt", "-days", "30", "-subj", "/CN=probeset-test-ca",
                      "-addext", "basicConstraints=critical,CA:TRUE",
                      "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature")
        self._openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                      "-keyout", "apiserver.key", "-out", "apiserver.csr", "-subj", "/CN=kube-apiserver")
        (w / "apiserver.ext").write_text(
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth\n"
            "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
            "DNS:kubernetes.default.svc,IP:10.0.0.1\n")
        self._openssl("x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                      "-CAcreateserial", "-out", "apiserver.crt", "-days", "30", "-extfile", "apiserver.ext")
        # Service-account tokens: the apiserver signs (TokenRequest) and verifies with this pair, the
        # controller manager signs the legacy token Secrets with the private half.
        self._openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "sa.key")
        self._openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub")
        # Static tokens: token,user,uid,"groups". The controller manager and the scheduler get their
        # own identities, which the bootstrap RBAC policy binds to their ClusterRoles (as the client
        # certificates of a kubeadm cluster do).
        (w / "tokens.csv").write_text(
            f'{self.token},admin,admin,"system:masters"\n'
            + "".join(f"{token},{user},{user}\n" for user, token in self._component_tokens.items()))
        for name in ("ca.key", "apiserver.key", "sa.key", "tokens.csv"):
            (w / name).chmod(0o600)
        if self.kubelets:
            self.client_certificate("kube-apiserver-kubelet-client", ["system:masters"],
                                    directory=w, stem="apiserver-kubelet-client")

    def client_certificate(self, user: str, groups: Sequence[str] = (), directory: Path | None = None,
                           stem: str | None = None, days: int = 30) -> tuple[Path, Path]:
        """A client certificate for ``user`` (CN) in ``groups`` (O), signed by the cluster's CA:
        (certificate, key) paths, written to ``directory`` (default: the work directory) as
        ``<stem>.crt`` and ``<stem>.key``. The API server accepts it only if started with
        ``kubelets=True`` (or ``--client-ca-file`` pointing at ``ca_file``)."""
        directory = Path(directory) if directory else self.workdir
        stem = stem or user.replace(":", "-")
        key, csr, crt, ext = (directory / f"{stem}.{x}" for x in ("key", "csr", "crt", "ext"))
        subject = f"/CN={user}" + "".join(f"/O={g}" for g in groups)
        ext.write_text("basicConstraints=critical,CA:FALSE\n"
                       "keyUsage=critical,digitalSignature,keyEncipherment\n"
                       "extendedKeyUsage=clientAuth\n")
        self._openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                      "-keyout", str(key), "-out", str(csr), "-subj", subject)
        self._openssl("x509", "-req", "-in", str(csr), "-CA", str(self.ca_file),
                      "-CAkey", str(self.workdir / "ca.key"), "-CAcreateserial", "-out", str(crt),
                      "-days", str(days), "-extfile", str(ext))
        key.chmod(0o600)
        return crt, key

    def _add(self, name: str, argv: list[str], stop_timeout: float) -> Component:
        component = Component(name, argv, self.workdir / f"{name}.log", stop_timeout)
        self.components.append(component)
        component.start()
        return component

    def _wait(self, component: Component, timeout: float, probe, what: str) -> None:
        """Poll ``probe()`` until it returns True; fail early with the log if the process died."""
        deadline = time.monotonic() + timeout
        last_error = ""
        while time.monotonic() < deadline:
            if not component.running():
                raise ClusterError(f"{component.name} exited with code {component.proc.returncode} "
                                   f"before {what}; end of {component.log_path}:\n{component.log_tail()}")
            try:
                if probe():
                    return
            except (OSError, urllib.error.URLError, ValueError) as e:
                last_error = str(e)
            time.sleep(0.1)
        raise ClusterError(f"{component.name}: not {what} after {timeout:.0f} s (last error: {last_error}); "
                           f"end of {component.log_path}:\n{component.log_tail()}")

    def _start_etcd(self, timeout: float) -> None:
        # etcd fsyncs on every write; tmpfs makes that free (the data is thrown away anyway). It
        # costs memory: ~120 MB per cluster, mostly the preallocated 64 MB WAL segment.
        shm = Path("/dev/shm")
        if shm.is_dir() and os.access(shm, os.W_OK):
            _remove_stale_etcd_dirs(shm)
            base = shm
        else:
            base = self.workdir
        self._etcd_data = Path(tempfile.mkdtemp(prefix=f"{ETCD_DIR_PREFIX}{os.getpid()}-", dir=base))
        client, peer = free_ports(2)
        self.etcd_url = f"http://127.0.0.1:{client}"
        etcd = self._add("etcd", [
            shutil.which("etcd"), "--name=probeset-test", f"--data-dir={self._etcd_data}",
            f"--listen-client-urls={self.etcd_url}", f"--advertise-client-urls={self.etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}", f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=probeset-test=http://127.0.0.1:{peer}", "--initial-cluster-state=new",
            "--logger=zap", "--log-level=warn",
        ], stop_timeout=10)

        def healthy() -> bool:
            with urllib.request.urlopen(f"{self.etcd_url}/health", timeout=2) as r:
                return json.load(r).get("health") == "true"
        self._wait(etcd, timeout, healthy, "healthy")

    def _start_apiserver(self, timeout: float) -> None:
        w = self.workdir
        (self.port,) = free_ports(1)
        self.server = f"https://127.0.0.1:{self.port}"
        apiserver = self._add("kube-apiserver", [
            str(self.bin_dir / "kube-apiserver"),
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1", f"--secure-port={self.port}", "--insecure-port=0",
            f"--advertise-address={ADVERTISE_ADDRESS}",
            f"--cert-dir={w}",   # never the default /var/run/kubernetes
            f"--tls-cert-file={w / 'apiserver.crt'}", f"--tls-private-key-file={w / 'apiserver.key'}",
            f"--token-auth-file={w / 'tokens.csv'}",
            "--authorization-mode=Node,RBAC",
            f"--service-account-key-file={w / 'sa.pub'}",
            f"--service-account-signing-key-file={w / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--allow-privileged=true",   # the project's node agents are privileged DaemonSets
            *(self._kubelet_args() if self.kubelets else ()),
            *self.apiserver_args,
        ], stop_timeout=15)
        context = ssl.create_default_context(cafile=str(self.ca_file))

        def ready() -> bool:
            request = urllib.request.Request(f"{self.server}/readyz",
                                             headers={"Authorization": f"Bearer {self.token}"})
            try:
                with urllib.request.urlopen(request, timeout=2, context=context) as r:
                    return r.status == 200
            except urllib.error.HTTPError:   # 500 while post-start hooks (RBAC bootstrap...) run
                return False
        self._wait(apiserver, timeout, ready, "ready (/readyz)")
        self._write_kubeconfig(self.kubeconfig, self.token, "admin")

    def _kubelet_args(self) -> list[str]:
        w = self.workdir
        return [f"--client-ca-file={self.ca_file}",
                f"--kubelet-client-certificate={w / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={w / 'apiserver-kubelet-client.key'}",
                # A test node's name resolves nowhere; its InternalIP (127.0.0.1) does.
                "--kubelet-preferred-address-types=InternalIP,Hostname"]

    def _start_scheduler(self) -> None:
        # Needed for spec.nodeName: since v1.12 the DaemonSet controller only gives its pods a node
        # affinity (metadata.name In [node]) and leaves binding to the scheduler. Nothing to wait for
        # here: with no pods yet, only its binding a pod shows that it runs.
        user = "system:kube-scheduler"
        kubeconfig = self.workdir / "scheduler.kubeconfig"
        self._write_kubeconfig(kubeconfig, self._component_tokens[user], user)
        self._add("kube-scheduler", [
            str(self.bin_dir / "kube-scheduler"),
            f"--kubeconfig={kubeconfig}", "--leader-elect=false",
            "--port=0", "--secure-port=0",   # no serving: fixed default ports would clash
            *self.scheduler_args,
        ], stop_timeout=10)

    def _start_controller_manager(self, timeout: float) -> None:
        w = self.workdir
        user = "system:kube-controller-manager"
        kubeconfig = w / "controller-manager.kubeconfig"
        self._write_kubeconfig(kubeconfig, self._component_tokens[user], user)
        controller_manager = self._add("kube-controller-manager", [
            str(self.bin_dir / "kube-controller-manager"),
            f"--kubeconfig={kubeconfig}",
            "--leader-elect=false", "--controllers=*", "--use-service-account-credentials=true",
            f"--service-account-private-key-file={w / 'sa.key'}",
            f"--root-ca-file={self.ca_file}",
            f"--cluster-signing-cert-file={self.ca_file}", f"--cluster-signing-key-file={w / 'ca.key'}",
            # No HTTP(S) serving (health/metrics): fixed default ports 10252/10257 would clash
            # between clusters running side by side.
            "--port=0", "--secure-port=0",
            *self.controller_manager_args,
        ], stop_timeout=10)
        # Controllers are running once the token controller has given default/default its token
        # Secret: pods (which mount it) can then be created in any namespace that has one too.
        from kubernetes import client
        with self.api_client() as api:
            core = client.CoreV1Api(api)

            def default_sa_has_token() -> bool:
                try:
                    return bool(core.read_namespaced_service_account("default", "default").secrets)
                except client.ApiException as e:
                    if e.status == 404:
                        return False
                    raise
            self._wait(controller_manager, timeout, default_sa_has_token,
                       "running (default ServiceAccount with its token)")

    def _write_kubeconfig(self, path: Path, token: str, user: str) -> None:
        self.write_kubeconfig(path, user, token=token)

    def write_kubeconfig(self, path: Path, user: str, *, token: str | None = None,
                         certificate: Path | None = None, key: Path | None = None) -> Path:
        """A kubeconfig for this cluster (CA-verified) with a bearer ``token`` or a client
        ``certificate`` and ``key`` (see ``client_certificate()``)."""
        credentials = ({"token": token} if token is not None else
                       {"client-certificate": str(certificate), "client-key": str(key)})
        # JSON is valid YAML: every kubeconfig reader (kubectl, the Python client, kopf) accepts it.
        config = {
            "apiVersion": "v1", "kind": "Config", "preferences": {},
            "clusters": [{"name": "probeset-test",
                          "cluster": {"server": self.server, "certificate-authority": str(self.ca_file)}}],
            "users": [{"name": user, "user": credentials}],
            "contexts": [{"name": "probeset-test", "context": {"cluster": "probeset-test", "user": user}}],
            "current-context": "probeset-test",
        }
        path.write_text(json.dumps(config, indent=2) + "\n")
        path.chmod(0o600)
        return path
