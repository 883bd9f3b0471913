"""The torch-free runtime: load an exported file, generate, evaluate, self-test."""
from .context import Context
from .engine import Engine, GenerateOptions, GenerationStats, Row
from .generate import generate, generate_batch, stream
from .model import MixerModel, State
from .sampling import SamplingParams

__all__ = ["Context", "Engine", "GenerateOptions", "GenerationStats", "Row", "generate", "generate_batch",
           "stream", "MixerModel", "State", "SamplingParams"]
