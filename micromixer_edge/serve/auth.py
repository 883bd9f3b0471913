"""Who may call the server: an API key (Authorization: Bearer KEY) and the origins a browser page
may call it from (CORS). Both are off by default: the server binds 127.0.0.1 unless told otherwise."""
from __future__ import annotations

import hmac
from pathlib import Path

from ..errors import MixerError

# Open without a key: the liveness probe a supervisor polls, and the playground page itself (static
# HTML with no data in it; it asks for the key and sends it with every request it makes).
OPEN_PATHS = ("/health", "/")


def read_state_key(path: str | None) -> bytes | None:
    """--state-key-file: the key that signs conversation states (HMAC-SHA256), its first line;
    at least 16 bytes (a fleet shares it: `python -c "import secrets; print(secrets.token_hex(32))"`)."""
    if path is None:
        return None
    lines = Path(path).read_text().strip().splitlines()
    key = lines[0].strip().encode() if lines else b""
    if len(key) < 16:
        raise MixerError(f"{path}: a state key needs at least 16 characters (make one with "
                         "python -c \"import secrets; print(secrets.token_hex(32))\")")
    return key


def read_api_key(key: str | None, key_file: str | None) -> bytes | None:
    """The key from --api-key or the first line of --api-key-file (not both), as bytes."""
    if key and key_file:
        raise MixerError("give --api-key or --api-key-file, not both")
    if key_file:
        try:
            key = Path(key_file).read_text().strip().splitlines()[0].strip()
        except IndexError:
            key = ""
    if key is None:
        return None
    if not key.strip():
        raise MixerError("the API key is empty")
    return key.strip().encode()


class RequireKey:
    """ASGI middleware: every HTTP request outside OPEN_PATHS must carry the key, compared in
    constant time; else a 401 in OpenAI's error shape (what its clients report as an
    AuthenticationError)."""

    def __init__(self, app, key: bytes, unauthorized):
        self.app, self.key, self.unauthorized = app, key, unauthorized

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS and not self._allowed(scope):
            return await self.unauthorized()(scope, receive, send)
        await self.app(scope, receive, send)

    def _allowed(self, scope) -> bool:
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)
