"""A multi-head attention module whose four projections are separate modules, so each can be a TN layer.

``nn.MultiheadAttention`` packs the Q, K and V projections into one ``in_proj_weight`` Parameter (and the output
projection into ``out_proj``), so none of them is an ``nn.Linear`` that a TN layer could replace.
:class:`TNMultiheadAttention` computes exactly what ``nn.MultiheadAttention`` computes (same call signature, same
masks, same outputs and attention weights, batch_first or not, batched or not; the same code path as
``torch.nn.functional.multi_head_attention_forward``) with ``q_proj``, ``k_proj``, ``v_proj`` and ``out_proj`` as
child modules: ``nn.Linear`` or ``engine.nn.TNLinear`` (anything mapping ``(..., in) -> (..., embed_dim)``).
:meth:`TNMultiheadAttention.from_mha` unpacks a dense module exactly.

This file imports torch only: the whole-network exporter copies the class's source into exported files.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class TNMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` with separate projection modules (see the module docstring)."""

    def __init__(self, embed_dim: int, num_heads: int, q_proj: nn.Module, k_proj: nn.Module, v_proj: nn.Module,
                 out_proj: nn.Module, dropout: float = 0.0, batch_first: bool = False) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = float(dropout)
        self.batch_first = bool(batch_first)
        self.q_proj = q_proj
        self.k_proj = k_proj
        self.v_proj = v_proj
        self.out_proj = out_proj
        # what code written for nn.MultiheadAttention inspects (e.g. nn.TransformerEncoderLayer's fast-path checks,
        # which these values switch off: there is no packed projection)
        self.in_proj_weight = None
        self.in_proj_bias = None
        self._qkv_same_embed_dim = False

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention) -> "TNMultiheadAttention":
        """The same attention with the packed projections unpacked into ``nn.Linear`` modules (exact copies)."""
        if mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("attention with add_bias_kv or add_zero_attn is not supported")
        e = mha.embed_dim
        kw = {"device": mha.out_proj.weight.device, "dtype": mha.out_proj.weight.dtype}
        bias = mha.in_proj_bias is not None
        projs = []
        for n, (name, width) in enumerate((("q", e), ("k", mha.kdim), ("v", mha.vdim))):
            lin = nn.Linear(width, e, bias=bias, **kw)
            w = mha.in_proj_weight[n * e:(n + 1) * e] if mha._qkv_same_embed_dim else getattr(mha, f"{name}_proj_weight")
            with torch.no_grad():
                lin.weight.copy_(w)
                if bias:
                    lin.bias.copy_(mha.in_proj_bias[n * e:(n + 1) * e])
            projs.append(lin)
        out = nn.Linear(e, e, bias=mha.out_proj.bias is not None, **kw)
        with torch.no_grad():
            out.weight.copy_(mha.out_proj.weight)
            if out.bias is not None:
                out.bias.copy_(mha.out_proj.bias)
        return cls(e, mha.num_heads, *projs, out, dropout=mha.dropout, batch_first=mha.batch_first)

    @staticmethod
    def _float_mask(mask: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
        """Bool masks become additive float masks (-inf where True), as nn.MultiheadAttention does."""
        if mask is None or torch.is_floating_point(mask):
            return mask
        if mask.dtype != torch.bool:
            raise TypeError("only bool and floating masks are supported")
        return torch.zeros_like(mask, dtype=dtype).masked_fill_(mask, float("-inf"))

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: Optional[torch.Tensor] = None, need_weights: bool = True,
                attn_mask: Optional[torch.Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        batched = query.dim() == 3
        if self.batch_first and batched:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        if not batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        tgt_len, bsz, embed_dim = query.shape
        src_len = key.shape[0]
        heads, head_dim = self.num_heads, self.head_dim
        key_padding_mask = self._float_mask(key_padding_mask, query.dtype)
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint")
        if is_causal and key_padding_mask is None and not need_weights:
            attn_mask = None
        else:
            attn_mask = self._float_mask(attn_mask, query.dtype)
            if key_padding_mask is not None:
                is_causal = False
        q = self.q_proj(query)
        k = self.k_proj(key)
        v = self.v_proj(value)
        if attn_mask is not None and attn_mask.dim() == 2:
            attn_mask = attn_mask.unsqueeze(0)
        q = q.reshape(tgt_len, bsz * heads, head_dim).transpose(0, 1)
        k = k.reshape(src_len, bsz * heads, head_dim).transpose(0, 1)
        v = v.reshape(src_len, bsz * heads, head_dim).transpose(0, 1)
        if key_padding_mask is not None:
            key_padding_mask = (key_padding_mask.view(bsz, 1, 1, src_len).expand(-1, heads, -1, -1)
                                .reshape(bsz * heads, 1, src_len))
            attn_mask = key_padding_mask if attn_mask is None else attn_mask + key_padding_mask
        dropout_p = self.dropout if self.training else 0.0
        if need_weights:
            q_scaled = q * math.sqrt(1.0 / float(head_dim))
            if attn_mask is not None:
                weights = torch.baddbmm(attn_mask, q_scaled, k.transpose(-2, -1))
            else:
                weights = torch.bmm(q_scaled, k.transpose(-2, -1))
            weights = F.softmax(weights, dim=-1)
            if dropout_p > 0.0:
                weights = F.dropout(weights, p=dropout_p)
            out = torch.bmm(weights, v).transpose(0, 1).reshape(tgt_len * bsz, embed_dim)
            out = self.out_proj(out).view(tgt_len, bsz, -1)
            weights = weights.view(bsz, heads, tgt_len, src_len)
            if average_attn_weights:
                weights = weights.mean(dim=1)
            if not batched:
                out, weights = out.squeeze(1), weights.squeeze(0)
        else:
            if attn_mask is not None:
                if attn_mask.size(0) == 1 and attn_mask.dim() == 3:
                    attn_mask = attn_mask.unsqueeze(0)
                else:
                    attn_mask = attn_mask.view(bsz, heads, -1, src_len)
            q = q.view(bsz, heads, tgt_len, head_dim)
            k = k.view(bsz, heads, src_len, head_dim)
            v = v.view(bsz, heads, src_len, head_dim)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal)
            out = out.permute(2, 0, 1, 3).reshape(bsz * tgt_len, embed_dim)
            out = self.out_proj(out).view(tgt_len, bsz, -1)
            weights = None
            if not batched:
                out = out.squeeze(1)
        if self.batch_first and batched:
            out = out.transpose(0, 1)
        return out, weights

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, batch_first={self.batch_first}"
