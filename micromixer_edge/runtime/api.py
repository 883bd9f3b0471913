"""The runtime's Python entry points, as the CLI and users call them."""
from __future__ import annotations

import os

from ..format import DEFAULT_BACKEND
from .generate import GenerateOptions
from .model import MixerModel
from .sampling import SamplingParams


def load_model(path: str | os.PathLike, threads: int = 1, backend: str = DEFAULT_BACKEND) -> MixerModel:
    """Open an exported .onnx file (its metadata says everything else)."""
    return MixerModel(path, threads, backend)


def options_from(max_new_tokens=256, seed=None, stop=(), context=None, context_mode=None,
                 **sampling) -> GenerateOptions:
    """GenerateOptions from flat keyword arguments (the CLI's flags)."""
    mode = context_mode or context
    kw = {"context": mode} if mode else {}
    return GenerateOptions(max_new_tokens=max_new_tokens, sampling=SamplingParams(**sampling),
                           seed=seed, stop=tuple(stop), **kw)
