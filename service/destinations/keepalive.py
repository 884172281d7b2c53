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
import weakref
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools

READ_SIZE = 1 << 16
# What a request line or a header may not hold (http.client refuses the same): a request split in two.
_UNSAFE_IN_LINE = re.compile(r"[\x00-\x20\x7f]")
_UNSAFE_IN_HEADER = re.compile(r"[\x00\r\n]")


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # names lower-cased; a repeated header's values joined with ", "
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
        ValueError for a path or header that would split the request (nothing is sent)."""
        request = self._request_bytes(method, path, body, headers)
        sock = self._take()
        try:
            sock.sendall(request)
            answer, keep = _read_answer(sock)
        except BaseException:
            sock.close()
            raise
        if keep:
            self._give_back(sock)
        else:
            sock.close()
        return answer

    def _request_bytes(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
        if method == "HEAD":  # its answer announces a body it does not carry: the framing here would wait for it
            raise ValueError("HEAD is not supported: nothing here asks for headers alone")
        if _UNSAFE_IN_LINE.search(method) or _UNSAFE_IN_LINE.search(path):
            raise ValueError(f"a method or path with a space or control character: {method} {path!r}")
        lines = [f"{method} {path} HTTP/1.1", self._host_line, "Accept-Encoding: identity"]
        for name, value in headers.items():
            if _UNSAFE_IN_HEADER.search(name) or _UNSAFE_IN_HEADER.search(value) or ":" in name:
                raise ValueError(f"header {name!r}: a name or value that would split the request")
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
                sock = self._context.wrap_socket(sock, server_hostname=self._host)
            sock.settimeout(self._read_timeout)  # connected: each send and read may wait this long
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

    def __init__(self, parser_of: list[httptools.HttpResponseParser]) -> None:
        self._parser_of = parser_of
        self.headers: dict[str, str] = {}
        self.chunks: list[bytes] = []
        self.started = self.headed = False
        self.status = 0
        self.keep: bool | None = None  # set once complete: whether the connection may be used again
        self.extra = False  # more than one answer arrived: the connection is out of step

    def on_message_begin(self) -> None:
        self.extra = self.keep is not None
        self.started = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.extra:
            return
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text

    def on_headers_complete(self) -> None:
        self.headed = True

    def on_body(self, data: bytes) -> None:
        if not self.extra:
            self.chunks.append(data)

    def on_message_complete(self) -> None:
        if self.extra:
            return
        parser = self._parser_of[0]
        status = parser.get_status_code()
        if 100 <= status < 200 and status != 101:  # interim (100 Continue, 103 Early Hints): the answer follows
            self.headers, self.chunks, self.headed = {}, [], False
            return
        # Read here: llhttp resets what this depends on once the message is done.
        self.status, self.keep = status, parser.should_keep_alive()

    def runs_to_close(self) -> bool:
        """A body with neither Content-Length nor chunked framing ends where the connection does."""
        return self.headed and "content-length" not in self.headers and "transfer-encoding" not in self.headers


def _read_answer(sock: socket.socket) -> tuple[Answer, bool]:
    """The next answer on `sock`, read whole, and whether the connection may carry another request."""
    parser_of: list[httptools.HttpResponseParser] = []
    reading = _Reading(parser_of)
    parser = httptools.HttpResponseParser(reading)
    parser_of.append(parser)
    while reading.keep is None:
        data = sock.recv(READ_SIZE)
        if not data:
            if reading.runs_to_close():
                return Answer(parser.get_status_code(), reading.headers, b"".join(reading.chunks)), False
            if not reading.started:
                raise http.client.RemoteDisconnected("the server closed the connection without an answer")
            raise http.client.IncompleteRead(b"".join(reading.chunks))
        try:
            parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:  # (101 Switching Protocols)
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
