"""micromixer-edge: MicroMixer-1 byte-level language models from PyTorch to ONNX to small ARM boards."""
from .format import SIZES, MixerConfig

__version__ = "0.1.0"
__all__ = ["SIZES", "MixerConfig", "__version__"]
