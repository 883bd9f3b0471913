"""Every fact about the exported file format, in one place.

The exporter (writer) and the runtime (reader) both import this module; nothing here needs torch.
See docs: the ONNX contract (inputs, outputs, metadata) and the MicroMixerV2 model description.
"""
from __future__ import annotations

import dataclasses
import json

from .errors import FormatError

# --- metadata -------------------------------------------------------------------------------
METADATA_KEY = "micromixer"          # key in ModelProto.metadata_props holding a JSON object
FORMAT_VERSION = 1                   # what writers write
READABLE_FORMAT_VERSIONS = range(1, 2)  # what readers accept

# --- graph interface ------------------------------------------------------------------------
INPUT_IDS, POSITION, STATE = "input_ids", "position", "state"
LOGITS, STATE_OUT = "logits", "state_out"
INPUT_NAMES = (INPUT_IDS, POSITION, STATE)
OUTPUT_NAMES = (LOGITS, STATE_OUT)

# --- opsets the exporter writes (each tested) ---------------------------------------------
DEFAULT_OPSET = 20                   # the first opset with Gelu as one op
MIN_OPSET, MAX_OPSET = 18, 20        # torch writes Split's num_outputs (18): 17 fails the checker

# --- tokens: bytes are the tokens ----------------------------------------------------------
VOCAB_SIZE = 256
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2

# --- quantization scheme names (value of metadata "quantization") ---------------------------
QUANT_NONE = "none"
QUANT_SCHEMES = {  # CLI mode -> scheme name written into the metadata
    "int8": "int8-rowwise",         # default: int8 compute, a scale per activation row
    "portable": "int8-weight-only",  # standard ONNX, int8 weights made float at load: same bytes on any CPU
    "int8-block": "int8-block32",   # MatMulNBits 8-bit blocks of 32, int8 compute
    "dynamic": "int8-dynamic",      # standard ONNX; one activation scale per tensor
}
DEFAULT_QUANT_MODE = "int8"
# The board a model is meant for -> its quantization mode. The default (int8) computes in int8 on
# MLAS's integer GEMM, which has a kernel for every board named here (a Pi 4's Cortex-A72: NEON
# smull; a Pi 5's Cortex-A76: udot; docs/raspberry-pi.md). int8-block needs the int8 dot product:
# on a Cortex-A72 it falls back to dequantizing every weight on every call.
# pi32: 32-bit Raspberry Pi OS (armv7: Pi Zero 2 W, Pi 3, a Pi 4 on the 32-bit OS), where PyPI has
# no onnxruntime wheel and the numpy backend runs the file: portable's weights become float at load
# (float's speed, 1/3 of its size), while numpy has no fast integer GEMM for int8's arithmetic.
TARGETS = {"generic": "int8", "pi4": "int8", "pi5": "int8", "pi32": "portable"}
NUMPY_TARGETS = ("pi32",)  # targets without onnxruntime: no dependency wheels, apt's numpy and click
NEEDS_DOT_PRODUCT = ("int8-block32",)

# --- state snapshots (mixer-run --save-state / --load-state; docs/format.md) -----------------
SNAPSHOT_MAGIC = b"MIXSTATE"         # 8 bytes, then the version as uint16 little-endian
SNAPSHOT_VERSION = 2                 # what writers write (1: a JSON header, still read)
READABLE_SNAPSHOT_VERSIONS = range(1, 3)
# version 2, after magic and version: the model file's sha256 (first 16 bytes), num_layers,
# hidden_dim, vocab, position, the context name's length; then runtime/snapshot.py's sections
SNAPSHOT_FIXED = "<16sHHHQB"
MT_WORDS = 625                       # random.Random's state: 624 words and an index
MAX_SNAPSHOT_BYTES = 256 * 1024      # larger is refused before it is read
MAX_SNAPSHOT_TOKENS = 8192           # history and repetition window, each
MAX_SNAPSHOT_DRAWS = 65_536          # a (seed, draws) generator replays its draws on resume (~2-3 ms here)
# as text (the server's `state`): base64url, no padding; signed: "." and base64url(HMAC-SHA256)
STATE_SIGNATURE_SEP = "."
MAX_STATE_CHARS = 4 * MAX_SNAPSHOT_BYTES // 3 + 64

# --- runtime backends: onnxruntime, or numpy alone for boards without an onnxruntime wheel ----
BACKENDS = ("auto", "onnxruntime", "numpy")
DEFAULT_BACKEND = "auto"  # onnxruntime when installed, else numpy

# --- default Hugging Face repos of the published checkpoints --------------------------------
HUB_REPOS = {
    "100k": "llaa33219/MicroMixer-1-100K-TinyStories",
    "300k": "llaa33219/MicroMixer-1-300K-TinyStories",
    "500k": "llaa33219/MicroMixer-1-500K-TinyStories",
    "1m": "llaa33219/MicroMixer-1-1M-TinyStories",
}
HUB_FILENAME = "model.pt"


@dataclasses.dataclass(frozen=True)
class MixerConfig:
    """Shape of a MicroMixerV2 model; the presets below are the published sizes."""
    hidden_dim: int
    channel_mlp_dim: int
    max_seq_len: int
    num_layers: int = 3
    hyper_hidden_dim: int = 64
    vocab_size: int = VOCAB_SIZE


DEFAULT_SIZE = "1m"  # the size of the bundled weights, and of every command's default
SIZES = {
    "100k": MixerConfig(hidden_dim=84, channel_mlp_dim=128, max_seq_len=64),
    "300k": MixerConfig(hidden_dim=128, channel_mlp_dim=288, max_seq_len=128),
    "500k": MixerConfig(hidden_dim=176, channel_mlp_dim=384, max_seq_len=128),
    "1m": MixerConfig(hidden_dim=224, channel_mlp_dim=576, max_seq_len=256),
}
PARAM_COUNTS = {"100k": 136_908, "300k": 331_680, "500k": 557_328, "1m": 967_584}


def size_name(config: MixerConfig) -> str:
    """The preset name of a config, or "custom"."""
    return next((name for name, c in SIZES.items() if c == config), "custom")


def make_metadata(config: MixerConfig, checkpoint_sha256: str, quantization: str = QUANT_NONE,
                  **extra) -> dict:
    """The metadata JSON object of the contract (plus optional extra fields such as a self-test)."""
    meta = {"format_version": FORMAT_VERSION, "size": size_name(config)}
    meta.update(dataclasses.asdict(config))
    meta.update(pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID, quantization=quantization,
                checkpoint_sha256=checkpoint_sha256)
    meta.update(extra)
    return meta


REQUIRED_KEYS = tuple(make_metadata(SIZES["100k"], "").keys())


def parse_metadata(props: dict[str, str]) -> dict:
    """Validate the `micromixer` entry of a model's metadata_props; raise FormatError if unusable."""
    if METADATA_KEY not in props:
        raise FormatError(f"not a MicroMixer export: no '{METADATA_KEY}' metadata "
                          "(export one with mixer-export)")
    try:
        meta = json.loads(props[METADATA_KEY])
    except json.JSONDecodeError as e:
        raise FormatError(f"the '{METADATA_KEY}' metadata is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise FormatError(f"the '{METADATA_KEY}' metadata is not a JSON object")
    version = meta.get("format_version")
    if not isinstance(version, int) or version not in READABLE_FORMAT_VERSIONS:
        raise FormatError(f"format_version {version!r} is not supported (this runtime reads "
                          f"{READABLE_FORMAT_VERSIONS.start}..{READABLE_FORMAT_VERSIONS.stop - 1}); "
                          "upgrade micromixer-edge or re-export the model")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise FormatError(f"the '{METADATA_KEY}' metadata lacks {', '.join(missing)}")
    return meta


def config_from_metadata(meta: dict) -> MixerConfig:
    return MixerConfig(**{f.name: int(meta[f.name]) for f in dataclasses.fields(MixerConfig)})
