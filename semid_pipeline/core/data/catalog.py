"""The catalog that gets semantic IDs: the prepared items' embeddings plus incoming items (changed
ones re-embedded in place, new ones appended after the last ``item_idx`` in file order)."""

from typing import Callable, NamedTuple

import numpy as np
import pandas as pd

from semid_pipeline.core.data.preprocess import build_item_text, clean_items
from semid_pipeline.core.enrich.item_text import compose_item_texts
from semid_pipeline.core.errors import InputError
from semid_pipeline.core.frames import by_item


class CatalogMerge(NamedTuple):
    """``table``: ``item_idx, item_id, embedding, origin ('prepared'|'changed'|'new')``; counts of changed / new items."""

    table: pd.DataFrame
    n_changed: int
    n_new: int


def merge_incoming(
    embeddings: pd.DataFrame,
    items: pd.DataFrame,
    incoming: pd.DataFrame,
    encode: Callable[[list], np.ndarray],
    max_category_depth: int,
) -> CatalogMerge:
    """``embeddings`` (``item_text_embeddings``) with ``incoming`` items (``incoming_items``) merged in.

    An incoming item whose ``item_id`` is in ``items`` keeps its ``item_idx`` and gets a new
    embedding; the others are appended. ``encode(texts) -> [n, dim]`` embeds the incoming items'
    texts (``compose_item_texts``); a dimension that differs from the catalog's is an ``InputError``.
    """
    base = by_item(embeddings).reset_index(drop=True)
    origin = np.full(len(base), "prepared", dtype=object)
    if incoming.empty:
        return CatalogMerge(base.assign(origin=origin), 0, 0)
    inc = clean_items(incoming.drop(columns=["source"]))
    inc["category_path"] = [list(p[:max_category_depth]) for p in inc["categories"]]
    inc["text"] = build_item_text(inc)
    idx_of = pd.Series(items["item_idx"].to_numpy(np.int64), index=items["item_id"].astype(str).to_numpy())
    existing = inc["item_id"].isin(idx_of.index).to_numpy()
    n_base = int(base["item_idx"].max()) + 1 if len(base) else 0
    inc["item_idx"] = np.where(existing, idx_of.reindex(inc["item_id"]).fillna(-1).to_numpy(np.int64), 0)
    inc.loc[~existing, "item_idx"] = n_base + np.arange(int((~existing).sum()), dtype=np.int64)
    emb = np.asarray(encode(compose_item_texts(inc))).astype(np.float32)
    dim = len(base["embedding"].iloc[0]) if len(base) else emb.shape[1]
    if emb.shape[1] != dim:
        raise InputError(
            "item_text_embeddings", None, f"incoming items embed to {emb.shape[1]} dims but the catalog's embeddings have {dim}"
        )
    vectors = list(np.stack(base["embedding"].to_numpy()).astype(np.float32)) if len(base) else []
    pos = {int(i): k for k, i in enumerate(base["item_idx"].to_numpy())}
    for row, vec in zip(inc.itertuples(index=False), emb):
        if row.item_idx in pos:
            vectors[pos[row.item_idx]] = vec
            origin[pos[row.item_idx]] = "changed"
    new = ~existing
    table = pd.DataFrame(
        {
            "item_idx": np.concatenate([base["item_idx"].to_numpy(np.int64), inc["item_idx"].to_numpy(np.int64)[new]]),
            "item_id": np.concatenate([base["item_id"].astype(str).to_numpy(), inc["item_id"].astype(str).to_numpy()[new]]),
            "embedding": vectors + list(emb[new]),
            "origin": np.concatenate([origin, np.full(int(new.sum()), "new", dtype=object)]),
        }
    )
    return CatalogMerge(table, int(existing.sum()), int(new.sum()))
