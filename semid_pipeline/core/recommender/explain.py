"""User-history interpretability view: recommended items with the tag path their SIDs decode to.

HiD-VAE (Sec. 3.7) argues that a SID whose every token stands for a tag makes generation
traceable ("[5, 12, 47] -> Skincare -> Treatments -> Serums"). This module renders that for a
recommendation list: every recommended item with its SID and decoded tag path (the
``(level, code) -> tag`` map of :mod:`hierarchy`, saved with the model), next to the user's most
recent history items and their decoded paths, so the path from history to recommendation can be read.

How a path is derived matters for reading it: every ``(level, code)`` shows the majority tag of the
items with that code at that level (``hierarchy.build_level_tags``). With a tag-supervised
tokenizer each level was trained to predict its tag, so a path reads as one category path; with a
plain (TIGER) RQ-VAE the codes never saw tags and a path is three independent per-code majorities
(it may read "Bath & Body > Cleansers > Flat Irons"). :func:`path_source` says which, and
``tag_path_share`` gives, per level, the share of the code's items that carry the shown tag.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pandas as pd

from semid_pipeline.core.recommender.hierarchy import LevelTags

PATH_SEP = " > "


def tag_shares(level_tags: LevelTags, sid: Sequence[int]) -> list:
    """Per tag of ``level_tags.decode(sid)``, the share of that code's items that carry it."""
    return [
        float(level_tags.share[level][int(code)])
        for level, code in enumerate(sid)
        if level_tags.tag(level, int(code)) is not None
    ]


def path_source(tag_supervised: Optional[bool]) -> str:
    """One sentence for the reader on how ``tag_path`` was derived (see the module docstring);
    ``None``: not known whether the tokenizer was trained on tags."""
    if tag_supervised is None:
        return "per-code majority tags: each level shows the most common tag among the items with that code"
    if tag_supervised:
        return "supervised levels: majority tag of each (level, code); the tokenizer was trained to predict each level's tag from its code"
    return (
        "per-code majority tags: each level shows the most common tag among the items with that code; "
        "the tokenizer was not trained on tags (plain TIGER SIDs), so the levels need not form one category path"
    )


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
    user_id, rank, item_idx, item_id, score``), with ``rank`` counted from 1 (the recommendations
    table's 0-based rank + 1: the first item a person reads is rank 1), ``title``, ``sid_str``,
    ``tag_path`` (list), ``tag_path_str``, ``tag_path_share`` (per shown tag, the share of that
    code's items carrying it), ``hit`` (item is the user's held-out target, when ``targets`` maps
    user_idx to it), and the last ``max_history`` history items' ``history_titles`` /
    ``history_paths`` (strings, most recent last). ``histories`` maps ``user_idx`` to its
    chronological item indices."""
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
    out["rank"] = out["rank"].to_numpy(np.int64) + 1
    out["title"] = [str(titles[i]) for i in item]
    out["sid_str"] = [sid_str[i] for i in item]
    out["tag_path"] = [level_tags.decode(sids[i]) for i in item]
    out["tag_path_str"] = [decoded[i] for i in item]
    out["tag_path_share"] = [tag_shares(level_tags, sids[i]) for i in item]
    out["hit"] = [bool(targets is not None and targets.get(int(u)) == int(i)) for u, i in zip(users, item)]
    out["history_titles"] = [hist_titles[int(u)] for u in users]
    out["history_paths"] = [hist_paths[int(u)] for u in users]
    return out.reset_index(drop=True)
