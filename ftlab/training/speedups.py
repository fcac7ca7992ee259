"""Model-side speed-ups that leave the model's function, weights and saved form unchanged.

Each was measured with ``python -m benchmarks.gpu_xl --ablations`` (GPT-2 XL shape, H100); the figures are there.

- The tanh-approximate GELU of GPT-2 (``gelu_new``) is written out in Python as seven element-wise operations, each a
  pass over the MLP's widest activation forward and more backward; PyTorch's ``gelu(approximate="tanh")`` computes
  the same formula in one kernel. transformers calls the two equivalent (``GELUTanh``'s docstring); they differ by
  rounding only. The swap replaces activation modules, which hold no weights, so the config and the saved model
  still name the original activation.
- The output projection computed at a width that is a multiple of 64 (see ``align_output_head``).
- ``torch.compile`` per decoder block ("regional compilation"): the blocks are identical, so one compiled graph serves
  all of them and compile time is one block's, not the whole model's (seconds instead of minutes for GPT-2 XL).
"""

from __future__ import annotations

import torch
from transformers.activations import ACT2FN, FastGELUActivation, NewGELUActivation

_TANH_GELU_WRITTEN_OUT = (NewGELUActivation, FastGELUActivation)


def fuse_tanh_gelu(model: torch.nn.Module) -> int:
    """Replace written-out tanh-GELU modules with PyTorch's fused one, in place; how many were replaced."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) in _TANH_GELU_WRITTEN_OUT:
                setattr(parent, name, ACT2FN["gelu_pytorch_tanh"])
                replaced += 1
    return replaced


_HEAD_ALIGNMENT = 64


def align_output_head(model: torch.nn.Module) -> int:
    """Compute the output projection at a width that is a multiple of 64, then drop the extra columns; the padding.

    GPT-2's 50,257-token vocabulary leaves the logits' rows misaligned for the GPU's fast matrix kernels, and cuBLAS
    falls back to slow ones: on an H100 the output projection took 16 of the 163 ms of a GPT-2 XL step. The weight is
    padded on the fly, not the parameter, so the model, its tie to the input embedding and its saved form are as they
    were, and the padding columns never reach the softmax.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, torch.nn.Linear) or head.out_features % _HEAD_ALIGNMENT == 0:
        return 0
    width = head.out_features
    padding = -width % _HEAD_ALIGNMENT

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        weight = torch.nn.functional.pad(head.weight, (0, 0, 0, padding))
        bias = None if head.bias is None else torch.nn.functional.pad(head.bias, (0, padding))
        return torch.nn.functional.linear(hidden, weight, bias)[..., :width].contiguous()

    head.forward = forward  # type: ignore[method-assign]
    return padding


def decoder_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's repeated decoder blocks: the classes transformers keeps whole when splitting a model."""
    block_classes = set(getattr(model, "_no_split_modules", None) or ())
    return [module for module in model.modules() if type(module).__name__ in block_classes]


def compile_blocks(model: torch.nn.Module) -> None:
    """``torch.compile`` each decoder block in place (the whole model where none are known).

    In place (``Module.compile``) keeps parameter names as they are, so checkpoints and saved models do not change.
    """
    for module in decoder_blocks(model) or [model]:
        module.compile()
