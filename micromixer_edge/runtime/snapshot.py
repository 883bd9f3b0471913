"""A row's state as bytes: everything needed to go on exactly where a run stopped. Not pickle.

Version 2 (what writers write; every size and constant named in format.py, docs/format.md):
    magic "MIXSTATE" | version uint16 | SNAPSHOT_FIXED (the model file's sha256, first 16 bytes;
    num_layers, hidden_dim, vocab uint16; position uint64; context name length uint8) | context
    name | generator (kind uint8: 0 = seed uint64 and draws uint32, 1 = the Mersenne Twister's
    625 uint32 words and its gauss) | counts (uint16 n, n x (byte uint8, times uint32)) | recent
    (uint16 n, n bytes) | history (uint16 n, n bytes) | sums float32 (L, H) | logits float32 (V,)
    | crc32 of all before it.
About 4 KB for the 1m model (3 x 224 sums, 256 logits, W = 256 bytes of history); the generator
is a seed and a count of draws (replayed on resume), not the Twister's 2.5 KB. Version 1 (a JSON
header) is still read. Everything read is checked before use: sizes, finite values, the model.

As text for HTTP (`to_text`/`from_text`): base64url without padding, and with a key, "." and
the HMAC-SHA256 of the bytes (checked in constant time; an unsigned or altered state is refused).
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import json
import random
import re
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import SnapshotError
from .. import format as fmt

_HEAD = struct.Struct("<8sH")
_V1_HEAD = struct.Struct("<8sHI")
_FIXED = struct.Struct(fmt.SNAPSHOT_FIXED)
_SEED = struct.Struct("<QI")
_COUNT = struct.Struct("<BI")
_CRC = struct.Struct("<I")


@dataclasses.dataclass
class Snapshot:
    """One row's state (runtime/engine.py writes and restores it)."""
    model_sha256: str          # hex, of the model file (version 2 keeps its first 16 bytes)
    num_layers: int
    hidden_dim: int
    context: str               # the context mode's name
    position: int
    history: list[int]         # the latest tokens (window and halve re-fold from them)
    recent: list[int]          # the repetition penalty's window
    counts: list[tuple[int, int]]  # (byte, times generated): the presence and frequency penalties
    generator: tuple           # (seed, draws) or (None, random.Random's state): Sampler.generator()
    sums: np.ndarray           # (L, H) float32
    logits: np.ndarray         # (V,) float32: the next byte's, the last byte folded in


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def encode(s: Snapshot) -> bytes:
    name = s.context.encode()
    parts = [_HEAD.pack(fmt.SNAPSHOT_MAGIC, fmt.SNAPSHOT_VERSION),
             _FIXED.pack(bytes.fromhex(s.model_sha256)[:16], s.num_layers, s.hidden_dim, len(s.logits),
                         s.position, len(name)), name, _generator(s.generator),
             struct.pack("<H", len(s.counts)), b"".join(_COUNT.pack(b, n) for b, n in s.counts)]
    for tokens in (s.recent, s.history):
        parts += [struct.pack("<H", len(tokens)), bytes(tokens)]
    parts += [np.ascontiguousarray(s.sums, "<f4").tobytes(), np.ascontiguousarray(s.logits, "<f4").tobytes()]
    body = b"".join(parts)
    return body + _CRC.pack(zlib.crc32(body))


def _generator(generator: tuple) -> bytes:
    seed, state = generator
    if seed is not None:
        return b"\x00" + _SEED.pack(seed, state)
    version, words, gauss = state
    return (b"\x01" + struct.pack(f"<{fmt.MT_WORDS}I", *words)
            + struct.pack("<?d", gauss is not None, gauss or 0.0))


def decode(data: bytes, old: bool = True) -> Snapshot:
    """The snapshot in `data`; SnapshotError with one line on anything unreadable or unsafe.
    old=False refuses version 1 (a JSON header: a server takes only what servers wrote)."""
    if len(data) < _V1_HEAD.size + _CRC.size or data[:8] != fmt.SNAPSHOT_MAGIC:
        raise SnapshotError("not a MicroMixer state snapshot (made by mixer-run --save-state)")
    if len(data) > fmt.MAX_SNAPSHOT_BYTES:
        raise SnapshotError(f"the snapshot is over {fmt.MAX_SNAPSHOT_BYTES // 1024} KB")
    _, version = _HEAD.unpack_from(data)
    if version not in fmt.READABLE_SNAPSHOT_VERSIONS or version == 1 and not old:
        raise SnapshotError(f"snapshot version {version} is not supported (this runtime reads "
                            f"{fmt.READABLE_SNAPSHOT_VERSIONS.start}..{fmt.READABLE_SNAPSHOT_VERSIONS.stop - 1})")
    if zlib.crc32(data[:-_CRC.size]) != _CRC.unpack_from(data, len(data) - _CRC.size)[0]:
        raise SnapshotError("the snapshot is truncated or corrupt (checksum mismatch)")
    try:
        s = _decode_v1(data) if version == 1 else _decode_v2(data[:-_CRC.size])
        _check(s)
    except SnapshotError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever a crafted snapshot makes the readers raise
        raise SnapshotError(f"the snapshot is unreadable ({type(e).__name__})") from None
    return s


class _Reader:
    def __init__(self, data: bytes, at: int):
        self.data, self.at = data, at

    def take(self, n: int) -> bytes:
        if n < 0 or self.at + n > len(self.data):
            raise ValueError("past the end")
        self.at += n
        return self.data[self.at - n:self.at]

    def unpack(self, s: struct.Struct) -> tuple:
        return s.unpack(self.take(s.size))

    def floats(self, n: int) -> np.ndarray:
        return np.frombuffer(self.take(4 * n), "<f4").astype(np.float32)


def _decode_v2(body: bytes) -> Snapshot:
    r = _Reader(body, _HEAD.size)
    sha, layers, hidden, vocab, position, name_len = r.unpack(_FIXED)
    context = r.take(name_len).decode("ascii")
    kind = r.take(1)[0]
    if kind == 0:
        generator = r.unpack(_SEED)
    elif kind == 1:
        words = struct.unpack(f"<{fmt.MT_WORDS}I", r.take(4 * fmt.MT_WORDS))
        has_gauss, gauss = struct.unpack("<?d", r.take(9))
        generator = (None, (3, words, gauss if has_gauss else None))
    else:
        raise ValueError("generator kind")
    counts = [r.unpack(_COUNT) for _ in range(struct.unpack("<H", r.take(2))[0])]
    recent, history = (list(r.take(struct.unpack("<H", r.take(2))[0])) for _ in range(2))
    sums, logits = r.floats(layers * hidden).reshape(layers, hidden), r.floats(vocab)
    if r.at != len(body):
        raise ValueError("trailing bytes")
    return Snapshot(sha.hex(), layers, hidden, context, position, history, recent, counts, generator, sums, logits)


def _decode_v1(data: bytes) -> Snapshot:
    """Version 1: a JSON header, then its arrays."""
    _, _, size = _V1_HEAD.unpack_from(data)
    header = json.loads(data[_V1_HEAD.size:_V1_HEAD.size + size])
    arrays, at = {}, _V1_HEAD.size + size
    for name, shape in header["arrays"]:
        n = int(np.prod(shape)) * 4
        arrays[name] = np.frombuffer(data[at:at + n], "<f4").reshape(shape).astype(np.float32)
        at += n
    if at != len(data) - _CRC.size:
        raise ValueError("arrays")
    version, words, gauss = header["rng"]
    return Snapshot(header["model_sha256"], header["num_layers"], header["hidden_dim"], header["context"],
                    int(header["position"]), list(header["history"]), list(header["recent"]),
                    [(int(b), int(n)) for b, n in header.get("counts", [])], (None, (version, tuple(words), gauss)),
                    arrays["sums"], arrays["logits"])


def _check(s: Snapshot) -> None:
    """What a row may resume from: sizes in range, tokens bytes, finite values."""
    tokens = s.history + s.recent
    if len(s.history) > fmt.MAX_SNAPSHOT_TOKENS or len(s.recent) > fmt.MAX_SNAPSHOT_TOKENS or \
            not all(isinstance(t, int) and 0 <= t < 256 for t in tokens):
        raise SnapshotError("the snapshot's tokens are out of range")
    if not all(0 <= b < 256 and n >= 0 for b, n in s.counts) or not 0 <= s.position < 2 ** 40:
        raise SnapshotError("the snapshot's counts or position are out of range")
    if s.sums.shape != (s.num_layers, s.hidden_dim) or not (np.isfinite(s.sums).all() and np.isfinite(s.logits).all()):
        raise SnapshotError("the snapshot's state is not finite or not of its shape")
    seed, state = s.generator
    if seed is not None and not (isinstance(seed, int) and isinstance(state, int) and 0 <= state <= fmt.MAX_SNAPSHOT_DRAWS):
        raise SnapshotError(f"the snapshot's generator asks to replay over {fmt.MAX_SNAPSHOT_DRAWS} draws")
    if seed is None:
        random.Random().setstate(state)  # (ValueError, TypeError: a state that is not the Twister's)
    if not (isinstance(s.model_sha256, str) and isinstance(s.context, str) and isinstance(s.position, int)):
        raise SnapshotError("the snapshot's header has the wrong types")


def check_model(s: Snapshot, sha256: str, config: fmt.MixerConfig) -> None:
    if not sha256.startswith(s.model_sha256) or len(s.model_sha256) < 32:
        raise SnapshotError("the snapshot was made with another model file (sha256 "
                            f"{s.model_sha256[:12]}, this one {sha256[:12]})")
    if s.num_layers != config.num_layers or s.hidden_dim != config.hidden_dim or len(s.logits) != config.vocab_size:
        raise SnapshotError("the snapshot's state shape does not match this model")


# --- as text, for HTTP -----------------------------------------------------------------------------
def to_text(data: bytes, key: bytes | None = None, domain: str = "") -> str:
    """base64url of the snapshot, and with a key "." and its HMAC-SHA256 over `domain` and the
    bytes: a server signs a chat's states with its template's hash, so that a state made by
    completions (no system prompt folded in) or under another template is refused by chat."""
    text = base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    if key is None:
        return text
    return text + fmt.STATE_SIGNATURE_SEP + base64.urlsafe_b64encode(_mac(key, domain, data)).rstrip(b"=").decode()


def from_text(text, key: bytes | None = None, domain: str = "") -> bytes:
    """The snapshot's bytes of a `to_text` text; SnapshotError if it is not one, or with a key
    when it is unsigned or its signature (for `domain`) does not match, checked before anything
    is decoded."""
    if not isinstance(text, str) or len(text) > fmt.MAX_STATE_CHARS:
        raise SnapshotError(f"must be a state text of at most {fmt.MAX_STATE_CHARS} characters")
    body, sep, tag = text.partition(fmt.STATE_SIGNATURE_SEP)
    data, mac = _b64(body), _b64(tag) if sep else None
    if key is not None:
        if mac is None:
            raise SnapshotError("is not signed, and this server takes signed states only (--state-key-file)")
        if not hmac.compare_digest(mac, _mac(key, domain, data)):
            raise SnapshotError("has a signature that does not match (altered, signed with another key, or made "
                                "by another endpoint or chat template)")
    elif mac is not None:
        raise SnapshotError("is signed, and this server has no --state-key-file to check it")
    return data


def _mac(key: bytes, domain: str, data: bytes) -> bytes:
    return hmac.new(key, domain.encode() + b"\0" + data, hashlib.sha256).digest()


def _b64(text: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise SnapshotError("is not base64url text")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise SnapshotError("is not base64url text") from None
