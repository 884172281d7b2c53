"""A threaded WSGI server that keeps HTTP/1.1 connections open, for the API doubles.

werkzeug's development server answers `Connection: close` to every request, so each call
costs its client a new TCP connection and the server a new thread; real APIs keep
connections alive. This handler reads each request body whole (Content-Length or chunked)
before the application runs, so nothing of it is left to be mistaken for the next request,
and writes each response in one piece with its Content-Length.
"""

from __future__ import annotations

import io
from typing import Any

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
