"""PyTorch side (needs the [export] extra): the model, checkpoints, training, ONNX export."""
from ..errors import CheckpointError
from .api import export_checkpoint
from .checkpoint import load_checkpoint, save_checkpoint
from .model import MicroMixerV2

__all__ = ["export_checkpoint", "CheckpointError", "load_checkpoint", "save_checkpoint", "MicroMixerV2"]
