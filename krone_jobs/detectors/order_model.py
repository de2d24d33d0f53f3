"""The optional order model of the Nested-Aware detector (``sequence_levels``, off by default): a per-level
GRU over a chunk's own nodes, conditioned on its parent and on summaries of its child chunks (why it is off:
:mod:`krone_jobs.detectors.nested_aware`, point 4)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from krone_jobs.detectors.chunks import TABLES, ChunkExample

PAD, START, END, ROOT, UNSEEN_OK, UNSEEN_ERROR = range(6)
OFFSET = 6
SPECIAL_NAMES = {END: "end", UNSEEN_OK: "an unseen step", UNSEEN_ERROR: "an unseen error step", START: "start"}
MAX_CHILDREN = 64


class LevelLM(nn.Module):
    """GRU next-node model for one level, conditioned on the parent and on child-chunk summaries."""

    def __init__(self, n_own: int, n_parent: int, n_child: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.own = nn.Embedding(n_own, dim, padding_idx=PAD)
        self.parent = nn.Embedding(n_parent, dim)
        self.child = nn.Embedding(n_child, dim, padding_idx=PAD) if n_child else None
        in_dim = dim + (dim + 1 if n_child else 0)
        self.init = nn.Linear(dim, hidden)
        self.gru = nn.GRU(in_dim, hidden, batch_first=True)
        self.out = nn.Linear(hidden, n_own)

    def forward(
        self, parent: torch.Tensor, inputs: torch.Tensor, children: torch.Tensor | None, child_len: torch.Tensor | None
    ) -> torch.Tensor:
        x = self.own(inputs)
        if self.child is not None and children is not None and child_len is not None:
            mask = (children != PAD).unsqueeze(-1).float()
            summary = (self.child(children) * mask).sum(2) / mask.sum(2).clamp(min=1.0)
            x = torch.cat([x, summary, torch.log1p(child_len).unsqueeze(-1)], dim=-1)
        h0 = torch.tanh(self.init(self.parent(parent))).unsqueeze(0)
        out, _ = self.gru(x, h0)
        return self.out(out)


class Encoder:
    """Turns :class:`ChunkExample` lists into padded tensors for one level's model."""

    def __init__(self, level: str, seen: tuple[set[int], ...], classes: tuple[np.ndarray, ...]):
        self.own_t, self.parent_t, self.child_t = TABLES[level]
        self.seen = seen
        self.classes = classes  # per codebook table: class token for each code

    def token(self, table: int, code: int) -> int:
        if code in self.seen[table]:
            return code + OFFSET
        return int(self.classes[table][code])

    def class_lookup(self, table: int | None) -> torch.Tensor:
        """token -> its unseen-class token (specials map to themselves), for dropout on tensors."""
        if table is None:
            return torch.arange(OFFSET)
        return torch.cat([torch.arange(OFFSET), torch.from_numpy(self.classes[table])])

    def encode(self, examples: Sequence[ChunkExample]) -> dict[str, torch.Tensor]:
        """Padded tensors: ``nodes`` (own tokens), ``length``, ``parent``, ``children``/``child_len``."""
        n = len(examples)
        t_max = max(len(ex.nodes) for ex in examples)
        nodes = np.zeros((n, t_max), dtype=np.int64)
        parents = np.full(n, ROOT, dtype=np.int64)
        has_child = self.child_t is not None
        children = np.zeros((n, t_max + 1, MAX_CHILDREN), dtype=np.int64) if has_child else None
        child_len = np.zeros((n, t_max + 1), dtype=np.float32) if has_child else None
        for i, ex in enumerate(examples):
            if self.parent_t is not None:
                parents[i] = self.token(self.parent_t, ex.parent)
            nodes[i, : len(ex.nodes)] = [self.token(self.own_t, x) for x in ex.nodes]
            if has_child:
                assert children is not None and child_len is not None and self.child_t is not None
                for t, kid in enumerate(ex.children, start=1):
                    kids = [self.token(self.child_t, x) for x in kid[:MAX_CHILDREN]]
                    children[i, t, : len(kids)] = kids
                    child_len[i, t] = len(kid)
        out = {"parent": torch.from_numpy(parents), "nodes": torch.from_numpy(nodes),
               "length": torch.tensor([len(ex.nodes) for ex in examples])}
        if has_child:
            out["children"] = torch.from_numpy(children)
            out["child_len"] = torch.from_numpy(child_len)
        return out


def inputs_targets(nodes: torch.Tensor, length: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Model inputs ``START n_1..n_k`` and targets ``n_1..n_k END`` from padded own tokens."""
    n = nodes.shape[0]
    inputs = torch.cat([torch.full((n, 1), START, dtype=torch.long), nodes], dim=1)
    targets = torch.cat([nodes, torch.zeros((n, 1), dtype=torch.long)], dim=1)
    targets[torch.arange(n), length] = END
    return inputs, targets


def drop_tokens(tokens: torch.Tensor, lookup: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Replace real non-error tokens by ``UNSEEN_OK`` with probability ``p`` (error nodes never: an
    unseen error step must stay improbable)."""
    mask = (torch.rand(tokens.shape, generator=gen) < p) & (tokens >= OFFSET) & (lookup[tokens] == UNSEEN_OK)
    return torch.where(mask, torch.full_like(tokens, UNSEEN_OK), tokens)
