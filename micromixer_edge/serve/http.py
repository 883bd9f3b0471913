"""uvicorn's httptools protocol with the two guards uvicorn lacks.

- A request must arrive whole (headers and body) within `timeout_seconds` of its first byte (or of
  its connection opening): uvicorn waits forever for headers or a body that come a byte at a time
  (a slowloris holds a connection for good). A late request gets a JSON 408 and the connection
  closes. (uvicorn's own timeout_keep_alive closes idle connections between requests.)
- At most `max_connections` connections are open: uvicorn's limit_concurrency answers 503 to
  requests past its limit but accepts and keeps any number of connections; here a connection past
  the limit gets a JSON 503 and is closed at once.
- A request's head (request line and headers) is at most MAX_HEAD_BYTES: httptools buffers any
  amount (a stream of header lines took 1 GB here); past it, a JSON 431 and the connection closes.
- A client must read what it is sent: once the connection's write buffer is full, if it does not
  drain within `timeout_seconds`, the connection is dropped (uvicorn waits for ever). A client that
  never read its answers held their rows and their share of --answers-in-flight-mb for good.
Any byte that arrives starts the request clock, so bytes that never make a request (blank lines
between keep-alive requests, the rest of a body the app did not read) cannot hold a connection.
uvicorn's own answer to malformed HTTP is JSON here too.
"""
from __future__ import annotations

import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .app import error_doc


def _response(status: str, message: str) -> bytes:
    """A whole HTTP answer with the app's JSON error body (written before any app runs)."""
    body = json.dumps(error_doc(int(status.split()[0]), message)).encode()
    return (f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\nconnection: close\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


MAX_HEAD_BYTES = 64 * 1024


def guarded_protocol(timeout_seconds: float, max_connections: int) -> type[HttpToolsProtocol]:
    """The protocol class for uvicorn.Config(http=...)."""
    late = _response("408 Request Timeout", f"the request did not arrive within {timeout_seconds:g} s "
                                            "(--timeout-seconds)")
    full = _response("503 Service Unavailable", f"the server has --max-connections ({max_connections}) "
                                                "open; try again")
    large = _response("431 Request Header Fields Too Large", f"the request line and headers are over "
                                                             f"{MAX_HEAD_BYTES} bytes")

    class GuardedProtocol(HttpToolsProtocol):
        _timer = None
        _stall = None  # armed while writing is paused (the client is not reading)
        _head = 0     # bytes of the request head so far (None: the head is complete)

        def pause_writing(self) -> None:
            super().pause_writing()
            if self._stall is None:
                self._stall = self.loop.call_later(timeout_seconds, self.transport.abort)

        def resume_writing(self) -> None:
            super().resume_writing()
            if self._stall is not None:
                self._stall.cancel()
                self._stall = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                transport.write(full)
                transport.close()
                return
            self._arm()

        def data_received(self, data: bytes) -> None:
            self._arm()
            if self._head is not None:
                self._head += len(data)  # (a chunk may hold the whole head and some body: judged after)
            super().data_received(data)
            if self._head is not None and self._head > MAX_HEAD_BYTES:
                self._refuse(large)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head = 0
            self._arm()

        def on_headers_complete(self) -> None:
            self._head = None
            super().on_headers_complete()

        def send_400_response(self, msg: str) -> None:
            self._refuse(_response("400 Bad Request", f"malformed HTTP request: {msg}"))

        def _refuse(self, response: bytes) -> None:
            if not self.transport.is_closing():
                self.transport.write(response)
                self.transport.close()

        def on_message_complete(self) -> None:
            self._disarm()
            super().on_message_complete()

        def connection_lost(self, exc) -> None:
            self._disarm()
            if self._stall is not None:
                self._stall.cancel()
                self._stall = None
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._timer is None:
                self._timer = self.loop.call_later(timeout_seconds, self._late)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _late(self) -> None:
            self._timer = None
            cycle = self.cycle
            if self.transport.is_closing():
                return
            if cycle is not None and cycle.response_started and not cycle.response_complete:
                self._arm()  # an earlier response is still being written: the late request waits its turn
                return
            if cycle is None or not cycle.response_started:
                self.transport.write(late)
            self.transport.close()

    return GuardedProtocol
