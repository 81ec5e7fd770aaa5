"""Grouping clients by their prediction functions (GFMFR step 3; book/methods.md, "GFMFR").

The server clusters the round's participants by what they uploaded of their prediction function
P_u (the parameters that turn an item representation into a score), then aligns the new labels
with the previous round's groups so that a group keeps its id across rounds:

- ``standardise_columns``: each coordinate of P_u centred and scaled over the participants (a bias
  and a 64-d vector weigh alike);
- ``reduce``: a wide P_u (FedNCF's tower: about 10,000 numbers) is projected on its first
  principal components (at most 32) before clustering, as the published code does with PCA;
- ``cluster``: K-Means (scikit-learn, the default), spectral clustering (RBF affinity with the
  median-distance bandwidth) or agglomerative (Ward) into ``g`` groups;
- ``align_labels``: Hungarian matching (scipy's ``linear_sum_assignment``) of new labels to old
  groups, maximising the number of participants who stay in their group.

Pure functions of numpy arrays; the server step (gfmfr.py) calls them.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

METHODS = ("kmeans", "spectral", "agglomerative")


def standardise_columns(X: np.ndarray) -> np.ndarray:
    """Each column centred and divided by its standard deviation over the rows (constant columns
    become 0): (P, k) -> (P, k)."""
    X = np.asarray(X, dtype=np.float64)
    centred = X - X.mean(0, keepdims=True)
    std = centred.std(0, keepdims=True)
    return np.divide(centred, std, out=np.zeros_like(centred), where=std > 1e-12)


def reduce(X: np.ndarray, width: int = 32, seed: int = 0) -> np.ndarray:
    """``X`` (P, k) itself when k <= 2 ``width``, else its projection on its first ``width``
    principal components (randomised SVD, two power iterations): K-Means on 10,000 columns costs
    seconds a round, on 32 nothing."""
    if X.shape[1] <= 2 * width or X.shape[0] <= width:
        return X
    if not np.any(np.ptp(X, axis=0) > 0):        # every participant uploaded the same P_u
        return X[:, :1] * 0.0                     # (PCA of no variance divides by zero)
    from sklearn.decomposition import PCA

    pca = PCA(n_components=width, svd_solver="randomized", iterated_power=2, random_state=seed)
    return pca.fit_transform(X)


def cluster(X: np.ndarray, g: int, method: str = "kmeans", seed: int = 0) -> np.ndarray:
    """Labels (P,) in 0..g-1 of the rows of ``X`` (P, k). With fewer rows (or distinct rows) than
    groups every distinct row is its own group; with one group every label is 0."""
    P = X.shape[0]
    if method not in METHODS:
        raise ValueError(f"cluster: method {method!r}; choose one of {', '.join(METHODS)}")
    if g <= 1 or P == 0:
        return np.zeros(P, dtype=np.int64)
    if P <= g:
        return np.arange(P, dtype=np.int64)
    # at most g distinct prediction functions (e.g. before any client has trained): each distinct
    # one is a group; no clustering method can split identical rows
    distinct, inverse = np.unique(X, axis=0, return_inverse=True)
    if distinct.shape[0] <= g:
        return inverse.reshape(-1).astype(np.int64)
    if method == "kmeans":
        from sklearn.cluster import KMeans

        return KMeans(n_clusters=g, n_init=10, random_state=seed).fit_predict(X).astype(np.int64)
    if method == "spectral":
        from sklearn.cluster import SpectralClustering
        from sklearn.metrics import pairwise_distances

        distances = pairwise_distances(X)
        positive = distances[distances > 0]
        median = float(np.median(positive)) if positive.size else 1.0
        # RBF affinity exp(-gamma ||x - y||^2) with gamma = 1 / (2 median^2)
        model = SpectralClustering(n_clusters=g, affinity="rbf", gamma=1.0 / (2.0 * median ** 2),
                                   random_state=seed, assign_labels="kmeans")
        return model.fit_predict(X).astype(np.int64)
    from sklearn.cluster import AgglomerativeClustering

    return AgglomerativeClustering(n_clusters=g, linkage="ward").fit_predict(X).astype(np.int64)


def align_labels(previous: np.ndarray, labels: np.ndarray, g: int) -> np.ndarray:
    """New labels renamed so that group ids stay stable across rounds.

    ``previous`` (P,): each participant's group before this round (-1: never grouped);
    ``labels`` (P,): this round's clustering, 0..g-1. With O[l, k] = #{u: labels_u = l,
    previous_u = k}, the renaming l -> k is the one-to-one assignment maximising sum O[l, k]
    (Hungarian algorithm); participants never grouped before do not vote."""
    previous = np.asarray(previous, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    overlap = np.zeros((g, g), dtype=np.int64)                                   # (new, old)
    seen = previous >= 0
    np.add.at(overlap, (labels[seen], previous[seen]), 1)
    new, old = linear_sum_assignment(-overlap)
    rename = np.empty(g, dtype=np.int64)
    rename[new] = old
    return rename[labels]
