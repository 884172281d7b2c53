"""A threaded WSGI server that keeps HTTP/1.1 connections open, for the API doubles.

werkzeug's development server answers `Connection: close` to every request, so each call
costs its client a new TCP connection and the server a new thread; real APIs keep
connections alive. This handler reads each request body whole (Content-Length or chunked)
before the application runs, so nothing of it is left to be mistaken for the next request,
and writes each response in one piece with its Content-Length.
"""

from __future__ import annotations

import io
import threading
from typing import Any, Self

from flask import Flask
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server


class KeepAliveHandler(WSGIRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    wbufsize = 1 << 16  # headers and body go out together when the request ends
    timeout = 60  # an idle connection's thread ends after this long

    def log_request(self, *args: Any, **kwargs: Any) -> None:
        """No access line per request on stderr (the doubles record requests themselves)."""

    def log_error(self, format: str, *args: Any) -> None:
        if not format.startswith("Request timed out"):  # an idle connection closed: not an error
            super().log_error(format, *args)

    def run_wsgi(self) -> None:
        environ = self.make_environ()
        if environ.get("wsgi.input_terminated"):  # chunked: werkzeug decodes it
            body = environ["wsgi.input"].read()
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        started: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            started[:] = [status, headers]
            return lambda data: None  # the write() callable is not used by Flask

        result = self.server.app(environ, start_response)
        try:
            payload = b"".join(result)
        finally:
            if hasattr(result, "close"):
                result.close()
        code, _, reason = started[0].partition(" ")
        self.send_response(int(code), reason)
        for name, value in started[1]:
            if name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)


def keepalive_server(app: Flask, host: str = "127.0.0.1", port: int = 0) -> BaseWSGIServer:
    """The app on a socket (not yet serving: call serve_forever, e.g. from a thread)."""
    return make_server(host, port, app, threaded=True, request_handler=KeepAliveHandler)


class BackgroundServer:
    """A Flask app on a real socket, served from a daemon thread: the API doubles' common shape."""

    path = ""  # where the API sits under the server's root

    def __init__(self, app: Flask, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = keepalive_server(app, host, port)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=app.name, daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}{self.path}"

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
