"""The text each item is embedded with: its metadata text plus enrichment (captions, descriptors)."""

from __future__ import annotations

from typing import List, Optional

import pandas as pd


def compose_item_texts(items: pd.DataFrame, captions: Optional[pd.DataFrame] = None) -> List[str]:
    """``items.text`` followed by ``"; Image: <caption>"`` for items whose caption status is ``ok``.

    Rows are matched on ``item_idx``; items without a caption keep their metadata text unchanged
    (CMSA eq. 4 concatenates the visual text with the item metadata).
    """
    texts = items["text"].fillna("").astype(str)
    if captions is None or captions.empty:
        return texts.tolist()
    ok = captions[(captions["status"] == "ok") & captions["caption"].notna()]
    cap = pd.Series(ok["caption"].to_numpy(), index=ok["item_idx"].to_numpy())
    matched = items["item_idx"].map(cap)
    return [t if not isinstance(c, str) or not c else f"{t}; Image: {c}" for t, c in zip(texts, matched)]
