"""The headroom ladder (chapter 5): how far each model ranks from the best possible ranking, and
where each gap comes from.

Rungs, from the top (test HR@50 / NDCG@50, full ranking, ``metrics.evaluate``):

- the Bayes oracle: the world's true choice logits (``data.world.dataset_logits``), the best any
  model can do on this data (world only);
- the content-only oracle: the same logits with the affinity of the attributes a picture or a
  title shows (``data.world.visible_attributes``), no co-consumption cluster: the best a model
  that sees content and popularity but no co-consumption can do;
- popularity (training interactions per item);
- centralised models: all data on one machine, trained with Adam (``train_central``): the ID
  model (the FedAvg score function p_u . q_i + b_u) and the content-aware model (FedMR's fusion
  architecture, ``fed/fusion.py``, in place of q_i);
- the federated runs (``fed.run_federated``): each backbone alone and with FedMR.

The gap between the oracles is what content cannot know; between an oracle and the centralised
model of the same inputs, what the model or its training misses; between a centralised model and
its federated version, what federation costs. ``gap_closed`` = (HR - popularity) / (Bayes -
popularity). One standard error of a mean HR over U test users is sqrt(HR (1 - HR) / U).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from . import metrics
from .data import NegativeSampler
from .fed import backbones, fusion
from .fed.config import FedConfig
from .fed.rounds import round_arithmetic

KS = (10, 20, 50)


def standard_error(hr: float, n_users: int) -> float:
    """One binomial standard error of a hit rate over ``n_users`` users: sqrt(HR (1 - HR) / U)."""
    return math.sqrt(max(hr * (1.0 - hr), 0.0) / max(n_users, 1))


def evaluate_scores(dataset, scores, split: str = "test", users=None) -> dict:
    """Full-ranking metrics of fixed scores (U, n) (numpy or torch) on ``split``."""
    table = torch.as_tensor(np.asarray(scores), dtype=torch.float32)
    return metrics.evaluate(lambda u: table[u.cpu()], dataset, split, ks=KS, users=users)


def oracle_scores(dataset, content_only: bool = False) -> np.ndarray:
    """The world's true logits (U, n) in the dataset's order; ``content_only``: the affinity of the
    attributes content shows only (the co-consumption cluster left out). World datasets only."""
    from .data.world import dataset_logits, visible_attributes

    return dataset_logits(dataset, visible_attributes() if content_only else None)


@dataclass
class CentralResult:
    """A centralised model selected on validation: metrics at the best epoch, the curve."""

    name: str
    best_epoch: int
    valid: dict
    test: dict
    history: list = field(default_factory=list)    # per epoch: epoch, loss, valid hr@50
    settings: dict = field(default_factory=dict)


class _CentralModel:
    """The parameters of a centralised model: the FedAvg score function's p_u, b_u and Q, and,
    for ``fusion``, FedMR's modules and per-user routers (``fusion.init_tensors``)."""

    def __init__(self, dataset, config: FedConfig, fusion_model: bool, generator: torch.Generator):
        d, s = config.dim, config.init_std
        U, n = dataset.n_users, dataset.n_items
        self.params = {"Q": torch.randn(n, d, generator=generator) * s,            # (n, d)
                       "p": torch.randn(U, d, generator=generator) * s,            # (U, d)
                       "b": torch.zeros(U)}                                        # (U,)
        self.fedmr = None
        if fusion_model:
            from .fed.fedmr import FedMR

            self.fedmr = FedMR(config, dataset)          # standardised features, histories H_u
            widths = {m: int(f.shape[1]) for m, f in self.fedmr.features.items()}
            g, p = fusion.init_tensors(config, widths, U, generator, torch.float32)
            self.params.update(g)
            self.params.update(p)
            if "id" not in config.modalities:
                del self.params["Q"]
        for v in self.params.values():
            v.requires_grad_(True)

    def _strategies(self) -> torch.Tensor:
        """Strategy outputs of every item, (n, K, d), from the shared modules."""
        fm = self.fedmr
        h = fusion.map_inputs(self.params, self.params.get("Q"), fm.features, fm.modalities)
        return fusion.strategy_outputs(self.params, h, fm.strategies, fm.modalities)

    def _router(self, S: torch.Tensor, users: torch.Tensor) -> torch.Tensor | None:
        """pi_u (c, K) of ``users`` from their histories (Eq. (5)), or None without a router."""
        if not self.fedmr.routed:
            return None
        hist = self.fedmr.history[users].to(S.dtype)                              # (c, n)
        x = hist @ S.flatten(1) / hist.sum(1, keepdim=True).clamp(min=1)          # (c, K d)
        params = {k: self.params[k][users] for k in fusion.ROUTER}
        return fusion.router_weights(params, x)

    def logits(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """s_b = p_u . x_i + b_u for sample pairs (users (B,), items (B,)); x_i = q_i or z_ui."""
        p, b = self.params["p"][users], self.params["b"][users]
        if self.fedmr is None:
            x = self.params["Q"][items]                                            # (B, d)
        else:
            S = self._strategies()                                                 # (n, K, d)
            uniq, inverse = torch.unique(users, return_inverse=True)
            pi = self._router(S, uniq)
            # z_ui = sum_k pi_u,k s_k(i)
            x = S[items, 0] if pi is None else (S[items] * pi[inverse].unsqueeze(-1)).sum(1)
        return (p * x).sum(1) + b

    @torch.no_grad()
    def scores(self, users: torch.Tensor) -> torch.Tensor:
        """Logits (c, n) of every item for ``users``: the same score function."""
        p, b = self.params["p"][users], self.params["b"][users]
        if self.fedmr is None:
            return backbones.score("fedavg", {"p": p, "b": b}, {"item": self.params["Q"]})
        S = self._strategies()                                                     # (n, K, d)
        pi = self._router(S, users)                                                # (c, K)
        per_strategy = torch.einsum("nkd,ud->unk", S, p)                           # (c, n, K) p_u . s_k(i)
        if pi is None:
            return per_strategy[..., 0] + b.unsqueeze(1)
        # s_ui = sum_k pi_u,k (p_u . s_k(i)) + b_u = p_u . z_ui + b_u
        return torch.einsum("unk,uk->un", per_strategy, pi) + b.unsqueeze(1)


@round_arithmetic()  # repeatable with several CPU threads too (fed/rounds.py)
def train_central(dataset, model: str = "id", *, epochs: int = 30, lr: float = 0.003,
                  weight_decay: float = 0.0, batch_size: int = 1024, neg_ratio: int = 4,
                  seed: int = 0, eval_every: int = 1, **fusion_options) -> CentralResult:
    """A centralised model on all training interactions (one machine, no federation), Adam on the
    mean BCE of each mini-batch of (user, item) samples, ``neg_ratio`` fresh uniform negatives per
    positive each epoch (the federated protocol's), selected on VALIDATION HR@50 per epoch.

    ``model``: "id" (the FedAvg score function: p_u . q_i + b_u) or "fusion" (FedMR's fusion
    architecture in place of q_i: ``fusion_options`` are FedConfig's FedMR fields, e.g.
    ``strategy="mix"``, ``modalities=("id", "text", "image")``). ``weight_decay``: Adam's L2 term.
    The dataset needs its features for "fusion" (``encoders.encode_dataset``).
    """
    if model not in ("id", "fusion"):
        raise ValueError(f"train_central: model {model!r}: 'id' or 'fusion'")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    config = FedConfig(method="fedmr", device="cpu", seed=seed, **fusion_options)
    net = _CentralModel(dataset, config, model == "fusion", generator)
    optimiser = torch.optim.Adam(list(net.params.values()), lr=lr, weight_decay=weight_decay)
    sampler = NegativeSampler(dataset, "cpu")
    users_pos = torch.as_tensor(dataset.train_user_of_each_interaction(), dtype=torch.long)
    items_pos = torch.as_tensor(np.asarray(dataset.train_indices), dtype=torch.long)
    result = CentralResult(f"central {model}", 0, {}, {},
                           settings=dict(model=model, epochs=epochs, lr=lr, weight_decay=weight_decay,
                                         batch_size=batch_size, neg_ratio=neg_ratio, seed=seed,
                                         **{k: (list(v) if isinstance(v, tuple) else v)
                                            for k, v in fusion_options.items()}))
    best = -1.0
    for epoch in range(1, epochs + 1):
        neg_users = users_pos.repeat(neg_ratio)
        users = torch.cat([users_pos, neg_users])
        items = torch.cat([items_pos, sampler.sample(neg_users, generator)])
        labels = torch.cat([torch.ones(len(items_pos)), torch.zeros(len(neg_users))])
        order = torch.randperm(len(users), generator=generator)
        total = 0.0
        for lo in range(0, len(order), batch_size):
            idx = order[lo:lo + batch_size]
            loss = F.binary_cross_entropy_with_logits(net.logits(users[idx], items[idx]), labels[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(idx)
        if epoch % eval_every and epoch != epochs:
            continue
        valid = metrics.evaluate(net.scores, dataset, "valid", ks=KS)
        entry = {"epoch": epoch, "loss": total / len(order), "valid_hr@50": valid["hr@50"]}
        result.history.append(entry)
        if valid["hr@50"] > best:
            best = valid["hr@50"]
            result.best_epoch, result.valid = epoch, valid
            result.test = metrics.evaluate(net.scores, dataset, "test", ks=KS)
    return result


def tune_central(dataset, model: str, grid: list[dict], **common) -> tuple[CentralResult, list]:
    """``train_central`` for each setting of ``grid`` (dicts of its keyword arguments); returns the
    one with the best VALIDATION HR@50 and every (setting, valid HR@50) tried."""
    tried, best = [], None
    for setting in grid:
        result = train_central(dataset, model, **{**common, **setting})
        tried.append((setting, result.valid["hr@50"]))
        if best is None or result.valid["hr@50"] > best.valid["hr@50"]:
            best = result
    return best, tried


def rung(name: str, kind: str, test: dict, n_users: int, valid: dict | None = None, **extra) -> dict:
    """One row of the ladder: test HR@50 with its standard error, NDCG@50, valid HR@50."""
    hr = float(test["hr@50"])
    return {"rung": name, "kind": kind, "test HR@50": hr, "SE": standard_error(hr, n_users),
            "test NDCG@50": float(test["ndcg@50"]),
            "valid HR@50": float(valid["hr@50"]) if valid else float("nan"), **extra}


def ladder_table(rows: list[dict]) -> pd.DataFrame:
    """The ladder as a table, best first, with ``gap closed`` = (HR - popularity) / (Bayes -
    popularity) when both rungs are present."""
    table = pd.DataFrame(rows).set_index("rung")
    kinds = dict(zip(table.index, table["kind"]))
    bayes = [r for r, k in kinds.items() if k == "oracle" and "Bayes" in r]
    pop = [r for r, k in kinds.items() if k == "popularity"]
    if bayes and pop:
        top, base = table.loc[bayes[0], "test HR@50"], table.loc[pop[0], "test HR@50"]
        table["gap closed"] = (table["test HR@50"] - base) / (top - base)
    return table.sort_values("test HR@50", ascending=False)


def standard_rungs(dataset, popularity_test: dict, popularity_valid: dict | None = None) -> list[dict]:
    """The oracle rungs (world only) and popularity."""
    U = dataset.n_users
    rows = []
    if getattr(dataset, "ground_truth", None):
        for name, content in (("Bayes oracle (true logits)", False),
                              ("content-only oracle (no co-consumption)", True)):
            scores = oracle_scores(dataset, content)
            rows.append(rung(name, "oracle", evaluate_scores(dataset, scores, "test"), U,
                             evaluate_scores(dataset, scores, "valid")))
    rows.append(rung("popularity", "popularity", popularity_test, U, popularity_valid))
    return rows


def run_rung(name: str, kind: str, result, n_users: int) -> dict:
    """A ladder row from a federated ``RunResult`` (or its JSON dict) or a ``CentralResult``."""
    get = (lambda k: result[k]) if isinstance(result, dict) else (lambda k: getattr(result, k))
    return rung(name, kind, get("test"), n_users, get("valid"))


__all__ = ["standard_error", "evaluate_scores", "oracle_scores", "train_central", "tune_central",
           "CentralResult", "rung", "ladder_table", "standard_rungs", "run_rung"]


def _as_dict(result: CentralResult) -> dict:
    """JSON-ready form of a ``CentralResult``."""
    return dataclasses.asdict(result)
