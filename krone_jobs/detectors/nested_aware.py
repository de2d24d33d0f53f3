"""Nested-Aware detector: is this KRONE Seq plausible *in its hierarchical context*?

Design (one small model per level, PyTorch):

* **Input.** A KRONE Seq at level L is its own-level node sequence ``n_1..n_k`` (status nodes inside one
  action, actions inside one entity, or the session's entities), its **parent** node (the action, the
  entity, or a root token) and, for every own node, its **child chunk** (the status nodes of that action
  run, or the actions of that entity run).
* **Model.** A GRU language model: the parent embedding sets the initial state; step ``t`` reads the
  embedding of ``n_t`` concatenated with a summary of its child chunk (mean of child-node embeddings and
  the log of its length) and predicts ``n_{t+1}``, the last step predicts *end*. So the model learns, per
  parent, which steps follow which *given what happened inside them* (e.g. after a three-replica
  ``receiving`` run comes ``add``), and how chunks end (truncated executions are improbable).
* **Unseen nodes.** While training, a node is replaced now and then by a class token (``unseen-ok`` or
  ``unseen-error``, from the node's name: error/fail/exception/... words); at test time every node never
  seen in training becomes that token. The model thereby learns how likely an unseen step of each class is
  in each context, instead of treating every new template as impossible: a new ``none``-status template
  under a familiar action is plausible, a new ``fatal error`` one is not.
* **Score.** The chunk's surprise, ``max_t -log p(next_t)``; the step where it peaks is the explanation.
* **Threshold without labels.** ``fit`` holds out a share of the normal training sessions, trains on the
  rest, and sets each level's threshold at the ``quantile`` of the scores of held-out chunks the
  knowledge base has *not* seen, i.e. exactly the normal-but-unseen chunks the Local-Context detector
  would flag. The quantile is the share of those false positives the model is asked to rescue.

Why this shape: KRONE's Local-Context detector fails on unseen-but-normal chunks (different interleavings,
repeat counts, rare-but-normal templates). Those differ from anomalies in *how surprising each step is in
context*, which a per-parent sequence model with child summaries measures directly, and it stays cheap: it
only runs on flagged chunks, a batch of short sequences, with verdicts cached per chunk.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator
from torch import nn

from krone_jobs.detectors.codebook import Codebook
from krone_jobs.hierarchy.kseqs import LEVELS, Cut

PAD, START, END, ROOT, UNSEEN_OK, UNSEEN_ERROR = range(6)
OFFSET = 6
SPECIAL_NAMES = {END: "end", UNSEEN_OK: "an unseen step", UNSEEN_ERROR: "an unseen error step", START: "start"}
ERROR_WORDS = re.compile(
    r"error|fail|fatal|exception|timeout|timed out|refus|denied|invalid|corrupt|crash|panic|abort|unable"
    r"|cannot|can't|not found|lost|offline|reject|critical|broken|unexpected|interrupt|kill",
    re.IGNORECASE,
)
# codebook table per KRONE level: (own, parent, child); codebook levels are 0 entity, 1 action, 2 status
TABLES = {"status": (2, 1, None), "action": (1, 0, 2), "entity": (0, None, 1)}
MAX_CHILDREN = 64
MAX_REPEAT = 6


@dataclass(frozen=True, slots=True)
class ChunkExample:
    """One KRONE Seq in model terms: raw codebook codes (``parent`` is -1 at the entity level)."""

    parent: int
    nodes: tuple[int, ...]
    children: tuple[tuple[int, ...], ...]


def cap_repeats(nodes: Sequence[int], limit: int = MAX_REPEAT) -> tuple[int, ...]:
    """Keep at most ``limit`` consecutive copies of a node: a heartbeat repeated 200 times says no more
    than one repeated ``limit`` times, and sequence cost stays bounded."""
    out: list[int] = []
    run = 0
    for i, x in enumerate(nodes):
        run = run + 1 if i and x == nodes[i - 1] else 1
        if run <= limit:
            out.append(x)
    return tuple(out)


def chunk_examples(c: Cut) -> dict[str, list[ChunkExample]]:
    """Every KRONE Seq of a cut session with its parent and child chunks, per level (repeats capped)."""
    status = [ChunkExample(k[0], cap_repeats(k[1:]), ()) for k in c.status_keys]  # type: ignore[arg-type]
    action = []
    si = 0
    for (s, e), key in zip(c.action_spans, c.action_keys):
        kids = []
        while si < len(c.status_spans) and c.status_spans[si][1] <= e:
            kids.append(status[si].nodes)
            si += 1
        action.append(ChunkExample(key[0], tuple(key[1:]), tuple(kids)))  # type: ignore[arg-type]
    entity = ChunkExample(-1, tuple(c.entity_key), tuple(a.nodes for a in action))  # type: ignore[arg-type]
    return {"status": status, "action": action, "entity": [entity]}


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


class _Encoder:
    """Turns :class:`ChunkExample` lists into padded tensors for one level's model."""

    def __init__(self, level: str, seen: tuple[set[int], set[int], set[int]], classes: tuple[np.ndarray, ...]):
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


def _inputs_targets(nodes: torch.Tensor, length: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Model inputs ``START n_1..n_k`` and targets ``n_1..n_k END`` from padded own tokens."""
    n = nodes.shape[0]
    inputs = torch.cat([torch.full((n, 1), START, dtype=torch.long), nodes], dim=1)
    targets = torch.cat([nodes, torch.zeros((n, 1), dtype=torch.long)], dim=1)
    targets[torch.arange(n), length] = END
    return inputs, targets


def _drop(tokens: torch.Tensor, lookup: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Replace real non-error tokens by ``UNSEEN_OK`` with probability ``p`` (error nodes never: an
    unseen error step must stay improbable)."""
    mask = (torch.rand(tokens.shape, generator=gen) < p) & (tokens >= OFFSET) & (lookup[tokens] == UNSEEN_OK)
    return torch.where(mask, torch.full_like(tokens, UNSEEN_OK), tokens)


@dataclass(frozen=True, slots=True)
class ChunkScore:
    """Surprise of one chunk and where it peaks (position in the chunk, what came, what was expected)."""

    score: float  # surprise of the worst inner step (or inf for an unseen error step)
    end: float  # surprise of the chunk ending where it ends
    ratio: float  # the decision: > 1 is anomalous (inf for an unseen error step); nan before calibration
    position: int
    observed: int  # model token id
    expected: int
    p_observed: float
    p_expected: float


class NestedAwareDetector(BaseEstimator):
    """Per-level context models over KRONE Seqs (see module docstring). 1 = anomalous, 0 = normal."""

    def __init__(
        self,
        hierarchy: object,
        *,
        dim: int = 16,
        hidden: int = 32,
        epochs: int = 20,
        batch_size: int = 128,
        lr: float = 3e-3,
        dropout_unseen: float = 0.05,
        holdout: float = 0.2,
        quantile: float = 0.99,
        min_calibration: int = 20,
        seed: int = 0,
    ) -> None:
        self.hierarchy = hierarchy
        self.dim = dim
        self.hidden = hidden
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.dropout_unseen = dropout_unseen
        self.holdout = holdout
        self.quantile = quantile
        self.min_calibration = min_calibration
        self.seed = seed

    # -------------------------------------------------------------------------------- training
    def fit(self, X: Iterable[Sequence[str]], y: object = None) -> NestedAwareDetector:
        torch.manual_seed(self.seed)
        rng = np.random.RandomState(self.seed)
        self.codebook_ = Codebook.from_hierarchy(self.hierarchy)  # type: ignore[arg-type]
        cuts = [c for c in map(self.codebook_.cut, X) if c is not None]
        if not cuts:
            raise ValueError("no usable training session (all empty or with unknown templates)")
        order = rng.permutation(len(cuts))
        n_hold = int(len(cuts) * self.holdout) if len(cuts) >= 10 else 0
        held, train = [cuts[i] for i in order[:n_hold]], [cuts[i] for i in order[n_hold:]]

        per_level: dict[str, Counter[ChunkExample]] = {lvl: Counter() for lvl in LEVELS}
        seen: tuple[set[int], set[int], set[int]] = (set(), set(), set())
        for c in train:
            for lvl, exs in chunk_examples(c).items():
                per_level[lvl].update(exs)
        for lvl, counter in per_level.items():
            own_t, parent_t, child_t = TABLES[lvl]
            for ex in counter:
                seen[own_t].update(ex.nodes)
                if parent_t is not None:
                    seen[parent_t].add(ex.parent)
        self.seen_ = seen
        self.classes_ = self._classes()
        self.models_: dict[str, LevelLM] = {}
        self.losses_: dict[str, float] = {}
        for lvl in LEVELS:
            self.models_[lvl], self.losses_[lvl] = self._train_level(lvl, per_level[lvl], rng)
        self.thresholds_ = self._calibrate(held, per_level)
        self.n_train_sessions_ = len(train)
        self.n_calibration_sessions_ = len(held)
        return self

    def _classes(self) -> tuple[np.ndarray, ...]:
        """Per codebook table, the unseen-class token of every node (from its name)."""
        return tuple(
            np.asarray([UNSEEN_ERROR if ERROR_WORDS.search(_name(n)) else UNSEEN_OK for n in names], dtype=np.int64)
            for names in self.codebook_.names
        )

    def _new_model(self, level: str) -> LevelLM:
        own_t, parent_t, child_t = TABLES[level]
        sizes = [len(n) + OFFSET for n in self.codebook_.names]
        return LevelLM(
            sizes[own_t], sizes[parent_t] if parent_t is not None else OFFSET,
            sizes[child_t] if child_t is not None else 0, self.dim, self.hidden,
        )

    def _encoder(self, level: str) -> _Encoder:
        return _Encoder(level, self.seen_, self.classes_)

    def _train_level(self, level: str, counter: Counter[ChunkExample], rng: np.random.RandomState) -> tuple[LevelLM, float]:
        own_t, parent_t, child_t = TABLES[level]
        model = self._new_model(level)
        examples = sorted(counter, key=lambda ex: (len(ex.nodes), ex.nodes))
        encoder = self._encoder(level)
        own_lookup = encoder.class_lookup(own_t)
        parent_lookup = encoder.class_lookup(parent_t)
        child_lookup = encoder.class_lookup(child_t)
        batches = []
        for i in range(0, len(examples), self.batch_size):
            chunk = examples[i : i + self.batch_size]
            batch = encoder.encode(chunk)
            batch["weight"] = torch.tensor([math.sqrt(counter[ex]) for ex in chunk], dtype=torch.float32)
            batches.append(batch)
        gen = torch.Generator().manual_seed(self.seed)
        opt = torch.optim.Adam(model.parameters(), lr=self.lr)
        loss_fn = nn.CrossEntropyLoss(reduction="none", ignore_index=PAD)
        p = self.dropout_unseen
        last = float("nan")
        model.train()
        for _ in range(self.epochs):
            total = 0.0
            for b in rng.permutation(len(batches)):
                batch = batches[b]
                inputs, targets = _inputs_targets(_drop(batch["nodes"], own_lookup, p, gen), batch["length"])
                parent = _drop(batch["parent"], parent_lookup, p, gen)
                children = _drop(batch["children"], child_lookup, p, gen) if "children" in batch else None
                logits = model(parent, inputs, children, batch.get("child_len"))
                tok_loss = loss_fn(logits.transpose(1, 2), targets)
                w = batch["weight"].unsqueeze(1)
                loss = (tok_loss * w).sum() / (w * (targets != PAD)).sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item()
            last = total / len(batches)
        model.eval()
        return model, last

    def _calibrate(self, held: list[Cut], per_level: dict[str, Counter[ChunkExample]]) -> dict[str, float]:
        """Per level: the ``quantile`` of held-out normal chunks the training part never saw."""
        thresholds = {}
        for lvl in LEVELS:
            known = per_level[lvl]
            unseen: list[ChunkExample] = []
            every: list[ChunkExample] = []
            for c in held:
                for ex in chunk_examples(c)[lvl]:
                    every.append(ex)
                    if ex not in known:
                        unseen.append(ex)
            pool = unseen if len(unseen) >= self.min_calibration else every
            if not pool:
                thresholds[lvl] = float("inf") if not known else self._max_train_score(lvl, known)
                continue
            scores = np.asarray([s.score for s in self.score_examples(lvl, pool)])
            finite = scores[np.isfinite(scores)]  # unseen error steps are anomalous by design
            thresholds[lvl] = float(np.quantile(finite, self.quantile if pool is unseen else 1.0)) if len(finite) else 0.0
        return thresholds

    def _max_train_score(self, level: str, known: Counter[ChunkExample]) -> float:
        return max(s.score for s in self.score_examples(level, list(known)))

    # --------------------------------------------------------------------------------- scoring
    @torch.no_grad()
    def score_examples(self, level: str, examples: Sequence[ChunkExample]) -> list[ChunkScore]:
        """Surprise of each chunk (batched; order preserved)."""
        if not examples:
            return []
        model = self.models_[level]
        encoder = self._encoder(level)
        out: list[ChunkScore | None] = [None] * len(examples)
        order = sorted(range(len(examples)), key=lambda i: len(examples[i].nodes))
        for start in range(0, len(order), 256):
            idx = order[start : start + 256]
            batch = encoder.encode([examples[i] for i in idx])
            inputs, targets = _inputs_targets(batch["nodes"], batch["length"])
            logp = torch.log_softmax(model(batch["parent"], inputs, batch.get("children"), batch.get("child_len")), dim=-1)
            nll = -logp.gather(2, targets.unsqueeze(-1)).squeeze(-1)
            nll = nll.masked_fill(targets == PAD, -1.0)
            nll = nll.masked_fill(targets == UNSEEN_ERROR, math.inf)
            end_nll = nll.gather(1, batch["length"].unsqueeze(1)).squeeze(1)
            inner = nll.masked_fill(targets == END, -1.0)
            worst, pos = inner.max(dim=1)
            best_p, best_tok = logp.max(dim=-1)
            for row, i in enumerate(idx):
                p = int(pos[row])
                w = float(worst[row])
                out[i] = ChunkScore(
                    score=w, end=float(end_nll[row]), ratio=self._ratio(level, w), position=p, observed=int(targets[row, p]),
                    expected=int(best_tok[row, p]), p_observed=math.exp(-w) if math.isfinite(w) else 0.0,
                    p_expected=math.exp(float(best_p[row, p])),
                )
        return out  # type: ignore[return-value]

    # ---------------------------------------------------------------------------- persistence
    def to_state(self) -> dict[str, Any]:
        """Weights and calibration as tensors and plain lists (``torch.load(weights_only=True)`` safe)."""
        params = {k: v for k, v in self.get_params().items() if k != "hierarchy"}
        return {
            "params": params,
            "seen": [sorted(s) for s in self.seen_],
            "thresholds": dict(self.thresholds_),
            "losses": dict(self.losses_),
            "models": {lvl: m.state_dict() for lvl, m in self.models_.items()},
        }

    @classmethod
    def from_state(cls, hierarchy: Any, state: dict[str, Any]) -> NestedAwareDetector:
        det = cls(hierarchy, **state["params"])
        det.codebook_ = Codebook.from_hierarchy(hierarchy)
        det.seen_ = tuple(set(s) for s in state["seen"])  # type: ignore[assignment]
        det.classes_ = det._classes()
        det.thresholds_ = dict(state["thresholds"])
        det.losses_ = dict(state["losses"])
        det.models_ = {}
        for lvl in LEVELS:
            model = det._new_model(lvl)
            model.load_state_dict(state["models"][lvl])
            model.eval()
            det.models_[lvl] = model
        return det

    def _ratio(self, level: str, score: float) -> float:
        thresholds = getattr(self, "thresholds_", None)
        if thresholds is None:
            return math.nan
        return score / thresholds[level] if thresholds[level] > 0 else math.inf

    def token_name(self, level: str, token: int) -> str:
        if token < OFFSET:
            return SPECIAL_NAMES.get(token, "?")
        return self.codebook_.names[TABLES[level][0]][token - OFFSET]

    def explain(self, level: str, example: ChunkExample, s: ChunkScore) -> str:
        """Where the chunk stops making sense, in words."""
        observed = self.token_name(level, s.observed)
        if s.observed in (UNSEEN_OK, UNSEEN_ERROR) and s.position < len(example.nodes):
            observed = f"{observed} ({self.codebook_.names[TABLES[level][0]][example.nodes[s.position]]})"
        return (f"step {s.position + 1}: {observed} is improbable here (p={s.p_observed:.2g}); "
                f"expected {self.token_name(level, s.expected)} (p={s.p_expected:.2f})")

    def session_scores(self, X: Iterable[Sequence[str]]) -> np.ndarray:
        """(n, 3) array: per level, the highest chunk score divided by that level's threshold."""
        rows = []
        for seq in X:
            c = self.codebook_.cut(seq)
            if c is None:
                rows.append((math.inf if seq else 0.0, 0.0, 0.0))
                continue
            exs = chunk_examples(c)
            rows.append(tuple(max(s.ratio for s in self.score_examples(lvl, exs[lvl])) for lvl in LEVELS))
        return np.asarray(rows, dtype=np.float64).reshape(-1, 3)

    def predict_levels(self, X: Iterable[Sequence[str]]) -> np.ndarray:
        return (self.session_scores(X) > 1.0).astype(np.int8)

    def predict(self, X: Iterable[Sequence[str]]) -> np.ndarray:
        return self.predict_levels(X).max(axis=1).astype(np.int8)

    def score_samples(self, X: Iterable[Sequence[str]]) -> np.ndarray:
        """Higher is more normal: minus the worst chunk score relative to its level threshold."""
        return -self.session_scores(X).max(axis=1)


def _name(node_id: str) -> str:
    """The human part of a node id (``S:blob/read/failed#t4`` -> ``blob/read/failed``)."""
    return node_id.split(":", 1)[-1].split("#", 1)[0]
