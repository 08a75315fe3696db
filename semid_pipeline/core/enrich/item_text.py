"""The text each item is embedded with: its metadata text plus enrichment (captions, descriptors).

DeepInterestGR eq. 4 concatenates the CMSA visual text with the metadata (the DCIM input); eq. 2
adds the DCIM intent descriptors to form the enriched text that the text encoder embeds (eq. 6).
"""

from __future__ import annotations

from typing import List, Optional

import pandas as pd


def compose_item_texts(
    items: pd.DataFrame, captions: Optional[pd.DataFrame] = None, descriptors: Optional[pd.DataFrame] = None
) -> List[str]:
    """``items.text``, then ``"; Image: <caption>"`` for items whose caption status is ``ok``, then
    ``"; Intents: d1, d2, ..."`` for items with descriptors.

    Rows are matched on ``item_idx``; items without a caption or descriptors keep their metadata text
    unchanged, so with both tables absent (or empty) the result is exactly ``items.text``.
    """
    texts = items["text"].fillna("").astype(str).tolist()
    if captions is not None and not captions.empty:
        ok = captions[(captions["status"] == "ok") & captions["caption"].notna()]
        cap = pd.Series(ok["caption"].to_numpy(), index=ok["item_idx"].to_numpy())
        matched = items["item_idx"].map(cap)
        texts = [t if not isinstance(c, str) or not c else f"{t}; Image: {c}" for t, c in zip(texts, matched)]
    if descriptors is not None and not descriptors.empty:
        by_item = dict(zip(descriptors["item_idx"].tolist(), descriptors["descriptors"].tolist()))
        out = []
        for t, idx in zip(texts, items["item_idx"].tolist()):
            names = by_item.get(idx)
            names = [str(n) for n in names] if names is not None else []
            out.append(f"{t}; Intents: {', '.join(names)}" if names else t)
        texts = out
    return texts
