"""Prefix trie over the catalogue's SIDs, as dense per-level child tables for batched lookups.

Nodes at depth ``l`` are the distinct SID prefixes of length ``l`` (depth 0 is the root, one node).
``children[l]`` is an int32 tensor ``[n_nodes_l, K_l]`` (``K_l`` = size of level ``l``): entry
``[node, c]`` is the id of the depth ``l + 1`` node reached by appending code ``c``, or ``-1`` when no
item has that prefix. At the last level the child id is a *leaf id*, and ``leaf_item[leaf]`` is the
item index. Node ids follow the lexicographic order of the prefixes.

Memory: ``sum_l n_nodes_l * K_l * 4`` bytes, at most ``(1 + n_nodes_1 + ... + n_nodes_{D-1}) * max K * 4``.
Example: 12k items, D = 4, K = 256: about (1 + 256 + 10k + 12k) * 256 * 4 B ~ 23 MB. Beam search
reads one row per live beam and step (a gather), so constrained decoding costs no Python loops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
import torch

from semid_pipeline.core.recommender.vocab import level_sizes as sid_level_sizes


@dataclass
class SIDTrie:
    """Dense prefix trie; build it with :meth:`from_sids`.

    Attributes:
        children: per level ``l``, int32 ``[n_nodes_l, K_l]`` child ids (``-1`` = no child).
        leaf_item: int64 ``[N]``, item index of every leaf id.
        level_sizes: ``K_l`` per level.
        sids: int64 ``[N, D]`` numpy copy of the SIDs (row = item index), for building model inputs.
    """

    children: List[torch.Tensor]
    leaf_item: torch.Tensor
    level_sizes: tuple
    sids: np.ndarray

    @classmethod
    def from_sids(cls, sids: np.ndarray, level_sizes: Optional[Sequence[int]] = None) -> "SIDTrie":
        """Builds the trie of ``sids`` ``(N, D)`` (row ``i`` = SID of item ``i``).

        ``level_sizes`` (default: ``max code + 1`` per level) sets the table widths; pass the
        recommender vocabulary's sizes so rows line up with ``logits[..., vocab.level_slice(l)]``.
        Raises ``ValueError`` when two items share a SID (resolve collisions first, e.g. with an
        appended de-duplication token) or a code does not fit its level.
        """
        arr = np.asarray(sids, dtype=np.int64)
        if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
            raise ValueError(f"sids must be a non-empty (items, levels) array, got shape {arr.shape}")
        n, depth = arr.shape
        sizes = tuple(int(s) for s in level_sizes) if level_sizes is not None else sid_level_sizes(arr)
        if len(sizes) != depth:
            raise ValueError(f"level_sizes has {len(sizes)} entries but sids have {depth} levels")
        if arr.min() < 0 or (arr >= np.asarray(sizes)).any():
            raise ValueError(f"sid codes must lie in [0, level size) for level sizes {sizes}")

        order = np.lexsort(arr.T[::-1])  # lexicographic: level 0 first
        s = arr[order]
        diff = np.ones((n, depth), dtype=bool)
        diff[1:] = s[1:] != s[:-1]
        if n > 1 and not diff[1:].any(axis=1).all():
            dup = int(np.flatnonzero(~diff[1:].any(axis=1))[0])
            a, b = sorted((int(order[dup]), int(order[dup + 1])))
            raise ValueError(
                f"SIDs must be unique, but items {a} and {b} share SID {s[dup].tolist()} "
                f"({int((~diff[1:].any(axis=1)).sum())} duplicate rows); resolve collisions first"
            )
        new_node = np.logical_or.accumulate(diff, axis=1)  # [i, l]: prefix s[i, :l+1] is new
        node_at = np.zeros((n, depth + 1), dtype=np.int64)  # [i, l]: id of row i's depth-l node
        node_at[:, 1:] = np.cumsum(new_node, axis=0) - 1

        children = []
        for level in range(depth):
            rows = new_node[:, level]
            table = np.full((int(node_at[-1, level]) + 1, sizes[level]), -1, dtype=np.int32)
            table[node_at[rows, level], s[rows, level]] = node_at[rows, level + 1]
            children.append(torch.from_numpy(table))
        # leaves are the sorted rows themselves (SIDs are unique), so leaf id i is item order[i]
        return cls(children=children, leaf_item=torch.from_numpy(order.astype(np.int64)), level_sizes=sizes, sids=arr.copy())

    @property
    def n_levels(self) -> int:
        return len(self.children)

    @property
    def n_items(self) -> int:
        return int(self.sids.shape[0])

    @property
    def memory_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.children) + self.leaf_item.numel() * 8

    def to(self, device: torch.device | str) -> "SIDTrie":
        return SIDTrie([t.to(device) for t in self.children], self.leaf_item.to(device), self.level_sizes, self.sids)

    def child_table(self, level: int, nodes: torch.Tensor) -> torch.Tensor:
        """Child ids of ``nodes`` (any shape ``S``, ids at depth ``level``; ``-1`` = dead) -> ``S + [K_level]``.

        Dead nodes get an all ``-1`` row.
        """
        rows = self.children[level][nodes.clamp(min=0)]
        return rows.masked_fill((nodes < 0).unsqueeze(-1), -1)
