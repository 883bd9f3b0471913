"""Checkpoints: the one loader and the one writer, side by side.

Two published formats hold the same state_dict: the Hugging Face `model.pt` (the dict itself) and
the training script's `{"model_state_dict": ..., "epoch": ...}`. Loading never unpickles code
(`weights_only=True`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..format import SIZES
from .._files import atomic_output
from .model import MicroMixerV2

TRAINER_KEY = "model_state_dict"
TIED_KEY, EMBED_KEY = "lm_head.weight", "token_embedding.weight"


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read(path: Path) -> tuple[dict, dict]:
    """(state_dict, the trainer format's other fields) of either published format."""
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except pickle.UnpicklingError as e:
        # the weights-only unpickler names what it refused to import ("Unsupported global: ...")
        refused = [line.strip() for line in str(e).splitlines() if "Unsupported global" in line]
        if refused:
            raise CheckpointError(f"{path}: refused, holds more than tensors ({refused[0][:160]})") from None
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (unreadable pickle)") from None
    except Exception as e:  # torch raises RuntimeError/EOFError/... for non-torch files
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({type(e).__name__})") from None
    extras = {}
    if isinstance(obj, dict) and isinstance(obj.get(TRAINER_KEY), dict):
        extras = {k: v for k, v in obj.items() if k != TRAINER_KEY}
        obj = obj[TRAINER_KEY]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a MicroMixer state_dict (expected a dict of tensors "
                              f"or {{'{TRAINER_KEY}': ...}})")
    return obj, extras


def infer_size(sd: dict) -> str:
    """The preset whose embedding width matches the checkpoint (each preset's width is unique)."""
    emb = sd.get(EMBED_KEY)
    if emb is None or emb.dim() != 2:
        raise CheckpointError(f"missing key {EMBED_KEY}: not a MicroMixerV2 checkpoint")
    for name, cfg in SIZES.items():
        if emb.shape[1] == cfg.hidden_dim:
            return name
    raise CheckpointError(f"{EMBED_KEY} has shape {tuple(emb.shape)}; no preset has hidden "
                          f"size {emb.shape[1]} ({', '.join(f'{n}: {c.hidden_dim}' for n, c in SIZES.items())})")


def _check_keys(sd: dict, expected: dict, size: str) -> None:
    """Raise on the first missing, extra or mis-shaped key, naming expected and found shape."""
    for key, want in expected.items():
        if key not in sd:
            if key == TIED_KEY:
                continue  # tied to the embedding; some writers drop it
            raise CheckpointError(f"missing key {key} (expected shape {tuple(want.shape)} for {size})")
        if sd[key].shape != want.shape:
            raise CheckpointError(f"key {key}: expected shape {tuple(want.shape)} for {size}, "
                                  f"found {tuple(sd[key].shape)}")
    for key in sd:
        if key not in expected:
            raise CheckpointError(f"unexpected key {key} (shape {tuple(sd[key].shape)}) "
                                  f"in a {size} checkpoint")
    if TIED_KEY in sd and not torch.equal(sd[TIED_KEY], sd[EMBED_KEY]):
        raise CheckpointError(f"{TIED_KEY} differs from {EMBED_KEY}; MicroMixerV2 ties them")


@dataclasses.dataclass
class Loaded:
    model: MicroMixerV2  # in eval mode, float32
    size: str            # preset name
    sha256: str          # of the file
    extras: dict         # the trainer format's other fields (epoch, optimizer state, ...)


def load_checkpoint(path: str | os.PathLike, size: str | None = None) -> Loaded:
    """Load either published format, checking every key and shape against the preset."""
    path = Path(path)
    sd, extras = _read(path)
    found = infer_size(sd)
    if size is not None and size != found:
        raise CheckpointError(f"{path} holds a {found} model, not {size} "
                              f"(hidden size {sd[EMBED_KEY].shape[1]}); drop --size or pick {found}")
    model = MicroMixerV2(SIZES[found])
    _check_keys(sd, model.state_dict(), found)
    sd = {k: v.to(torch.float32) for k, v in sd.items()}  # bundled weights are stored as float16
    sd.setdefault(TIED_KEY, sd[EMBED_KEY])
    model.load_state_dict(sd)
    return Loaded(model.eval(), found, file_sha256(path), extras)


def save_checkpoint(model: MicroMixerV2, path: str | os.PathLike, half: bool = False,
                    **trainer_fields) -> None:
    """Write the Hugging Face format, or the trainer format when trainer_fields are given."""
    sd = {k: (v.half() if half and v.is_floating_point() else v).clone()
          for k, v in model.state_dict().items()}
    obj = {TRAINER_KEY: sd, **trainer_fields} if trainer_fields else sd
    with atomic_output(path) as tmp:
        torch.save(obj, tmp)

