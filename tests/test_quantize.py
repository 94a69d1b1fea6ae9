"""INT8 quantization: size accounting by hand and a quantized model that still agrees with FP32."""

from __future__ import annotations

import torch
from torch import nn

from autokd.quantize import deployed_weight_bytes, fp32_weight_bytes, quantize


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)  # 36 weights, 4 biases
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)  # 12 weights, 3 biases

    def forward(self, x):
        return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


def test_fp32_bytes_count_four_bytes_per_parameter():
    assert fp32_weight_bytes(Tiny()) == 4 * (36 + 4 + 12 + 3)


def test_deployed_bytes_count_int8_weights_per_channel_params_and_fp32_bias():
    torch.manual_seed(0)
    int8 = quantize(Tiny().eval(), [torch.randn(8, 1, 8, 8) for _ in range(2)])
    conv = 36 * 1 + 4 * (4 + 4) + 4 * 4  # int8 weights, per-channel scale+zero point, fp32 bias
    fc = 12 * 1 + 3 * (4 + 4) + 3 * 4
    activation_scales = (
        4 + 4
    )  # the graph keeps two FP32 activation scales (its int64 zero points are not weights)
    assert deployed_weight_bytes(int8) == conv + fc + activation_scales


def test_quantized_model_tracks_fp32_outputs():
    torch.manual_seed(0)
    model = Tiny().eval()
    x = torch.randn(64, 1, 8, 8)
    int8 = quantize(model, [x[:32], x[32:]])
    with torch.no_grad():
        error = (int8(x) - model(x)).abs().max() / model(x).abs().max()
    assert error < 0.1


def test_quantize_leaves_the_float_model_untouched():
    model = Tiny().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    quantize(model, [torch.randn(4, 1, 8, 8)])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
