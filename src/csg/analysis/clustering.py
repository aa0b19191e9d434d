"""Cluster centres (METHOD.md section 4; the paper's Appendix F).

k-means with C clusters on the pooled features. With class-specific filters the
clusters follow the classes and each centre is concentrated on its class's
filters. Reported: the centres, the cluster-by-class contingency table, purity
``(1/N) sum_j max_c n_jc``, the adjusted Rand index and normalised mutual
information between clusters and labels (scikit-learn).
"""
from __future__ import annotations

import numpy as np

from ..core.errors import CsgError
from . import figures as figs
from ._common import as_labels, check_pooled
from .base import AnalysisInputs, AnalysisResult, Figure, figure, fmt, small


def cluster_centres(pooled, labels, num_clusters: int | None = None, seed: int = 0, n_init: int = 4,
                    max_points: int | None = 20000) -> dict[str, np.ndarray | float]:
    """k-means (scikit-learn ``KMeans``, seeded) on ``pooled``.

    Clusters are renumbered so that cluster j's majority class is as close to j
    as possible (sorted by majority class), which makes the centre heatmap read
    along the diagonal. ``max_points`` caps the points used to fit (a seeded
    sample; every point is still assigned).

    Returns ``centres`` (C x K), ``assignment`` (N), ``contingency`` (clusters x classes),
    ``majority`` (class per cluster), ``purity``, ``ari``, ``nmi``.
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    y, C = as_labels(labels)
    a = check_pooled(pooled, y)
    k = int(num_clusters or C)
    if not 1 <= k <= a.shape[0]:
        raise CsgError(f"cannot make {k} clusters from {a.shape[0]} samples")
    fit = a
    if max_points is not None and a.shape[0] > max_points:
        fit = a[np.random.default_rng(seed).choice(a.shape[0], max_points, replace=False)]
    km = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(fit)
    assign = km.predict(a)
    cont = np.zeros((k, C), dtype=np.int64)
    np.add.at(cont, (assign, y), 1)
    majority = cont.argmax(axis=1)
    order = np.lexsort((-cont.max(axis=1), majority))  # by majority class, then by size
    rank = np.empty(k, dtype=np.int64)
    rank[order] = np.arange(k)
    return {
        "centres": km.cluster_centers_[order],
        "assignment": rank[assign],
        "contingency": cont[order],
        "majority": majority[order],
        "purity": float(cont.max(axis=1).sum() / max(a.shape[0], 1)),
        "ari": float(adjusted_rand_score(y, assign)),
        "nmi": float(normalized_mutual_info_score(y, assign)),
    }


# ---- the analysis entry (registry) -----------------------------------------------------------------------
SCHEMA = "csg.analysis.clusters/1"


def compute(inputs: AnalysisInputs) -> AnalysisResult:
    """Schema ``csg.analysis.clusters/1``: ``k``, ``seed``, ``purity``, ``ari``, ``nmi``, ``majority_class``,
    ``centres`` and ``contingency`` when small. Arrays: ``cluster_centres`` (C x K), ``cluster_contingency``."""
    C, seed = inputs.num_classes, inputs.options.get("seed", 0)
    cl = cluster_centres(inputs.pooled, inputs.labels, C, seed=seed)
    summary = {"schema": SCHEMA, "k": C, "seed": seed, "purity": cl["purity"], "ari": cl["ari"], "nmi": cl["nmi"],
               "majority_class": cl["majority"], "centres": small(cl["centres"]),
               "contingency": small(cl["contingency"])}
    return AnalysisResult("clusters", SCHEMA, summary, {"cluster_centres": cl["centres"],
                                                        "cluster_contingency": cl["contingency"]})


def render(result: AnalysisResult, inputs: AnalysisInputs, figdir) -> list[Figure]:
    s = result.summary
    path, fig = figure(figdir, "analysis_clusters.png",
                       f"k-means ({s['k']} clusters, seed {s['seed']}) on the pooled features: centres with filters "
                       f"ordered by argmax class, and the cluster x class table (purity {fmt(s['purity'], 2)}, ARI "
                       f"{fmt(s['ari'], 2)}).")
    figs.clusters_figure(path, result.arrays["cluster_centres"], result.arrays["cluster_contingency"], inputs.order,
                         purity=s["purity"], ari=s["ari"], class_names=inputs.class_names)
    return [fig]


def key_numbers(s: dict) -> list[tuple[str, str]]:
    return [("k-means purity / ARI / NMI", f"{fmt(s.get('purity'))} / {fmt(s.get('ari'))} / {fmt(s.get('nmi'))}")]
