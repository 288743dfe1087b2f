"""One rendering of /metrics shared by the scrapers that ask while it runs, in the encoding the first
of them asked for: gzip (ISA-L, compressed as the body is written) or identity."""

from __future__ import annotations

import threading
from typing import Callable

from isal import isal_zlib

GZIP_LEVEL = 1            # ISA-L's levels are 0-3; docs/benchmarks.md 2: 1 costs the fewest CPU ms per byte saved


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
