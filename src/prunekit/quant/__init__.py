"""Weight-only int8 / int4 group-wise quantization after pruning, with the mask kept and stored sparse."""

from .format import is_quantized_dir, load_quantized, quantize_model, save_quantized
from .rtn import QuantizedWeight, pack4, quantize, unpack4

__all__ = ["QuantizedWeight", "is_quantized_dir", "load_quantized", "pack4", "quantize", "quantize_model",
           "save_quantized", "unpack4"]
