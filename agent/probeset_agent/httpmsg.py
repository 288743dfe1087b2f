"""The bytes of HTTP/1.1 that /metrics reads and writes: the listen address, a request's head
(where it ends, its Accept-Encoding and bearer token) and a reply's head. Pure."""

from __future__ import annotations

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 503: "Service Unavailable"}


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


def _header_lines(headers: bytes) -> list[bytes]:
    """The header lines after the request line; a bare LF ends a line too (RFC 9112 2.2)."""
    return headers.replace(b"\r\n", b"\n").split(b"\n")[1:]


def accepts_gzip(headers: bytes) -> bool:
    """Whether the request's Accept-Encoding allows gzip (RFC 9110 12.5.3): `gzip`, `x-gzip` or
    `*` with a q-value above 0, a named coding taking precedence over `*`. Anything unreadable
    counts as not allowed: the identity coding is always acceptable."""
    q: dict[str, float] = {}
    for line in _header_lines(headers):
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


def bearer_token(headers: bytes) -> str | None:
    """The token of an `Authorization: Bearer ...` header, if any."""
    for line in _header_lines(headers):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip().decode("latin-1")
    return None


def request_end(buf: bytes | bytearray) -> int:
    """Where the request head ends (the index of its empty line), or -1 while it has not."""
    ends = [i for i in (buf.find(b"\r\n\r\n"), buf.find(b"\n\n")) if i >= 0]
    return min(ends) if ends else -1


def reply_head(status: int, length: int, ctype: str = "text/plain", extra: str = "") -> bytes:
    return (f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Type: {ctype}\r\nContent-Length: {length}\r\n"
            f"{extra}Connection: close\r\n\r\n").encode()
