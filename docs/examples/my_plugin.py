"""A complete minimal distillation plugin: regress the teacher's logits (see docs/plugins.md).

Put a file like this one in a folder, name the file or the folder under ``plugins:`` in a study file,
and use the plugin's name in ``search_space.methods``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from autokd.methods import Method, DistillInputs, register_method


@register_method("logit_mse")
class LogitMSE(Method):
    """Logit matching (response kind): mean squared error between student and teacher logits.

    Ba & Caruana, "Do Deep Nets Really Need to be Deep?", NeurIPS 2014.
    Logits are compared directly, so the temperature plays no part.
    """

    kind = "response"

    def forward(self, inputs: DistillInputs) -> torch.Tensor:
        # Detach: the teacher is a fixed target, whatever the caller did with its tensors.
        return F.mse_loss(inputs.student_logits, inputs.teacher_logits.detach())
