"""torch-native static INT8 through torch.ao's FX graph mode with the x86 (fbgemm/onednn) config.

FX tracing fuses conv-bn(-relu) itself, weights are quantized per channel and activations per tensor
with observers calibrated on training batches. The torch.ao FX API is deprecated in favour of PT2E in
torchao; its warnings are silenced here, where the one call site lives.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable

import torch
from torch import nn

from autokd.quantize import QuantizationBackend, register_backend


def quantize_fx_x86(model: nn.Module, calibration: Iterable[torch.Tensor]) -> nn.Module:
    """Static INT8 model of ``model`` (a copy) calibrated on the given input batches."""
    batches = list(calibration)
    if not batches:
        raise ValueError("quantization needs at least one calibration batch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        float_model = copy.deepcopy(model).eval()
        prepared = prepare_fx(float_model, get_default_qconfig_mapping("x86"), example_inputs=(batches[0],))
        with torch.no_grad():
            for batch in batches:
                prepared(batch)
        quantized = convert_fx(prepared)
    return quantized.eval()


register_backend(
    QuantizationBackend(name="fx_x86", runtime="torch eager (x86 INT8 kernels)", quantize=quantize_fx_x86)
)
