"""Serving /metrics to whoever can reach the port, with every resource a client controls bounded.

- Connections: at most `max_connections` open; a new one beyond that closes the oldest still
  sending its request. An open connection costs a file descriptor and its request buffer, not a
  thread: one selector thread reads requests, without blocking on any client.
- Time: a request must arrive whole within `request_timeout` seconds of the connection; a response
  must be taken within `send_timeout` seconds. Slow or silent clients are closed.
- Size: a request larger than MAX_REQUEST_BYTES is refused (431).
- Work: complete requests go to `workers` threads through a bounded queue (503 when it is full).
  Concurrent scrapes share one rendering: a request that arrives while the text is being rendered
  waits for that rendering instead of starting its own, so memory holds one body however many
  scrapers there are, and a scrape never sees counts older than its own arrival minus one render.
- Encoding: gzip (ISA-L, level 1) when the request's Accept-Encoding allows it, identity
  otherwise; compressed while the body is written, once per rendering, however many scrapers ask.
- Optionally TLS (`tls`, an ssl.SSLContext; with a client CA it requires client certificates; the
  handshake runs in the selector thread, so it is bounded like the request), and an `authorize`
  check of the request's bearer token (authz.py: TokenReview + SubjectAccessReview, as
  kube-rbac-proxy does for node exporters) before /metrics is rendered.
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

from isal import isal_zlib

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_REQUEST_BYTES = 16384
GZIP_LEVEL = 1            # ISA-L's levels are 0-3; docs/benchmarks.md 2: 1 costs the fewest CPU ms per byte saved


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT, both explicit ([::1]:9437 for IPv6): an address that binds every interface is
    a decision, so it must be written (0.0.0.0:9437), never implied by a missing host."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host:
        raise ValueError(f"--listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9437 (0.0.0.0:9437 for every "
                         "interface)")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--listen {text!r}: the port must be a number from 1 to 65535")
    return host, int(port)


class GzipWriter:
    """A gzip stream written as the body is rendered (`writer += bytes`): the text goes through a
    256 kB buffer that stays in cache, so a 43 MB body is never held, and ISA-L's deflate (level 1,
    about 5x zlib's speed at the same ratio) compresses it. Cheaper than rendering the plain body
    alone, whose fresh memory costs page faults (docs/benchmarks.md 2)."""

    CHUNK = 256 * 1024          # 64 kB and 1 MB were slower (docs/benchmarks.md 2)

    def __init__(self, level: int = GZIP_LEVEL):
        self._deflate = isal_zlib.compressobj(level, isal_zlib.DEFLATED, 16 + isal_zlib.MAX_WBITS)
        self._buffer = bytearray()
        self._parts: list[bytes] = []

    def __iadd__(self, data: bytes) -> "GzipWriter":
        self._buffer += data
        if len(self._buffer) >= self.CHUNK:
            self._parts.append(self._deflate.compress(self._buffer))
            self._buffer.clear()
        return self

    def finish(self) -> bytes:
        self._parts.append(self._deflate.compress(self._buffer))
        self._parts.append(self._deflate.flush())
        self._buffer = bytearray()
        return b"".join(self._parts)


def gzip_bytes(body: bytes, level: int = GZIP_LEVEL) -> bytes:
    writer = GzipWriter(level)
    writer += body
    return writer.finish()


class _Rendered:
    """One rendering, in the encoding its first caller asked for; the other form is derived from it
    on first request, once."""

    def __init__(self, level: int, body: bytes | None = None, gzipped: bytes | None = None):
        self.level = level
        self._body, self._gzipped = body, gzipped
        self._lock = threading.Lock()

    def get(self, gzipped: bool) -> bytes:
        with self._lock:
            if gzipped and self._gzipped is None:
                self._gzipped = gzip_bytes(self._body, self.level)
            if not gzipped and self._body is None:
                self._body = isal_zlib.decompress(self._gzipped, 16 + isal_zlib.MAX_WBITS)
            return self._gzipped if gzipped else self._body


class SharedRendering:
    """render() once for all the callers that arrive while it runs, in the encoding the first of
    them asked for (gzip: compressed as it is written, GzipWriter); a caller in the same round
    that asked for the other form gets it derived from that rendering, once for all of them.

    `render(out=None)` writes the body into `out` (a GzipWriter) or into a new bytearray, and
    returns it (MetricsCollector.render_bytes)."""

    def __init__(self, render: Callable, gzip_level: int = GZIP_LEVEL):
        self._render = render
        self.gzip_level = gzip_level
        self._cond = threading.Condition()
        self._busy = False
        self._round = 0
        self.waiting = 0          # callers waiting for the rendering in progress
        self._result: tuple[_Rendered | None, BaseException | None] = (None, None)

    def get(self, gzipped: bool = False) -> bytes:
        return self._get(gzipped).get(gzipped)

    def _get(self, gzipped: bool) -> _Rendered:
        with self._cond:
            if self._busy:
                waiting_for = self._round
                self.waiting += 1
                self._cond.wait_for(lambda: self._round != waiting_for)
                self.waiting -= 1
                rendered, error = self._result
                if error is not None:
                    raise error
                return rendered
            self._busy = True
        rendered, error = None, None
        try:
            if gzipped:
                rendered = _Rendered(self.gzip_level, gzipped=self._render(GzipWriter(self.gzip_level)).finish())
            else:
                rendered = _Rendered(self.gzip_level, body=self._render())
        except BaseException as e:   # handed to every waiter
            error = e
        with self._cond:
            self._result = (rendered, error)
            self._busy = False
            self._round += 1
            self._cond.notify_all()
        if error is not None:
            raise error
        return rendered


def accepts_gzip(headers: bytes) -> bool:
    """Whether the request's Accept-Encoding allows gzip (RFC 9110 12.5.3): `gzip`, `x-gzip` or
    `*` with a q-value above 0, a named coding taking precedence over `*`. Anything unreadable
    counts as not allowed: the identity coding is always acceptable."""
    q: dict[str, float] = {}
    for line in headers.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() != b"accept-encoding":
            continue
        for item in value.decode("latin-1").split(","):
            coding, *params = [p.strip() for p in item.split(";")]
            weight = 1.0
            for param in params:
                key, _, val = param.partition("=")
                if key.strip().lower() == "q":
                    try:
                        weight = float(val)
                    except ValueError:
                        weight = 0.0
            if coding:
                q[coding.lower()] = weight
    weight = q.get("gzip", q.get("x-gzip", q.get("*", 0.0)))
    return 0.0 < weight <= 1.0


@dataclass
class _Pending:
    sock: socket.socket
    deadline: float
    buf: bytearray = field(default_factory=bytearray)
    handshaken: bool = True          # False while a TLS handshake is under way


def bearer_token(headers: bytes) -> str | None:
    """The token of an `Authorization: Bearer ...` header, if any."""
    for line in headers.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip().decode("latin-1")
    return None


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
        self._pending: dict[socket.socket, _Pending] = {}
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._rendering: SharedRendering | None = None
        self.refused = 0                                   # connections closed for a bound (for tests, logs)
        self.tls, self.authorize = tls, authorize

    def start(self, render: Callable[[], bytes]) -> "MetricsServer":
        self._rendering = SharedRendering(render)
        self._threads = [threading.Thread(target=self._read_requests, name="metrics-accept", daemon=True)]
        self._threads += [threading.Thread(target=self._answer, name=f"metrics-{i}", daemon=True)
                          for i in range(self.workers)]
        for t in self._threads:
            t.start()
        return self

    def shutdown(self) -> None:
        self._stopping.set()
        for _ in range(self.workers):
            try:
                self._work.put_nowait(None)
            except queue.Full:
                break
        for t in self._threads:
            t.join(timeout=2)
        self.sock.close()
        for pending in list(self._pending.values()):
            pending.sock.close()

    # --- the selector thread: accept and read requests -------------------------------------------

    def _read_requests(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ)
        while not self._stopping.is_set():
            for key, _ in sel.select(timeout=0.25):
                if key.fileobj is self.sock:
                    self._accept(sel)
                else:
                    self._receive(sel, key.fileobj)
            now = time.monotonic()
            for sock in [s for s, p in self._pending.items() if p.deadline < now]:
                self._drop(sel, sock)
        sel.close()

    def _accept(self, sel) -> None:
        for _ in range(64):              # a burst, without starving the reads
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:         # e.g. EMFILE: the process's own limit; try again later
                log.warning("metrics: accept: %s", e)
                return
            if len(self._pending) >= self.max_connections:
                oldest = min(self._pending.values(), key=lambda p: p.deadline)
                self._drop(sel, oldest.sock)
            sock.setblocking(False)
            pending = _Pending(sock, time.monotonic() + self.request_timeout)
            if self.tls is not None:
                try:
                    sock = pending.sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                except (OSError, ValueError):
                    sock.close()
                    continue
                pending.handshaken = False
            self._pending[sock] = pending
            sel.register(sock, selectors.EVENT_READ)

    def _drop(self, sel, sock: socket.socket) -> None:
        sel.unregister(sock)
        del self._pending[sock]
        sock.close()
        self.refused += 1

    def _handshake(self, sel, pending: _Pending) -> None:
        try:
            pending.sock.do_handshake()
            pending.handshaken = True
            sel.modify(pending.sock, selectors.EVENT_READ)
        except ssl.SSLWantReadError:
            sel.modify(pending.sock, selectors.EVENT_READ)
        except ssl.SSLWantWriteError:
            sel.modify(pending.sock, selectors.EVENT_WRITE)
        except (ssl.SSLError, OSError):   # not TLS, no or a bad client certificate: closed
            self._drop(sel, pending.sock)

    def _receive(self, sel, sock: socket.socket) -> None:
        pending = self._pending[sock]
        if not pending.handshaken:
            self._handshake(sel, pending)
            return
        try:
            data = sock.recv(4096)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(sel, sock)
            return
        pending.buf += data
        end = pending.buf.find(b"\r\n\r\n")
        if end < 0 and len(pending.buf) <= MAX_REQUEST_BYTES:
            return
        sel.unregister(sock)
        del self._pending[sock]
        sock.setblocking(True)
        sock.settimeout(1.0)             # short answers from this thread must not wait on a client
        if end < 0:
            self._reply(sock, 431, b"request header fields too large\n")
            return
        try:
            self._work.put_nowait((sock, bytes(pending.buf[:end])))
        except queue.Full:
            self._reply(sock, 503, b"busy: too many scrapes at once\n")
            self.refused += 1

    # --- the workers: answer complete requests ------------------------------------------------

    def _answer(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            sock, headers = item
            sock.settimeout(self.send_timeout)
            try:
                self._respond(sock, headers)
            except Exception:
                log.exception("metrics: answering %r failed", headers[:100])
                sock.close()

    def _respond(self, sock: socket.socket, headers: bytes) -> None:
        parts = headers.split(b"\r\n", 1)[0].split()
        if len(parts) != 3 or parts[0] not in (b"GET", b"HEAD"):
            self._reply(sock, 405 if len(parts) == 3 else 400, b"only GET /metrics, /healthz\n")
            return
        path = parts[1].split(b"?", 1)[0]
        if path == b"/metrics" and self.authorize is not None:
            status, why = self.authorize(bearer_token(headers))
            if status != 200:
                self._reply(sock, status, why.encode() + b"\n")
                return
        if path == b"/metrics":
            gzipped = accepts_gzip(headers)
            self._reply(sock, 200, self._rendering.get(gzipped), CONTENT_TYPE, head=parts[0] == b"HEAD",
                        extra="Content-Encoding: gzip\r\nVary: Accept-Encoding\r\n" if gzipped else
                        "Vary: Accept-Encoding\r\n")
        elif path == b"/healthz":
            self._reply(sock, 200, b"ok\n")
        elif path == b"/":
            self._reply(sock, 200, b"probeset agent: /metrics, /healthz\n")
        else:
            self._reply(sock, 404, b"not found\n")

    @staticmethod
    def _reply(sock: socket.socket, status: int, body: bytes, ctype: str = "text/plain",
               head: bool = False, extra: str = "") -> None:
        reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
                  405: "Method Not Allowed", 500: "Internal Server Error",
                  431: "Request Header Fields Too Large", 503: "Service Unavailable"}[status]
        header = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                  f"{extra}Connection: close\r\n\r\n").encode()
        try:
            sock.sendall(header)
            if not head:
                sock.sendall(body)       # not header + body: that would copy the body per scrape
        except OSError:
            pass   # the client went away or was too slow (send_timeout)
        finally:
            sock.close()
