"""Validation-based checkpoint selection, early stopping and the optimisation step, shared by every trainer."""

from __future__ import annotations

from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

import torch
from torch import nn


class BestCheckpoint:
    """Keeps a CPU copy of the weights with the best validation key (a tuple compared
    lexicographically, e.g. ``(recall@10, ndcg@10)``) and counts validations without improvement.
    """

    def __init__(self, patience: int):
        self.patience = patience
        self.best: Tuple[float, ...] = (float("-inf"),)
        self.best_epoch = 0
        self.stale = 0
        self._state: Dict[str, torch.Tensor] = {}

    def update(self, model: nn.Module, key: Tuple[float, ...], epoch: int) -> bool:
        """Records a validation result; returns True when training should stop (patience spent)."""
        if key > self.best:
            self.best, self.best_epoch, self.stale = key, epoch, 0
            self._state = {name: t.detach().to("cpu", copy=True) for name, t in model.state_dict().items()}
            return False
        self.stale += 1
        return self.stale >= self.patience

    def restore(self, model: nn.Module) -> nn.Module:
        """Loads the best weights (no-op if no validation ever ran) and returns the model in eval mode."""
        if self._state:
            model.load_state_dict(self._state)
        return model.eval()


def epoch_message(prefix: str, epoch: int, record: Mapping[str, Any], best_epoch: Optional[int]) -> str:
    """``"<prefix>epoch 3: loss 2.1, 640 samples/s, valid recall@10 0.05 ndcg@10 0.02 (best epoch 3)"``."""
    msg = f"{prefix}epoch {epoch}: loss {record['loss']:.4f}, {record['samples_per_s']:.0f} samples/s"
    if "valid_recall@10" in record:
        msg += f", valid recall@10 {record['valid_recall@10']:.4f} ndcg@10 {record['valid_ndcg@10']:.4f}"
    return msg + f" (best epoch {best_epoch})"


def optimizer_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    params: Iterable[torch.Tensor],
    grad_clip: float,
    schedule: Optional[Any] = None,
) -> None:
    """One update: clear the gradients, backpropagate ``loss``, clip the global gradient norm of
    ``params`` to ``grad_clip`` (0 disables), step the optimiser, then the lr ``schedule`` if any."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    if schedule is not None:
        schedule.step()
