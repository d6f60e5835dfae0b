"""FLOPs of a forward as PyTorch's `FlopCounterMode` counts them.

It counts matrix products and convolutions at 2 FLOPs per multiply-add. fvcore, which the paper used, counts 1 per
multiply-add (and adds a little for norms and upsampling, which PyTorch's counter leaves out), so the paper's GFLOPs
compare with `flops / 2` (docs/method.md, Measuring efficiency).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

aten = torch.ops.aten


def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# PyTorch's counter knows the CUDA attention kernels but not the CPU one; it gets the same formula.
_EXTRA_FLOP_FORMULAS = {aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}


def count_flops(model: nn.Module, *inputs: object) -> int:
    """FLOPs of `model(*inputs)` as PyTorch counts them (2 per multiply-add), autograd off.

    nn.MultiheadAttention's inference fast path is one fused operation the counter does not see into (it would
    count 0), so it is switched off while counting: the same products then run as visible linear and attention ops.
    The counter's module tracker fails on parameters that require grad under no_grad, so they are frozen meanwhile.
    """
    fastpath = torch.backends.mha.get_fastpath_enabled()
    trainable = [p for p in model.parameters() if p.requires_grad]
    torch.backends.mha.set_fastpath_enabled(False)
    model.requires_grad_(False)
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_FORMULAS) as counter:
            model(*inputs)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for param in trainable:
            param.requires_grad_(True)
    return counter.get_total_flops()
