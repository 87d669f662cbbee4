"""Exact integer evaluation of a sign-matrix layer (the seeded head's fc2) on the CPU.

The seeded head's fc2 weight is `scale * S` with S in {-1, +1}^(7680 x 6144): 47 M weights,
189 MB in float32, which a float32 GEMM must stream for every call (about 10 ms for one query on
this machine) and which costs ~1 ms per text even in large batches. Because S is exactly an
int8 matrix, fc2 can run as an int8 x int8 -> int32 GEMM (VNNI on current x86 CPUs), with no
loss: the float32 activations are split into three int8 "limbs" (base 254), each limb product
is an exact integer, and the three are recombined in float64. Three limbs carry 24 bits, the
precision of float32 itself, so the result matches the float32 layer to float32 rounding (the
tests check it) while reading 4x fewer weight bytes. Any other head (a trained one) runs in
plain float32.

The seeded head's S is more than +-1: it is rows and columns of a signed Hadamard matrix
kron(P, Sylvester) (dsonode.embed.head), so `HadamardSignLinear` computes the same integer limb
products from that structure (scatter, two small dense products, gather: ~1.4 M multiply-adds
per limb instead of 47 M) and holds no weight matrix at all. Every intermediate is an integer
below 2^24 in magnitude (at most 6144 * 127), so float32 arithmetic carries it exactly: the
integers, and hence the output, are bit-identical to the int8 GEMM's (the tests check it).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from dsonode.embed.head import ProjectionHead, seeded_sign_factors

#: Limb base: residuals of round() are in [-0.5, 0.5], times 254 stays within int8's +-127.
_BASE = 254.0
_LIMBS = 3


def sign_scale(weight: torch.Tensor) -> float | None:
    """The common magnitude if every weight is +-scale (scale > 0), else None."""
    w = weight.detach()
    scale = float(w.abs().max())
    if scale == 0.0 or not torch.equal(w.abs(), torch.full_like(w, scale)):
        return None
    return scale


def _limb_split(x: torch.Tensor, limbs: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(step, int8 limbs): x / step = limb0 + limb1 / 254 + limb2 / 254^2 to 24 bits, per row."""
    if limbs not in (2, 3):
        raise ValueError(f"limbs must be 2 or 3, got {limbs!r}")
    x = x.float()
    amax = x.abs().amax(dim=1, keepdim=True)
    step = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    u = x / step  # |u| <= 127
    parts = []
    for _ in range(limbs):
        q = torch.round(u)
        parts.append(q.to(torch.int8))
        u = (u - q) * _BASE
    return step, parts


def _limb_combine(
    acc: torch.Tensor, step: torch.Tensor, scale: float, bias: torch.Tensor | None
) -> torch.Tensor:
    """The float32 layer output from exact integer products acc (limbs, n, out)."""
    acc = acc.double()
    y = acc[0] + acc[1] / _BASE
    if acc.shape[0] == 3:
        y = y + acc[2] / (_BASE * _BASE)
    y = (y * (step.double() * scale)).float()
    if bias is not None:
        y = y + bias
    return y


class IntSignLinear(nn.Module):
    """y = x @ (scale * S).T + bias, computed exactly with int8 limbs and int32 accumulation."""

    # Buffers (register_buffer), declared so they type as tensors, not Tensor | Module.
    signs_t: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, linear: nn.Linear, scale: float) -> None:
        super().__init__()
        signs = torch.sign(linear.weight.detach()).to(torch.int8)
        # _int_mm wants (K, N); a transposed view of (N, K) row-major data is what it runs fastest.
        self.register_buffer("signs_t", signs.t(), persistent=False)
        bias = linear.bias.detach().clone() if linear.bias is not None else None
        self.register_buffer("bias", bias, persistent=False)
        self.scale = scale
        self.in_features = linear.in_features
        self.out_features = linear.out_features

    @classmethod
    def maybe_from(cls, linear: nn.Linear) -> IntSignLinear | None:
        """The integer form of `linear` if its weights are +-scale and the CPU supports it."""
        if linear.weight.device.type != "cpu" or not hasattr(torch, "_int_mm"):
            return None
        scale = sign_scale(linear.weight)
        if scale is None:
            return None
        fast = cls(linear, scale)
        try:  # some builds or shapes lack the kernel: fall back to float32 then
            with torch.inference_mode():
                probe = torch.zeros(1, linear.in_features)
                fast(probe)
        except RuntimeError:
            return None
        return fast

    def forward(self, x: torch.Tensor, limbs: int = _LIMBS) -> torch.Tensor:
        """limbs=3 matches float32; limbs=2 keeps ~15 bits (2e-5 relative), a third faster."""
        n = x.shape[0]
        step, parts = _limb_split(x, limbs)
        if n == 1:
            # One text (a query): matrix-vector products take torch's GEMV kernel, about 4x
            # faster than one GEMM over the stacked limbs (measured). torch's only exact
            # int8 GEMM on the CPU is the private _int_mm.
            acc = torch.cat([torch._int_mm(q, self.signs_t) for q in parts], dim=0)
        else:
            acc = torch._int_mm(torch.cat(parts, dim=0), self.signs_t)  # (limbs * n, out)
        acc = acc.view(limbs, n, self.out_features)  # exact integers
        return _limb_combine(acc, step, self.scale, self.bias)


class HadamardSignLinear(nn.Module):
    """IntSignLinear's function for a seeded +-scale layer, from its Hadamard structure alone.

    W[i, j] = scale * rsign[i] * csign[j] * kron(P, S)[r[i], c[j]], so W @ q scatters
    csign * q into a length-N vector at c, applies P and S to its (N/m, m) reshape, and
    gathers rows r with signs rsign. Holds a few small factors instead of the matrix.
    """

    p: torch.Tensor
    s: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    rsign: torch.Tensor
    csign: torch.Tensor
    bias: torch.Tensor | None

    def __init__(
        self,
        factors: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray],
        scale: float,
        bias: torch.Tensor | None,
    ) -> None:
        super().__init__()
        p, s, r, c, rsign, csign = factors
        for name, value in (("p", p), ("s", s), ("rsign", rsign), ("csign", csign)):
            self.register_buffer(name, torch.from_numpy(value.astype(np.float32)), persistent=False)
        self.register_buffer("rows", torch.from_numpy(r.astype(np.int64)), persistent=False)
        self.register_buffer("cols", torch.from_numpy(c.astype(np.int64)), persistent=False)
        self.register_buffer("bias", bias, persistent=False)
        self.scale = scale
        self.order = p.shape[0] * s.shape[0]
        self.in_features = len(c)
        self.out_features = len(r)

    @classmethod
    def maybe_from(cls, linear: nn.Linear, seed: int, name: str) -> HadamardSignLinear | None:
        """The structured form of `linear` if it is the seeded layer `name` of `seed`.

        Checked, not assumed: a few random integer probes must give exactly the products of
        the layer's own weights (a different matrix passes with negligible probability).
        """
        w = linear.weight.detach()
        if w.device.type != "cpu" or w.dtype != torch.float32:
            return None
        scale = sign_scale(w)  # reads w once; the full equality is what the probes check
        if scale is None:
            return None
        factors = seeded_sign_factors(seed, name, linear.out_features, linear.in_features)
        if factors is None:
            return None
        bias = linear.bias.detach().clone() if linear.bias is not None else None
        fast = cls(factors, scale, bias)
        gen = torch.Generator().manual_seed(0x5EED)
        probes = torch.randint(-127, 128, (4, linear.in_features), generator=gen).float()
        with torch.inference_mode():
            want = (probes @ w.t()) / scale  # integers below 2^24: exact in float32
            got = fast.products(probes)
        return fast if torch.equal(got, want) else None

    def products(self, q: torch.Tensor) -> torch.Tensor:
        """(rows, out) float32 integers S @ q for integer-valued q (rows, in), exactly."""
        n, a, m = q.shape[0], self.p.shape[0], self.s.shape[0]
        z = torch.zeros(n, self.order, dtype=torch.float32)
        z.index_copy_(1, self.cols, q.float() * self.csign)  # (advanced indexing is ~7x slower)
        # kron(P, S) z = P Z S^T for Z the (a, m) reshape of z; two plain GEMMs over all rows.
        y = z.view(n * a, m) @ self.s.t()
        y = (self.p @ y.view(n, a, m).transpose(0, 1).reshape(a, n * m)).view(a, n, m)
        y = y.transpose(0, 1).reshape(n, self.order)
        return torch.index_select(y, 1, self.rows) * self.rsign

    def forward(self, x: torch.Tensor, limbs: int = _LIMBS) -> torch.Tensor:
        n = x.shape[0]
        step, parts = _limb_split(x, limbs)
        acc = self.products(torch.cat(parts, dim=0)).view(limbs, n, self.out_features)
        return _limb_combine(acc, step, self.scale, self.bias)


class FastHead(nn.Module):
    """A ProjectionHead with fc2 swapped for its exact integer form (same function)."""

    def __init__(self, head: ProjectionHead, fc2: IntSignLinear | HadamardSignLinear) -> None:
        super().__init__()
        self.fc1, self.act, self.ln1, self.ln2 = head.fc1, head.act, head.ln1, head.ln2
        self.fc2 = fc2

    def forward(self, x: torch.Tensor, limbs: int = _LIMBS) -> torch.Tensor:
        h = self.ln1(self.act(self.fc1(x)))
        z = self.ln2(self.fc2(h, limbs))
        return nn.functional.normalize(z, p=2.0, dim=-1)


def fast_head(head: ProjectionHead, seed: int | None = None) -> nn.Module:
    """`head` evaluated with an exact integer fc2 when its weights allow it, else `head` itself.

    With the `seed` of a seeded head, fc2 runs from its Hadamard structure (no matrix held);
    otherwise a +-scale fc2 runs as an int8 GEMM. The returned module shares fc1 and the norms
    with `head` but not fc2's float32 matrix, which the caller may then drop.
    """
    fc2: IntSignLinear | HadamardSignLinear | None = None
    if seed is not None:
        fc2 = HadamardSignLinear.maybe_from(head.fc2, seed, "fc2.weight")
    if fc2 is None:
        fc2 = IntSignLinear.maybe_from(head.fc2)
    return FastHead(head, fc2) if fc2 is not None else head
