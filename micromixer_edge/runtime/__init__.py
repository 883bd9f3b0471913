"""The torch-free runtime: load an exported file, generate, evaluate, self-test."""
from .api import load_model, options_from
from .context import Context
from .generate import GenerateOptions, GenerationStats, generate, generate_batch, stream
from .model import MixerModel, State
from .sampling import SamplingParams

__all__ = ["load_model", "options_from", "Context", "GenerateOptions", "GenerationStats", "generate",
           "generate_batch", "stream", "MixerModel", "State", "SamplingParams"]
