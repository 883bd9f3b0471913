"""After export: run the file in onnxruntime and compare with the PyTorch model it came from."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch

from .. import format as fmt
from ..codec import encode_prompt
from .model import MicroMixerV2

PROMPTS = (b"Once upon a time, there was a little girl named Lily. She loved to play",
           b"The cat sat on the mat and looked at the big red ball. \xf0\x9f\x99\x82 Tom said")


def _ids(text: bytes) -> np.ndarray:
    return np.array(encode_prompt(text), np.int64)


def _torch_logits(model: MicroMixerV2, ids: np.ndarray) -> np.ndarray:
    """Reference logits of one sequence folded in from position 0, (T, V)."""
    cfg = model.config
    with torch.no_grad():
        out, _ = model.step(torch.from_numpy(ids)[None], torch.zeros(1, dtype=torch.long),
                            torch.zeros(cfg.num_layers, 1, cfg.hidden_dim))
    return out[0].numpy()


def _run(sess: ort.InferenceSession, ids: np.ndarray, position, state):
    feeds = {fmt.INPUT_IDS: ids, fmt.POSITION: np.asarray(position, dtype=np.int64), fmt.STATE: state}
    return sess.run(list(fmt.OUTPUT_NAMES), feeds)


def _chunks(sess, ids: np.ndarray, sizes, cfg) -> np.ndarray:
    """Feed one sequence in consecutive chunks carrying the state; (T, V) logits."""
    state = np.zeros((cfg.num_layers, 1, cfg.hidden_dim), np.float32)
    out, pos = [], 0
    for n in sizes:
        logits, state = _run(sess, ids[None, pos:pos + n], [pos], state)
        out.append(logits[0])
        pos += n
    return np.concatenate(out)


def validate(model: MicroMixerV2, onnx_path: str) -> dict[str, float]:
    """Max abs logit difference for (a) one call, (b) token by token, (c) two chunks, (d) batch of 2."""
    cfg = model.config
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    a, b = (_ids(p) for p in PROMPTS)
    ref_a, ref_b = _torch_logits(model, a), _torch_logits(model, b)
    diffs = {
        "one call": _chunks(sess, a, [len(a)], cfg),
        "token by token": _chunks(sess, a, [1] * len(a), cfg),
        "two chunks": _chunks(sess, a, [len(a) // 3, len(a) - len(a) // 3], cfg),
    }
    diffs = {k: float(np.abs(v - ref_a).max()) for k, v in diffs.items()}
    # (d) two rows at different positions: row 0 starts prompt a, row 1 continues prompt b
    k, j = 16, 20
    state_b = np.zeros((cfg.num_layers, 1, cfg.hidden_dim), np.float32)
    _, state_b = _run(sess, b[None, :j], [0], state_b)
    state = np.concatenate([np.zeros_like(state_b), state_b], axis=1)
    logits, _ = _run(sess, np.stack([a[:k], b[j:j + k]]), [0, j], state)
    diffs["batch of two"] = float(max(np.abs(logits[0] - ref_a[:k]).max(),
                                      np.abs(logits[1] - ref_b[j:j + k]).max()))
    return diffs
