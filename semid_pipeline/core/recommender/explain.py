"""User-history interpretability view: recommended items with the tag path their SIDs decode to.

HiD-VAE (Sec. 3.7) argues that a SID whose every token stands for a tag makes generation
traceable ("[5, 12, 47] -> Skincare -> Treatments -> Serums"). This module renders that for a
recommendation list: every recommended item with its SID and decoded tag path (the
``(level, code) -> tag`` map of :mod:`hierarchy`, saved with the model), next to the user's most
recent history items and their decoded paths, so the path from history to recommendation can be read.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pandas as pd

from semid_pipeline.core.recommender.hierarchy import LevelTags

PATH_SEP = " > "


def explain_recommendations(
    recs: pd.DataFrame,
    level_tags: LevelTags,
    sids: np.ndarray,
    titles: Sequence[str],
    histories: dict,
    targets: Optional[dict] = None,
    max_history: int = 5,
) -> pd.DataFrame:
    """One row per recommendation of ``recs`` (the recommendations schema: ``model, split, user_idx,
    user_id, rank, item_idx, item_id, score``), with ``title``, ``sid_str``, ``tag_path`` (list),
    ``tag_path_str``, ``hit`` (item is the user's held-out target, when ``targets`` maps user_idx to
    it), and the last ``max_history`` history items' ``history_titles`` / ``history_paths`` (strings,
    most recent last). ``histories`` maps ``user_idx`` to its chronological item indices."""
    sids = np.asarray(sids, dtype=np.int64)
    decoded = [PATH_SEP.join(level_tags.decode(s)) for s in sids]
    sid_str = ["-".join(str(int(c)) for c in s) for s in sids]
    item = recs["item_idx"].to_numpy(np.int64)
    users = recs["user_idx"].to_numpy(np.int64)
    hist_titles, hist_paths = {}, {}
    for u in np.unique(users):
        h = [int(i) for i in list(histories[int(u)])[-max_history:]]
        hist_titles[int(u)] = [str(titles[i]) for i in h]
        hist_paths[int(u)] = [decoded[i] for i in h]
    out = recs[["model", "split", "user_idx", "user_id", "rank", "item_idx", "item_id", "score"]].copy()
    out["title"] = [str(titles[i]) for i in item]
    out["sid_str"] = [sid_str[i] for i in item]
    out["tag_path"] = [level_tags.decode(sids[i]) for i in item]
    out["tag_path_str"] = [decoded[i] for i in item]
    out["hit"] = [bool(targets is not None and targets.get(int(u)) == int(i)) for u, i in zip(users, item)]
    out["history_titles"] = [hist_titles[int(u)] for u in users]
    out["history_paths"] = [hist_paths[int(u)] for u in users]
    return out.reset_index(drop=True)
