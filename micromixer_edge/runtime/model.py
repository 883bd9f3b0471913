"""An exported MicroMixer file in onnxruntime: metadata checks, and the raw prefill/step calls.

Everything the runner needs comes from the file itself (the `micromixer` metadata); no torch.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import MixerError, FormatError
from .. import format as fmt
from .context import DEFAULT_CONTEXT_MODE
from .cpu import x86_u8s8_saturates
from .engine import GenerateOptions
from .generate import generate as _generate, generate_batch as _generate_batch, stream as _stream
from .sampling import SamplingParams
from .state import State

try:
    import onnxruntime as ort
except ImportError:  # boards without an onnxruntime wheel (armv7) use the numpy backend
    ort = None


# onnxruntime fuses the last residual Add into the final LayerNormalization as the contrib op
# SkipLayerNormalization, whose CPU kernel is ~6x slower than Add + LayerNormalization on a
# 256-token prefill (295 vs 49 us) and no faster on one token.
DISABLED_OPTIMIZERS = ["SkipLayerNormFusion"]


def session_options(threads: int = 1) -> "ort.SessionOptions":
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # No arena: a prefill's activations go back to the system instead of staying in a grown arena
    # (peak RSS -1.4 MB); a step measured no slower (61.8 vs 63.2 us).
    opts.enable_cpu_mem_arena = False
    opts.log_severity_level = 3  # errors only: the runner's stderr is for the user
    if x86_u8s8_saturates():  # exact U8U8 integer kernels where U8S8 would clip (runtime/cpu.py)
        opts.add_session_config_entry("session.x64quantprecision", "1")
    return opts


def open_session(path: str | os.PathLike, threads: int = 1, backend: str = fmt.DEFAULT_BACKEND):
    """An onnxruntime (or numpy) session on a file; every failure becomes a one-line FormatError."""
    path = Path(path)
    if path.is_dir():
        raise FormatError(f"{path} is a directory, not an .onnx file")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if backend not in fmt.BACKENDS:
        raise MixerError(f"unknown backend {backend!r}; choose one of {', '.join(fmt.BACKENDS)}")
    if backend == "onnxruntime" and ort is None:
        raise MixerError("onnxruntime is not installed; install it, or use --backend numpy")
    try:
        if backend == "numpy" or (backend == "auto" and ort is None):
            from .numpy_backend import NumpySession
            return NumpySession(path)
        return ort.InferenceSession(os.fspath(path), session_options(threads),
                                    providers=["CPUExecutionProvider"],
                                    disabled_optimizers=DISABLED_OPTIMIZERS)
    except Exception as e:  # onnxruntime raises its own exception types for unreadable files
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise FormatError(f"{path}: not a loadable ONNX model ({first[:200]})") from None


def check_interface(sess: ort.InferenceSession, path) -> None:
    names_in = [i.name for i in sess.get_inputs()]
    names_out = [o.name for o in sess.get_outputs()]
    if names_in != list(fmt.INPUT_NAMES) or names_out != list(fmt.OUTPUT_NAMES):
        raise FormatError(f"{path}: inputs {names_in} / outputs {names_out} do not match the "
                              f"MicroMixer contract {list(fmt.INPUT_NAMES)} / {list(fmt.OUTPUT_NAMES)}")


class MixerModel:
    """One exported model. `prefill` folds in tokens, `step` one token per row; both pure."""

    def __init__(self, path: str | os.PathLike, threads: int = 1, backend: str = fmt.DEFAULT_BACKEND):
        if threads < 1:
            raise MixerError(f"threads must be at least 1, got {threads}")
        self.path = Path(path)
        self.session = open_session(path, threads, backend)
        self.backend = "onnxruntime" if ort is not None and isinstance(self.session, ort.InferenceSession) else "numpy"
        self.meta = fmt.parse_metadata(self.session.get_modelmeta().custom_metadata_map)
        check_interface(self.session, path)
        self.config = fmt.config_from_metadata(self.meta)
        self.threads = threads
        self._outputs = list(fmt.OUTPUT_NAMES)

    @property
    def sha256(self) -> str:
        """The model file's sha256 (snapshots name the model they belong to by it)."""
        if getattr(self, "_sha256", None) is None:
            from .snapshot import file_sha256
            self._sha256 = file_sha256(self.path)
        return self._sha256

    @property
    def max_seq_len(self) -> int:
        return self.config.max_seq_len

    def new_state(self, batch: int = 1) -> State:
        cfg = self.config
        return State(np.zeros((cfg.num_layers, batch, cfg.hidden_dim), np.float32),
                     np.zeros(batch, np.int64))

    def run(self, ids: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """ids (B, T) -> logits (B, T, V) and the state advanced by T positions."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        logits, sums = self.session.run(self._outputs, {
            fmt.INPUT_IDS: ids, fmt.POSITION: state.position, fmt.STATE: state.sums})
        return logits, State(sums, state.position + ids.shape[1])

    def prefill(self, ids, state: State | None = None) -> tuple[np.ndarray, State]:
        """Fold in a whole (B, T) block of tokens; a 1-D array is one row."""
        ids = np.asarray(ids, dtype=np.int64)
        ids = ids[None] if ids.ndim == 1 else ids
        return self.run(ids, state if state is not None else self.new_state(ids.shape[0]))

    def step(self, tokens, state: State) -> tuple[np.ndarray, State]:
        """One token per row: tokens (B,) -> logits (B, V)."""
        logits, state = self.run(np.asarray(tokens, dtype=np.int64).reshape(-1, 1), state)
        return logits[:, 0], state

    # --- the one-line API (llama-cpp-python's create_completion shape) ------------------------
    def generate(self, prompt: str | bytes, max_new_tokens: int = GenerateOptions.max_new_tokens,
                 temperature: float = SamplingParams.temperature, top_k: int = SamplingParams.top_k,
                 top_p: float = SamplingParams.top_p, min_p: float = SamplingParams.min_p,
                 repetition_penalty: float = SamplingParams.repetition_penalty, seed: int | None = None, stop: str | tuple[str, ...] = (),
                 context: str = DEFAULT_CONTEXT_MODE, stream: bool = False, **sampling):
        """The continuation of `prompt` as text; with stream=True, an iterator of text pieces."""
        options = GenerateOptions.of(max_new_tokens, seed, stop, context, temperature=temperature, top_k=top_k,
                                     top_p=top_p, min_p=min_p, repetition_penalty=repetition_penalty, **sampling)
        return _stream(self, prompt, options) if stream else _generate(self, prompt, options)

    def generate_batch(self, prompts: list[str | bytes], max_new_tokens: int = GenerateOptions.max_new_tokens,
                       seed: int | None = None,
                       stop: str | tuple[str, ...] = (), context: str = DEFAULT_CONTEXT_MODE,
                       **sampling) -> list[str]:
        """One text per prompt, all rows stepping together; row i equals generate(prompts[i], ...)."""
        return _generate_batch(self, prompts, GenerateOptions.of(max_new_tokens, seed, stop, context, **sampling))

    def stepper(self, batch: int = 1) -> "Stepper | PlainStepper":
        """A stateful single-token decoder (IO binding where onnxruntime runs the file)."""
        return Stepper(self, batch) if self.backend == "onnxruntime" else PlainStepper(self, batch)


class PlainStepper:
    """The Stepper interface on plain `run` calls (numpy backend)."""

    def __init__(self, model: MixerModel, batch: int = 1):
        self._model, self.state = model, model.new_state(batch)

    @property
    def position(self) -> np.ndarray:
        return self.state.position

    def step(self, tokens) -> np.ndarray:
        logits, new = self._model.step(tokens, self.state)
        self.state.sums, self.state.position = new.sums, new.position
        return logits

    def step_one(self, token: int) -> np.ndarray:
        return self.step((token,))[0]


class Stepper:
    """Single-token decoding through onnxruntime IO binding: no allocation per token.

    Inputs and outputs live in preallocated numpy buffers that onnxruntime reads and writes in
    place; the running sums ping-pong between two buffers, so each step is one `run_with_iobinding`.
    `state` is a live view of the current buffers (write into it with `State.set_rows`).
    """

    def __init__(self, model: MixerModel, batch: int = 1):
        cfg = model.config
        self._session = model.session
        self._ids = np.zeros((batch, 1), np.int64)
        self._position = np.zeros(batch, np.int64)
        self._sums = [np.zeros((cfg.num_layers, batch, cfg.hidden_dim), np.float32) for _ in range(2)]
        self._logits = np.zeros((batch, 1, cfg.vocab_size), np.float32)
        self._bindings = [self._bind(0), self._bind(1)]
        self._current = 0

    def _bind(self, i: int):
        value = ort.OrtValue.ortvalue_from_numpy  # shares the numpy buffer, no copy
        b = self._session.io_binding()
        b.bind_ortvalue_input(fmt.INPUT_IDS, value(self._ids))
        b.bind_ortvalue_input(fmt.POSITION, value(self._position))
        b.bind_ortvalue_input(fmt.STATE, value(self._sums[i]))
        b.bind_ortvalue_output(fmt.LOGITS, value(self._logits))
        b.bind_ortvalue_output(fmt.STATE_OUT, value(self._sums[1 - i]))
        return b

    @property
    def state(self) -> State:
        return State(self._sums[self._current], self._position)

    @property
    def position(self) -> np.ndarray:
        return self._position

    def step(self, tokens) -> np.ndarray:
        """tokens (B,) -> next-token logits (B, V), a buffer overwritten by the next step."""
        self._ids[:, 0] = tokens
        self._session.run_with_iobinding(self._bindings[self._current])
        self._current ^= 1
        self._position += 1
        return self._logits[:, 0]

    def step_one(self, token: int) -> np.ndarray:
        """The batch-1 hot path of `step`: an int in, (V,) logits out (overwritten next step).

        Scalar stores only: at ~60 µs per onnxruntime call, numpy's per-call overhead on tuples
        and broadcasting (~1 µs each) is a measurable share of a byte.
        """
        self._ids[0, 0] = token
        self._session.run_with_iobinding(self._bindings[self._current])
        self._current ^= 1
        self._position[0] += 1
        return self._logits[0, 0]
