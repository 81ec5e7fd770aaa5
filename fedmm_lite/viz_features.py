"""Looking at frozen item features: what they encode, whether the two towers share a space, what
they cost. The Encoding chapter's tables and figures, each one call.

- ``probe_table``: a cross-validated linear probe per planted attribute and feature set (accuracy
  against the majority-class rate);
- ``retrieval_table``: text-to-image retrieval, each item's title against every item's picture
  (top-k hit rate against chance k/m, against the ceiling when the two share one attribute only,
  and the share of retrieved pictures with the title's value of that attribute);
- ``modality_gap``, ``gap_table`` and ``modality_gap_figure``: the distance between the centroids
  of the L2-normalised image and text features (Liang et al. 2022) with its calibration and the
  mean cosines, and a UMAP of both modalities in one plot;
- ``imputation_table``: which rows were imputed and a check that they hold what the encoder says;
- ``encoding_costs``: encoding time, items per second, feature storage against the raw pictures.

Every function takes arrays or a ``Dataset`` and returns a table or a figure; nothing here encodes.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Callable, Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .data.dataset import Dataset

MB = 1e6  # storage is reported in megabytes (10^6 bytes), as file managers do


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero). (n, D) -> (n, D) float64."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)  # (n, 1)
    return x / np.where(norms > 0, norms, 1.0)


def observed_modalities(dataset: Dataset) -> dict[str, np.ndarray]:
    """``{"image": (n,) bool, "text": (n,) bool}``: True where the item has a readable picture /
    a non-empty title, i.e. where its features were encoded rather than imputed."""
    image = np.array([p is not None for p in dataset.image_paths], dtype=bool)
    text = np.array([bool(t.strip()) for t in dataset.titles], dtype=bool)
    return {"image": image, "text": text}


# ------------------------------------------------------------------------------ linear probes
def linear_probe(features: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0) -> float:
    """Mean accuracy of a cross-validated multinomial logistic regression from features to labels.

    Features are standardised inside each training fold (CLIP rows are unit vectors with tiny
    coordinates; unscaled, the default regularisation would flatten them). Stratified folds, at
    most ``folds`` and at least 2, fewer when the rarest label has fewer items than ``folds``.
    One BLAS thread: these matrices are tiny, and on a busy CPU extra threads only spin (measured
    here: 30x slower with 2 threads on a loaded 2-core machine).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    labels = np.asarray(labels)
    _, counts = np.unique(labels, return_counts=True)
    if len(counts) < 2:
        raise ValueError("linear_probe: the labels take a single value; nothing to predict")
    n_splits = int(min(folds, counts.min()))
    if n_splits < 2:
        raise ValueError(f"linear_probe: the rarest label has {counts.min()} item(s); need at least 2")
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with threadpool_limits(limits=1):
        scores = cross_val_score(model, np.asarray(features, dtype=np.float64), labels, cv=cv)
    return float(scores.mean())


def majority_rate(labels: np.ndarray) -> float:
    """Accuracy of always answering the most frequent label: the probe's chance level."""
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    return float(counts.max() / counts.sum())


def probe_table(feature_sets: Mapping[str, np.ndarray], attributes: Mapping[str, np.ndarray],
                attribute_modality: Mapping[str, str] | None = None, mask: np.ndarray | None = None,
                folds: int = 5, seed: int = 0) -> pd.DataFrame:
    """Linear-probe accuracy of every feature set (columns) for every planted attribute (rows).

    ``feature_sets``: label -> (n, D); ``attributes``: name -> (n,) int; ``mask`` (n,) bool keeps
    only some items (e.g. those with both modalities observed, so imputed rows do not count).
    Columns: ``planted in`` (the attribute's modality), ``values``, ``chance`` (majority-class
    rate), then one accuracy per feature set, all fractions in [0, 1].
    """
    n = len(next(iter(attributes.values())))
    keep = np.ones(n, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    rows = []
    for name, values in attributes.items():
        y = np.asarray(values)[keep]  # (m,)
        row = {"attribute": name, "values": int(len(np.unique(y))), "chance": majority_rate(y)}
        if attribute_modality is not None:
            row["planted in"] = attribute_modality.get(name, "?")
        for label, feats in feature_sets.items():
            row[label] = linear_probe(np.asarray(feats)[keep], y, folds=folds, seed=seed)
        rows.append(row)
    table = pd.DataFrame(rows).set_index("attribute")
    first = ["planted in"] if attribute_modality is not None else []
    return table[first + ["values", "chance"] + list(feature_sets)]


# ------------------------------------------------------------------------------ retrieval
def retrieval_ranks(queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """Rank of each query's own gallery row by cosine similarity. (m, D), (m, D) -> (m,) int.

    rank_i = 1 + #{j != i : cos(q_i, g_j) >= cos(q_i, g_i)}   (ties count against the item,
    as in ``metrics.target_ranks``: a tower that maps everything to one point scores rank m).
    """
    q, g = l2_normalise(queries), l2_normalise(gallery)
    if q.shape != g.shape:
        raise ValueError(f"retrieval_ranks: queries {q.shape} and gallery {g.shape} differ; "
                         "text-to-image retrieval needs the two towers in one space of one width")
    sim = q @ g.T  # (m, m): row i = query i against every picture
    own = np.diag(sim)  # (m,)
    # rank_i = 1 + #{j != i : sim_ij >= sim_ii}
    beats = (sim >= own[:, None]).sum(axis=1) - 1  # the diagonal always ties with itself
    return 1 + beats


def retrieval_at_k(queries: np.ndarray, gallery: np.ndarray, ks=(1, 10)) -> dict:
    """Top-k hit rates of ``retrieval_ranks`` with their chance levels k/m and the median rank."""
    ranks = retrieval_ranks(queries, gallery)
    m = len(ranks)
    out: dict = {"items": m}
    for k in ks:
        out[f"top-{k}"] = float(np.mean(ranks <= k))
        out[f"chance top-{k}"] = min(1.0, k / m)
    out["median rank"] = float(np.median(ranks))
    return out


def shared_label_ceiling(labels: np.ndarray, ks=(1, 10)) -> dict:
    """The best top-k hit rate of any encoder when a picture and its title share only ``labels``.

    A perfect matcher ranks the s_i pictures with item i's label first but cannot order them, so
    P(own picture in the top k) = min(1, k / s_i), averaged over items.
    """
    _, inverse, counts = np.unique(np.asarray(labels), return_inverse=True, return_counts=True)
    s = counts[inverse]  # (m,) s_i = items sharing item i's label, itself included
    return {f"ceiling top-{k}": float(np.mean(np.minimum(1.0, k / s))) for k in ks}


def same_label_at_k(queries: np.ndarray, gallery: np.ndarray, labels: np.ndarray, k: int = 10) -> dict:
    """Share of each title's k nearest pictures (cosine) that carry the title's label, averaged,
    and its chance level: k pictures drawn at random carry label v with rate s_v / m."""
    q, g = l2_normalise(queries), l2_normalise(gallery)
    labels = np.asarray(labels)
    sim = q @ g.T  # (m, m)
    top = np.argsort(-sim, axis=1, kind="stable")[:, :k]  # (m, k) nearest pictures per title
    hits = labels[top] == labels[:, None]  # (m, k)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return {f"same label in top-{k}": float(hits.mean()),
            f"chance same label in top-{k}": float(np.mean(counts[inverse] / len(labels)))}


def retrieval_table(pairs: Mapping[str, tuple[np.ndarray, np.ndarray]], mask: np.ndarray | None = None,
                    ks=(1, 10), shared: np.ndarray | None = None) -> pd.DataFrame:
    """Title-to-picture retrieval for each ``label -> (image (n, D), text (n, D))`` (rows).

    ``shared`` (n,) optional: the one attribute that pictures and titles both show; adds the
    ceiling of ``shared_label_ceiling`` and the attribute-level score of ``same_label_at_k``.
    """
    rows = {}
    for label, (image, text) in pairs.items():
        keep = np.ones(len(image), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        row = retrieval_at_k(np.asarray(text)[keep], np.asarray(image)[keep], ks)
        if shared is not None:
            labels = np.asarray(shared)[keep]
            row.update(shared_label_ceiling(labels, ks))
            row.update(same_label_at_k(np.asarray(text)[keep], np.asarray(image)[keep], labels, max(ks)))
        rows[label] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    order = ["items"] + [c for k in ks for c in (f"top-{k}", f"chance top-{k}", f"ceiling top-{k}")
                         if c in table] + [c for c in table if "label" in c] + ["median rank"]
    return table[order]


# ------------------------------------------------------------------------------ modality gap
def modality_gap(image: np.ndarray, text: np.ndarray) -> float:
    """Size of the modality gap (Liang et al. 2022, Sec. 4): the distance between the centroids
    of the L2-normalised image and text features, || mean_i x_i - mean_i y_i ||, in [0, 2]."""
    x, y = l2_normalise(image), l2_normalise(text)  # (n, D), (m, D)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"modality_gap: image width {x.shape[1]} and text width {y.shape[1]} "
                         "differ; a gap is only defined when both towers share one space")
    # gap = || (1/n) sum_i x_i - (1/m) sum_i y_i ||
    return float(np.linalg.norm(x.mean(axis=0) - y.mean(axis=0)))


def gap_table(pairs: Mapping[str, tuple[np.ndarray, np.ndarray]], mask: np.ndarray | None = None,
              seed: int = 0) -> pd.DataFrame:
    """Per ``label -> (image (n, D), text (n, D))``: the modality gap, the same measure between two
    random halves of the pictures (what 'no gap' looks like at this sample size), and the mean
    cosine within pictures, within titles and between them (the narrow 'cones' of Liang et al.)."""
    rng = np.random.default_rng(seed)
    rows = {}
    for label, (image, text) in pairs.items():
        keep = np.ones(len(image), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        x, y = l2_normalise(np.asarray(image)[keep]), l2_normalise(np.asarray(text)[keep])  # (m, D)
        half = rng.permutation(len(x)) < len(x) // 2  # (m,) a random half of the items
        rows[label] = {
            "gap: pictures vs titles": modality_gap(x, y),
            "gap: half vs half of the pictures": modality_gap(x[half], x[~half]),
            "mean cosine within pictures": float((x @ x.T).mean()),
            "mean cosine within titles": float((y @ y.T).mean()),
            "mean cosine picture-title": float((x @ y.T).mean()),
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def umap_embedding(image: np.ndarray, text: np.ndarray, seed: int = 0, n_neighbors: int = 15,
                   min_dist: float = 0.1) -> np.ndarray:
    """2-D UMAP of the image rows and the text rows together: (n, D), (n, D) -> (2n, 2), images
    first. Rows are L2-normalised first (Euclidean distance then orders pairs like cosine);
    seeded and single-threaded, so the same input gives the same picture on every run."""
    if image.shape[1] != text.shape[1]:
        raise ValueError(f"umap_embedding: image width {image.shape[1]} and text width "
                         f"{text.shape[1]} differ; the towers do not share a space")
    import umap  # umap-learn; imported here because it takes seconds to import

    points = np.vstack([l2_normalise(image), l2_normalise(text)]).astype(np.float32)  # (2n, D)
    reducer = umap.UMAP(n_neighbors=n_neighbors, min_dist=min_dist, random_state=seed, n_jobs=1)
    with warnings.catch_warnings():
        # umap warns that a fixed random_state disables parallelism: that is what we want.
        warnings.filterwarnings("ignore", message=".*random_state.*", category=UserWarning)
        return reducer.fit_transform(points)


def modality_gap_figure(panels: Mapping[str, tuple[np.ndarray, np.ndarray]], seed: int = 0,
                        n_pairs: int = 25, embed: Callable | None = None) -> plt.Figure:
    """One panel per ``label -> (image (n, D), text (n, D))``: both modalities in one 2-D map
    (``embed(image, text, seed) -> (2n, 2)``, default ``umap_embedding``), ``n_pairs`` items'
    picture and title joined by a line, the gap size in the title."""
    embed = embed or umap_embedding
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.6), squeeze=False)
    rng = np.random.default_rng(seed)
    for ax, (label, (image, text)) in zip(axes[0], panels.items()):
        n = len(image)
        xy = np.asarray(embed(image, text, seed))  # (2n, 2): pictures, then titles
        img_xy, txt_xy = xy[:n], xy[n:]
        for i in rng.choice(n, size=min(n_pairs, n), replace=False):
            ax.plot([img_xy[i, 0], txt_xy[i, 0]], [img_xy[i, 1], txt_xy[i, 1]], color="0.75", lw=0.6,
                    zorder=1)
        ax.scatter(img_xy[:, 0], img_xy[:, 1], s=10, c="tab:blue", label="pictures", zorder=2)
        ax.scatter(txt_xy[:, 0], txt_xy[:, 1], s=10, c="tab:orange", marker="^", label="titles",
                   zorder=2)
        ax.set_title(f"{label}\ngap between centroids: {modality_gap(image, text):.2f}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(loc="best", fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------ imputation, costs
def imputation_table(dataset: Dataset, placeholder_title: str | None = None) -> pd.DataFrame:
    """Per modality: how many items had nothing to encode, what they were given, and a check.

    Pictures: the imputed rows must equal the mean of the encoded rows (the check is the largest
    absolute difference). Titles: every empty title was encoded as the same placeholder sentence,
    so the imputed rows must be identical (the check is their largest spread).
    """
    if not dataset.features:
        raise ValueError(f"{dataset.name}: no features yet; run encoders.encode_dataset first")
    observed = observed_modalities(dataset)
    rows = []
    for modality in ("image", "text"):
        feats = dataset.features[modality]  # (n, D)
        missing = ~observed[modality]
        if modality == "image":
            given = "the mean of the encoded pictures' features"
            target = feats[~missing].mean(axis=0) if (~missing).any() else np.zeros(feats.shape[1])
        else:
            given = (f"the features of the title {placeholder_title!r}" if placeholder_title
                     else "the features of one placeholder title")
            target = feats[missing][0] if missing.any() else None
        check = float(np.abs(feats[missing] - target).max()) if missing.any() else 0.0
        rows.append({"modality": modality, "items": dataset.n_items, "missing": int(missing.sum()),
                     "imputed with": given, "max |row - expected|": check,
                     "example items": ", ".join(dataset.item_ids[missing][:4])})
    return pd.DataFrame(rows).set_index("modality")


def image_bytes_on_disk(dataset: Dataset) -> int:
    """Total size of the dataset's readable picture files, in bytes."""
    return int(sum(Path(p).stat().st_size for p in dataset.image_paths if p is not None))


def encoding_costs(dataset: Dataset, summary, features: Mapping[str, np.ndarray] | None = None) -> pd.Series:
    """What encoding cost and what the features weigh, next to the raw pictures (named by encoder).

    ``summary`` is the ``EncodeSummary`` of ``encode_dataset``; ``features`` default to
    ``dataset.features``. On a cache hit the encoding time is the one recorded in the cache's
    meta.json when the features were made (said in the row name).
    """
    features = dataset.features if features is None else features
    seconds, device, when = summary.seconds, summary.device, "this run"
    if summary.cache_hit and summary.cache_path:
        meta = json.loads((Path(summary.cache_path) / "meta.json").read_text())
        seconds, device, when = meta["seconds_to_encode"], meta["device"], "when cached"
    feature_bytes = sum(np.asarray(f).nbytes for f in features.values())  # float32: n * (D_i + D_t) * 4
    raw = image_bytes_on_disk(dataset)
    return pd.Series({
        "encoder": summary.encoder,
        "items": dataset.n_items,
        f"encoding seconds ({when})": round(float(seconds), 1),
        "items per second": round(dataset.n_items / seconds, 1) if seconds > 0 else float("inf"),
        "device": device,
        "feature dims (image + text)": f"{summary.image_dim} + {summary.text_dim}",
        "features, bytes per item": feature_bytes // max(1, dataset.n_items),
        "features, MB": float(f"{feature_bytes / MB:.4g}"),
        "raw pictures on disk, MB": float(f"{raw / MB:.4g}"),
        "raw pictures / features": float(f"{raw / feature_bytes:.3g}") if feature_bytes else float("nan"),
    }, name=summary.encoder)
