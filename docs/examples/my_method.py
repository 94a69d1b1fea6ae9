"""A complete minimal distillation method: regress the teacher's logits (see docs/methods.md).

Put a file like this one next to your study file (or in a folder), name the file or the folder under
``extensions:`` in the study file, and use the method's name in ``search_space.methods``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from autokd.methods import DistillInputs, Method, register_method


@register_method("logit_mse")
class LogitMSE(Method):
    """Logit matching (response kind): mean squared error between student and teacher logits.

    Ba & Caruana, "Do Deep Nets Really Need to be Deep?", NeurIPS 2014.
    Logits are compared directly, without softening, so this method has no temperature.
    """

    kind = "response"

    def forward(self, inputs: DistillInputs) -> torch.Tensor:
        # Detach: the teacher is a fixed target, whatever the caller did with its tensors.
        return F.mse_loss(inputs.student_logits, inputs.teacher_logits.detach())
