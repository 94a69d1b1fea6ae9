"""Stage features of any timm model through timm's own ``forward_intermediates`` API."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def feature_stage_indices(model: nn.Module, wanted: Sequence[int]) -> list[int]:
    """Turn stage indices (negative counts from the last stage) into ``model``'s timm feature indices.

    The result keeps the order of ``wanted`` and drops repeats: on a model with fewer stages than a
    plugin asks for, indices beyond the first stage are clamped to it (so the order never wraps).
    """
    n = len(model.feature_info)
    return list(dict.fromkeys(max(i, -n) % n if i < 0 else min(i, n - 1) for i in wanted))


def forward_with_features(
    model: nn.Module, x: torch.Tensor, indices: Sequence[int]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits plus the outputs of the given timm feature indices (sorted ascending, non-negative), on
    the model's device (``x`` is moved there)."""
    for parameter in model.parameters():
        x = x.to(parameter.device, non_blocking=True)
        break
    if not indices:
        return model(x), []
    final, intermediates = model.forward_intermediates(x, indices=list(indices))
    return model.forward_head(final), list(intermediates)


class NodeFeatures(nn.Module):
    """A plain ``nn.Module`` (not timm's) given timm's feature interface through torchvision's
    ``create_feature_extractor``: the outputs of the named graph ``nodes`` are its stages.

    ``feature_info`` (channels and reduction of each node, found by one forward pass of ``example``),
    ``forward_intermediates`` and ``forward_head`` are what :func:`forward_with_features` and the
    feature-based methods use. ``model`` itself is kept as is (its state dict keys are the model's).
    """

    def __init__(self, model: nn.Module, nodes: Sequence[str], example: torch.Tensor) -> None:
        from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

        super().__init__()
        self.model = model
        self.nodes = list(nodes)
        _, eval_nodes = get_graph_node_names(model)
        # a module's name stands for its last node (torchvision's rule), e.g. "layer1" for "layer1.1.relu_1"
        unknown = [
            n
            for n in self.nodes
            if n not in eval_nodes and not any(e.startswith(n + ".") for e in eval_nodes)
        ]
        if unknown:
            import difflib

            modules = [name for name, _ in model.named_modules() if name]
            close = difflib.get_close_matches(unknown[0], modules, n=3) or difflib.get_close_matches(
                unknown[0], eval_nodes, n=3
            )
            raise ValueError(
                f"node {unknown[0]!r} is not in the model's graph"
                + (
                    f"; close matches: {', '.join(close)}"
                    if close
                    else f"; nodes include {', '.join(eval_nodes[-6:])}"
                )
            )
        output = eval_nodes[-1]
        self._extractor = create_feature_extractor(model, return_nodes=[*self.nodes, output])
        self._output = output
        with torch.no_grad():
            was_training = model.training
            for parameter in model.parameters():
                example = example.to(parameter.device)
                break
            outs = self._extractor.eval()(example)
            model.train(was_training)
        self.feature_info = []
        for node in self.nodes:
            out = outs[node]
            if out.ndim != 4:
                raise ValueError(
                    f"node {node!r} gives a {out.ndim}-d output; feature nodes must give (N, C, H, W) maps"
                )
            self.feature_info.append(
                {
                    "num_chs": int(out.shape[1]),
                    "reduction": max(1, example.shape[-1] // out.shape[-1]),
                    "module": node,
                }
            )

    def state_dict(self, *args, **kwargs):
        return self.model.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.model.load_state_dict(state_dict, strict=strict, assign=assign)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def forward_intermediates(self, x: torch.Tensor, indices: Sequence[int]):
        self._extractor.train(self.training)
        outs = self._extractor(x)
        return outs[self._output], [outs[self.nodes[i]] for i in indices]

    def forward_head(self, final: torch.Tensor) -> torch.Tensor:
        return final  # forward_intermediates already returned the logits
