"""int8 / int4 quantization through onnxruntime.quantization, with an accuracy report."""
from .quantize import QuantOptions, quantize_file
from .report import QuantReport, build_report

__all__ = ["QuantOptions", "quantize_file", "QuantReport", "build_report"]
