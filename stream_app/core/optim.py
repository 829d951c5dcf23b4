"""Sparse, row-wise optimisers, the LR schedule, clipping and gradient accumulation.

Only rows that received a gradient change (and only their accumulators), so an
update touches O(batch) rows whatever the table size, and the trainer publishes
exactly the rows that changed.

Row-wise Adagrad (default), for row r with gradient g_r (dim,):
    a_r <- a_r + mean(g_r ** 2)            a: (rows,) one scalar per row
    w_r <- w_r - lr_t * g_r / (sqrt(a_r) + eps)
Adam (lazy: moments and step count per row, so restore is per row):
    m_r <- b1 m_r + (1-b1) g_r;  v_r <- b2 v_r + (1-b2) g_r**2;  t_r <- t_r + 1
    w_r <- w_r - lr_t * (m_r / (1-b1**t_r)) / (sqrt(v_r / (1-b2**t_r)) + eps)
Schedule: lr_t = lr * min(1, (t+1)/warmup_steps) / (1 + lr_decay * t), t = applied steps.
"""

from __future__ import annotations

import torch

from stream_app.core.config import LearnerConfig

SLOTS = {"adagrad": ("acc",), "adam": ("m", "v", "t")}


def learning_rate(config: LearnerConfig, step: int) -> float:
    """LR for the `step`-th applied update (0-based).

    >>> learning_rate(LearnerConfig(lr=1.0, warmup_steps=4), 1)
    0.5
    """
    warm = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    return config.lr * warm / (1.0 + config.lr_decay * step)


def new_slots(name: str, rows: int, dim: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Zeroed optimiser state for `rows` rows: acc (rows,) or m, v (rows, dim) and t (rows,)."""
    if name == "adagrad":
        return {"acc": torch.zeros(rows, device=device)}
    return {"m": torch.zeros(rows, dim, device=device), "v": torch.zeros(rows, dim, device=device),
            "t": torch.zeros(rows, device=device)}


def apply_update(config: LearnerConfig, weight: torch.Tensor, slots: dict[str, torch.Tensor],
                 rows: torch.Tensor, grad: torch.Tensor, lr: float) -> None:
    """In-place sparse step on `weight[rows]`. rows: (n,) unique; grad: (n, dim)."""
    if config.optimizer == "adagrad":
        acc = slots["acc"].index_select(0, rows) + grad.pow(2).mean(dim=1)
        slots["acc"].index_copy_(0, rows, acc)
        step = grad / (acc.sqrt() + config.eps).unsqueeze(1)
    else:
        b1, b2 = config.adam_betas
        m = slots["m"].index_select(0, rows) * b1 + (1 - b1) * grad
        v = slots["v"].index_select(0, rows) * b2 + (1 - b2) * grad.pow(2)
        t = slots["t"].index_select(0, rows) + 1
        slots["m"].index_copy_(0, rows, m)
        slots["v"].index_copy_(0, rows, v)
        slots["t"].index_copy_(0, rows, t)
        m_hat = m / (1 - b1 ** t).unsqueeze(1)
        v_hat = v / (1 - b2 ** t).unsqueeze(1)
        step = m_hat / (v_hat.sqrt() + config.eps)
    weight.index_copy_(0, rows, weight.index_select(0, rows) - lr * step)


def clip_(grads: list[torch.Tensor], max_norm: float) -> None:
    """Scale `grads` in place so their joint L2 norm is <= max_norm (0 = off).

    Done on the device without a host sync: scale = min(1, max_norm / norm).
    """
    if max_norm <= 0 or not grads:
        return
    norm = torch.stack([g.pow(2).sum() for g in grads]).sum().sqrt()
    scale = (max_norm / (norm + 1e-12)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale)


class GradAccumulator:
    """Caches sparse gradients of N micro-batches and hands back their sum once.

    With N = 1 every batch is handed back at once, which is exactly
    apply-every-batch. Rows evicted meanwhile are dropped (`discard`), since
    their row index may be reused by another id.

    >>> acc = GradAccumulator(steps=2)
    >>> acc.add("item", torch.tensor([3]), torch.ones(1, 2)); acc.ready()
    False
    """

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.count = 0
        self._parts: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def add(self, table: str, rows: torch.Tensor, grad: torch.Tensor) -> None:
        self._parts.setdefault(table, []).append((rows, grad))

    def tick(self) -> None:
        self.count += 1

    def ready(self) -> bool:
        return self.count >= self.steps

    def discard(self, table: str, rows: torch.Tensor) -> None:
        if rows.numel() == 0 or table not in self._parts:
            return
        self._parts[table] = [(r[~torch.isin(r, rows)], g[~torch.isin(r, rows)])
                              for r, g in self._parts[table]]

    def cached(self) -> dict[str, list[tuple[torch.Tensor, torch.Tensor]]]:
        """The cache as it is now (`discard` replaces lists, never edits them), for
        `put_back` after a step that discarded rows and was then not applied."""
        return dict(self._parts)

    def put_back(self, parts: dict[str, list[tuple[torch.Tensor, torch.Tensor]]]) -> None:
        self._parts = parts

    def pop(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Summed gradient per table: unique rows (n,) and grad (n, dim)."""
        out = {}
        for table, parts in self._parts.items():
            if len(parts) == 1:
                out[table] = parts[0]
                continue
            rows = torch.cat([r for r, _ in parts])
            grads = torch.cat([g for _, g in parts])
            uniq, inverse = torch.unique(rows, return_inverse=True)
            summed = torch.zeros(len(uniq), grads.shape[1], dtype=grads.dtype, device=grads.device)
            summed.index_add_(0, inverse, grads)
            out[table] = (uniq, summed)
        self._parts = {}
        self.count = 0
        return out
