"""What an honest-but-curious server learns from one round's uploads (the chapter "Privacy,
honestly"): package code, so the chapter and the tests run the same attack.

1. Which items a client trained on, from its item-table update Delta_u (n, D) alone. For every
   backbone here the gradient of a row is (sigma(s_ui) - y_ui) times a vector that depends on the
   user, hardly on the item (FedAvg: p_u), summed over the local steps; so the rows the client
   touched are (nearly) multiples of ONE direction, positives (y = 1) on one side, its sampled
   negatives (y = 0) on the other, and every other row is exactly 0. The attack
   (``infer_items``): v = the top right singular vector of Delta_u; a row's score is its
   projection Delta_u[i] . v; the rows beyond a threshold on the side with FEWER rows are the
   positives (each positive comes with ``neg_ratio`` negatives). Without noise the threshold is 0;
   with noise of known per-scalar std sigma (a pure-noise row's projection is then about
   N(0, sigma^2)) it is the sigma-multiple that n pure-noise rows pass, both sides together, only
   ``FALSE_ROWS`` times on average. Scored against the truth with precision, recall and the AUC of
   the scores (positives against every other item: 0.5 is a coin, 1 is perfect). One attack among
   many: it shows a lower bound on what leaks; only DP bounds every attack.
2. What GFMFR's reported prediction functions P_u say about a user: a linear probe
   (``probe_groups``) predicts the world's planted group of a user from P_u, cross-validated,
   next to the majority-class rate.

``observe_round`` runs one round of a ``FederatedRun`` and keeps every chunk's uploads exactly as
the server receives them (after privatising).
"""
from __future__ import annotations

import numpy as np
import torch

FALSE_ROWS = 0.05         # expected pure-noise rows over the threshold, per client (both sides)


def observe_round(run, t: int) -> list:
    """Round ``t`` of ``run`` (a ``FederatedRun``), trained as usual; returns [(uploads, plan)]
    for every chunk, the uploads as the server received them."""
    seen = []
    run.train_round(t, observe=lambda uploads, plan: seen.append((uploads, plan)))
    return seen


def client_update(batch, c: int, tables, shapes: dict) -> torch.Tensor:
    """Client ``c``'s item-table update over all n rows, every table side by side: (n, D) float64
    (rows it did not send are 0)."""
    parts = []
    for name in tables:
        n, d = shapes[name]
        dense = torch.zeros(n, d, dtype=torch.float64)
        mine = batch.owners[name] == c
        dense[batch.rows[name][mine].cpu()] = batch.values[name][mine].double().cpu()
        parts.append(dense)
    return torch.cat(parts, 1)


def noise_std(noise=None, dp=None) -> float:
    """Per-scalar std of the noise on an upload: Gaussian STD, Laplace sqrt(2) b, local DP z S."""
    if dp is not None and dp.mode == "local":
        return dp.std
    if noise is None or not noise.active:
        return 0.0
    return float(noise.scale * (np.sqrt(2.0) if noise.kind == "laplace" else 1.0))


def threshold(sigma: float, n: int) -> float:
    """tau with P(|N(0, sigma^2)| > tau) = FALSE_ROWS / n: n pure-noise rows pass FALSE_ROWS times."""
    from scipy.stats import norm

    return float(sigma * norm.isf(FALSE_ROWS / (2 * n)))


def infer_items(update: torch.Tensor, sigma: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The attack of the module docstring on one client's update (n, D): (scores (n,), predicted
    positives (n,) bool). ``sigma`` the per-scalar noise std the server knows (0: none)."""
    x = update.double()
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    proj = x @ vh[0]                                                  # (n,) Delta_u[i] . v
    tau = threshold(sigma, x.shape[0]) if sigma > 0 else 1e-9 * float(proj.abs().max())
    plus, minus = int((proj > tau).sum()), int((proj < -tau).sum())
    # positives are the minority side (each comes with neg_ratio negatives)
    sign = 1.0 if (0 < plus <= minus) or minus == 0 else -1.0
    scores = sign * proj
    return scores, scores > tau


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney): P(score of a positive > score of a negative),
    ties counted half."""
    from scipy.stats import rankdata

    labels = labels.astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def attack_uploads(seen: list, dataset, tables, shapes: dict, sigma: float = 0.0,
                   max_clients: int | None = None) -> dict:
    """The item attack on every client of ``seen`` (``observe_round``), against the truth (the
    client's training items): mean precision, recall and AUC over clients, and how many."""
    indptr, indices = np.asarray(dataset.train_indptr), np.asarray(dataset.train_indices)
    precision, recall, areas = [], [], []
    for batch, _ in seen:
        for c in range(batch.n_clients):
            if max_clients is not None and len(recall) >= max_clients:
                break
            u = int(batch.clients[c])
            truth = np.zeros(dataset.n_items, dtype=bool)
            truth[indices[indptr[u]:indptr[u + 1]]] = True
            scores, predicted = infer_items(client_update(batch, c, tables, shapes), sigma)
            predicted = predicted.numpy()
            hits = int((predicted & truth).sum())
            precision.append(hits / predicted.sum() if predicted.sum() else 0.0)
            recall.append(hits / truth.sum())
            areas.append(auc(scores.numpy(), truth))
    return {"precision": float(np.mean(precision)), "recall": float(np.mean(recall)),
            "auc": float(np.nanmean(areas)), "clients": len(recall), "noise_std": sigma}


def reported_functions(seen: list) -> tuple[np.ndarray, np.ndarray]:
    """(clients (P,), P_u (P, k)): every report of every client in ``seen``, flattened side by side
    in sorted name order (GFMFR's prediction functions)."""
    clients, values = [], []
    for batch, _ in seen:
        if not batch.reports:
            continue
        clients.append(batch.clients.cpu().numpy())
        values.append(torch.cat([batch.reports[n].reshape(batch.n_clients, -1).double().cpu()
                                 for n in sorted(batch.reports)], 1).numpy())
    if not clients:
        raise ValueError("leakage: these uploads carry no reports (GFMFR's P_u)")
    return np.concatenate(clients), np.concatenate(values)


def probe_groups(P: np.ndarray, groups: np.ndarray, folds: int = 5, seed: int = 0) -> dict:
    """A linear probe: multinomial logistic regression on standardised P_u predicting ``groups``,
    ``folds``-fold stratified cross-validated accuracy, next to the majority-class rate (what
    guessing the largest group scores)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    groups = np.asarray(groups)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    split = StratifiedKFold(folds, shuffle=True, random_state=seed)
    accuracy = cross_val_score(probe, P, groups, cv=split)
    majority = np.bincount(groups).max() / len(groups)
    return {"accuracy": float(accuracy.mean()), "majority_rate": float(majority), "users": int(len(groups))}
