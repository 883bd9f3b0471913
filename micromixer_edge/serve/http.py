"""uvicorn's httptools protocol with the guard uvicorn lacks: a request's headers must arrive
within a timeout. uvicorn closes idle keep-alive connections (timeout_keep_alive) and answers 503
past limit_concurrency, but waits forever for a request whose headers come a byte at a time (a
slowloris holds a connection open for good). The body's own timeout is the app's (serve/app.py)."""
from __future__ import annotations

import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def _timeout_response(seconds: float) -> bytes:
    body = json.dumps({"error": {"message": f"the request headers did not arrive within {seconds:g} s "
                                            "(--timeout-seconds)", "type": "invalid_request_error",
                                 "param": None, "code": None}}).encode()
    return (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def guarded_protocol(timeout_seconds: float) -> type[HttpToolsProtocol]:
    """The protocol class for uvicorn.Config(http=...): 408 and close when a request's headers
    are not complete `timeout_seconds` after its connection opened or its first byte came."""
    late = _timeout_response(timeout_seconds)

    class GuardedProtocol(HttpToolsProtocol):
        _headers_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._headers_timer is None:
                self._headers_timer = self.loop.call_later(timeout_seconds, self._headers_late)

        def _disarm(self) -> None:
            if self._headers_timer is not None:
                self._headers_timer.cancel()
                self._headers_timer = None

        def _headers_late(self) -> None:
            self._headers_timer = None
            if not self.transport.is_closing():
                self.transport.write(late)
                self.transport.close()

    return GuardedProtocol
