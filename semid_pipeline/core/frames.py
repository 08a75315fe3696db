"""Pipeline tables -> the arrays the core works on, and back: the one home of the table helpers the
asset files share (every table with an ``item_idx`` column is read in ``item_idx`` order).

Column contracts are in ``docs/DESIGN.md`` ("Data contract")."""

from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from semid_pipeline.core.recommendations import topk_frame


def by_item(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` in ``item_idx`` order (row ``i`` is item ``i`` in a complete catalog table)."""
    return table.sort_values("item_idx")


def item_column(table: pd.DataFrame, column: str) -> np.ndarray:
    """``table[column]`` in ``item_idx`` order."""
    return by_item(table)[column].to_numpy()


def sid_matrix(semantic_ids: pd.DataFrame, column: str = "sid") -> np.ndarray:
    """int64 ``[N, D]`` SIDs (or ``column='codes'``: the tokenizer's codes) in ``item_idx`` order."""
    return np.stack(item_column(semantic_ids, column)).astype(np.int64)


def sid_version(semantic_ids: pd.DataFrame) -> Optional[str]:
    """The tokenizer version of the SIDs (``semantic_ids.tokenizer_version``), None if not recorded."""
    return str(semantic_ids["tokenizer_version"].iloc[0]) if "tokenizer_version" in semantic_ids and len(semantic_ids) else None


def embedding_matrix(embeddings: pd.DataFrame) -> np.ndarray:
    """``[N, dim]`` float32 matrix of an ``embedding`` column, in ``item_idx`` order."""
    return np.stack(item_column(embeddings, "embedding")).astype(np.float32, copy=False)


def tag_paths_for(item_tags: pd.DataFrame, item_idx: Sequence[int]) -> List[list]:
    """``item_tags.tag_path`` of each ``item_idx`` in order (``[]`` for items without tags)."""
    by_idx = dict(zip(item_tags["item_idx"].to_numpy(np.int64).tolist(), item_tags["tag_path"].tolist()))
    return [list(by_idx[i]) if by_idx.get(i) is not None else [] for i in np.asarray(item_idx).tolist()]


def item_values(table: pd.DataFrame, column: str, item_idx: Sequence[int], fill: float = 0.0) -> np.ndarray:
    """float32 ``table[column]`` of each ``item_idx`` in order (``fill`` for items the table lacks)."""
    values = table.set_index("item_idx")[column].reindex(np.asarray(item_idx, dtype=np.int64))
    return values.fillna(fill).to_numpy(np.float32)


def eval_rows(user_sequences: pd.DataFrame) -> pd.DataFrame:
    """The rows of the users that validation and test are scored on (``in_eval``; every row when the
    column is absent, e.g. a table prepared before the column existed)."""
    if "in_eval" not in user_sequences.columns or bool(user_sequences["in_eval"].all()):
        return user_sequences
    return user_sequences[user_sequences["in_eval"].to_numpy(bool)]


def split_inputs(user_sequences: pd.DataFrame, split: str) -> Tuple[List[np.ndarray], np.ndarray]:
    """Histories and targets of a split: validation reads ``train_items``, test also sees ``valid_item``."""
    train = [np.asarray(t, dtype=np.int64) for t in user_sequences["train_items"]]
    valid = user_sequences["valid_item"].to_numpy(np.int64)
    if split == "valid":
        return train, valid
    if split != "test":
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    return [np.append(t, v) for t, v in zip(train, valid)], user_sequences["test_item"].to_numpy(np.int64)


def split_top_k(
    model: str, user_sequences: pd.DataFrame, item_ids: np.ndarray, rank: Callable[[list, np.ndarray], tuple]
) -> Tuple[pd.DataFrame, dict]:
    """Validation and test top-K lists of one model in the shared recommendations schema, for the
    evaluation users (:func:`eval_rows`).

    ``rank(histories, user_idx) -> (items [U, K], scores [U, K])`` is called once per split with
    that split's histories (``split_inputs``). Returns the long table and the item matrix per split.
    """
    user_sequences = eval_rows(user_sequences)
    user_idx = user_sequences["user_idx"].to_numpy(np.int64)
    user_ids = user_sequences["user_id"].to_numpy()
    frames, per_split = [], {}
    for split in ("valid", "test"):
        histories, _ = split_inputs(user_sequences, split)
        items, scores = rank(histories, user_idx)
        per_split[split] = items
        frames.append(topk_frame(model, split, user_idx, user_ids, items, scores, item_ids))
    return pd.concat(frames, ignore_index=True), per_split
