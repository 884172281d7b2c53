"""Kept-alive HTTP/1.1 connections to one API host: each request is written whole on a socket, and
its answer is framed by httptools (llhttp, Node.js's HTTP parser): Content-Length, chunked, or a
body that runs to the close.

Each call takes an idle connection (or opens one), and gives it back once its answer is read
whole; at most `max_idle` wait for the next call. A connection the server closed while it was idle
is found before it is used (readable with nothing asked of it) and replaced, as urllib3's pool does.
Any failure closes the connection: the next call opens a new one. Nothing is retried here: a failed
call raises, and the caller decides (service/destinations/http_api.py).

Why not a library's client: a delivery worker spends a third of its CPU in the call. Measured
against the User.com double, client CPU per PUT: urllib3's pool 205-220 µs, http.client 140 µs
(most of it parsing the answer's headers with the email package), this 40-50 µs.
"""

from __future__ import annotations

import http.client
import re
import select
import socket
import ssl
import threading
import time
import weakref
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools

READ_SIZE = 1 << 16
# What an answer may hold, as http.client allowed (100 headers), and a body far beyond any API answer:
# past them the call fails instead of holding the worker and its memory.
MAX_HEADERS, MAX_HEADER_BYTES, MAX_BODY_BYTES = 100, 1 << 16, 1 << 24
# What a request line or a header may not hold (http.client refuses the same): a request split in two.
_UNSAFE_IN_LINE = re.compile(r"[\x00-\x20\x7f]")
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an RFC 9110 token
_UNSAFE_IN_VALUE = re.compile(r"[\x00\r\n]")
_SET_HERE = frozenset({"host", "content-length", "transfer-encoding"})  # the request's framing


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # names lower-cased; a repeated header: its first value (as http.client's get)
    body: bytes


class KeepAlivePool:
    def __init__(self, base_url: str, *, connect_timeout: float, read_timeout: float, max_idle: int = 10) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        https = parts.scheme == "https"
        self.prefix = parts.path.rstrip("/")
        self._host, self._port = parts.hostname, parts.port or (443 if https else 80)
        host = f"[{self._host}]" if ":" in self._host else self._host  # an IPv6 address
        default_port = parts.port in (None, 443 if https else 80)
        self._host_line = f"Host: {host}" if default_port else f"Host: {host}:{parts.port}"
        self._context = ssl.create_default_context() if https else None
        self._connect_timeout, self._read_timeout = connect_timeout, read_timeout
        self._max_idle = max_idle
        self._idle: list[socket.socket] = []
        self._lock = threading.Lock()
        # A client dropped without close() (a test's, a worker's at exit) closes its idle connections.
        self.close = weakref.finalize(self, _close_all, self._idle, self._lock)

    def request(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> Answer:
        """The answer, read whole; raises OSError or http.client.HTTPException when the call fails,
        ValueError for a request this cannot make (nothing is sent). `read_timeout` bounds the whole
        call once connected, writing the request and reading its answer whole (TimeoutError past it):
        not each read, as http.client's did, which a server trickling its answer could hold forever."""
        request = self._request_bytes(method, path, body, headers)
        sock = self._take()
        try:
            deadline = time.monotonic() + self._read_timeout
            sock.settimeout(self._read_timeout)
            sock.sendall(request)
            answer, keep = _read_answer(sock, deadline)
        except BaseException:
            sock.close()
            raise
        if keep:
            self._give_back(sock)
        else:
            sock.close()
        return answer

    def _request_bytes(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
        if method.upper() == "HEAD":  # its answer announces a body it does not carry: this would wait for it
            raise ValueError("HEAD is not supported: nothing here asks for headers alone")
        if _UNSAFE_IN_LINE.search(method) or _UNSAFE_IN_LINE.search(path):
            raise ValueError(f"a method or path with a space or control character: {method} {path!r}")
        lines = [f"{method} {path} HTTP/1.1", self._host_line, "Accept-Encoding: identity"]
        for name, value in headers.items():
            if not _HEADER_NAME.fullmatch(name) or _UNSAFE_IN_VALUE.search(value):
                raise ValueError(f"header {name!r}: a name or value that would split the request")
            if name.lower() in _SET_HERE:
                raise ValueError(f"header {name!r}: set here, from the URL and the body")
            lines.append(f"{name}: {value}")
        lines.append(f"Content-Length: {len(body)}\r\n\r\n")
        return "\r\n".join(lines).encode("latin-1") + body

    def _take(self) -> socket.socket:
        while True:
            with self._lock:
                sock = self._idle.pop() if self._idle else None
            if sock is None:
                return self._open()
            if not _closed_by_server(sock):
                return sock
            sock.close()

    def _open(self) -> socket.socket:
        sock = socket.create_connection((self._host, self._port), timeout=self._connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # the request goes out at once
            if self._context is not None:  # the handshake within the connect timeout too
                # A close without TLS's close_notify fails the read: a forged FIN cannot cut an answer short.
                sock = self._context.wrap_socket(sock, server_hostname=self._host, suppress_ragged_eofs=False)
        except BaseException:
            sock.close()
            raise
        return sock

    def _give_back(self, sock: socket.socket) -> None:
        with self._lock:  # once closed (close.alive false), nothing is kept
            if self.close.alive and len(self._idle) < self._max_idle:
                self._idle.append(sock)
                return
        sock.close()


class _Reading:
    """httptools' callbacks for one answer: its headers, its body, and whether it is complete."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.headers: dict[str, str] = {}
        self.header_count = self.header_bytes = self.body_bytes = 0
        self.chunks: list[bytes] = []
        self.started = self.headed = False
        self.status = 0
        self.keep: bool | None = None  # set once complete: whether the connection may be used again
        self.extra = False  # more than one answer arrived: the connection is out of step

    def on_message_begin(self) -> None:
        self.extra = self.keep is not None
        self.started = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.extra or self.headed:  # another answer's, or a chunked body's trailer
            return
        self.header_count += 1
        self.header_bytes += len(name) + len(value)
        if self.header_count > MAX_HEADERS or self.header_bytes > MAX_HEADER_BYTES:
            raise http.client.HTTPException(f"more than {MAX_HEADERS} headers or {MAX_HEADER_BYTES} bytes of them")
        self.headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))

    def on_headers_complete(self) -> None:
        self.headed = True

    def on_body(self, data: bytes) -> None:
        if self.extra:
            return
        self.body_bytes += len(data)
        if self.body_bytes > MAX_BODY_BYTES:
            raise http.client.HTTPException(f"an answer's body over {MAX_BODY_BYTES} bytes")
        self.chunks.append(data)

    def on_message_complete(self) -> None:
        if self.extra:
            return
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:  # interim (100 Continue, 103 Early Hints): the answer follows
            self.headers, self.chunks, self.headed = {}, [], False
            self.header_count = self.header_bytes = self.body_bytes = 0
            return
        # Read here: llhttp resets what this depends on once the message is done.
        self.status, self.keep = status, self.parser.should_keep_alive()

    def runs_to_close(self) -> bool:
        """A body with neither Content-Length nor chunked framing ends where the connection does."""
        chunked = self.headers.get("transfer-encoding", "").lower().endswith("chunked")
        return self.headed and "content-length" not in self.headers and not chunked


def _read_answer(sock: socket.socket, deadline: float) -> tuple[Answer, bool]:
    """The next answer on `sock`, read whole by `deadline` (time.monotonic()), and whether the
    connection may carry another request."""
    reading = _Reading()
    while reading.keep is None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the answer was not read whole within the read timeout")
        sock.settimeout(left)
        data = sock.recv(READ_SIZE)
        if not data:
            if reading.runs_to_close():
                return Answer(reading.parser.get_status_code(), reading.headers, b"".join(reading.chunks)), False
            if not reading.started:
                raise http.client.RemoteDisconnected("the server closed the connection without an answer")
            raise http.client.IncompleteRead(b"".join(reading.chunks))
        try:
            reading.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:  # (101 Switching Protocols)
            if reading.keep is not None:  # whole, then bytes nobody asked for
                reading.extra = True
                break
            if isinstance(exc.__context__, http.client.HTTPException):  # a limit above, from a callback
                raise exc.__context__ from None
            raise http.client.HTTPException(f"a malformed answer: {exc}") from None
    if reading.status == 101:
        raise http.client.HTTPException("the server switched protocols, which nothing asked for")
    return Answer(reading.status, reading.headers, b"".join(reading.chunks)), reading.keep and not reading.extra


def _close_all(idle: list[socket.socket], lock: threading.Lock) -> None:
    with lock:
        connections = idle[:]
        idle.clear()
    for sock in connections:
        sock.close()


def _closed_by_server(sock: socket.socket) -> bool:
    """An idle connection that can be read from was closed by the server (or sent what nobody asked)."""
    if sock.fileno() < 0:
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))
