"""Bytes are the tokens: the one place that turns text into token ids and back.

A prompt is [bos] + utf8; a training or evaluation story is [bos] + utf8 + [eos]; stories in a text
file are separated by blank lines. Needs numpy only.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import MixerError
from .format import BOS_ID, EOS_ID


def encode_prompt(prompt: str | bytes) -> list[int]:
    """[bos] + utf8(prompt); a str that is not valid Unicode (a lone surrogate) is a MixerError.
    A prompt of token ids (bytes) that begins with bos has it already (as a client that asks
    for tokens with special ones, or lm-eval's empty context, sends it): it is not added twice."""
    if isinstance(prompt, str):
        return [BOS_ID, *utf8(prompt)]
    return list(prompt) if prompt[:1] == bytes((BOS_ID,)) else [BOS_ID, *prompt]


def utf8(text: str, what: str = "the prompt") -> bytes:
    """UTF-8 of text, or a MixerError that says where it is not Unicode (JSON may carry a lone
    surrogate escape such as \\ud800, which has no UTF-8)."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise MixerError(f"{what} is not valid Unicode: a lone surrogate U+{ord(text[e.start]):04X} at "
                         f"character {e.start}") from None


def encode_story(story: bytes) -> np.ndarray:
    """A story as the model was trained on it: [bos] + utf8 + [eos], int64."""
    return np.frombuffer(bytes([BOS_ID]) + story + bytes([EOS_ID]), np.uint8).astype(np.int64)


def read_stories(path: str | Path) -> list[bytes]:
    """Stories of a UTF-8 text file, separated by blank lines."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, not a text file")
    data = path.read_bytes().replace(b"\r\n", b"\n")
    stories = [s for s in (s.strip() for s in data.split(b"\n\n")) if s]
    if not stories:
        raise MixerError(f"{path}: no text found (stories are separated by blank lines)")
    return stories
