"""One of CLIP's transformer blocks (open_clip's module, OpenAI's parameter names) applied batch-first, for both
towers."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..open_clip_parts import ResidualAttentionBlock


def block_forward(
    block: ResidualAttentionBlock, x: torch.Tensor, kv_only: torch.Tensor | None = None, causal: bool = False
) -> torch.Tensor:
    """One open_clip block over the tokens `x`, plus tokens that serve as keys and values only.

    The block's nn.MultiheadAttention weights are applied here with F.linear on batch-first tensors and fused
    attention rather than through the module. The module transposes its input to sequence-first, and under autograd
    F.linear on that transposed view falls back to batched products with the weight expanded per token, several
    times slower; its cross-attention path also runs batched windows as many tiny matrix products; and its fused
    inference kernel hides its products from the faster kernels chosen per machine (`inference.fast_path`).

    Args:
        block: a pre-norm block (x += attn(ln_1(x)); x += mlp(ln_2(x))), its attention without dropout.
        x: (B, L, W) tokens.
        kv_only: (B, T, W) tokens that the tokens of `x` attend to as well, whose own outputs are not computed
            (attention does not depend on the order of the keys, so theirs go last).
        causal: each token attends to itself and the tokens before it only (the text tower's mask; without
            `kv_only`).
    Returns:
        (B, L, W) the block's output at the tokens of `x`.
    """
    attn, (batch, length, width) = block.attn, x.shape
    q, k, v = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    if kv_only is not None:
        kv_weight, kv_bias = attn.in_proj_weight[width:], attn.in_proj_bias[width:]
        extra_k, extra_v = F.linear(block.ln_1(kv_only), kv_weight, kv_bias).chunk(2, dim=-1)
        k, v = torch.cat([k, extra_k], dim=1), torch.cat([v, extra_v], dim=1)
    q, k, v = (t.unflatten(-1, (attn.num_heads, -1)).transpose(1, 2) for t in (q, k, v))
    attended = F.scaled_dot_product_attention(q, k, v, is_causal=causal).transpose(1, 2).reshape(batch, length, width)
    x = x + block.ls_1(attn.out_proj(attended))
    return x + block.ls_2(block.mlp(block.ln_2(x)))
