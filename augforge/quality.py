"""Statistics of generated binary masks against real ones (pure numpy/torch, no I/O).

Masks are (N, 1, H, W) or (N, H, W) tensors or arrays in {0, 1} (binarised at 0.5); K-class label maps
(class indices 0..K-1) have their own per-class area statistics (:func:`class_area_report`). The report
compares the area-fraction distributions (exact 1-D Wasserstein-1 and Kolmogorov-Smirnov),
connected-component counts (8-connectivity), empty masks, and memorisation: for each generated
mask the best IoU with any real mask.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor
COMPONENT_BINS = ("0", "1", "2", "3", "4", "5+")
MEMORISATION_IOU = 0.95


def _masks_numpy(masks: ArrayLike) -> np.ndarray:
    """(N, H, W) numpy array of (N, 1, H, W) or (N, H, W) masks (tensor or array), values as given."""
    if isinstance(masks, torch.Tensor):
        masks = masks.detach().cpu().numpy()
    masks = np.asarray(masks)
    if masks.ndim == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.ndim != 3:
        raise ValueError(f"masks must have shape (N, 1, H, W) or (N, H, W), got {masks.shape}")
    return masks


def _binary_numpy(masks: ArrayLike) -> np.ndarray:
    """(N, H, W) bool array from (N, 1, H, W) or (N, H, W) masks (K classes: every class > 0)."""
    return _masks_numpy(masks) > 0.5


def _flat_binary_torch(masks: ArrayLike) -> torch.Tensor:
    """(N, H*W) float32 {0, 1} tensor, on the input tensor's device (CPU for arrays)."""
    if isinstance(masks, torch.Tensor):
        if masks.dim() not in (3, 4) or (masks.dim() == 4 and masks.shape[1] != 1):
            raise ValueError(f"masks must have shape (N, 1, H, W) or (N, H, W), got {tuple(masks.shape)}")
        return (masks.detach() > 0.5).flatten(1).float()
    return torch.from_numpy(_binary_numpy(masks)).flatten(1).float()


def area_fractions(masks: ArrayLike) -> np.ndarray:
    """Foreground fraction of each mask, (N,) float64 in [0, 1]."""
    return _binary_numpy(masks).mean(axis=(1, 2), dtype=np.float64)


def component_counts(masks: ArrayLike) -> np.ndarray:
    """Number of 8-connected foreground components of each mask, (N,) int64."""
    binary = _binary_numpy(masks).astype(np.uint8)
    return np.array([cv2.connectedComponents(m, connectivity=8)[0] - 1 for m in binary], dtype=np.int64)


def _ecdfs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pooled sorted support and both empirical CDFs evaluated on it."""
    a, b = np.sort(np.asarray(a, np.float64).ravel()), np.sort(np.asarray(b, np.float64).ravel())
    if a.size == 0 or b.size == 0:
        raise ValueError("both samples must be non-empty")
    support = np.sort(np.concatenate([a, b]))
    cdf_a = np.searchsorted(a, support, side="right") / a.size
    cdf_b = np.searchsorted(b, support, side="right") / b.size
    return support, cdf_a, cdf_b


def wasserstein_1d(a: ArrayLike, b: ArrayLike) -> float:
    """Exact W1 between two empirical 1-D distributions: ∫ |F_a(x) - F_b(x)| dx."""
    support, cdf_a, cdf_b = _ecdfs(np.asarray(a), np.asarray(b))
    return float(np.sum(np.abs(cdf_a - cdf_b)[:-1] * np.diff(support)))


def ks_statistic(a: ArrayLike, b: ArrayLike) -> float:
    """Two-sample Kolmogorov-Smirnov statistic sup_x |F_a(x) - F_b(x)|."""
    _, cdf_a, cdf_b = _ecdfs(np.asarray(a), np.asarray(b))
    return float(np.max(np.abs(cdf_a - cdf_b)))


def max_iou_to_set(gen: ArrayLike, real: ArrayLike, chunk: int = 256) -> np.ndarray:
    """For each generated mask, its highest IoU with any real mask, (N_gen,) float64.

    Intersections are matrix products of the flattened masks, in blocks of ``chunk`` x ``chunk``
    masks to bound memory; union = |g| + |r| - |g ∩ r|, and two empty masks have IoU 1.
    """
    g, r = _flat_binary_torch(gen), _flat_binary_torch(real)
    if g.shape[1] != r.shape[1]:
        raise ValueError(f"mask sizes differ: {g.shape[1]} vs {r.shape[1]} pixels")
    r = r.to(g.device)
    best = torch.zeros(g.shape[0], dtype=torch.float64, device=g.device)
    for i in range(0, g.shape[0], chunk):
        g_blk = g[i : i + chunk]
        for j in range(0, r.shape[0], chunk):
            r_blk = r[j : j + chunk]
            inter = (g_blk @ r_blk.T).double()  # exact: integer counts < 2^24
            union = g_blk.sum(1, dtype=torch.float64)[:, None] + r_blk.sum(1, dtype=torch.float64)[None] - inter
            iou = torch.where(union > 0, inter / union.clamp_min(1), 1.0)
            best[i : i + chunk] = torch.maximum(best[i : i + chunk], iou.max(1).values)
    return best.cpu().numpy()


def _component_hist(counts: np.ndarray) -> dict[str, float]:
    binned = np.minimum(counts, len(COMPONENT_BINS) - 1)
    freq = np.bincount(binned, minlength=len(COMPONENT_BINS)) / counts.size
    return {name: float(f) for name, f in zip(COMPONENT_BINS, freq)}


def mask_quality_report(gen: ArrayLike, real: ArrayLike) -> dict:
    """JSON-able comparison of generated masks with real masks (see the module docstring)."""
    area_gen, area_real = area_fractions(gen), area_fractions(real)
    if area_gen.size == 0 or area_real.size == 0:
        raise ValueError("need at least one generated and one real mask")
    comp_gen, comp_real = component_counts(gen), component_counts(real)
    iou = max_iou_to_set(gen, real)
    return {
        "n_generated": int(area_gen.size),
        "n_real": int(area_real.size),
        "area": {
            "generated_mean": float(area_gen.mean()),
            "real_mean": float(area_real.mean()),
            "wasserstein1": wasserstein_1d(area_gen, area_real),
            "ks": ks_statistic(area_gen, area_real),
        },
        "components": {
            "generated_mean": float(comp_gen.mean()),
            "real_mean": float(comp_real.mean()),
            "generated_hist": _component_hist(comp_gen),
            "real_hist": _component_hist(comp_real),
            "generated_blob_like": float(np.isin(comp_gen, (1, 2)).mean()),
            "real_blob_like": float(np.isin(comp_real, (1, 2)).mean()),
        },
        "empty": {
            "generated": float((comp_gen == 0).mean()),
            "real": float((comp_real == 0).mean()),
        },
        "memorisation": {
            "iou_min": float(iou.min()),
            "iou_median": float(np.median(iou)),
            "iou_p95": float(np.quantile(iou, 0.95)),
            "iou_max": float(iou.max()),
            f"frac_iou_gt_{MEMORISATION_IOU}": float((iou > MEMORISATION_IOU).mean()),
        },
    }


def _labels_numpy(masks: ArrayLike) -> np.ndarray:
    """(N, H, W) int64 class indices from (N, 1, H, W) or (N, H, W) label maps (float or integer)."""
    return np.rint(_masks_numpy(masks)).astype(np.int64)


def class_area_fractions(masks: ArrayLike, num_classes: int) -> np.ndarray:
    """The area fraction of each class in each K-class label map, (N, K) float64; rows sum to 1.

    ``masks``: class indices 0..K-1, (N, 1, H, W) or (N, H, W); a value outside 0..K-1 is refused."""
    labels = _labels_numpy(masks)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"class indices must be in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}")
    return np.stack([(labels == c).mean(axis=(1, 2), dtype=np.float64) for c in range(num_classes)], axis=1)


def class_area_w1(gen: ArrayLike, real: ArrayLike, num_classes: int) -> np.ndarray:
    """Per-class area W1, (K,) float64: entry c is the exact 1-D Wasserstein-1 (:func:`wasserstein_1d`)
    between the generated and the real masks' distributions of class c's area fraction (0: the same
    distribution; at most 1). For K = 2, entry 1 is :func:`mask_quality_report`'s ``area.wasserstein1``."""
    area_gen, area_real = class_area_fractions(gen, num_classes), class_area_fractions(real, num_classes)
    if area_gen.shape[0] == 0 or area_real.shape[0] == 0:
        raise ValueError("need at least one generated and one real mask")
    return np.array([wasserstein_1d(area_gen[:, c], area_real[:, c]) for c in range(num_classes)])


def class_area_report(gen: ArrayLike, real: ArrayLike, classes: tuple[str, ...] | list[str]) -> dict:
    """JSON-able per-class area comparison of generated K-class masks with real ones, keyed by class name:
    ``area_w1`` (:func:`class_area_w1`), ``generated_mean`` / ``real_mean`` area fractions, and
    ``generated_present`` / ``real_present``, the share of masks holding at least one pixel of the class."""
    k = len(classes)
    area_gen, area_real = class_area_fractions(gen, k), class_area_fractions(real, k)
    w1 = class_area_w1(gen, real, k)
    return {
        "n_generated": int(area_gen.shape[0]),
        "n_real": int(area_real.shape[0]),
        "area_w1": {name: float(w1[c]) for c, name in enumerate(classes)},
        "generated_mean": {name: float(area_gen[:, c].mean()) for c, name in enumerate(classes)},
        "real_mean": {name: float(area_real[:, c].mean()) for c, name in enumerate(classes)},
        "generated_present": {name: float((area_gen[:, c] > 0).mean()) for c, name in enumerate(classes)},
        "real_present": {name: float((area_real[:, c] > 0).mean()) for c, name in enumerate(classes)},
    }


def frechet_distance(feats_a: ArrayLike, feats_b: ArrayLike) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, C) (the FID formula,
    ||μa-μb||² + tr(Σa + Σb - 2 (Σa^½ Σb Σa^½)^½), on whatever features are given).

    Computed with symmetric eigendecompositions only (no scipy): tr((Σa Σb)^½) = tr((Σa^½ Σb Σa^½)^½).
    """
    a, b = (x.detach().double().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float64)
            for x in (feats_a, feats_b))
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(cov_a)
    sqrt_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2.0 * cross)


def _float64(feats: ArrayLike) -> torch.Tensor:
    return feats.detach().double().cpu() if isinstance(feats, torch.Tensor) else torch.as_tensor(np.asarray(feats, np.float64))


def subsample_to_equal_n(*feature_sets: ArrayLike, generator: torch.Generator) -> list[torch.Tensor]:
    """Each (N_i, C) set reduced to N = min N_i rows drawn without replacement (float64, CPU; a set of N
    rows is kept whole, in order). The Fréchet distance of Gaussians fitted to N samples is biased by
    about tr(Σ)/N per set, so two distances are comparable only at the same N."""
    sets = [_float64(f) for f in feature_sets]
    n = min(len(f) for f in sets)
    return [f if len(f) == n else f[torch.randperm(len(f), generator=generator)[:n]] for f in sets]


def kid_kernel(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """KID's cubic polynomial kernel k(x, y) = (x·y / C + 1)³ between the rows of u (N, C) and v (M, C): (N, M)."""
    return (u @ v.T / u.shape[1] + 1) ** 3


def kernel_inception_distance(feats_a: ArrayLike, feats_b: ArrayLike, *, subsets: int = 100, subset_size: int = 1000,
                              generator: torch.Generator | None = None) -> dict[str, float]:
    """KID (Bińkowski et al. 2018, "Demystifying MMD GANs", Eq. 4 with the kernel of §5): the unbiased
    estimate of MMD² between two feature sets (N_a, C) and (N_b, C) under the cubic polynomial kernel
    k(x, y) = (x·y / C + 1)³, averaged over ``subsets`` random subsets of m = min(``subset_size``, N_a, N_b)
    rows of each set:

        MMD²_u = Σ_{i≠j} k(x_i, x_j) / m(m-1) + Σ_{i≠j} k(y_i, y_j) / m(m-1) - 2 Σ_{i,j} k(x_i, y_j) / m².

    Unbiased: its expectation is 0 for two samples of one distribution whatever N (so a value can be
    negative), unlike the Fréchet distance. Returns {mean, std (over subsets), subsets, subset_size}.
    """
    a, b = _float64(feats_a), _float64(feats_b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be (N, C) with the same C, got {tuple(a.shape)} and {tuple(b.shape)}")
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples in each set, got {len(a)} and {len(b)}")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    values = []
    for _ in range(subsets):
        x = a[torch.randperm(len(a), generator=generator)[:m]]
        y = b[torch.randperm(len(b), generator=generator)[:m]]
        k_xx, k_yy, k_xy = (kid_kernel(u, v) for u, v in ((x, x), (y, y), (x, y)))
        within = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
        values.append(within - 2 * k_xy.mean())
    values = torch.stack(values)
    return {"mean": float(values.mean()), "std": float(values.std(unbiased=False)), "subsets": subsets,
            "subset_size": m}


def nearest_distance(gen: torch.Tensor, real: torch.Tensor, chunk: int = 256) -> np.ndarray:
    """For each generated image (N, C, H, W) in [0,1], the RMSE to its nearest real image (M, C, H, W).

    A generator that copies its training set has distances near 0 (memorisation)."""
    g = gen.flatten(1).double()
    r = real.flatten(1).double().to(g.device)
    best = [torch.cdist(g[i:i + chunk], r).amin(dim=1) for i in range(0, g.shape[0], chunk)]
    return (torch.cat(best) / np.sqrt(g.shape[1])).cpu().numpy()
