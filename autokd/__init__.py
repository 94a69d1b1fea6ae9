"""autokd: search knowledge-distillation settings for the best small INT8 student of a teacher."""

from __future__ import annotations

__version__ = "0.1.0"


def load(path):
    """An exported INT8 student (export folder or ``.onnx``/``.pt2`` file): ``load(path)(images) -> logits``."""
    from autokd.export import load as load_export

    return load_export(path)
