"""The torch-free runtime: load an exported file, generate, evaluate, self-test."""
from .constraint import Constraint
from .engine import Engine, GenerateOptions, GenerationStats, Row
from .generate import generate, generate_batch, stream
from .model import MixerModel
from .state import State
from .sampling import SamplingParams

__all__ = ["Constraint", "Engine", "GenerateOptions", "GenerationStats", "Row", "generate", "generate_batch",
           "stream", "MixerModel", "State", "SamplingParams"]
