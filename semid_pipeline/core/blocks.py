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


class SwiGLU(nn.Module):
    """``Linear(d, 2 d_ff) -> silu(a) * b -> Dropout -> Linear(d_ff, d)`` (Shazeer 2020)."""

    def __init__(self, d: int, d_ff: int, dropout: float):
        super().__init__()
        self.up = nn.Linear(d, 2 * d_ff)
        self.drop = nn.Dropout(dropout)
        self.down = nn.Linear(d_ff, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.up(x).chunk(2, dim=-1)
        return self.down(self.drop(F.silu(a) * b))


class GatedBlock(nn.Module):
    """LiGR-style gated pre-LN block (LinkedIn's LiGR, used by eSASRec):
    ``x + sigmoid(W1 x) * Dropout(Attn(LN(x)))`` then ``x + sigmoid(W2 x) * Dropout(SwiGLU(LN(x)))``.

    Same ``forward(x, mask)`` contract as :class:`PreLNBlock`. The gates read the residual stream
    itself (not its normalised copy), so a block can learn to pass a position through unchanged."""

    def __init__(self, d: int, n_heads: int, d_ff: int, dropout: float):
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.attn_norm = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.attn_out = nn.Linear(d, d)
        self.attn_gate = nn.Linear(d, d)
        self.ffn_norm = nn.LayerNorm(d)
        self.ffn = SwiGLU(d, d_ff, dropout)
        self.ffn_gate = nn.Linear(d, d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.attn_norm(x)).unflatten(-1, (3, self.n_heads, -1)).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        x = x + torch.sigmoid(self.attn_gate(x)) * self.drop(self.attn_out(o.transpose(1, 2).flatten(2)))
        return x + torch.sigmoid(self.ffn_gate(x)) * self.drop(self.ffn(self.ffn_norm(x)))
