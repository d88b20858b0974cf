from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from augforge.quality import (
    area_fractions,
    component_counts,
    ks_statistic,
    mask_quality_report,
    max_iou_to_set,
    wasserstein_1d,
)


def _blobs(centers: list[tuple[int, int]], size: int = 32, radius: int = 3) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    for c in centers:
        cv2.circle(m, c, radius, 1, -1)
    return m


def _random_masks(n: int, seed: int, size: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, 1, size, size), 0.4), generator=g)


def test_area_fractions_and_shapes():
    masks = np.zeros((3, 8, 8), np.float32)
    masks[1, :2] = 1  # 16 of 64 pixels
    masks[2] = 1
    np.testing.assert_allclose(area_fractions(masks), [0.0, 0.25, 1.0])
    np.testing.assert_allclose(area_fractions(torch.from_numpy(masks)[:, None]), [0.0, 0.25, 1.0])
    with pytest.raises(ValueError):
        area_fractions(np.zeros((2, 3, 8, 8)))


def test_component_counts_of_drawn_blobs():
    diagonal = np.zeros((32, 32), np.uint8)
    diagonal[5, 5] = diagonal[6, 6] = 1  # one component under 8-connectivity
    masks = np.stack(
        [
            _blobs([]),
            _blobs([(8, 8)]),
            _blobs([(6, 6), (25, 25)]),
            _blobs([(5, 5), (25, 5), (15, 25)]),
            _blobs([(10, 10), (13, 10)]),  # overlapping circles merge
            diagonal,
        ]
    )
    assert component_counts(masks).tolist() == [0, 1, 2, 3, 1, 1]
    assert component_counts(torch.from_numpy(masks)[:, None].float()).tolist() == [0, 1, 2, 3, 1, 1]


def test_wasserstein_known_distributions():
    assert wasserstein_1d([0.2], [0.7]) == pytest.approx(0.5)  # point masses: |a - b|
    assert wasserstein_1d([0.0], [0.0, 1.0]) == pytest.approx(0.5)
    assert wasserstein_1d([0.0, 1.0], [0.0, 0.0, 1.0, 1.0]) == pytest.approx(0.0)  # same law, other size
    rng = np.random.default_rng(0)
    a = rng.random(30)
    assert wasserstein_1d(a, a + 0.25) == pytest.approx(0.25)  # a shift moves all mass by c
    b = rng.random(30)
    assert wasserstein_1d(a, b) == pytest.approx(np.abs(np.sort(a) - np.sort(b)).mean())  # equal sizes
    b = rng.random(20)  # unequal sizes: replicate both to the lcm (same laws), then equal-size formula
    expected = np.abs(np.sort(np.repeat(a, 2)) - np.sort(np.repeat(b, 3))).mean()
    assert wasserstein_1d(a, b) == pytest.approx(expected)
    assert wasserstein_1d(a, b) == pytest.approx(wasserstein_1d(b, a))


def test_ks_statistic():
    assert ks_statistic([1, 2, 3], [3, 2, 1]) == 0.0
    assert ks_statistic([0, 1], [2, 3, 4]) == 1.0
    assert ks_statistic([0, 1, 2, 3], [2, 3]) == pytest.approx(0.5)
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=40), rng.normal(0.5, 1, size=25)
    grid = np.concatenate([a, b])
    brute = max(abs((a <= x).mean() - (b <= x).mean()) for x in grid)
    assert ks_statistic(a, b) == pytest.approx(brute)
    with pytest.raises(ValueError):
        ks_statistic([], [1.0])


def test_max_iou_known_cases():
    left = np.zeros((8, 8), np.uint8)
    left[:, :4] = 1
    right = 1 - left
    middle = np.zeros((8, 8), np.uint8)
    middle[:, 2:6] = 1  # overlaps left in 16 px, union 48 px
    empty = np.zeros((8, 8), np.uint8)
    np.testing.assert_allclose(max_iou_to_set(np.stack([left]), np.stack([left, right])), [1.0])
    np.testing.assert_allclose(max_iou_to_set(np.stack([right]), np.stack([left])), [0.0])
    np.testing.assert_allclose(max_iou_to_set(np.stack([middle]), np.stack([left])), [16 / 48])
    np.testing.assert_allclose(max_iou_to_set(np.stack([empty, empty]), np.stack([empty, left])), [1.0, 1.0])
    np.testing.assert_allclose(max_iou_to_set(np.stack([empty]), np.stack([left])), [0.0])


def test_max_iou_chunked_matches_pairwise():
    gen, real = _random_masks(7, seed=2), _random_masks(5, seed=3)
    g, r = gen.flatten(1).bool(), real.flatten(1).bool()
    brute = [max((a & b).sum().item() / (a | b).sum().item() for b in r) for a in g]
    for chunk in (1, 2, 3, 256):
        np.testing.assert_allclose(max_iou_to_set(gen, real, chunk=chunk), brute, rtol=1e-12)
    np.testing.assert_allclose(max_iou_to_set(gen.numpy()[:, 0], real), brute, rtol=1e-12)
    with pytest.raises(ValueError):
        max_iou_to_set(gen, _random_masks(2, seed=4, size=8))


def test_report_of_copies_and_of_blobs():
    real = np.stack([_blobs([(8, 8)]), _blobs([(6, 6), (25, 25)]), _blobs([]), _blobs([(5, 5), (25, 5), (15, 25)])])
    report = mask_quality_report(real, real)
    json.dumps(report)
    assert report["n_generated"] == report["n_real"] == 4
    assert report["area"]["wasserstein1"] == 0.0 and report["area"]["ks"] == 0.0
    assert report["components"]["generated_hist"] == {"0": 0.25, "1": 0.25, "2": 0.25, "3": 0.25, "4": 0.0, "5+": 0.0}
    assert report["components"]["generated_blob_like"] == 0.5
    assert report["components"]["generated_mean"] == pytest.approx(1.5)
    assert report["empty"] == {"generated": 0.25, "real": 0.25}
    mem = report["memorisation"]
    assert mem["iou_min"] == mem["iou_max"] == 1.0 and mem["frac_iou_gt_0.95"] == 1.0

    gen = torch.from_numpy(np.stack([_blobs([(16, 16)], radius=8)] * 3)).float()[:, None]
    report = mask_quality_report(gen, real)
    assert report["n_generated"] == 3
    assert report["area"]["ks"] == 1.0  # every generated area exceeds every real area
    expected_w1 = np.mean([abs(area_fractions(gen)[0] - a) for a in area_fractions(real)])
    assert report["area"]["wasserstein1"] == pytest.approx(expected_w1)
    assert report["components"]["generated_blob_like"] == 1.0 and report["empty"]["generated"] == 0.0
    assert report["memorisation"]["iou_max"] < 0.95 and report["memorisation"]["frac_iou_gt_0.95"] == 0.0
    with pytest.raises(ValueError):
        mask_quality_report(gen[:0], real)


def test_frechet_distance_closed_form():
    from augforge.quality import frechet_distance

    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    # N(0, I) vs N(m, 4I): |m|^2 + tr(I + 4I - 2*2I) = |m|^2 + 3
    b = rng.normal(size=(4000, 3)) * 2.0 + np.array([1.0, 2.0, 0.0])
    assert frechet_distance(a, b) == pytest.approx(5.0 + 3.0, rel=0.1)


def test_nearest_distance_zero_for_copies():
    import torch

    from augforge.quality import nearest_distance

    real = torch.rand(10, 3, 8, 8)
    d = nearest_distance(torch.cat([real[:3], torch.rand(2, 3, 8, 8)]), real)
    assert np.allclose(d[:3], 0.0) and (d[3:] > 0.1).all()


def test_kid_is_the_unbiased_mmd2_of_the_cubic_kernel():
    """KID (Bińkowski et al. 2018): exact on one subset, 0 in expectation for one distribution (so it can
    be negative), the closed form of a mean shift in 1-D, growing with the shift."""
    from augforge.quality import kernel_inception_distance

    g = torch.Generator().manual_seed(0)
    # one subset holding both whole sets: the estimator itself, against the sums written out
    a, b = torch.randn(7, 4, generator=g, dtype=torch.float64), torch.randn(7, 4, generator=g, dtype=torch.float64)
    k = lambda x, y: (float(x @ y) / 4 + 1) ** 3  # noqa: E731
    m = 7
    expected = (sum(k(a[i], a[j]) + k(b[i], b[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
                - 2 * sum(k(a[i], b[j]) for i in range(m) for j in range(m)) / m ** 2)
    result = kernel_inception_distance(a, b, subsets=3, subset_size=100)
    assert result["subset_size"] == 7 and result["mean"] == pytest.approx(expected, rel=1e-12)
    assert result["std"] == pytest.approx(0.0, abs=1e-12)  # every subset is the whole set
    # two samples of one distribution: near 0, negative about half the time (unbiased)
    same = [kernel_inception_distance(torch.randn(50, 8, generator=g), torch.randn(50, 8, generator=g),
                                      subsets=10)["mean"] for _ in range(8)]
    assert min(same) < 0 < max(same) or all(abs(v) < 0.05 for v in same)
    assert any(v < 0 for v in same) and all(abs(v) < 0.3 for v in same)
    # 1-D, x = ±1 (Rademacher: the moments of N(0, 1) up to the third, and no heavy tails), y = x' + mu,
    # k = (xy + 1)^3: MMD^2 = E k(x,x') + E k(y,y') - 2 E k(x,y) = 4 + (mu^3 + 3mu)^2 + 3(1 + mu^2)^2 + 3mu^2 + 1
    # - 2(3(1 + mu^2) + 1): 0 at mu = 0, 3.578 at 0.5, 22 at 1
    sign = lambda: torch.randint(0, 2, (2000, 1), generator=g).double() * 2 - 1  # noqa: E731
    kid = {mu: kernel_inception_distance(sign(), sign() + mu, subsets=10, subset_size=1000)["mean"]
           for mu in (0.0, 0.5, 1.0)}
    assert abs(kid[0.0]) < 0.05
    assert kid[0.5] == pytest.approx(3.578125, rel=0.25) and kid[1.0] == pytest.approx(22.0, rel=0.1)


def test_frechet_is_compared_at_equal_n():
    """The Fréchet distance grows as N shrinks: in 16 dimensions, 40 held-out real against 400 train reads
    ~5x worse than 400 generated from the same distribution against them; the quality
    report subsamples all sets to the smallest N, so the rows compare."""
    from augforge.quality import frechet_distance, subsample_to_equal_n
    from augforge.stages.quality_report import realism

    g = torch.Generator().manual_seed(0)
    train, gen, held = (torch.randn(n, 16, generator=g) for n in (400, 400, 40))
    unequal = frechet_distance(held, train) / frechet_distance(gen, train)
    assert unequal > 3
    sets = subsample_to_equal_n(gen, held, train, generator=torch.Generator().manual_seed(0))
    assert [len(s) for s in sets] == [40, 40, 40] and torch.equal(sets[1], held.double())
    assert all(any(torch.equal(row, r) for r in full.double()) for s, full in ((sets[0], gen), (sets[2], train))
               for row in s[:5])  # rows drawn from the set itself
    report = realism(gen, held, train)
    assert report["encoder_frechet"]["n"] == 40 and "equal N = 40" in report["realism_note"]
    assert 0.5 < report["encoder_frechet"]["held_out_real"] / report["encoder_frechet"]["generated"] < 2
    for row in ("generated", "held_out_real"):  # one distribution: KID near 0 whatever N
        assert abs(report["encoder_kid"][row]["mean"]) < 0.05
    assert report == realism(gen, held, train)  # seeded
