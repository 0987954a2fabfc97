"""Fixes to uvicorn's HTTP server in the API workers: a deadline on request headers (slowloris), and
a SIGTERM drain that resets no connection. The drain also changes the signal circus's arbiter sends
the API workers when the whole server stops, so it is guarded on kantoku and BentoML as well."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import socket
import threading
from typing import Any

from circus.arbiter import Arbiter
from tornado import gen
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import Server as UvicornServer

from sklearn_service import config
from sklearn_service.log_limit import RateLimitFilter
from sklearn_service.patches import Fix
from sklearn_service.patches.bentoml import BENTOML
from sklearn_service.patches.kantoku import ENTRY_WATCHER, KANTOKU

INVALID_REQUEST = ("Invalid HTTP request received.",)  # what each of uvicorn's HTTP parsers logs

UVICORN = "==0.54.0"  # the uvicorn releases whose source these were checked against

ORIGINAL: dict[str, Any] = {  # what each fix replaces: functions, classes, tables of methods
    "HttpToolsProtocol": {name: getattr(HttpToolsProtocol, name) for name in
                          ("connection_made", "on_message_begin", "on_headers_complete", "connection_lost",
                           "shutdown", "_start_asgi_task")},
    "UvicornServer": {name: getattr(UvicornServer, name) for name in ("capture_signals", "shutdown")},
}


def _install_header_deadline() -> None:
    """uvicorn has no time limit on receiving a request's headers: a client trickling one
    header line a second (slowloris) kept its connection for as long as it liked, and a few
    thousand of them exhaust the process's connections. Headers must now be complete within
    app.client_timeout_seconds of the connection opening (or of the request's first byte on a
    kept-alive connection); otherwise the client gets 408 and the connection is closed."""
    seconds = float(config.app()["client_timeout_seconds"])
    original = ORIGINAL["HttpToolsProtocol"]
    body = json.dumps({"error": f"request headers not received within {seconds:g} s",
                       "reason": "request_timeout"}).encode()
    response = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)

    def arm(self) -> None:
        if getattr(self, "_header_deadline", None) is None:
            self._header_deadline = self.loop.call_later(seconds, expired, self)

    def disarm(self) -> None:
        if (handle := getattr(self, "_header_deadline", None)) is not None:
            handle.cancel()
            self._header_deadline = None

    def expired(self) -> None:
        self._header_deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return arm(self)  # a pipelined request: wait until the one being answered is done
        self.transport.write(response)
        self.transport.close()

    def connection_made(self, transport) -> None:
        original["connection_made"](self, transport)
        arm(self)

    def on_message_begin(self) -> None:
        original["on_message_begin"](self)
        arm(self)

    def on_headers_complete(self) -> None:
        disarm(self)
        original["on_headers_complete"](self)

    def connection_lost(self, exc) -> None:
        disarm(self)
        original["connection_lost"](self, exc)

    for function in (connection_made, on_message_begin, on_headers_complete, connection_lost):
        setattr(HttpToolsProtocol, function.__name__, function)


# --- SIGTERM: a drain that resets nothing (uvicorn in the workers, circus in the arbiter) -----------

SERVER_STOPPING = signal.SIGUSR1  # the arbiter's stop signal to the API workers when the whole server stops


def _install_drain_without_resets() -> None:
    """On SIGTERM, 32 clients under load saw ~32 requests reset (`Connection reset by peer`): the
    public listening socket belongs to the arbiter and every worker (the runner too) inherits it,
    so when an API worker stopped accepting it kept listening; the clients' new connections queued
    in its backlog, where no process would ever accept them, and were reset when the arbiter closed
    it at exit. And uvicorn closed each connection with no request in progress at once, dropping a
    request already on its way (or unread in the receive buffer) on a kept-alive connection.

    Now, when the whole server stops, the arbiter sends its API workers SERVER_STOPPING instead of
    SIGTERM. Each accepts every connection already queued and shuts the listening socket down
    (shutdown() acts on the socket itself, in every process holding it), so from then on a connect
    is refused and a client or load balancer can go elsewhere; then it drains as on SIGTERM. A SIGTERM
    to one worker (a restart, `--reload`) leaves the socket to the others. While draining, a connection
    with no request in progress stays open for uvicorn's keep-alive timeout; a request that arrives on
    it is answered, with `Connection: close`."""
    capture, server_shutdown = UvicornServer.capture_signals, UvicornServer.shutdown
    protocol_shutdown, start_asgi_task = HttpToolsProtocol.shutdown, HttpToolsProtocol._start_asgi_task
    stop_watchers = Arbiter._stop_watchers

    @contextlib.contextmanager
    def capture_signals(self: UvicornServer):
        def server_stopping(sig, frame) -> None:
            self.stops_listening = True  # type: ignore[attr-defined]  # an attribute of this fix's own
            self.handle_exit(signal.SIGTERM, frame)

        with capture(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = signal.signal(SERVER_STOPPING, server_stopping)
            try:
                yield
            finally:
                signal.signal(SERVER_STOPPING, previous)

    async def shutdown(self: UvicornServer, sockets=None) -> None:
        if getattr(self, "stops_listening", False):
            queued = _accept_queued_and_stop_listening(sockets or [])
            for server in self.servers:
                server.close()
            loop, config = asyncio.get_running_loop(), self.config
            for connection in queued:
                try:
                    await loop.connect_accepted_socket(
                        # typed as asyncio.Protocol: uvicorn's own classes take these
                        lambda: config.http_protocol_class(config=config, server_state=self.server_state,  # type: ignore[call-arg]
                                                           app_state=self.lifespan.state),
                        connection, ssl=config.ssl)
                except OSError:  # the client has gone
                    connection.close()
        await server_shutdown(self, sockets)

    def connection_shutdown(self: HttpToolsProtocol) -> None:
        if self.cycle is not None and not self.cycle.response_complete:
            return protocol_shutdown(self)  # answers with Connection: close, then closes
        self.draining = True  # type: ignore[attr-defined]  # an attribute of this fix's own
        if self.scope is None and self.timeout_keep_alive_task is None:  # nothing received yet
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive,
                                                                self.timeout_keep_alive_handler)

    def start_request(self: HttpToolsProtocol, cycle, app) -> None:
        if getattr(self, "draining", False):
            cycle.keep_alive = False
        start_asgi_task(self, cycle, app)

    @gen.coroutine
    def stop_watchers_telling_the_api_workers(self: Arbiter, close_output_streams=False, watcher_iter_func=None):
        if self._stopping:  # the arbiter exits (not a restart): the listening socket goes too
            for watcher in (watcher_iter_func or self.iter_watchers)(reverse=False):
                if watcher.name == ENTRY_WATCHER:
                    watcher.stop_signal = SERVER_STOPPING
        yield stop_watchers(self, close_output_streams, watcher_iter_func)

    UvicornServer.capture_signals, UvicornServer.shutdown = capture_signals, shutdown  # type: ignore[method-assign]
    HttpToolsProtocol.shutdown = connection_shutdown  # type: ignore[method-assign]
    HttpToolsProtocol._start_asgi_task = start_request  # type: ignore[method-assign]
    Arbiter._stop_watchers = stop_watchers_telling_the_api_workers


def _accept_queued_and_stop_listening(listeners: list[socket.socket]) -> list[socket.socket]:
    """Connections the kernel has queued on the listening sockets, taken before the sockets are shut
    down so that none is reset. No await in between: the window for a connection to slip in is the
    one system call from the last accept to shutdown. Another worker may have shut a socket first."""
    queued = []
    for listener in listeners:
        with contextlib.suppress(OSError):  # BlockingIOError: none left; EINVAL: no longer listening
            while True:
                queued.append(listener.accept()[0])
        with contextlib.suppress(OSError):  # ENOTCONN: already shut down
            listener.shutdown(socket.SHUT_RDWR)
    return queued



FIXES: list[Fix] = [
    Fix("header_timeout", "uvicorn", UVICORN, _install_header_deadline),
    # uvicorn logs a warning (no traceback) for every malformed request a client sends
    Fix("uvicorn_warnings_rate_limited", "uvicorn", UVICORN,
        lambda: logging.getLogger("uvicorn.error").addFilter(RateLimitFilter(messages=INVALID_REQUEST))),
    Fix("drain_without_resets", "uvicorn", UVICORN, _install_drain_without_resets,
        also=(("kantoku", KANTOKU), ("bentoml", BENTOML))),
]
