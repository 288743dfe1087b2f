"""Serving /metrics to whoever can reach the port, with every resource a client controls bounded.

- One selector thread does all of a connection's I/O, without blocking on any client: it accepts,
  runs the TLS handshake, reads the request, answers what needs no work (/healthz, errors) and
  writes every reply, a chunk at a time as the client takes it. A connection costs a file
  descriptor and its buffers, never a thread, so a client that does not read holds up nobody.
- Connections: at most `max_connections` open; a new one beyond that closes the oldest one still
  sending its request (else the oldest being answered).
- Time: a request must arrive whole within `request_timeout` seconds of the connection; a reply
  must be taken within `send_timeout` seconds of being ready. Slow or silent clients are closed.
- Size: a request head larger than MAX_REQUEST_BYTES is refused (431).
- Work: /metrics requests go to `workers` threads through a bounded queue (503 when it is full);
  they authorize and render, then hand the reply back to the selector thread. Concurrent scrapes
  share one rendering (rendering.SharedRendering), and the replies being written hold at most
  MAX_BODIES_SENDING different renderings: a client still reading an older one is closed first.
- Encoding: gzip (ISA-L, level 1) when the request's Accept-Encoding allows it, identity otherwise.
- Optionally TLS (`tls`, an ssl.SSLContext; with a client CA it requires client certificates), and
  an `authorize` check of the request's bearer token (authz.py: TokenReview + SubjectAccessReview,
  as kube-rbac-proxy does for node exporters) before /metrics is rendered.
"""

from __future__ import annotations

import logging
import queue
import selectors
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from .httpmsg import CONTENT_TYPE, accepts_gzip, bearer_token, reply_head, request_end
from .rendering import SharedRendering

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 16384
SEND_CHUNK = 256 * 1024          # one send() of a reply: the kernel takes what fits in the socket buffer
MAX_BODIES_SENDING = 3           # renderings the replies being written may hold (a 10,000-series body: 43 MB)
LINGER_SECONDS = 1.0             # after refusing a request, how long its unread bytes are drained


@dataclass
class _Reply:
    head: bytes
    body: bytes = b""               # empty for HEAD
    rendering: bytes | None = None  # the /metrics body it holds (for MAX_BODIES_SENDING)
    linger: bool = False            # refused: drain the unread request before closing (no RST)


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    deadline: float                 # the request's, then the reply's
    state: str = "reading"          # reading -> (working ->) writing (-> draining); or handshake first
    buf: bytearray = field(default_factory=bytearray)
    out: list[memoryview] = field(default_factory=list)
    reply: _Reply | None = None
    since: float = 0.0              # when it entered its state (the oldest is evicted first)


class MetricsServer:
    """Binds at construction (so a bad or busy address fails before anything is attached); serves
    after start()."""

    def __init__(self, host: str, port: int, max_connections: int = 256, workers: int = 4,
                 request_timeout: float = 5.0, send_timeout: float = 30.0, backlog: int = 128,
                 tls: ssl.SSLContext | None = None, authorize: Callable[[str | None], tuple[int, str]] | None = None):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.create_server((host, port), family=family, backlog=backlog)
        self.sock.setblocking(False)
        self.address = self.sock.getsockname()[:2]
        self.max_connections, self.workers = max_connections, workers
        self.request_timeout, self.send_timeout = request_timeout, send_timeout
        self._work: queue.Queue = queue.Queue(maxsize=max(workers * 4, 16))
        self._done: queue.SimpleQueue = queue.SimpleQueue()        # (conn, reply) from the workers
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._conns: dict[socket.socket, _Conn] = {}
        self._sel = selectors.DefaultSelector()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._rendering: SharedRendering | None = None
        self.refused = 0                                   # connections closed for a bound (for tests, logs)
        self.replies = 0                                   # /metrics replies begun (for tests, logs)
        self.tls, self.authorize = tls, authorize

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    def start(self, render: Callable[[], bytes]) -> "MetricsServer":
        self._rendering = SharedRendering(render)
        self._threads = [threading.Thread(target=self._serve, name="metrics-io", daemon=True)]
        self._threads += [threading.Thread(target=self._answer, name=f"metrics-{i}", daemon=True)
                          for i in range(self.workers)]
        for t in self._threads:
            t.start()
        return self

    def alive(self) -> bool:
        """Whether every serving thread still runs (for tests and the health check)."""
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    def _writers(self) -> dict[int, list[_Conn]]:
        """The connections writing a /metrics reply, by the rendering it holds."""
        writers: dict[int, list[_Conn]] = {}
        for c in list(self._conns.values()):
            if c.reply is not None and c.reply.rendering is not None:
                writers.setdefault(id(c.reply.rendering), []).append(c)
        return writers

    def bodies_sending(self) -> int:
        """Different renderings held by the replies being written now."""
        return len(self._writers())

    def shutdown(self) -> None:
        self._stopping.set()
        for _ in range(self.workers):
            try:
                self._work.put_nowait(None)
            except queue.Full:
                break
        self._wake()
        for t in self._threads:
            t.join(timeout=2)
        self.sock.close()
        for conn in list(self._conns.values()):
            conn.sock.close()
        self._wake_r.close()
        self._wake_w.close()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:              # full (the selector is already due to wake) or closed
            pass

    # --- the I/O thread ----------------------------------------------------------------------

    def _serve(self) -> None:
        sel = self._sel
        sel.register(self.sock, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        while not self._stopping.is_set():
            for key, _ in sel.select(timeout=0.25):
                try:
                    if key.fileobj is self.sock:
                        self._accept()
                    elif key.fileobj is self._wake_r:
                        self._take_replies()
                    else:
                        self._ready(key.fileobj)
                except Exception:        # one connection's failure must not stop serving the others
                    log.exception("metrics: serving a connection failed")
                    conn = self._conns.get(key.fileobj)
                    if conn is not None:
                        self._close(conn)
            now = time.monotonic()
            for conn in [c for c in self._conns.values() if c.state != "working" and c.deadline < now]:
                self._close(conn, refused=conn.state != "draining")
        sel.close()

    def _accept(self) -> None:
        for _ in range(64):              # a burst, without starving the reads
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:         # e.g. EMFILE: the process's own limit; try again later
                log.warning("metrics: accept: %s", e)
                return
            if len(self._conns) >= self.max_connections and not self._evict():
                sock.close()
                self.refused += 1
                continue
            sock.setblocking(False)
            now = time.monotonic()
            state = "reading"
            if self.tls is not None:
                try:
                    sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                except (OSError, ValueError):
                    sock.close()
                    continue
                state = "handshake"
            self._conns[sock] = _Conn(sock, now + self.request_timeout, state, since=now)
            self._sel.register(sock, selectors.EVENT_READ)

    def _evict(self) -> bool:
        """Close the connection that has waited longest, still sending its request, else still
        taking its reply; False if every one is at a worker."""
        for states in (("handshake", "reading"), ("writing", "draining")):
            candidates = [c for c in self._conns.values() if c.state in states]
            if candidates:
                self._close(min(candidates, key=lambda c: c.since), refused=True)
                return True
        return False

    def _close(self, conn: _Conn, refused: bool = False) -> None:
        if self._conns.pop(conn.sock, None) is None:
            return
        try:
            self._sel.unregister(conn.sock)
        except (KeyError, ValueError):   # a connection at a worker is not registered
            pass
        conn.sock.close()
        conn.reply, conn.out = None, []
        if refused:
            self.refused += 1

    def _ready(self, sock) -> None:
        conn = self._conns.get(sock)
        if conn is None:                 # closed earlier in this batch (evicted, expired)
            return
        if conn.state == "handshake":
            self._handshake(conn)
        elif conn.state == "reading":
            self._read(conn)
        elif conn.state == "writing":
            self._write(conn)
        elif conn.state == "draining":
            self._drain(conn)

    def _handshake(self, conn: _Conn) -> None:
        try:
            conn.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._sel.modify(conn.sock, selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            self._sel.modify(conn.sock, selectors.EVENT_WRITE)
            return
        except (ssl.SSLError, OSError):   # not TLS, no or a bad client certificate: closed
            self._close(conn, refused=True)
            return
        conn.state = "reading"
        self._sel.modify(conn.sock, selectors.EVENT_READ)
        self._read(conn)                  # the request may have come with the handshake's last flight

    def _recv(self, conn: _Conn, limit: int) -> bytes | None:
        """What the socket has now, up to `limit` bytes (TLS: what OpenSSL already decrypted too,
        which select() cannot see); b"" at the end of the stream, None if nothing yet."""
        data = bytearray()
        while len(data) < limit:
            try:
                chunk = conn.sock.recv(min(65536, limit - len(data)))
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                break
            except OSError:
                chunk = b""
            if not chunk:
                return bytes(data) or b""
            data += chunk
            if not (isinstance(conn.sock, ssl.SSLSocket) and conn.sock.pending()):
                break
        return bytes(data) if data else None

    def _read(self, conn: _Conn) -> None:
        data = self._recv(conn, MAX_REQUEST_BYTES + 1 - len(conn.buf))
        if data is None:
            return
        if not data:
            self._close(conn)
            return
        conn.buf += data
        end = request_end(conn.buf)
        if end < 0 and len(conn.buf) <= MAX_REQUEST_BYTES:
            return
        if end < 0 or end > MAX_REQUEST_BYTES:
            self._send(conn, self._short(431, b"request header fields too large\n", linger=True))
            return
        self._route(conn, bytes(conn.buf[:end]))

    def _route(self, conn: _Conn, headers: bytes) -> None:
        """Answer here what needs no work (a health check never waits behind scrapes); hand
        /metrics to a worker."""
        parts = headers.split(b"\n", 1)[0].split()
        if len(parts) != 3 or parts[0] not in (b"GET", b"HEAD"):
            self._send(conn, self._short(405 if len(parts) == 3 else 400, b"only GET /metrics, /healthz\n",
                                         linger=True))
            return
        head = parts[0] == b"HEAD"
        path = parts[1].split(b"?", 1)[0]
        if path == b"/metrics":
            conn.state, conn.buf = "working", bytearray()
            self._sel.unregister(conn.sock)
            try:
                self._work.put_nowait((conn, head, headers))
            except queue.Full:
                self._sel.register(conn.sock, selectors.EVENT_WRITE)
                self._send(conn, self._short(503, b"busy: too many scrapes at once\n"))
                self.refused += 1
            return
        answers = {b"/healthz": (200, b"ok\n"), b"/": (200, b"probeset agent: /metrics, /healthz\n")}
        status, body = answers.get(path, (404, b"not found\n"))
        self._send(conn, self._short(status, body, head=head))

    @staticmethod
    def _short(status: int, body: bytes, head: bool = False, linger: bool = False) -> _Reply:
        return _Reply(reply_head(status, len(body)), b"" if head else body, linger=linger)

    def _take_replies(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        while True:
            try:
                conn, reply = self._done.get_nowait()
            except queue.Empty:
                return
            if conn.sock not in self._conns:
                continue
            self._sel.register(conn.sock, selectors.EVENT_WRITE)
            self._send(conn, reply)

    def _send(self, conn: _Conn, reply: _Reply) -> None:
        """Start writing `reply`; the connection's deadline is now the reply's."""
        if reply.rendering is not None:
            self._bound_renderings(reply.rendering)
            self.replies += 1
        now = time.monotonic()
        conn.state, conn.reply, conn.since, conn.deadline = "writing", reply, now, now + self.send_timeout
        conn.buf = bytearray()
        conn.out = [memoryview(reply.head)] + ([memoryview(reply.body)] if reply.body else [])
        self._sel.modify(conn.sock, selectors.EVENT_WRITE)
        self._write(conn)

    def _bound_renderings(self, rendering: bytes) -> None:
        """Before a reply holding `rendering` is written: if the replies being written already
        hold MAX_BODIES_SENDING other renderings, close the ones holding the oldest (their clients
        have taken longer than every later scrape to read it)."""
        writers = self._writers()
        if id(rendering) in writers or len(writers) < MAX_BODIES_SENDING:
            return
        oldest = min(writers.values(), key=lambda conns: min(c.since for c in conns))
        for c in oldest:
            self._close(c, refused=True)

    def _write(self, conn: _Conn) -> None:
        while conn.out:
            try:
                n = conn.sock.send(conn.out[0][:SEND_CHUNK])
            except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError):
                self._sel.modify(conn.sock, selectors.EVENT_WRITE)
                return
            except ssl.SSLWantReadError:
                self._sel.modify(conn.sock, selectors.EVENT_READ)
                return
            except OSError:              # the client went away
                self._close(conn)
                return
            conn.out[0] = conn.out[0][n:]
            if not conn.out[0]:
                conn.out.pop(0)
        if conn.reply is not None and conn.reply.linger:
            # Closing with the request unread would reset the connection, and the client might
            # lose the answer: say we are done, then read and drop what it still sends, briefly.
            try:
                conn.sock.shutdown(socket.SHUT_WR)
            except OSError:
                self._close(conn)
                return
            conn.state, conn.reply, conn.deadline = "draining", None, time.monotonic() + LINGER_SECONDS
            self._sel.modify(conn.sock, selectors.EVENT_READ)
            return
        self._close(conn)

    def _drain(self, conn: _Conn) -> None:
        if self._recv(conn, 65536) == b"":   # the client closed its side: done
            self._close(conn)

    # --- the workers: authorize and render /metrics -----------------------------------------

    def _answer(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            conn, head, headers = item
            try:
                reply = self._metrics(head, headers)
            except Exception:
                log.exception("metrics: answering %r failed", headers[:100])
                reply = self._short(500, b"rendering failed\n")
            self._done.put((conn, reply))
            self._wake()

    def _metrics(self, head: bool, headers: bytes) -> _Reply:
        if self.authorize is not None:
            status, why = self.authorize(bearer_token(headers))
            if status != 200:
                return self._short(status, why.encode() + b"\n")
        gzipped = accepts_gzip(headers)
        body = self._rendering.get(gzipped)
        extra = "Content-Encoding: gzip\r\nVary: Accept-Encoding\r\n" if gzipped else "Vary: Accept-Encoding\r\n"
        return _Reply(reply_head(200, len(body), CONTENT_TYPE, extra), b"" if head else body, rendering=body)
