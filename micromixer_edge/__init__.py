"""micromixer-edge: MicroMixer-1 byte-level language models from PyTorch to ONNX to small ARM boards.

    from micromixer_edge import MixerModel
    MixerModel("m.onnx").generate("Once upon a time", max_new_tokens=200, seed=1)
"""
from .format import SIZES, MixerConfig

__version__ = "0.1.0"
__all__ = ["SIZES", "MixerConfig", "MixerModel", "__version__"]


def __getattr__(name):  # MixerModel imports numpy and onnxruntime: only when asked for
    if name == "MixerModel":
        from .runtime.model import MixerModel
        return MixerModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
