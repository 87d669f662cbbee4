"""Loss functions of the three head-training stages (pure torch; no I/O, no model loading).

Notation: `e` is a batch of head outputs (B, D), each row unit-norm (the head L2-normalises);
`h` is a batch of encoder features (B, H), L2-normalised mean-pooled encoder output, which is
exactly what the head receives at inference. D = 7680.

Stage 1, projection expansion (paper eq. 3, `MSE(e, Pad(e_enc, 7680))`):
    L_proj = mean_b ||e_b - pad(h_b)||^2          (= D * MSE; same minimiser)
  `pad` zero-pads the unit-norm encoder embedding to D, so target and output are both unit
  norm and L_proj = 2 - 2 cos(e, pad(h)) lies in [0, 4]. The sum over dimensions instead of
  the mean only rescales the loss by D (AdamW is invariant to that) and keeps it readable.

Stage 2, contrastive reranking (paper eq. 4, -log(exp s+ / (exp s+ + exp s-))):
    L_rank = mean over (query q, negative n) pairs of softplus((s(q, n) - s(q, p)) / tau)
  with s = cosine similarity. -log(e^a / (e^a + e^b)) = softplus(b - a), so tau = 1 is the
  paper's formula exactly; cosine gaps between unit vectors are small (|s| <= 1), so a
  temperature tau < 1 (default 0.05) sharpens the logistic and gives useful gradients. The
  margin variant is max(0, margin - s(q, p) + s(q, n)). Negatives of a query are every other
  candidate in the batch that is not one of its known positives: the batch's other positives
  and explicit negatives (in-batch) plus the negatives mined by the current model.

Stage 3, DSO regularisers (paper eqs. 5-8), see `bitdelta_loss`, `robust_loss`,
`diversity_loss`; the trainer adds `rank_weight * L_rank` so retrieval is not forgotten.

Stages 2-3 may add `matryoshka * L_mat`, `matryoshka_rank_loss`: the ranking loss on the
renormalised 1024/2048/4096 prefixes, so that the prefixes degrade gracefully.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.autograd.function import BackwardCFunction, FunctionCtx

from dsonode.embed.defaults import DEFAULT_MARGIN, DEFAULT_TAU

#: Stage-3 weights of eq. 5.
LAMBDA_BITDELTA = 0.3
LAMBDA_ROBUST = 0.5
LAMBDA_DIVERSE = 0.2
#: Floor added to D * Var before the log in the entropy term (bounds the loss and its gradient
#: for dimensions that carry no variance, e.g. the zero padding learnt in stage 1).
ENTROPY_EPS = 1e-2
#: Temperature of the uniformity term (Wang & Isola 2020 use t = 2).
UNIFORMITY_T = 2.0


def pad_target(base: torch.Tensor, dim: int) -> torch.Tensor:
    """Unit-normalise encoder embeddings (B, H) and zero-pad them to (B, dim)."""
    if base.dim() != 2 or base.shape[1] > dim:
        raise ValueError(f"base must be (B, H) with H <= {dim}, got {tuple(base.shape)}")
    unit = nn.functional.normalize(base, p=2.0, dim=-1)
    return nn.functional.pad(unit, (0, dim - base.shape[1]))


def projection_loss(e: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Stage 1: mean over the batch of the squared L2 distance (= D * element-wise MSE)."""
    return ((e - target) ** 2).sum(dim=-1).mean()


def pairwise_rank_loss(
    scores: torch.Tensor,
    pos_index: torch.Tensor,
    neg_mask: torch.Tensor,
    kind: str = "logistic",
    tau: float = DEFAULT_TAU,
    margin: float = DEFAULT_MARGIN,
) -> torch.Tensor:
    """Stage 2 (eq. 4): pairwise loss over (query, positive, negative) score triples.

    scores: (Q, C) cosine similarities of each query to each candidate.
    pos_index: (Q,) column of each query's positive.
    neg_mask: (Q, C) bool, True where the candidate is a negative of that query.
    Returns the mean over all True entries of neg_mask (0 if there are none).
    """
    pos = scores.gather(1, pos_index.view(-1, 1))  # (Q, 1)
    gap = scores - pos  # s(q, n) - s(q, p)
    if kind == "logistic":
        per_pair = nn.functional.softplus(gap / tau)
    elif kind == "margin":
        per_pair = torch.clamp(margin + gap, min=0.0)
    else:
        raise ValueError(f"unknown ranking loss {kind!r} (logistic or margin)")
    mask = neg_mask.to(per_pair.dtype)
    count = mask.sum()
    if count.item() == 0:
        return scores.sum() * 0.0
    return (per_pair * mask).sum() / count


def matryoshka_rank_loss(
    eq: torch.Tensor,
    ec: torch.Tensor,
    pos_index: torch.Tensor,
    neg_mask: torch.Tensor,
    dims: tuple[int, ...],
    kind: str = "logistic",
    tau: float = DEFAULT_TAU,
    margin: float = DEFAULT_MARGIN,
) -> torch.Tensor:
    """Matryoshka term (Kusupati et al. 2022): the mean over `dims` of `pairwise_rank_loss`
    on the renormalised leading `d` coordinates of queries (Q, D) and candidates (C, D), so
    that the 1024/2048/4096 prefixes (and the 1024-bit code prefix) rank on their own."""
    if not dims:
        raise ValueError("matryoshka_rank_loss needs at least one prefix size")
    total = eq.sum() * 0.0
    for d in dims:
        if not 0 < d <= eq.shape[1]:
            raise ValueError(f"prefix {d} outside 1..{eq.shape[1]}")
        pq = nn.functional.normalize(eq[:, :d], p=2.0, dim=-1)
        pc = nn.functional.normalize(ec[:, :d], p=2.0, dim=-1)
        total = total + pairwise_rank_loss(pq @ pc.T, pos_index, neg_mask, kind, tau, margin)
    return total / len(dims)


class _SignSTE(torch.autograd.Function):
    """sign(x) in {-1, +1} (0 maps to +1, like the codec's `bit = d >= 0`); the backward pass
    is the straight-through estimator clipped to |x| <= 1 (Bengio et al. 2013)."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)

    @staticmethod
    def backward(ctx: BackwardCFunction, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1.0).to(grad.dtype)


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    return _SignSTE.apply(x)


def bitdelta_loss(e: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
    """Stage 3, L_bitdelta: squared reconstruction error of the 964-byte code, per item.

        d = e - r,  a = mean_i |d_i|,  d_hat = a * sign(d)
        L_bitdelta = mean_b ||d_b - d_hat_b||^2

    This is the codec of PROTOCOL.md 7.3 (sign bits of e - r with the L2-optimal scale), so the
    loss measures what a peer loses by sending a code instead of the float vector. The paper's
    eq. 6 (Var of neighbour differences e_i - e_{i-1}) belongs to the rejected "delta between
    dimensions" reading of BitDelta and is not used. For a unit vector with r = 0 the value is
    1 - D * a^2 (the error of the best 1-bit approximation); it is minimal when all |e_i| are
    equal. sign() uses a straight-through estimator; since a is the optimal scale, the exact
    gradient flows through e and a, and the STE term is scaled by a (~1/sqrt(D)), so it barely
    changes the direction while keeping the formula the literal quantised reconstruction.
    """
    d = e if ref is None else e - ref
    a = d.abs().mean(dim=-1, keepdim=True)
    d_hat = a * sign_ste(d)
    return ((d - d_hat) ** 2).sum(dim=-1).mean()


def robust_loss(
    head: nn.Module,
    h: torch.Tensor,
    e: torch.Tensor,
    noise: float,
    copies: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Stage 3, L_robust (eq. 7 with the perturbation on the input, see below).

        h_k = normalise(h + noise * eps_k / sqrt(H)),   eps_k ~ N(0, I),  k = 1..K
        e_k = head(h_k)
        L_robust = mean_b [ ||median_k e_k - e||_2  +  1/2 mean_k ||e_k - e||_2^2 ]

    Eq. 7 literally perturbs the embedding itself, E ||Median(e + p) - e||, which does not
    depend on the head (it is ||Median(p)||); moving the noise to the encoder features makes it
    measure what aggregation needs: peers whose encoders differ slightly (numerics, versions,
    dtype) must land close to each other, so the coordinate-wise median of their codes stays
    near each honest embedding. The first term is that median agreement; the second is the
    per-copy consistency (1 - cos per copy), which gives every noisy copy a gradient (the
    median passes gradient to one copy per coordinate). `noise` is the expected L2 norm of the
    perturbation relative to the unit-norm feature (default 0.05).
    """
    if copies < 1:
        raise ValueError("copies must be >= 1")
    b, width = h.shape
    # Drawn on the CPU (where `generator` lives) so a seed gives the same noise on any device.
    eps = torch.randn((copies, b, width), generator=generator, dtype=torch.float32)
    eps = eps.to(device=h.device, dtype=h.dtype)
    noisy = nn.functional.normalize(h.unsqueeze(0) + noise * eps / math.sqrt(width), dim=-1)
    e_k = head(noisy.reshape(copies * b, width)).reshape(copies, b, -1)
    median = e_k.median(dim=0).values if copies > 1 else e_k[0]
    agree = (median - e).norm(dim=-1)
    consist = 0.5 * ((e_k - e.unsqueeze(0)) ** 2).sum(dim=-1).mean(dim=0)
    return (agree + consist).mean()


def diversity_loss(e: torch.Tensor) -> torch.Tensor:
    """Stage 3, L_diverse (eq. 8, -sum_i H(e_i), entropy across the batch), made concrete:

        L_ent  = -(1/D) sum_i 1/2 log(D * Var_b(e_i) + eps)
        L_unif = log mean_{b != c} exp(-t ||e_b - e_c||^2) + 2t
        L_diverse = L_ent + L_unif

    L_ent is eq. 8 with each coordinate's entropy estimated as a Gaussian's,
    H = 1/2 log(2 pi e Var) (constants dropped, divided by D so its size does not grow with D,
    Var scaled by D so that 0 is the value when every coordinate carries 1/D of the variance).
    For unit vectors sum_i Var_i = 1 - ||mean e||^2 <= 1, so L_ent >= ~0 (Jensen): it is
    minimal when the batch is centred (items spread out) and the variance is shared by all
    coordinates (no dead or dominant dimensions, which also helps the sign codes: a dead
    coordinate's bit carries nothing). L_unif is the uniformity loss of Wang & Isola (2020),
    the log of a Gaussian-potential energy on the sphere whose minimiser is the uniform
    (maximum-entropy) distribution; it catches what per-coordinate variances miss: pairs of
    items that collapse onto each other. It is shifted by 2t so orthogonal pairs score 0.
    Needs B >= 2 (returns 0 otherwise).
    """
    b, dim = e.shape
    if b < 2:
        return e.sum() * 0.0
    var = e.var(dim=0, unbiased=True)
    l_ent = -0.5 * torch.log(dim * var + ENTROPY_EPS).mean()
    # Squared distances from the Gram matrix (cdist's gradient is undefined at distance 0).
    norms = (e * e).sum(dim=-1)
    sq = (norms.view(-1, 1) + norms.view(1, -1) - 2.0 * (e @ e.T)).clamp(min=0.0)
    off = ~torch.eye(b, dtype=torch.bool)
    l_unif = torch.logsumexp(-UNIFORMITY_T * sq[off], dim=0) - math.log(b * (b - 1))
    return l_ent + l_unif + 2.0 * UNIFORMITY_T


def dso_loss(
    l_bitdelta: torch.Tensor, l_robust: torch.Tensor, l_diverse: torch.Tensor
) -> torch.Tensor:
    """Eq. 5: 0.3 L_bitdelta + 0.5 L_robust + 0.2 L_diverse."""
    return LAMBDA_BITDELTA * l_bitdelta + LAMBDA_ROBUST * l_robust + LAMBDA_DIVERSE * l_diverse
