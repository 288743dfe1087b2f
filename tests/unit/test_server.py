"""/metrics cannot be exhausted by its clients: a real MetricsServer in its own process, serving a
large synthetic exposition (8 MB, 0.2 s to render), against slow, idle and many concurrent clients.
Memory, threads and latency are read from /proc and asserted with bounds."""

import gzip
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from probeset_agent.rendering import SharedRendering
from probeset_agent.httpmsg import parse_listen
from tests.support import wait_for

BODY_MB = 8
SERVER = f"""
import sys, threading, time
from probeset_agent.server import MetricsServer
server = MetricsServer("127.0.0.1", 0, max_connections=256, workers=4, request_timeout=2.0, send_timeout=10.0)
renders = [0]
def render():
    renders[0] += 1
    time.sleep(0.2)
    return b"x" * ({BODY_MB} << 20)
server.start(render)
print(server.address[1], flush=True)
for line in sys.stdin:
    print(renders[0], server.refused, server.bodies_sending(), int(server.alive()), server.replies, flush=True)
"""


class Served:
    def __init__(self):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(["agent", "api"]))
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env)
        self.port = int(self.proc.stdout.readline())

    def status(self, key: str) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))

    def rss_mb(self) -> float:
        return self.status("VmRSS") / 1024

    def threads(self) -> int:
        return self.status("Threads")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def counters(self) -> tuple[int, int, int, int, int]:
        """(renderings, connections refused, renderings held by replies being written, serving threads
        alive, /metrics replies begun)"""
        self.proc.stdin.write("?\n")
        self.proc.stdin.flush()
        return tuple(int(n) for n in self.proc.stdout.readline().split())

    def scrape(self, timeout: float = 10.0) -> tuple[int, float]:
        t = time.monotonic()
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=timeout) as r:
            n = len(r.read())
        return n, time.monotonic() - t

    def close(self):
        self.proc.stdin.close()
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def served():
    s = Served()
    s.scrape()          # warm: the first body allocated
    yield s
    s.close()


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def test_half_open_requests_cost_neither_threads_nor_memory(served):
    base_rss, base_threads = served.rss_mb(), served.threads()
    held = []
    for _ in range(200):
        s = connect(served.port)
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")      # never finished
        held.append(s)
    n, seconds = served.scrape()                                 # a real scraper is still answered
    assert n == BODY_MB << 20 and seconds < 3
    assert served.threads() == base_threads                       # no thread per connection
    assert served.rss_mb() < base_rss + 3 * BODY_MB, (base_rss, served.rss_mb())
    # Each half-open request is closed when its request_timeout (2 s) ends.
    wait_for(lambda: all(s.recv(1) == b"" for s in held), 10, "half-open connections closed by the server")
    for s in held:
        s.close()


def test_idle_connections_are_bounded(served):
    base_threads = served.threads()
    held = [connect(served.port) for _ in range(1200)]
    wait_for(lambda: served.counters()[1] >= 1200 - 256, 10, "connections beyond 256 closed")
    assert served.fds() < 256 + 32                                 # at most max_connections held
    assert served.threads() == base_threads
    n, seconds = served.scrape()
    assert n == BODY_MB << 20 and seconds < 3
    for s in held:
        s.close()


def test_concurrent_scrapers_share_renderings(served):
    base_rss = served.rss_mb()
    renders_before = served.counters()[0]
    latencies, errors = [], []

    def scraper():
        for _ in range(5):
            try:
                n, seconds = served.scrape(timeout=30)
                assert n == BODY_MB << 20
                latencies.append(seconds)
            except Exception as e:   # collected: a 503 or a timeout fails the test below
                errors.append(repr(e))
    threads = [threading.Thread(target=scraper) for _ in range(20)]
    peak = [0.0]

    def watch():
        while any(t.is_alive() for t in threads):
            peak[0] = max(peak[0], served.rss_mb())
            time.sleep(0.05)
    for t in threads:
        t.start()
    watcher = threading.Thread(target=watch)
    watcher.start()
    for t in threads + [watcher]:
        t.join()
    renders = served.counters()[0]
    assert errors == [] or all("503" in e for e in errors), errors
    assert len(latencies) + len(errors) == 100
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    assert p99 < 5.0, latencies[-5:]
    assert renders - renders_before < 100 / 2, "concurrent scrapes rendered one body each"
    # At most one body per worker (4) being sent, the last result kept for waiters and one being
    # rendered, plus slack for freed bodies glibc keeps in its heap (its mmap threshold rises after
    # the first 8 MB free): bounded by the server's workers, not by the 20 scrapers (each
    # rendering its own would hold 20 bodies, 160 MB).
    assert peak[0] < base_rss + (4 + 5) * BODY_MB, (base_rss, peak[0])


def slow_reader(port: int) -> socket.socket:
    """A client that asks for /metrics and does not read the answer (a 4 kB receive buffer)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(5)
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    return s


def test_clients_that_do_not_read_hold_up_no_one(served):
    """Replies are written by the I/O thread as each client takes them, not by a worker blocked in
    sendall: twenty scrapers that never read hold no worker, and a health check and a real scrape
    are answered while they hang (each would otherwise wait for send_timeout, 10 s here)."""
    base_threads = served.threads()
    held = [slow_reader(served.port) for _ in range(20)]
    wait_for(lambda: served.counters()[2] >= 1, 10, "the slow readers' reply being written")
    with urllib.request.urlopen(f"http://127.0.0.1:{served.port}/healthz", timeout=3) as r:
        assert r.read() == b"ok\n"
    n, _ = served.scrape(timeout=5)
    assert n == BODY_MB << 20
    assert served.threads() == base_threads
    for s in held:
        s.close()


def test_renderings_held_by_slow_readers_are_bounded(served):
    """Each slow reader arriving after the last rendering gets a new one (8 MB here, 43 MB at
    10,000 latency series): the replies being written hold at most MAX_BODIES_SENDING of them, the
    clients holding the oldest are closed."""
    from probeset_agent.server import MAX_BODIES_SENDING
    held = []
    for i in range(MAX_BODIES_SENDING + 3):
        renders, _, _, _, replies = served.counters()
        held.append(slow_reader(served.port))
        wait_for(lambda: served.counters()[4] == replies + 1, 10, f"slow reader {i}'s reply being written")
        renders_now, _, bodies, _, _ = served.counters()
        assert (renders_now, bodies) == (renders + 1, min(i + 1, MAX_BODIES_SENDING))
    first = held[0]
    got = 0
    try:
        while chunk := first.recv(1 << 20):
            got += len(chunk)
    except ConnectionResetError:
        pass
    assert got < BODY_MB << 20                                  # closed before it had the whole body
    assert served.counters()[3] == 1
    for s in held:
        s.close()


def test_a_connection_evicted_while_it_sends_does_not_stop_serving():
    """At the connection limit a new connection closes the oldest one still sending its request;
    that one may be readable in the same round of the selector. Each round here opens eight
    connections and sends a byte on the eight before them."""
    from probeset_agent.server import MetricsServer
    server = MetricsServer("127.0.0.1", 0, max_connections=8, request_timeout=5.0).start(lambda out=None: b"x 1\n")
    try:
        port = server.address[1]
        held = [connect(port) for _ in range(8)]
        for _ in range(100):
            new = [connect(port) for _ in range(8)]
            for s in held:
                try:
                    s.send(b"G")
                except OSError:                                  # already closed by the server
                    pass
                s.close()
            held = new
        assert server.alive()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as r:
            assert r.read() == b"x 1\n"
        for s in held:
            s.close()
    finally:
        server.shutdown()


def read_all(s: socket.socket) -> bytes:
    answer = b""
    while chunk := s.recv(4096):
        answer += chunk
    return answer


def test_oversized_and_bad_requests_are_refused(served):
    s = connect(served.port)
    s.sendall(b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n")
    assert s.recv(100).startswith(b"HTTP/1.1 431 ")
    s = connect(served.port)
    s.sendall(b"POST /metrics HTTP/1.1\r\n\r\n")
    assert s.recv(100).startswith(b"HTTP/1.1 405 ")
    s = connect(served.port)
    s.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
    answer = read_all(s)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"\r\n\r\nok\n")
    s = connect(served.port)
    s.sendall(b"GET /healthz HTTP/1.0\n\n")                     # bare line feeds end lines too
    assert read_all(s).endswith(b"\r\n\r\nok\n")
    s = connect(served.port)                                      # a head past 16 kB, all sent at once:
    s.sendall(b"GET /metrics HTTP/1.1\r\nX-Padding: " + b"p" * 17000 + b"\r\n\r\n")
    answer = read_all(s)                                          # refused, and the answer not lost to a reset
    assert answer.startswith(b"HTTP/1.1 431 ") and answer.endswith(b"request header fields too large\n")


@pytest.mark.parametrize("text,expected", [
    ("127.0.0.1:9437", ("127.0.0.1", 9437)), ("0.0.0.0:80", ("0.0.0.0", 80)), ("[::1]:9437", ("::1", 9437)),
    ("19418", "expected HOST:PORT"), (":9437", "expected HOST:PORT"), ("localhost:0", "port must be"),
    ("127.0.0.1:70000", "port must be"), ("127.0.0.1:http", "port must be")])
def test_listen_address_is_explicit(text, expected):
    if isinstance(expected, tuple):
        assert parse_listen(text) == expected
    else:
        with pytest.raises(ValueError, match=expected):
            parse_listen(text)


def test_shared_rendering_hands_one_result_or_error_to_every_waiter():
    started, release, calls = threading.Event(), threading.Event(), []

    def render():
        calls.append(1)
        started.set()
        release.wait(5)
        if len(calls) == 2:
            raise RuntimeError("map gone")
        return b"body%d" % len(calls)
    shared = SharedRendering(render)
    results = []
    first = threading.Thread(target=lambda: results.append(shared.get()))
    first.start()
    started.wait(5)
    waiters = [threading.Thread(target=lambda: results.append(shared.get())) for _ in range(5)]
    for t in waiters:
        t.start()
    wait_for(lambda: shared.waiting == 5, 5, "the five callers waiting for the rendering in progress")
    release.set()
    for t in [first] + waiters:
        t.join(5)
    assert len(calls) == 1 and results == [b"body1"] * 6
    with pytest.raises(RuntimeError, match="map gone"):
        shared.get()
    assert shared.get() == b"body3"


@pytest.mark.parametrize("first", [False, True])
def test_shared_rendering_derives_the_other_encoding_once(first):
    """The round's first caller decides how it is rendered (gzip: written through a GzipWriter);
    a caller in the same round that asked for the other encoding gets it derived, not rendered."""
    started, release, calls = threading.Event(), threading.Event(), []

    def render(out=None):
        calls.append(out is not None)
        started.set()
        release.wait(5)
        out = bytearray() if out is None else out
        out += b"# HELP x\n" * 1000
        return out
    shared = SharedRendering(render)
    results = {}
    first_caller = threading.Thread(target=lambda: results.setdefault(first, shared.get(first)))
    first_caller.start()
    started.wait(5)
    other = threading.Thread(target=lambda: results.setdefault(not first, shared.get(not first)))
    other.start()
    wait_for(lambda: shared.waiting == 1, 5, "the other caller waiting for the rendering in progress")
    release.set()
    first_caller.join(5)
    other.join(5)
    assert calls == [first]                           # one rendering, in the first caller's encoding
    assert results[False] == b"# HELP x\n" * 1000
    assert gzip.decompress(results[True]) == results[False]


def test_the_cluster_agent_waits_for_a_port_its_predecessor_still_holds(caplog):
    """A DaemonSet deleted and made again: the old agent may hold the node's port while it detaches.
    The new one tries again every second for a while instead of exiting into the kubelet's restart
    back-off (short: a port taken by something else must still show as AgentsCrashLooping soon,
    tests/cluster/test_release.py); a standalone run (no wait) fails at once, saying why."""
    import argparse
    from probeset_agent.commands import PORT_WAIT_SECONDS, _bind_metrics
    assert 5 <= PORT_WAIT_SECONDS <= 30
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    args = argparse.Namespace(listen=f"127.0.0.1:{port}", tls_cert=None, tls_key=None, tls_client_ca=None)
    assert _bind_metrics(args) is None                              # standalone: at once
    got = []
    waiter = threading.Thread(target=lambda: got.append(_bind_metrics(args, wait_for_port=30)))
    waiter.start()
    wait_for(lambda: any("in use" in r.getMessage() for r in caplog.records), 10, "the agent waiting for the port")
    assert not got                                                  # still waiting while the port is held
    holder.close()
    waiter.join(10)
    assert got and got[0] is not None
    got[0].start(lambda out=None: b"")
    got[0].shutdown()
