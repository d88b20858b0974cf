"""Tests of augforge.attacks on a fixed analytic segmenter of bright blobs (24 px, CPU, fast)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from augforge.attacks import (
    ATTACKS,
    BETA_SEARCH,
    adversarial_loss,
    asma,
    asma_beta_search,
    diff_pgd,
    pgd,
    random_sign_noise,
    uncertainty_weights,
)
from augforge.rng import PairStreams

SIZE = 24
EPS = 0.15


class BlobSegmenter(nn.Module):
    """logits = a * (3x3 local mean of the channel mean - 0.5): bright blobs on a dark background."""

    def __init__(self, a: float = 12.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3, padding=1, padding_mode="replicate")
        with torch.no_grad():
            self.conv.weight.fill_(a / 27.0)
            self.conv.bias.fill_(-a / 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def blobs(n: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (n, 3, S, S) in [0, 1] with one bright disc each, and the disc masks (n, 1, S, S)."""
    g = torch.Generator().manual_seed(seed)
    centre = 8 + 8 * torch.rand(n, 2, generator=g)
    radius = 4 + 3 * torch.rand(n, generator=g)
    ii, jj = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    d2 = (ii - centre[:, 0, None, None]) ** 2 + (jj - centre[:, 1, None, None]) ** 2
    y = (d2 <= radius[:, None, None] ** 2).float()[:, None]
    x = (0.2 + 0.6 * y + 0.03 * torch.randn(n, 3, SIZE, SIZE, generator=g)).clamp(0, 1)
    return x, y


@pytest.fixture()
def model() -> nn.Module:
    return BlobSegmenter().eval()


@pytest.fixture()
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return blobs()


def shrink(x: torch.Tensor) -> torch.Tensor:
    """Toy differentiable purifier: affine shrink toward 0.5, [0, 1] -> [0.1, 0.9]."""
    return 0.5 + 0.8 * (x - 0.5)


def hard_dice(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    p = (logits > 0).float()
    return (2 * (p * y).flatten(1).sum(1) / (p + y).flatten(1).sum(1)).mean()


def bce(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return adversarial_loss(model(x), y).mean()


def edge_band(y: torch.Tensor) -> torch.Tensor:
    """Pixels whose 3x3 neighbourhood holds both classes (the mask boundary band), bool."""
    dilated = F.max_pool2d(y, 3, 1, 1)
    eroded = -F.max_pool2d(-y, 3, 1, 1)
    return dilated != eroded


KWARGS = {
    "fgsm": {},
    "inverse-fgsm": {},
    "pgd": {"step_size": 0.05, "steps": 5, "random_start": True},
    "diff-pgd": {"step_size": 0.05, "steps": 5, "purify": shrink},
    "noise": {},
}


def test_registry_names():
    assert set(ATTACKS) == {"fgsm", "inverse-fgsm", "pgd", "diff-pgd", "asma", "noise"}


@pytest.mark.parametrize("name", sorted(KWARGS))
@pytest.mark.parametrize("weighted", [False, True])
def test_outputs_in_eps_ball_and_box(name, weighted, model, data):
    x, y = data
    weights = uncertainty_weights(model(x)) if weighted else None
    g = torch.Generator().manual_seed(1)
    out = ATTACKS[name](model, x, y, eps=EPS, weights=weights, generator=g, **KWARGS[name])
    assert out.shape == x.shape and not out.requires_grad
    assert not model.training and all(p.grad is None for p in model.parameters())
    if name == "diff-pgd":
        out = 0.5 + (out - 0.5) / 0.8  # undo the toy purifier: the final iterate x^K
    assert out.min() >= -1e-6 and out.max() <= 1 + 1e-6
    assert (out - x).abs().max() <= EPS + 1e-6
    assert (out - x).abs().max() > 0


@pytest.mark.parametrize("name", ["fgsm", "pgd"])
def test_attacks_raise_loss_and_lower_dice(name, model, data):
    x, y = data
    out = ATTACKS[name](model, x, y, eps=EPS, **KWARGS[name])
    assert bce(model, out, y) > bce(model, x, y)
    with torch.no_grad():
        assert hard_dice(model(out), y) < hard_dice(model(x), y)


def test_inverse_fgsm_lowers_loss(model, data):
    x, y = data
    out = ATTACKS["inverse-fgsm"](model, x, y, eps=EPS)
    assert bce(model, out, y) < bce(model, x, y)


def test_dice_loss_attack_raises_dice_loss(model, data):
    x, y = data
    out = pgd(model, x, y, eps=EPS, step_size=0.05, steps=5, loss="dice")
    with torch.no_grad():
        assert adversarial_loss(model(out), y, "dice").mean() > adversarial_loss(model(x), y, "dice").mean()


def test_pgd_random_start_is_seeded(model, data):
    x, y = data
    kw = dict(eps=EPS, step_size=0.01, steps=2, random_start=True)
    a = pgd(model, x, y, **kw, generator=torch.Generator().manual_seed(7))
    b = pgd(model, x, y, **kw, generator=torch.Generator().manual_seed(7))
    c = pgd(model, x, y, **kw, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("name", ["pgd", "diff-pgd"])
def test_per_image_generators_make_an_image_independent_of_its_batch(name, model, data):
    x, y = data
    kw = dict(eps=EPS, step_size=0.01, steps=2, random_start=True)
    if name == "diff-pgd":
        kw["purify"] = shrink
    gens = lambda idx: [torch.Generator().manual_seed(100 + i) for i in idx]  # noqa: E731
    whole = ATTACKS[name](model, x, y, **kw, generator=gens(range(4)))
    part = ATTACKS[name](model, x[2:], y[2:], **kw, generator=gens(range(2, 4)))
    assert torch.allclose(whole[2:], part, atol=1e-6)
    with pytest.raises(ValueError, match=r"got 3 .*generators.* for a batch of 4"):
        ATTACKS[name](model, x, y, **kw, generator=gens(range(3)))


@pytest.mark.parametrize("grad", ["bpda", "full"])
def test_diff_pgd_outputs_purified_iterate(grad, model, data):
    x, y = data
    kw = dict(eps=EPS, step_size=0.05, steps=5)
    out = diff_pgd(model, x, y, **kw, purify=shrink, grad=grad)
    x_k = 0.5 + (out - 0.5) / 0.8
    assert (x_k - x).abs().max() <= EPS + 1e-6 and x_k.min() >= -1e-6 and x_k.max() <= 1 + 1e-6
    assert not torch.allclose(out, pgd(model, x, y, **kw))
    # shrink has a positive Jacobian: both gradients have the same sign, hence the same iterates
    other = "bpda" if grad == "full" else "full"
    torch.testing.assert_close(out, diff_pgd(model, x, y, **kw, purify=shrink, grad=other))


def test_diff_pgd_full_backpropagates_through_purify(model, data):
    # purify(x) = 1 - x flips the gradient: the true gradient ("full") raises the loss of the
    # purified output, the straight-through one ("bpda") ascends at x_pur but steps x^k, so it
    # moves x_pur = 1 - x^k downhill.
    x, y = data
    flip = lambda im: 1.0 - im  # noqa: E731
    kw = dict(eps=0.05, step_size=0.01, steps=5, purify=flip)
    clean = bce(model, flip(x), y)
    assert bce(model, diff_pgd(model, x, y, **kw, grad="full"), y) > clean
    assert bce(model, diff_pgd(model, x, y, **kw, grad="bpda"), y) < clean


def test_uncertainty_weights_closed_form_and_edges(model, data):
    z = torch.tensor([0.0, 1.0, -2.0, 10.0])
    torch.testing.assert_close(uncertainty_weights(z, sigma2=4.0), torch.exp(-z**2 / 8.0))
    x, _ = data
    with torch.no_grad():
        logits = model(x)
    w, band = uncertainty_weights(logits), edge_band((logits > 0).float())
    assert w[band].mean() > 2 * w[~band].mean()
    with pytest.raises(ValueError):
        uncertainty_weights(z, sigma2=0.0)


def test_weighted_bce_is_dasp_eq10():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 1, 8, 8, generator=g)
    y = (torch.rand(2, 1, 8, 8, generator=g) > 0.5).float()
    w = torch.rand(2, 1, 8, 8, generator=g)
    p = torch.sigmoid(logits)
    expected = (y * w * -(y * p.log() + (1 - y) * (1 - p).log())).flatten(1).mean(1)
    torch.testing.assert_close(adversarial_loss(logits, y, "bce", w), expected)
    # only foreground pixels count: background logits do not change the weighted loss
    torch.testing.assert_close(adversarial_loss(logits + 5 * (1 - y), y, "bce", w), expected)


def test_dice_loss_bounds():
    y = torch.zeros(1, 1, 8, 8)
    y[..., 2:6, 2:6] = 1
    assert adversarial_loss(20 * (2 * y - 1), y, "dice").item() < 1e-3
    assert adversarial_loss(-20 * (2 * y - 1), y, "dice").item() > 0.95
    with pytest.raises(ValueError):
        adversarial_loss(y, y, "l1")


def _band_ratio(t: torch.Tensor, band: torch.Tensor) -> torch.Tensor:
    t = t.abs().mean(1, keepdim=True)
    return t[band].mean() / t[~band].mean()


def test_weighting_concentrates_on_edges(model, data):
    x, y = data
    with torch.no_grad():
        logits = model(x)
    w, band = uncertainty_weights(logits), edge_band((logits > 0).float())
    # "step": the perturbation itself concentrates near the edges
    plain = ATTACKS["fgsm"](model, x, y, eps=EPS) - x
    stepped = ATTACKS["fgsm"](model, x, y, eps=EPS, weights=w, weight_mode="step") - x
    assert _band_ratio(stepped, band) > 1.5 * _band_ratio(plain, band)
    # "loss" (DASP Eq. 10): the loss gradient, before its sign, concentrates near the edges
    xg = x.clone().requires_grad_(True)
    grad_plain, = torch.autograd.grad(adversarial_loss(model(xg), y).sum(), xg)
    grad_w, = torch.autograd.grad(adversarial_loss(model(xg), y, weights=w).sum(), xg)
    assert _band_ratio(grad_w, band) > 1.5 * _band_ratio(grad_plain, band)


def test_asma_reaches_shifted_target(model, data):
    # The toy segmenter's input gradient is ~a/27 = 0.44 per wrong neighbour pixel, far smaller
    # than a large U-Net's: the paper's beta = 1e-6, tau = 1e-7 would need ~1e5 iterations, and
    # the L2 term's gradient 2(x - x0) is as large as the objective's, so with lambda = 1 the
    # boundary pixels oscillate. beta = tau = 0.01, lambda = 0.1 converge in ~20 iterations.
    x, y = data
    with torch.no_grad():
        pred = (model(x) > 0).float()
    target = torch.roll(pred, shifts=(2, 2), dims=(2, 3))
    target[0] = pred[0]  # image 0 is already at its target: it must not move
    res = asma(model, x, y, target=target, max_iter=100, beta=0.01, tau=0.01, l2_weight=0.1)
    assert (res.iou_target > 0.9).float().mean() >= 0.75
    assert res.iterations[0] == 0 and torch.equal(res.x_adv[0], x[0])
    assert (res.iterations[1:] > 0).all() and (res.iterations <= 100).all()
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1 and not res.x_adv.requires_grad
    delta = (res.x_adv - x).flatten(1)
    torch.testing.assert_close(res.linf, delta.abs().amax(1))
    torch.testing.assert_close(res.l2, delta.norm(dim=1))
    with torch.no_grad():
        final = (model(res.x_adv) > 0).float()
    torch.testing.assert_close(res.pixel_acc_target, (final == target).float().flatten(1).mean(1))
    done = res.iou_target == 1
    assert (res.iterations[done] < 100).all()


def test_asma_beta_search_keeps_per_image_the_beta_of_highest_target_iou(model, data):
    """Ozbulak et al.: tau fixed, beta picked from candidates by the best IoU with the target."""
    assert BETA_SEARCH == (1e-6, 5e-6, 1e-5)
    x, y = data
    with torch.no_grad():
        pred = (model(x) > 0).float()
    target = torch.roll(pred, shifts=(2, 2), dims=(2, 3))
    target[0] = pred[0]  # image 0 is at its target for every beta: a tie at L2 = 0 keeps the first candidate
    betas = (1e-4, 0.01, 0.003)  # on the toy segmenter 1e-4 barely moves, 0.01 converges (see above)
    kw = dict(target=target, max_iter=30, tau=1e-4, l2_weight=0.1)
    runs = {b: asma(model, x, y, beta=b, **kw) for b in betas}
    best, chosen = asma_beta_search(model, x, y, betas=betas, **kw)
    assert chosen.shape == (x.shape[0],) and set(chosen.tolist()) <= set(betas)
    for i in range(x.shape[0]):
        run = runs[float(chosen[i])]
        assert best.iou_target[i] == max(r.iou_target[i] for r in runs.values())
        torch.testing.assert_close(best.x_adv[i], run.x_adv[i])
        assert best.l2[i] == run.l2[i] and best.iterations[i] == run.iterations[i]
        ties = [r for r in runs.values() if r.iou_target[i] == best.iou_target[i]]
        assert best.l2[i] == min(r.l2[i] for r in ties)
    assert chosen.tolist() == [1e-4] + [0.01] * (x.shape[0] - 1)
    assert best.iou_target.mean() >= max(r.iou_target.mean() for r in runs.values())
    assert best.iou_target.mean() > runs[1e-4].iou_target.mean()
    # one candidate: plain ASMA
    single, chosen1 = asma_beta_search(model, x, y, betas=(0.01,), **kw)
    torch.testing.assert_close(single.x_adv, runs[0.01].x_adv)
    assert (chosen1 == 0.01).all()


def test_asma_finished_images_leave_the_batch_and_the_beta_search_stops_early_per_image(model, data):
    """An image at its target costs no more forward passes after the next check (every CHECK_EVERY
    iterations), and a later beta candidate runs only on the images no earlier one brought to the target."""
    from augforge.attacks.asma import CHECK_EVERY

    x, y = data
    with torch.no_grad():
        pred = (model(x) > 0).float()
    target = torch.roll(pred, shifts=(2, 2), dims=(2, 3))
    target[0] = pred[0]  # at its target from the start
    rows: list[int] = []

    class Counting(torch.nn.Module):
        def forward(self, images):
            rows.append(images.shape[0])
            return model(images)

    kw = dict(target=target, max_iter=100, tau=0.01, l2_weight=0.1)
    res = asma(Counting(), x, y, beta=0.01, **kw)
    assert rows[0] == x.shape[0] and rows[CHECK_EVERY] < x.shape[0]  # image 0 left after the first window
    # every image computes only until the check after it finished (plus the final prediction of all)
    windows = (res.iterations + CHECK_EVERY) // CHECK_EVERY * CHECK_EVERY
    assert sum(rows) <= int(windows.clamp(max=100).sum()) + x.shape[0]
    rows.clear()
    first = asma(Counting(), x, y, beta=0.01, **kw)
    first_rows = len(rows)
    best, chosen = asma_beta_search(Counting(), x, y, betas=(0.01, 0.003), **kw)
    second = rows[2 * first_rows:]  # the second candidate's forward passes
    reached = int((first.iou_target == 1).sum())
    assert reached >= 1 and max(second, default=0) <= x.shape[0] - reached
    assert (chosen[first.iou_target == 1] == 0.01).all()
    # a prediction that never overlaps its target moves with alpha = tau whatever beta: the search runs it once
    far = torch.zeros_like(target)
    far[:, :, :2, :2] = 1  # a corner no prediction of these images reaches with tiny steps
    far[0] = pred[0]
    kw_far = dict(target=far, max_iter=20, tau=1e-6, l2_weight=0.1)
    rows.clear()
    one = asma(Counting(), x, y, beta=1e-3, **kw_far)
    single_run = list(rows)
    assert (one.peak_iou_target[1:] == 0).all(), one.peak_iou_target
    rows.clear()
    best, chosen = asma_beta_search(Counting(), x, y, betas=(1e-3, 1.0), **kw_far)
    assert rows == single_run and (chosen == 1e-3).all()  # the second candidate ran on no image
    torch.testing.assert_close(best.x_adv, asma(model, x, y, beta=1.0, **kw_far).x_adv)


def test_bad_arguments(model, data):
    x, y = data
    with pytest.raises(ValueError):
        pgd(model, x, y, eps=-0.1, step_size=0.01, steps=1)
    with pytest.raises(ValueError):
        ATTACKS["fgsm"](model, x, y, eps=0.1, weight_mode="pixel")
    with pytest.raises(ValueError):
        diff_pgd(model, x, y, eps=0.1, step_size=0.01, steps=1, purify=shrink, grad="exact")
    with pytest.raises(ValueError):
        asma(model, x, y, target=y[:, :, :8])


def test_noise_is_random_signs_of_the_budget_reproducible_from_its_seed(data):
    """Pervin et al.'s random-perturbation control: every pixel moved by exactly eps (before the box clip)."""
    x, y = blobs(4, seed=3)
    x = x.clamp(0.2, 0.8)  # away from the box, so no pixel is clipped
    streams = lambda seed: PairStreams.for_pairs(seed, [0, 1, 2, 3], 17)  # noqa: E731
    a = random_sign_noise(None, x, y, eps=0.1, generator=streams(0))
    torch.testing.assert_close((a - x).abs(), torch.full_like(x, 0.1))
    assert torch.equal(a, random_sign_noise(None, x, y, eps=0.1, generator=streams(0)))
    assert not torch.equal(a, random_sign_noise(None, x, y, eps=0.1, generator=streams(1)))
    up = ((a - x) > 0).float().mean()
    assert 0.45 < up < 0.55  # fair signs
    # image i's signs depend only on its own stream: the same with a batch of one
    b = random_sign_noise(None, x[2:3], y[2:3], eps=0.1, generator=PairStreams.for_pairs(0, [2], 17))
    torch.testing.assert_close(b, a[2:3])
    # the same stream at another eps: the same directions, scaled
    c = random_sign_noise(None, x, y, eps=0.05, generator=streams(0))
    torch.testing.assert_close(c - x, (a - x) / 2)
    assert torch.equal(random_sign_noise(None, x, y, eps=0.0, generator=streams(0)), x)


class PixelLinear(nn.Module):
    """logits = a * (channel mean - 0.5), pixel by pixel: the fixed analytic segmenter of the monotonicity test.

    d BCE / d x_i has the sign of sigmoid(z_i) - y_i, fixed by the mask: FGSM and PGD move every
    foreground pixel darker and every background pixel brighter by eps, so each pixel's logit moves
    monotonically toward the wrong class as eps grows.
    """

    def __init__(self, a: float = 10.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1)
        with torch.no_grad():
            self.conv.weight.fill_(a / 3)
            self.conv.bias.fill_(-a / 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


@pytest.mark.parametrize("name", ["fgsm", "pgd"])
def test_scores_do_not_increase_with_eps_on_an_analytic_segmenter(name):
    from augforge.stages.evaluate import score

    model = PixelLinear().eval()
    x, y = blobs(6, seed=2)
    kwargs = {"pgd": lambda e: {"step_size": e / 4, "steps": 6}}.get(name, lambda e: {})
    grid = [0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5]
    per_eps = []
    for eps in grid:
        x_adv = ATTACKS[name](model, x, y, eps=eps, **kwargs(eps))
        with torch.no_grad():
            logits = model(x_adv)
        per_eps.append(score(logits, y, 0.5)[0])
    for key in ("iou", "dice"):
        table = torch.stack([s[key] for s in per_eps])  # (eps, image)
        assert (table[1:] <= table[:-1] + 1e-7).all(), f"{key} rose with eps: {table}"
        assert table[-1].mean() < table[0].mean() - 0.5  # and the attack does bite


@pytest.mark.parametrize("name", sorted(KWARGS))
def test_each_method_at_eps_zero_scores_the_clean_images(name, model, data):
    """eps = 0 leaves the image as it is (Diff-PGD: its output is then the purified clean image)."""
    from augforge.stages.evaluate import score

    x, y = data
    out = ATTACKS[name](model, x, y, eps=0.0, generator=PairStreams.for_pairs(0, [0, 1, 2, 3], 17),
                        **{**KWARGS[name], **({"step_size": 0.0} if "step_size" in KWARGS[name] else {})})
    expected = shrink(x) if name == "diff-pgd" else x
    torch.testing.assert_close(out, expected)
    with torch.no_grad():
        clean, attacked = score(model(expected), y, 0.5)[0], score(model(out), y, 0.5)[0]
    for key in ("iou", "dice", "tp", "fp", "fn"):
        assert torch.equal(clean[key], attacked[key])
    res = asma(model, x, y, target=torch.roll(y, 3, dims=3), max_iter=0)  # ASMA with no iteration
    assert torch.equal(res.x_adv, x) and (res.iterations == 0).all() and (res.l2 == 0).all()


def test_asma_ablation_switches(model, data):
    """Static mask: pixels already at their target class keep pulling; constant multiplier: alpha = tau."""
    x, y = data
    with torch.no_grad():
        pred = (model(x) > 0).float()
    target = torch.roll(pred, shifts=(2, 2), dims=(2, 3))
    kw = dict(target=target, max_iter=1, l2_weight=0.0)
    # one step with alpha = tau: the step is tau * grad J, whatever beta
    a = asma(model, x, y, beta=5.0, tau=0.01, dynamic_multiplier=False, **kw)
    b = asma(model, x, y, beta=0.0, tau=0.01, **kw)
    torch.testing.assert_close(a.x_adv, b.x_adv)
    # static vs adaptive mask: the same step size, a gradient over more pixels
    static = asma(model, x, y, beta=0.0, tau=0.01, adaptive_mask=False, **kw)
    assert not torch.equal(static.x_adv, b.x_adv)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(((2 * target - 1) * model(xg)).sum(), xg)
    torch.testing.assert_close(static.x_adv, (x + 0.01 * grad).clamp(0, 1))
    # the full attack (both on) still converges as before on this toy model
    full = asma(model, x, y, target=target, max_iter=100, beta=0.01, tau=0.01, l2_weight=0.1)
    const = asma(model, x, y, target=target, max_iter=100, beta=0.01, tau=0.01, l2_weight=0.1, dynamic_multiplier=False)
    assert full.iou_target.mean() >= const.iou_target.mean()


# --------------------------------------------------------------------------- K classes, any image channels

LEVELS = (0.2, 0.5, 0.8)  # background, disc, cup intensities of the K = 3 toy images


class LevelSegmenter(nn.Module):
    """K = 3 logits g_c = -a (m - mu_c)^2, m the 3x3 local mean of the channel mean, mu = LEVELS:
    each pixel is the class whose intensity level its neighbourhood is nearest (any channel count C)."""

    def __init__(self, channels: int = 1, a: float = 40.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, 3, padding=1, padding_mode="replicate", bias=False)
        with torch.no_grad():
            self.conv.weight.fill_(1.0 / (9 * channels))
        self.register_buffer("mu", torch.tensor(LEVELS).view(1, -1, 1, 1))
        self.a = a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -self.a * (self.conv(x) - self.mu).square()


def nested_discs(n: int = 4, channels: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (n, C, S, S) in [0, 1]: a disc (class 1) holding a smaller cup (class 2); index masks (n, 1, S, S)."""
    g = torch.Generator().manual_seed(seed)
    centre = 9 + 6 * torch.rand(n, 2, generator=g)
    radius = 6 + 2 * torch.rand(n, generator=g)
    ii, jj = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    d2 = (ii - centre[:, 0, None, None]) ** 2 + (jj - centre[:, 1, None, None]) ** 2
    y = (d2 <= radius[:, None, None] ** 2).float() + (d2 <= (radius[:, None, None] / 2) ** 2).float()
    y = y[:, None]
    level = torch.tensor(LEVELS)[y.long()]
    x = (level + 0.03 * torch.randn(n, channels, SIZE, SIZE, generator=g)).clamp(0, 1)
    return x, y


def k_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, kind: str = "bce", weights=None) -> torch.Tensor:
    with torch.no_grad():
        return adversarial_loss(model(x), y, kind, weights).mean()


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", sorted(KWARGS))
@pytest.mark.parametrize("weighted", [False, True])
def test_k_class_attacks_keep_budget_and_box_and_move_the_loss(name, weighted, channels):
    """Every registered attack on a K = 3 segmenter of C-channel images: shape, [0, 1], the eps ball, and the
    K-class loss up (fgsm, pgd, diff-pgd on the purified image) or down (inverse-fgsm)."""
    model = LevelSegmenter(channels).eval()
    x, y = nested_discs(channels=channels)
    with torch.no_grad():
        assert (model(x).argmax(1, keepdim=True) == y).float().mean() > 0.9  # the toy model reads the toy images
        weights = uncertainty_weights(model(x)) if weighted else None
    assert weights is None or weights.shape == y.shape
    out = ATTACKS[name](model, x, y, eps=EPS, weights=weights, generator=torch.Generator().manual_seed(1),
                        **KWARGS[name])
    assert out.shape == x.shape and not out.requires_grad
    final = 0.5 + (out - 0.5) / 0.8 if name == "diff-pgd" else out  # diff-pgd: undo the toy purifier
    assert final.min() >= -1e-6 and final.max() <= 1 + 1e-6
    assert 0 < (final - x).abs().max() <= EPS + 1e-6
    # the loss the attack moves (weighted: Eq. 10's), at a budget below the toy model's level gaps (its logits are
    # quadratic: a signed step much larger than the distance to a level overshoots it)
    small = {**KWARGS[name], **({"step_size": 0.01} if "step_size" in KWARGS[name] else {})}
    for kind in ("bce", "dice"):
        if name == "noise":
            break
        out = ATTACKS[name](model, x, y, eps=0.04, weights=weights, loss=kind,
                            generator=torch.Generator().manual_seed(1), **small)
        clean = k_loss(model, shrink(x) if name == "diff-pgd" else x, y, kind, weights)
        if name == "inverse-fgsm":
            assert k_loss(model, out, y, kind, weights) < clean
        else:
            assert k_loss(model, out, y, kind, weights) > clean


def test_k_class_losses_closed_form():
    """bce on K logits is the pixel mean of cross-entropy (weighted: foreground pixels only, Eq. 10's y_i as
    y_i > 0); dice is 1 - the mean soft Dice over the foreground classes."""
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 3, 8, 8, generator=g)
    y = torch.randint(0, 3, (2, 1, 8, 8), generator=g).float()
    w = torch.rand(2, 1, 8, 8, generator=g)
    logp = logits.log_softmax(1)
    ce = -logp.gather(1, y.long())
    torch.testing.assert_close(adversarial_loss(logits, y, "bce"), ce.flatten(1).mean(1))
    torch.testing.assert_close(adversarial_loss(logits, y, "bce", w), ((y > 0) * w * ce).flatten(1).mean(1))
    p = logp.exp()
    dice = [(2 * (w * p[:, c:c + 1] * (y == c)).flatten(1).sum(1) + 1)
            / ((w * p[:, c:c + 1]).flatten(1).sum(1) + (w * (y == c)).flatten(1).sum(1) + 1) for c in (1, 2)]
    torch.testing.assert_close(adversarial_loss(logits, y, "dice", w), 1 - (dice[0] + dice[1]) / 2)
    # a perfect, confident prediction has (almost) no Dice loss; the worst one almost 1
    perfect = 30.0 * (y.long() == torch.arange(3).view(1, 3, 1, 1)).float()
    assert adversarial_loss(perfect, y, "dice").max() < 1e-3
    assert adversarial_loss(-perfect, y, "dice").min() > 0.95
    with pytest.raises(ValueError, match="logits must be"):
        adversarial_loss(logits[:, :, :4], y)


def test_k2_weight_is_eq10_bit_for_bit():
    """The K-class W (margin top1 - top2) of a 2-logit model with logits (0, l) is exactly Eq. 10's W of l."""
    g = torch.Generator().manual_seed(5)
    l = 6 * torch.randn(3, 1, 16, 16, generator=g)
    l[0, 0, 0, :3] = torch.tensor([0.0, -0.0, 1e-30])
    two = torch.cat([torch.zeros_like(l), l], 1)
    for sigma2 in (4.0, 0.5, 11.0):
        assert torch.equal(uncertainty_weights(two, sigma2), uncertainty_weights(l, sigma2))
    # K = 3: the margin of the two leading classes
    three = torch.tensor([1.0, 4.0, 2.5]).view(1, 3, 1, 1)
    torch.testing.assert_close(uncertainty_weights(three, 4.0), torch.exp(torch.tensor(-1.5**2 / 8.0)).view(1, 1, 1, 1))


@pytest.mark.parametrize("kind", ["bce", "dice"])
def test_k2_losses_equal_the_binary_ones(kind):
    """A 2-logit model with logits (0, l) has the binary loss of l: cross-entropy = BCE, weighted (Eq. 10 with y_i
    the foreground) and not; the mean foreground soft Dice = the binary soft Dice; the attacks step alike."""
    g = torch.Generator().manual_seed(6)
    l = 4 * torch.randn(3, 1, 12, 12, generator=g)
    y = (torch.rand(3, 1, 12, 12, generator=g) > 0.6).float()
    w = uncertainty_weights(l)
    two = torch.cat([torch.zeros_like(l), l], 1)
    for weights in (None, w):
        torch.testing.assert_close(adversarial_loss(two, y, kind, weights), adversarial_loss(l, y, kind, weights))
    binary = BlobSegmenter().eval()

    class TwoLogit(nn.Module):
        def forward(self, x):
            z = binary(x)
            return torch.cat([torch.zeros_like(z), z], 1)

    x, y = blobs()
    with torch.no_grad():
        wx = uncertainty_weights(binary(x))
    for name in ("fgsm", "pgd"):
        a = ATTACKS[name](binary, x, y, eps=EPS, loss=kind, weights=wx, **KWARGS[name],
                          generator=torch.Generator().manual_seed(2))
        b = ATTACKS[name](TwoLogit(), x, y, eps=EPS, loss=kind, weights=wx, **KWARGS[name],
                          generator=torch.Generator().manual_seed(2))
        assert (a - b).abs().max() <= 1e-6 or (a != b).float().mean() < 1e-3  # a sign flip of a ~0 gradient at most


def test_asma_k2_with_class_logits_minus_z_z_is_binary_asma():
    """Binary ASMA reads one logit z as the class logits (-z, z): a 2-logit model giving them runs the same attack."""
    binary = BlobSegmenter().eval()

    class TwoLogit(nn.Module):
        def forward(self, x):
            z = binary(x)
            return torch.cat([-z, z], 1)

    x, y = blobs()
    with torch.no_grad():
        pred = (binary(x) > 0).float()
    target = torch.roll(pred, shifts=(2, 2), dims=(2, 3))
    kw = dict(target=target, max_iter=40, beta=0.01, tau=0.01, l2_weight=0.1)
    a, b = asma(binary, x, y, **kw), asma(TwoLogit(), x, y, **kw)
    torch.testing.assert_close(b.x_adv, a.x_adv)
    for key in ("iterations", "iou_target", "pixel_acc_target", "peak_iou_target"):
        torch.testing.assert_close(getattr(b, key), getattr(a, key))


def test_mean_foreground_iou():
    from augforge.attacks.asma import _iou, mean_foreground_iou

    t = torch.zeros(3, 1, 4, 4)
    t[:, :, :2, :2] = 1
    t[:, :, :1, :1] = 2
    p = t.clone()
    p[1, :, 3, 3] = 2  # class 2 gains a false pixel: IoU 1/2; class 1 stays 3/3
    p[2] = 0  # both classes missed
    torch.testing.assert_close(mean_foreground_iou(p, t, 3), torch.tensor([1.0, 0.75, 0.0]))
    # a class in neither mask scores 1, as seg.metrics scores it; no foreground at all scores 1
    torch.testing.assert_close(mean_foreground_iou(p, t, 4), torch.tensor([1.0, 2.5 / 3, 1 / 3]))
    empty = torch.zeros(1, 1, 4, 4)
    assert mean_foreground_iou(empty, empty, 3).item() == 1.0
    from augforge.seg.metrics import foreground_mean, per_class_scores

    g = torch.Generator().manual_seed(1)
    a, b = torch.randint(0, 4, (6, 1, 5, 5), generator=g).float(), torch.randint(0, 4, (6, 1, 5, 5), generator=g).float()
    b[0] = (b[0] == 1).float()  # classes 2, 3 absent from image 0's target
    a[0] = b[0]
    torch.testing.assert_close(mean_foreground_iou(a, b, 4), foreground_mean(per_class_scores(a, b, 4))["iou"])
    # K = 2: the binary foreground IoU
    g = torch.Generator().manual_seed(0)
    a, b = (torch.rand(5, 1, 6, 6, generator=g) > 0.5).float(), (torch.rand(5, 1, 6, 6, generator=g) > 0.5).float()
    torch.testing.assert_close(mean_foreground_iou(a, b, 2), _iou(a, b))


@pytest.mark.parametrize("channels", [1, 3])
def test_asma_k3_reaches_a_shifted_target_with_per_class_masks(channels):
    """ASMA (Eq. 2, per-class adaptive masks) on the K = 3 toy model reaches its target, the target-class
    logits of the pixels still off target pulling; an image already at its target does not move."""
    model = LevelSegmenter(channels).eval()
    x, y = nested_discs(channels=channels)
    with torch.no_grad():
        pred = model(x).argmax(1, keepdim=True).float()
    target = torch.roll(pred, shifts=(2, 2), dims=(2, 3))
    target[0] = pred[0]
    res = asma(model, x, y, target=target, max_iter=150, beta=0.01, tau=0.01, l2_weight=0.1)
    with torch.no_grad():
        final = model(res.x_adv).argmax(1, keepdim=True).float()
    assert res.iterations[0] == 0 and torch.equal(res.x_adv[0], x[0]) and res.iou_target[0] == 1
    assert (res.iou_target[1:] > 0.9).all(), res.iou_target
    assert (final == target).float().mean() > 0.98
    torch.testing.assert_close(res.pixel_acc_target, (final == target).float().flatten(1).mean(1))
    from augforge.attacks.asma import mean_foreground_iou

    torch.testing.assert_close(res.iou_target, mean_foreground_iou(final, target, 3))
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    # the static mask pulls on every pixel: one step differs from the adaptive one
    one = dict(target=target, max_iter=1, beta=0.0, tau=0.01, l2_weight=0.0)
    static, adaptive = asma(model, x, y, adaptive_mask=False, **one), asma(model, x, y, **one)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(xg).gather(1, target.long()).sum(), xg)
    torch.testing.assert_close(static.x_adv[1:], (x + 0.01 * grad).clamp(0, 1)[1:])  # image 0 is at its target
    assert not torch.equal(static.x_adv[1:], adaptive.x_adv[1:])


@pytest.mark.parametrize("name", sorted(KWARGS))
def test_binary_attacks_on_grey_images(name):
    """A binary segmenter of 1-channel images: the same attacks, the same guarantees, the loss moved as on colour."""
    model = BlobSegmenter().eval()
    with torch.no_grad():
        grey = nn.Conv2d(1, 1, 3, padding=1, padding_mode="replicate")
        grey.weight.copy_(model.conv.weight.sum(1, keepdim=True))
        grey.bias.copy_(model.conv.bias)
    x, y = blobs()
    x = x.mean(1, keepdim=True)
    out = ATTACKS[name](grey, x, y, eps=EPS, generator=torch.Generator().manual_seed(1), **KWARGS[name])
    assert out.shape == x.shape == (4, 1, SIZE, SIZE)
    final = 0.5 + (out - 0.5) / 0.8 if name == "diff-pgd" else out
    assert final.min() >= -1e-6 and final.max() <= 1 + 1e-6 and 0 < (final - x).abs().max() <= EPS + 1e-6
    clean = bce(grey, shrink(x) if name == "diff-pgd" else x, y)
    if name == "inverse-fgsm":
        assert bce(grey, out, y) < clean
    elif name != "noise":
        assert bce(grey, out, y) > clean


def test_asma_patience_stops_an_image_whose_target_iou_stalls(model, data):
    """patience P: an image stops once P iterations in a row have not raised its best IoU with the target; without it
    the same image runs to max_iter. An image that reaches its target stops there either way."""
    x, y = data
    with torch.no_grad():
        pred = (model(x) > 0).float()
    target = torch.roll(pred, shifts=(2, 2), dims=(2, 3))
    stuck = torch.zeros_like(target)
    stuck[..., :4, :] = 1  # image 1: an unreachable target under tau alone (tiny steps, no overlap growth)
    target[1] = stuck[1]
    kwargs = dict(max_iter=60, beta=0.0, tau=1e-6, l2_weight=0.1)
    plain = asma(model, x, y, target=target, **kwargs)
    patient = asma(model, x, y, target=target, patience=7, **kwargs)
    assert plain.iterations[1] == 60 and patient.iterations[1] <= 7 + 1
    assert (patient.iterations <= plain.iterations).all()
    # with patience off the results are those of the call without it, bit for bit
    same = asma(model, x, y, target=target, patience=0, **kwargs)
    assert torch.equal(same.x_adv, plain.x_adv) and torch.equal(same.iterations, plain.iterations)
    with pytest.raises(ValueError, match="patience"):
        asma(model, x, y, target=target, patience=-1, **kwargs)
