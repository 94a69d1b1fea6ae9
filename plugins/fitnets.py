"""Feature distillation: Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from autokd.methods.builtin._shapes import matched_spatial
from torch import nn

from autokd.methods import DistillInputs, Hyperparameter, Method, ModelInfo, register_method


@register_method("fitnets")
class FitNets(Method):
    """FitNets hints (feature kind): a learned 1×1 conv maps the student's map onto the teacher's; MSE.

    Romero, Ballas, Kahou, Chassang, Gatta & Bengio, "FitNets: Hints for Thin Deep Nets", ICLR 2015.
    The hint is the second-to-last stage (a middle layer, as in the paper, and one that still has
    spatial extent at small image sizes). The adapter (the paper's regressor) turns the student's
    channels into the teacher's and is trained with the student, then thrown away; when the maps differ
    in size both are average-pooled to the smaller one. The loss is ``beta · mean((r(f_s) − f_t)²)``,
    the mean over every element, as in the CRD benchmark's and mdistiller's code; beta defaults to
    their hint weight of 100 (Tian, Krishnan & Isola, ICLR 2020).

    Deliberate differences: the paper's hint loss is ``½ ‖·‖²`` summed, trained in a separate
    hint-only stage before KD; here the mean squared error joins the task loss from the start. The
    regressor is a plain 1×1 convolution; mdistiller's adds BatchNorm and ReLU and changes map sizes
    with strided or transposed convolutions where this pools.
    """

    kind = "feature"
    needs_teacher_logits = False
    needs_features = (-2,)
    hyperparameters = {"beta": Hyperparameter(low=10.0, high=1000.0, default=100.0, log=True)}

    def __init__(self, student: ModelInfo | None = None, teacher: ModelInfo | None = None, **hparams: float):
        super().__init__(student, teacher, **hparams)
        if student is None or teacher is None:
            raise ValueError(
                "method 'fitnets' needs the student's and teacher's ModelInfo to size its adapter"
            )
        self.adapter = nn.Conv2d(student.feature_channels[0], teacher.feature_channels[0], kernel_size=1)

    def forward(self, inputs: DistillInputs) -> torch.Tensor:
        student, teacher = inputs.student_features[0], inputs.teacher_features[0].detach()
        # Pooling first is cheaper and equal to adapting first: a 1×1 conv and an average commute.
        student, teacher = matched_spatial(student, teacher)
        return self.beta * F.mse_loss(self.adapter(student), teacher)
