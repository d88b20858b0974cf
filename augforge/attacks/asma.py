"""ASMA, the Adaptive Segmentation Mask Attack (Ozbulak et al., MICCAI 2019), targeted.

"Impact of adversarial examples on deep learning models for biomedical image segmentation".
The paper writes it for M classes: with class logits g_c(x_n) (c = 0..M-1), the prediction
P_n = argmax_c g_c(x_n), the target Y_A and the per-class adaptive masks
M_n^c = 1[Y_A = c] 1[P_n != c] (pixels whose target is c and whose prediction is not yet c), Eq. 2-4:

    J(x_n) = sum_c sum_i M_{n,i}^c g_{c,i}(x_n),   x_{n+1} = x_n + alpha_n grad_x J(x_n),
    alpha_n = beta * IoU(Y_A, P_n) + tau

As every pixel has one target class, sum_c M^c g_c is the logit of the pixel's target class on the
pixels not yet predicted as it. Per iteration n (and the paper's reference code):

    1. P_n: the prediction; the adaptive mask 1[P_{n,i} != t_i] keeps only the pixels not yet at
       their target class t_i
    2. J(x_n) = sum_i g_{t_i,i}(x_n) 1[P_{n,i} != t_i]  -  lambda * ||x_n - x_0||_2^2
    3. x_{n+1} = clip_[0,1]( x_n + alpha_n * grad_x J(x_n) ),  alpha_n = beta * IoU(t, P_n) + tau

Binary, a one-logit segmenter f(x) = z (B, 1, H, W): the class logits are (g_0, g_1) = (-z, z),
so the target-class logit is g_t = (2t - 1) z, the prediction is z > 0 and the IoU is the
foreground IoU. K classes, K > 1 logits (B, K, H, W): g_t is the logit of channel t, the prediction
is the argmax and the IoU is the mean foreground IoU, the mean over the classes c = 1..K-1 of
IoU_c = |[P = c] & [t = c]| / |[P = c] | [t = c]|, a class in neither scoring 1 (the convention of
:mod:`augforge.seg.metrics`, whose ``foreground_mean(per_class_scores(...))["iou"]`` it equals): for K = 2
it is the binary foreground IoU, and it is 1 exactly when the prediction equals the target. (The mean
IoU, not the pixel accuracy, drives alpha:
pixel accuracy is dominated by the background and is near 1 long before a small structure such as
a cup reaches its target; both are reported.)

The L2 term keeps the perturbation small; ``l2_weight`` lambda = 1 as in the reference code
(where it is negligible next to grad J; on a weakly-sensitive model its gradient
2 lambda (x - x0) competes with grad J and boundary pixels oscillate: lower lambda then).
The gradient is NOT normalised (as in the paper), so alpha_n's scale depends on the model and
image size. The reference code feeds images in [0, 1] (it divides by 255), so the paper's
defaults beta = 1e-6, tau = 1e-7 are in our units; they were set for a U-Net on 572-px images,
where grad_x J, a sum over many wrong pixels, is large. Measured here on an smp U-Net
(resnet18, briefly trained on Kvasir-SEG at 64 px, |grad J| ~ 2-15 per pixel on average),
target = prediction shifted by 8 px, 300 iterations: the defaults reach IoU 0.0-0.55 with
L-inf <= 0.025; beta = 1e-4, tau = 1e-5 reach 0.49-0.94; beta = 1e-3, tau = 1e-4 reach
0.94-0.99 (L-inf 0.15-0.38). So at small image sizes raise beta/tau (both are exposed) or
max_iter; the defaults stay the paper's.

Ablation switches (the rows of the paper's Table 1): ``adaptive_mask=False`` is the static mask,
1[target = c] on every pixel, so pixels already at their target class keep pulling the gradient;
``dynamic_multiplier=False`` keeps alpha_n = tau throughout (the value the dynamic multiplier starts
from at IoU 0; the paper does not print the constant of its non-dynamic rows). Both on is ASMA.

Images stop being updated as soon as their prediction equals the target (batched: an active mask),
and every ``CHECK_EVERY`` iterations, at one host sync, the finished images leave the batch, so the
forward and backward passes run on the images still moving only.

beta search (:func:`asma_beta_search`): Ozbulak et al. (experimental setup) fix tau = 1e-7 and pick beta from
{1e-6, 5e-6, 1e-5} (``BETA_SEARCH``) by the best mean IoU with the target. We run ASMA once per
candidate, in the order given (ascending for the search), and keep, for each image, the candidate with
the highest IoU with the target (ties: the smaller L2 perturbation). An image stops early: once a
candidate reaches its target exactly (IoU 1, no higher IoU exists) the larger candidates are not run
on it (they would move it with larger steps); and an image whose prediction never overlapped its target
under the first candidate is not run again: its multiplier stayed alpha = tau at every iteration, so
every beta gives it the same iterates (the tie rule keeps the first). The mean of per-image IoUs is then the highest any
choice of candidates reaches, and an image's result does not depend on the other images of its batch
or shard (up to floating-point rounding: finished images leave the batch).
Their Table 1 reports L2 and L-inf of x_adv - x in [0, 1] units (images divided by 255), as
:class:`AsmaResult` holds them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from augforge.ranges import one_hot

CHECK_EVERY = 10
BETA_SEARCH = (1e-6, 5e-6, 1e-5)  # Ozbulak et al.'s candidates for beta (with tau = 1e-7)


@dataclass(frozen=True)
class AsmaResult:
    """Adversarial images and the per-image statistics of the paper's Table 1.

    x_adv: (B, C, H, W) in [0, 1]; iterations: (B,) int64, updates applied to each image;
    l2, linf: (B,) distances ||x_adv - x||_2 and ||x_adv - x||_inf in [0, 1] units;
    iou_target, pixel_acc_target: (B,) IoU (K classes: mean foreground IoU) and pixel accuracy of the final
    prediction against the target mask (IoU = 1 when both are empty); peak_iou_target: (B,) the highest IoU with the target
    of any iterate's prediction (0: the multiplier stayed tau throughout, whatever beta).
    """

    x_adv: Tensor
    iterations: Tensor
    l2: Tensor
    linf: Tensor
    iou_target: Tensor
    pixel_acc_target: Tensor
    peak_iou_target: Tensor


def _iou(pred: Tensor, target: Tensor) -> Tensor:
    """Per-image IoU (B,) of binary masks (B, 1, H, W); 1 where both masks are empty."""
    intersection = (pred * target).flatten(1).sum(1)
    union = torch.maximum(pred, target).flatten(1).sum(1)
    return torch.where(union > 0, intersection / union.clamp_min(1.0), torch.ones_like(union))


def mean_foreground_iou(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """Per-image mean IoU (B,) over the foreground classes 1..K-1 of index masks (B, 1, H, W), of pred's dtype.

    A class absent from both masks scores 1 (as in :mod:`augforge.seg.metrics`). For K = 2 this is
    :func:`_iou` of the binary masks.
    """
    p, t = (one_hot(m, num_classes, torch.bool)[:, 1:] for m in (pred, target))  # (B, K-1, H, W)
    intersection = (p & t).flatten(2).sum(2).to(pred.dtype)
    union = (p | t).flatten(2).sum(2).to(pred.dtype)
    return torch.where(union > 0, intersection / union.clamp_min(1.0), torch.ones_like(union)).mean(1)


def predict(logits: Tensor, dtype: torch.dtype) -> Tensor:
    """The prediction (B, 1, H, W) of ``dtype``: z > 0 for one logit, the argmax class for K > 1."""
    if logits.shape[1] == 1:
        return (logits > 0).to(dtype)
    return logits.argmax(1, keepdim=True).to(dtype)


def target_iou(pred: Tensor, target: Tensor, num_logits: int) -> Tensor:
    """IoU (B,) of the prediction with the target: foreground IoU (one logit), mean foreground IoU (K logits)."""
    return _iou(pred, target) if num_logits == 1 else mean_foreground_iou(pred, target, num_logits)


def asma(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    target: Tensor,
    max_iter: int = 2500,
    beta: float = 1e-6,
    tau: float = 1e-7,
    l2_weight: float = 1.0,
    generator: torch.Generator | None = None,
    adaptive_mask: bool = True,
    dynamic_multiplier: bool = True,
    patience: int = 0,
) -> AsmaResult:
    """Targeted ASMA: perturb x (B, C, H, W) in [0, 1] until ``model`` predicts ``target``.

    ``model(x)``: logits (B, 1, H, W) (binary) or (B, K, H, W) (K classes, module docstring).
    y: the true masks (B, 1, H, W), only checked for shape (ASMA needs the target, not y);
    target: index masks (B, 1, H, W), {0, 1} for one logit, 0..K-1 for K; max_iter: per-image iteration cap; beta, tau: step
    multiplier alpha_n = beta * IoU + tau (paper defaults); l2_weight: lambda of the L2 term.
    ``generator`` is accepted for the common attack signature; ASMA draws no random numbers.
    ``adaptive_mask`` / ``dynamic_multiplier``: False gives the static mask / the constant multiplier
    tau of the paper's ablation (module docstring). ``patience`` P > 0: an image also stops once P iterations in a
    row have not raised its IoU with the target above its best so far (its iterate then is at most P steps past
    that best); 0 (the paper): only the target or ``max_iter`` stop it. Returns an :class:`AsmaResult`
    (detached tensors).
    """
    if x.dim() != 4 or y.shape != target.shape or y.dim() != 4 or y.shape[1] != 1 or (
        x.shape[0] != y.shape[0] or x.shape[2:] != y.shape[2:]
    ):
        raise ValueError(
            f"expected images (B, C, H, W), masks and target (B, 1, H, W) of the same B, H, W, got "
            f"{tuple(x.shape)}, {tuple(y.shape)}, {tuple(target.shape)}"
        )
    if max_iter < 0 or beta < 0 or tau < 0 or l2_weight < 0 or patience < 0:
        raise ValueError(f"ASMA needs max_iter, beta, tau, l2_weight, patience >= 0, got {max_iter}, {beta}, {tau}, "
                         f"{l2_weight}, {patience}")
    x0 = x.detach()
    target = target.to(x0.dtype)
    x_adv = x0.clone()
    active = torch.ones(x0.shape[0], dtype=torch.bool, device=x0.device)
    iterations = torch.zeros(x0.shape[0], dtype=torch.long, device=x0.device)
    peak = torch.zeros(x0.shape[0], dtype=x0.dtype, device=x0.device)
    stalled = torch.zeros(x0.shape[0], dtype=torch.long, device=x0.device)  # iterations since the peak rose
    n = 0
    while n < max_iter:
        # 0. one host sync per CHECK_EVERY iterations: the images still moving form the batch of the window
        live = torch.nonzero(active).flatten()
        if live.numel() == 0:
            break
        x_n, x0_live, t_live, act = x_adv[live], x0[live], target[live], active[live]
        target_sign = 2.0 * t_live - 1.0  # class logit of the target class: (2t - 1) z
        steps = torch.zeros_like(act, dtype=torch.long)
        peak_live, stalled_live = peak[live], stalled[live]
        for _ in range(min(CHECK_EVERY, max_iter - n)):
            x_in = x_n.detach().requires_grad_(True)
            z = model(x_in)
            # 1. prediction and adaptive mask; images already at the target stop for good
            pred = predict(z.detach(), x0.dtype)
            wrong = pred != t_live
            act = act & wrong.flatten(1).any(1)
            # 2. objective: target-class logits on the wrong pixels (every pixel: static mask) minus the L2 distance
            if z.shape[1] == 1:
                logit = target_sign * z * wrong if adaptive_mask else target_sign * z
            else:
                target_logit = z.gather(1, t_live.long())  # g_{t_i, i}: sum_c M^c g_c of Eq. 2
                logit = target_logit * wrong if adaptive_mask else target_logit
            objective = logit.sum() - l2_weight * (x_in - x0_live).square().sum()
            (grad,) = torch.autograd.grad(objective, x_in)
            # 3. adaptive step, box constraint, only on the active images
            iou = target_iou(pred, t_live, z.shape[1])
            if patience:  # 3a. an image whose IoU has not risen above its best for `patience` iterations stops
                stalled_live = torch.where(iou > peak_live, 0, stalled_live + 1)
                act = act & (stalled_live < patience)
            peak_live = torch.where(act, torch.maximum(peak_live, iou), peak_live)
            overlap = iou if dynamic_multiplier else torch.zeros_like(iou)
            alpha = (beta * overlap + tau).view(-1, 1, 1, 1)
            x_next = (x_n + alpha * grad).clamp(0.0, 1.0)
            x_n = torch.where(act.view(-1, 1, 1, 1), x_next, x_n)
            steps += act
            n += 1
        x_adv[live], active[live], peak[live], stalled[live] = x_n.detach(), act, peak_live, stalled_live
        iterations[live] += steps
    with torch.no_grad():
        z = model(x_adv)
        pred = predict(z, x0.dtype)
    delta = (x_adv - x0).flatten(1)
    final_iou = target_iou(pred, target, z.shape[1])
    return AsmaResult(
        x_adv=x_adv,
        iterations=iterations,
        l2=delta.norm(dim=1),
        linf=delta.abs().amax(dim=1),
        iou_target=final_iou,
        pixel_acc_target=(pred == target).to(x0.dtype).flatten(1).mean(1),
        peak_iou_target=torch.maximum(peak, final_iou),
    )


def asma_beta_search(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    target: Tensor,
    betas: tuple[float, ...] = BETA_SEARCH,
    **kwargs,
) -> tuple[AsmaResult, Tensor]:
    """ASMA with each beta of ``betas``, the best per image: highest IoU with the target, then lowest L2.

    Ozbulak et al. (MICCAI 2019, experimental setup): tau = 1e-7, beta from {1e-6, 5e-6, 1e-5} by the best mean
    IoU with the target; ``kwargs`` go to :func:`asma` (max_iter, tau, l2_weight, generator).
    Returns the combined :class:`AsmaResult` and the beta chosen for each image (B,) float64.
    """
    if not betas:
        raise ValueError("asma_beta_search needs at least one beta")
    best = asma(model, x, y, target=target, beta=betas[0], **kwargs)
    chosen = torch.full((x.shape[0],), betas[0], dtype=torch.float64, device=x.device)
    # an image whose prediction never overlapped its target ran with alpha = tau throughout: every beta gives it
    # the same iterates, so it keeps the first candidate (as the tie rule would)
    moved = best.peak_iou_target > 0 if kwargs.get("dynamic_multiplier", True) else torch.zeros_like(chosen, dtype=bool)
    for beta in betas[1:]:
        # 1. early stop per image: an image at its target (IoU 1) keeps its candidate (one host sync)
        todo = torch.nonzero((best.iou_target < 1) & moved).flatten()
        if todo.numel() == 0:
            break
        result = asma(model, x[todo], y[todo], target=target[todo], beta=beta, **kwargs)
        # 2. the better of the two per image: higher IoU with the target, then smaller L2
        kept = vars(best)
        better = (result.iou_target > kept["iou_target"][todo]) | (
            (result.iou_target == kept["iou_target"][todo]) & (result.l2 < kept["l2"][todo]))
        merged = {}
        for name, new in vars(result).items():
            values = kept[name].clone()
            values[todo] = torch.where(better.view(-1, *([1] * (new.dim() - 1))), new, values[todo])
            merged[name] = values
        best = AsmaResult(**merged)
        chosen[todo] = torch.where(better, beta, chosen[todo])
    return best, chosen
