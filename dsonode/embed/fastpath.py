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
"""

from __future__ import annotations

import torch
from torch import nn

from dsonode.embed.head import ProjectionHead

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
        if limbs not in (2, 3):
            raise ValueError(f"limbs must be 2 or 3, got {limbs!r}")
        n = x.shape[0]
        x = x.float()
        amax = x.abs().amax(dim=1, keepdim=True)
        step = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
        u = x / step  # |u| <= 127
        parts = []
        for _ in range(limbs):
            q = torch.round(u)
            parts.append(q.to(torch.int8))
            u = (u - q) * _BASE
        if n == 1:
            # One text (a query): matrix-vector products take torch's GEMV kernel, about 4x
            # faster than one GEMM over the stacked limbs (measured). torch's only exact
            # int8 GEMM on the CPU is the private _int_mm.
            acc = torch.cat([torch._int_mm(q, self.signs_t) for q in parts], dim=0)
        else:
            acc = torch._int_mm(torch.cat(parts, dim=0), self.signs_t)  # (limbs * n, out)
        acc = acc.view(limbs, n, self.out_features).double()  # exact integers
        y = acc[0] + acc[1] / _BASE
        if limbs == 3:
            y = y + acc[2] / (_BASE * _BASE)
        y = (y * (step.double() * self.scale)).float()
        if self.bias is not None:
            y = y + self.bias
        return y


class FastHead(nn.Module):
    """A ProjectionHead with fc2 swapped for its exact integer form (same function)."""

    def __init__(self, head: ProjectionHead, fc2: IntSignLinear) -> None:
        super().__init__()
        self.fc1, self.act, self.ln1, self.ln2 = head.fc1, head.act, head.ln1, head.ln2
        self.fc2 = fc2

    def forward(self, x: torch.Tensor, limbs: int = _LIMBS) -> torch.Tensor:
        h = self.ln1(self.act(self.fc1(x)))
        z = self.ln2(self.fc2(h, limbs))
        return nn.functional.normalize(z, p=2.0, dim=-1)


def fast_head(head: ProjectionHead) -> nn.Module:
    """`head` evaluated with an integer fc2 when its weights allow it, else `head` itself."""
    fc2 = IntSignLinear.maybe_from(head.fc2)
    return FastHead(head, fc2) if fc2 is not None else head
