"""Network blocks shared by the item-sequence models (SASRec-CE, the parallel RPG recommender)."""

import torch
import torch.nn.functional as F
from torch import nn


class PreLNBlock(nn.Module):
    """Pre-LN transformer block: ``forward(x [B, L, d], mask bool [B, 1, L, L]) -> [B, L, d]``.

    Fused QKV projection and ``scaled_dot_product_attention``; the feed-forward is
    ``Linear(d, d_ff) -> activation -> Dropout -> Linear(d_ff, d)``. SASRec uses ``d_ff = d`` with ReLU
    (Kang & McAuley), the parallel model GELU with its own ``d_ff``. Submodule names and creation
    order are part of saved artifacts and of seeded initialisation: keep them."""

    def __init__(self, d: int, n_heads: int, d_ff: int, dropout: float, activation: str = "gelu"):
        super().__init__()
        act = {"gelu": nn.GELU, "relu": nn.ReLU}[activation]
        self.n_heads, self.dropout = n_heads, dropout
        self.attn_norm = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.attn_out = nn.Linear(d, d)
        self.ffn_norm = nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, d_ff), act(), nn.Dropout(dropout), nn.Linear(d_ff, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # [B, L, 3d] -> three [B, h, L, d/h]
        q, k, v = self.qkv(self.attn_norm(x)).unflatten(-1, (3, self.n_heads, -1)).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.attn_out(o.transpose(1, 2).flatten(2)))
        return x + self.drop(self.ffn(self.ffn_norm(x)))
