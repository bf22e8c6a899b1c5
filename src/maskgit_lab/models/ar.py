"""The autoregressive baseline: the same transformer as MaskGIT, causal, in raster order.

This is the paper's VQGAN* row: same width, depth, heads, MLP, vocabulary layout, tied
output head and class conditioning as ``MaskGITTransformer``; only the attention is causal
and the task is next-token prediction. Sequence: [class, c_0, ..., c_{N-2}]; the output at
position j predicts code c_j, so one forward over the full prefix scores all N codes.

Two ways to run it, giving the same logits:
    forward(prefix [B, L], labels)             the whole prefix at once (training, and the
                                               recomputing decoder);
    step(ids [B, l], cache)                    only the new positions, attending to keys and
                                               values kept from earlier steps (KV cache).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from maskgit_lab.models.transformer import TokenTransformer, TransformerConfig, attention

Tensor = torch.Tensor


@dataclass
class KVCache:
    """Keys and values of every layer for the positions seen so far.

    keys, values: [depth, B, heads, max_len, head_dim]; ``length`` positions are filled.
    """

    keys: Tensor
    values: Tensor
    length: int = 0


class CausalBlock(nn.Module):
    """Pre-norm block: x += Attn(LN(x)); x += MLP(LN(x)); attention causal over positions."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, eps=1e-12)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-12)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_dim, dim))
        self.drop = nn.Dropout(dropout)
        self.attn_dropout = dropout

    def forward(self, x: Tensor, layer: int | None = None, cache: KVCache | None = None) -> Tensor:
        """x [B, l, D]. With a cache, x holds positions cache.length .. cache.length + l - 1."""
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        p = self.attn_dropout if self.training else 0.0
        if cache is None or cache.length == 0:
            if cache is not None:
                cache.keys[layer, :, :, :n] = k
                cache.values[layer, :, :, :n] = v
            y = attention(q, k, v, dropout_p=p, is_causal=True)
        else:
            start, end = cache.length, cache.length + n
            cache.keys[layer, :, :, start:end] = k
            cache.values[layer, :, :, start:end] = v
            keys, values = cache.keys[layer, :, :, :end], cache.values[layer, :, :, :end]
            mask = None
            if n > 1:  # new position i sees every cached position and new positions <= i
                mask = torch.ones(n, end, dtype=torch.bool, device=x.device).tril(diagonal=start)
            y = attention(q, keys, values, dropout_p=p, attn_mask=mask)
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(b, n, d)))
        return x + self.drop(self.mlp(self.norm2(x)))


class ARTransformer(TokenTransformer):
    """forward(prefix [B, L], labels [B]) -> logits [B, L + 1, K]; position j predicts code j."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__(cfg)
        cfg = self.cfg
        d = cfg.dim
        self.tok_emb = nn.Embedding(cfg.vocab_size, d)  # same layout as MaskGIT's (the mask row unused)
        self.pos_emb = nn.Parameter(torch.zeros(1, cfg.num_tokens, d))  # class + N - 1 codes
        self.emb_norm = nn.LayerNorm(d, eps=1e-12)
        self.emb_drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            CausalBlock(d, cfg.heads, cfg.mlp_dim, cfg.dropout) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d, eps=1e-12)
        self.head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d, eps=1e-12))
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        nn.init.trunc_normal_(self.tok_emb.weight, std=0.02)
        nn.init.trunc_normal_(self.pos_emb, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def _logits(self, ids: Tensor, start: int, cache: KVCache | None) -> Tensor:
        n = ids.shape[1]
        x = self.emb_drop(self.emb_norm(self.tok_emb(ids) + self.pos_emb[:, start:start + n]))
        for i, block in enumerate(self.blocks):
            x = block(x, i, cache)
        h = self.head(self.norm(x))
        k = self.cfg.codebook_size
        return h @ self.tok_emb.weight[:k].t() + self.bias[:k]

    def forward(self, prefix: Tensor, labels: Tensor | None = None) -> Tensor:
        b, n = prefix.shape
        if n >= self.cfg.num_tokens:
            raise ValueError(f"prefix holds {n} codes; at most N - 1 = {self.cfg.num_tokens - 1}")
        ids = torch.cat([self.class_tokens(labels, b, prefix.device)[:, None], prefix.long()], 1)
        return self._logits(ids, 0, None)

    def new_cache(self, batch: int, device: torch.device | str, dtype: torch.dtype = torch.float32) -> KVCache:
        c = self.cfg
        shape = (c.depth, batch, c.heads, c.num_tokens, c.dim // c.heads)
        return KVCache(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))

    def step(self, ids: Tensor, cache: KVCache) -> Tensor:
        """Feed the next ``ids`` [B, l] (vocabulary ids: the class token first, then codes);
        -> logits [B, l, K] at those positions. Advances ``cache`` by l."""
        n = ids.shape[1]
        if cache.length + n > self.cfg.num_tokens:
            raise ValueError(f"cache holds {cache.length} positions; {n} more exceed {self.cfg.num_tokens}")
        out = self._logits(ids, cache.length, cache)
        cache.length += n
        return out
