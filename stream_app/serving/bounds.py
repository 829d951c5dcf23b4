"""Exact top-K that skips the items which cannot enter it.

score(x, j) = x . v_j + b_j <= b_j + |x| |v_j|   (Cauchy-Schwarz)

Item slots are kept in blocks, in descending order of bias as of the last
sort; each block keeps an upper bound of its items' biases and vector norms,
so `max_bias + |x| * max_norm` bounds every score in it. A ranking scans the
blocks in that order and stops as soon as no block left can beat the K-th score
found. The trainer's bias is log time-decayed popularity, which spans many
nats across a catalogue while `|x| |v|` is a few, so a top 20 usually comes
from the first few blocks.

The order decides only the speed. The answer is the brute-force answer: every
write raises its block's bounds at once (`raise_bounds`), so a bound is never
below the truth. Lowered values leave bounds loose, and new slots go into
blocks at the end, so after enough writes (`RESORT_AFTER`) the table builds a
fresh index. It does so at once when a write lifts a block past the head of
the order (`HEAD`) above the head's last block: every block before it then
inherits that bound, and a new hit item made every request scan the whole
catalogue (2 → 150 ms a batch at 1M items) until a quarter of it was rewritten.
"""

from __future__ import annotations

import torch

BLOCK = 1024
"""Items per block: small enough to stop early, large enough for one efficient product."""
FIRST_SCAN = 4
"""Blocks in the first scanned segment; each further segment doubles. Four rather than one:
on a CPU each segment costs tens of small tensor operations, more than a few blocks' product."""
LAST_SCAN = 4
"""A user whose bounds leave over 1/LAST_SCAN of the blocks to scan gets one full product."""
PROBE = 256
"""Slots of highest bias scored first to guess whether scanning by bounds can pay."""
RESORT_AFTER = 0.25
"""Rebuild once this share of the indexed slots has been written since the sort (each once)."""
HEAD = 2 * FIRST_SCAN
"""Blocks where a top K is usually found; a later block whose bias bound rises above the
lowest bias they held when sorted makes the index stale (a rebuild costs 6-7 full
products)."""
NEG_INF = float("-inf")


class BoundIndex:
    """Slot order by bias, and per-block upper bounds of bias and vector norm."""

    def __init__(self, matrix: torch.Tensor, bias: torch.Tensor) -> None:
        """Index the `(n, dim)` matrix and `(n,)` bias of the table's slots."""
        self.device = bias.device
        self.order = torch.argsort(bias, descending=True)
        self.pos = torch.empty_like(self.order)
        self.pos[self.order] = torch.arange(len(self.order), device=self.device)
        blocks = -(-len(self.order) // BLOCK)
        self.max_bias = torch.full((blocks,), NEG_INF, device=self.device)
        self.max_norm = torch.zeros(blocks, device=self.device)
        self.written = torch.zeros(len(bias), dtype=torch.bool, device=self.device)
        self.writes = 0  # distinct slots written since the sort: a hot item counts once
        self.disordered = False  # a block past HEAD rose above the head (see the module)
        slots = torch.arange(len(bias), device=self.device)
        self._raise(slots, matrix.norm(dim=1), bias)
        # The head's lowest bias as sorted: later writes may raise the head's bounds too.
        self._head_floor = float(self.max_bias[HEAD - 1]) if blocks > HEAD else float("inf")

    @property
    def n(self) -> int:
        return len(self.order)

    @property
    def stale(self) -> bool:
        """Enough slots written since the sort, or one lifted far enough, that the order and
        bounds are worth rebuilding."""
        return self.disordered or self.writes > RESORT_AFTER * max(self.n, BLOCK)

    def extend(self, n: int) -> None:
        """Index slots `self.n .. n-1` too, at the end of the order; their writes raise bounds."""
        if n <= self.n:
            return
        new = torch.arange(self.n, n, device=self.device)
        self.order = torch.cat([self.order, new])
        self.pos = torch.cat([self.pos, new])
        self.written = torch.cat([self.written, torch.zeros(len(new), dtype=torch.bool,
                                                            device=self.device)])
        blocks = -(-n // BLOCK) - len(self.max_bias)
        if blocks > 0:
            self.max_bias = torch.cat([self.max_bias,
                                       torch.full((blocks,), NEG_INF, device=self.device)])
            self.max_norm = torch.cat([self.max_norm, torch.zeros(blocks, device=self.device)])

    def raise_bounds(self, slots: torch.Tensor, vectors: torch.Tensor,
                     biases: torch.Tensor) -> None:
        """Account for new values of `slots` (all < `n`): bounds only ever go up here."""
        self._raise(slots, vectors.norm(dim=1), biases)
        self.writes += int((~self.written.index_select(0, slots)).sum())
        self.written[slots] = True
        if len(self.max_bias) > HEAD:
            self.disordered |= bool(self.max_bias[HEAD:].max() > self._head_floor)

    def _raise(self, slots: torch.Tensor, norms: torch.Tensor, biases: torch.Tensor) -> None:
        block = self.pos.index_select(0, slots) // BLOCK
        self.max_bias.scatter_reduce_(0, block, biases.to(self.max_bias.dtype), reduce="amax")
        self.max_norm.scatter_reduce_(0, block, norms, reduce="amax")

    def topk(self, matrix: torch.Tensor, bias: torch.Tensor, users: torch.Tensor, k: int,
             excluded: list[set[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-`k` `(values, slots)` of `users @ matrix.T + bias`, excluded slots left out.

        Same contract as `torch.topk` over the full score matrix, with -inf
        where fewer than `k` items are eligible. `matrix`, `bias`: the
        table's current slots (`n` rows); `users`: `(b, dim)`; `excluded`: per user.
        Each user leaves the scan when it is done; one whose bounds say it
        would scan more than 1/LAST_SCAN of the blocks gets the rest in one
        full product instead, so a table with nothing to prune costs the
        product plus a probe of PROBE items.
        """
        b, blocks = users.shape[0], len(self.max_bias)
        best = self._best(users)
        scan = _Scan(self, matrix, bias, users, k, excluded)
        rows = torch.arange(b, device=self.device)
        # A cheap guess at each K-th score from the PROBE items of highest bias
        # sends the users that bounds cannot help straight to one product.
        far = self._needed(best, self._probe(matrix, bias, users, k)) * LAST_SCAN > blocks
        if bool(far.any()):
            scan.rest(rows[far], 0)
            rows = rows[~far]
        start, width = 0, FIRST_SCAN
        while len(rows):
            end = min(start + width, blocks)
            scan.blocks(rows, start, end)
            start, width = end, width * 2
            if start >= blocks:
                break
            need = self._needed(best.index_select(0, rows),
                                scan.values.index_select(0, rows)[:, k - 1])
            far = need * LAST_SCAN > blocks
            if bool(far.any()):
                scan.rest(rows[far], start)
            rows = rows[(need > start) & ~far]
        return scan.values, scan.slots

    def _probe(self, matrix: torch.Tensor, bias: torch.Tensor, users: torch.Tensor,
               k: int) -> torch.Tensor:
        """(b,) K-th best score among the PROBE slots of highest bias (-inf if fewer than K).

        Exclusions are ignored: the guess only picks a path, never the answer.
        """
        top = self.order[:PROBE]
        if len(top) < k:
            return torch.full((len(users),), NEG_INF, device=self.device)
        scores = torch.addmm(bias.index_select(0, top), users, matrix.index_select(0, top).T)
        return scores.topk(k, dim=1).values[:, k - 1]

    @staticmethod
    def _needed(best: torch.Tensor, kth: torch.Tensor) -> torch.Tensor:
        """(b,) blocks a user may need: the prefix whose bound beats its K-th score."""
        return (best > kth.unsqueeze(1)).sum(dim=1)

    def _best(self, users: torch.Tensor) -> torch.Tensor:
        """(b, blocks): the best score any block from j on could hold, per user."""
        norms = users.norm(dim=1, keepdim=True)
        bound = self.max_bias.unsqueeze(0) + norms * self.max_norm.unsqueeze(0)
        # A norm past float32's range makes 0 * inf or -inf + inf: NaN, which
        # compares False and would skip the block. Such a block may hold anything.
        bound = torch.nan_to_num(bound, nan=float("inf"), posinf=float("inf"),
                                 neginf=NEG_INF)
        # Float32 rounding of a dot product is at most ~dim * 6e-8 * |x||v| (1e-4
        # covers dim <= ~1,600; the schema allows 4,096), of the bias sum
        # ~6e-8 * |bound|: both inside this slack.
        rel = max(1e-4, 1.2e-7 * users.shape[1])
        slack = rel * norms * self.max_norm.unsqueeze(0) + 1e-6 * (1 + bound.abs())
        bound = torch.where(torch.isfinite(bound), bound + slack, bound)
        return bound.flip(1).cummax(dim=1).values.flip(1)


class _Scan:
    """The best `k` so far of every user of one `BoundIndex.topk` call, and how to add to it."""

    def __init__(self, index: BoundIndex, matrix: torch.Tensor, bias: torch.Tensor,
                 users: torch.Tensor, k: int, excluded: list[set[int]]) -> None:
        self.index, self.matrix, self.bias, self.users, self.k = index, matrix, bias, users, k
        dev = index.device
        self.values = torch.full((len(users), k), NEG_INF, device=dev)
        self.slots = torch.zeros((len(users), k), dtype=torch.long, device=dev)
        flat_rows = [r for r, ex in enumerate(excluded) for _ in ex]
        flat_slots = [s for ex in excluded for s in ex]
        self.ex_rows = torch.tensor(flat_rows, dtype=torch.long, device=dev)
        self.ex_pos = index.pos.index_select(
            0, torch.tensor(flat_slots, dtype=torch.long, device=dev))

    def blocks(self, rows: torch.Tensor, start: int, end: int) -> None:
        """Score blocks `start..end-1` of the order for `rows`, gathered from the matrix."""
        lo, hi = start * BLOCK, min(end * BLOCK, self.index.n)
        seg = self.index.order[lo:hi]
        scores = torch.addmm(self.bias.index_select(0, seg), self.users.index_select(0, rows),
                             self.matrix.index_select(0, seg).T)
        local, pos = self._excluded(rows, (self.ex_pos >= lo) & (self.ex_pos < hi))
        if len(local):
            scores[local, pos - lo] = NEG_INF
        self._merge(rows, scores, seg.unsqueeze(0).expand(len(rows), -1))

    def rest(self, rows: torch.Tensor, start: int) -> None:
        """Every slot past block `start` for `rows`: one product over the matrix, scanned masked."""
        scanned = start * BLOCK
        scores = torch.addmm(self.bias, self.users.index_select(0, rows), self.matrix.T)
        scores[:, self.index.order[:scanned]] = NEG_INF
        local, pos = self._excluded(rows, self.ex_pos >= scanned)
        if len(local):
            scores[local, self.index.order.index_select(0, pos)] = NEG_INF
        top, where = scores.topk(min(self.k, scores.shape[1]), dim=1)
        self._merge(rows, top, where)

    def _excluded(self, rows: torch.Tensor, in_range: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """(index into `rows`, position in the order) of the excluded slots in range."""
        if len(self.ex_rows) == 0:
            return self.ex_rows, self.ex_pos
        local = torch.full((len(self.values),), -1, dtype=torch.long, device=rows.device)
        local[rows] = torch.arange(len(rows), device=rows.device)
        mine = local.index_select(0, self.ex_rows)
        keep = in_range & (mine >= 0)
        return mine[keep], self.ex_pos[keep]

    def _merge(self, rows: torch.Tensor, scores: torch.Tensor, score_slots: torch.Tensor) -> None:
        every = len(rows) == len(self.values)  # rows is then arange(b): skip the gathers
        values = self.values if every else self.values.index_select(0, rows)
        slots = self.slots if every else self.slots.index_select(0, rows)
        merged, where = torch.cat([values, scores], dim=1).topk(self.k, dim=1)
        merged_slots = torch.cat([slots, score_slots], dim=1).gather(1, where)
        if every:
            self.values, self.slots = merged, merged_slots
        else:
            self.values[rows] = merged
            self.slots[rows] = merged_slots
