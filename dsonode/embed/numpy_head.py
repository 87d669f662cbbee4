"""The projection head's second half (fc2 -> ln2 -> L2 normalise) in numpy, for the torch-free
embedder (dsonode.embed.lean; ARCHITECTURE.md "Lean embedder").

The seeded head's fc2 runs from its Hadamard factors with the same integer limb arithmetic as
`dsonode.embed.fastpath.HadamardSignLinear`: every intermediate is an integer below 2^24, which
float32 carries exactly whatever the summation order, so for a given input fc2's output is
bit-identical to the torch kernel's (tests/test_lean.py checks it). Any other head's fc2 runs
as a float32 matrix product. The weights come from the `.npz` file that
`dsonode.embed.compile` writes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: Limb base and count of the exact integer fc2 (see dsonode.embed.fastpath).
_BASE = 254.0
_LIMBS = 3
#: torch.nn.LayerNorm's default epsilon (the head's norms use it).
LAYER_NORM_EPS = 1e-5
#: Bound on a head file's matrices (a hostile file must not allocate without limit).
_MAX_ELEMENTS = 65_536 * 8192


def limb_split(x: np.ndarray, limbs: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """(step, limbs) with x / step = l0 + l1 / 254 + l2 / 254^2 to 24 bits, per row; each limb
    an integer-valued float32 array in [-127, 127]."""
    amax = np.abs(x).max(axis=1, keepdims=True)
    step = np.where(amax > 0, amax / np.float32(127.0), np.float32(1.0)).astype(np.float32)
    u = (x / step).astype(np.float32)
    parts = []
    for _ in range(limbs):
        q = np.round(u)
        parts.append(q)
        u = ((u - q) * np.float32(_BASE)).astype(np.float32)
    return step, parts


def limb_combine(acc: np.ndarray, step: np.ndarray, scale: float) -> np.ndarray:
    """float32 layer output from exact integer products acc (limbs, n, out)."""
    wide = acc.astype(np.float64)
    y = wide[0] + wide[1] / _BASE
    if wide.shape[0] == 3:
        y = y + wide[2] / (_BASE * _BASE)
    return (y * (step.astype(np.float64) * scale)).astype(np.float32)


class HadamardProducts:
    """S @ q for the seeded sign matrix S = rsign * kron(P, H)[rows][:, cols] * csign."""

    def __init__(
        self,
        p: np.ndarray,
        s: np.ndarray,
        rows: np.ndarray,
        cols: np.ndarray,
        rsign: np.ndarray,
        csign: np.ndarray,
    ) -> None:
        self.p = np.ascontiguousarray(p, dtype=np.float32)
        self.s_t = np.ascontiguousarray(np.asarray(s, dtype=np.float32).T)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.cols = np.asarray(cols, dtype=np.int64)
        self.rsign = np.asarray(rsign, dtype=np.float32)
        self.csign = np.asarray(csign, dtype=np.float32)
        self.order = self.p.shape[0] * self.s_t.shape[0]
        if self.p.shape[0] != self.p.shape[1] or self.s_t.shape[0] != self.s_t.shape[1]:
            raise ValueError("Hadamard factors must be square")
        for name, idx in (("rows", self.rows), ("cols", self.cols)):
            if idx.ndim != 1 or len(idx) == 0 or idx.min() < 0 or idx.max() >= self.order:
                raise ValueError(f"Hadamard {name} out of range")
        if self.rsign.shape != self.rows.shape or self.csign.shape != self.cols.shape:
            raise ValueError("Hadamard signs do not match rows/cols")
        self.in_features = len(self.cols)
        self.out_features = len(self.rows)

    def __call__(self, q: np.ndarray) -> np.ndarray:
        n, a, m = q.shape[0], self.p.shape[0], self.s_t.shape[0]
        z = np.zeros((n, self.order), dtype=np.float32)
        z[:, self.cols] = q * self.csign
        # kron(P, S) z = P Z S^T for Z the (a, m) reshape of z: two small dense products.
        y = z.reshape(n * a, m) @ self.s_t
        y = (self.p @ y.reshape(n, a, m).transpose(1, 0, 2).reshape(a, n * m)).reshape(a, n, m)
        y = y.transpose(1, 0, 2).reshape(n, self.order)
        out: np.ndarray = y[:, self.rows] * self.rsign
        return out


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    mean = x.mean(axis=1, keepdims=True, dtype=np.float32)
    centred = x - mean
    var = (centred * centred).mean(axis=1, keepdims=True, dtype=np.float32)
    out = centred / np.sqrt(var + np.float32(LAYER_NORM_EPS)) * weight + bias
    return out.astype(np.float32, copy=False)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    out: np.ndarray = (x / np.maximum(norms, np.float32(1e-12))).astype(np.float32, copy=False)
    return out


class HeadPost:
    """fc2 -> ln2 -> L2 normalise, from `save_post`'s file."""

    def __init__(
        self,
        fc2: HadamardProducts | np.ndarray,
        scale: float,
        fc2_bias: np.ndarray,
        ln2_weight: np.ndarray,
        ln2_bias: np.ndarray,
    ) -> None:
        self.fc2 = fc2
        self.scale = float(scale)
        self.fc2_bias = np.asarray(fc2_bias, dtype=np.float32)
        self.ln2_weight = np.asarray(ln2_weight, dtype=np.float32)
        self.ln2_bias = np.asarray(ln2_bias, dtype=np.float32)
        out = fc2.out_features if isinstance(fc2, HadamardProducts) else fc2.shape[0]
        self.in_features = fc2.in_features if isinstance(fc2, HadamardProducts) else fc2.shape[1]
        self.out_features = out
        for name, vec in (
            ("fc2.bias", self.fc2_bias),
            ("ln2.weight", self.ln2_weight),
            ("ln2.bias", self.ln2_bias),
        ):
            if vec.shape != (out,):
                raise ValueError(f"{name} must have shape ({out},), got {vec.shape}")
        self.kernel = "hadamard-limbs" if isinstance(fc2, HadamardProducts) else "float32"

    def fc2_out(self, x: np.ndarray, limbs: int = _LIMBS) -> np.ndarray:
        """fc2 alone (n, in) -> (n, out) float32."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if isinstance(self.fc2, HadamardProducts):
            n = x.shape[0]
            step, parts = limb_split(x, limbs)
            acc = self.fc2(np.concatenate(parts)).reshape(limbs, n, self.out_features)
            return limb_combine(acc, step, self.scale) + self.fc2_bias
        out: np.ndarray = (x @ self.fc2.T + self.fc2_bias).astype(np.float32, copy=False)
        return out

    def __call__(self, x: np.ndarray, limbs: int = _LIMBS) -> np.ndarray:
        z = layer_norm(self.fc2_out(x, limbs), self.ln2_weight, self.ln2_bias)
        return l2_normalise(z)


def save_post(path: Path, post_arrays: dict[str, np.ndarray]) -> None:
    """Write the arrays `load_post` reads (np.savez: no pickled objects)."""
    with path.open("wb") as f:
        np.savez(f, **post_arrays)  # type: ignore[arg-type]


def load_post(path: Path) -> HeadPost:
    """A HeadPost from a file written by dsonode.embed.compile; ValueError when malformed."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    for name, arr in arrays.items():
        if arr.size > _MAX_ELEMENTS:
            raise ValueError(f"{path.name}: {name} is too large ({arr.size} elements)")
    try:
        scale = float(arrays["scale"])
        common = (arrays["fc2_bias"], arrays["ln2_weight"], arrays["ln2_bias"])
        if "weight" in arrays:
            weight = np.ascontiguousarray(arrays["weight"], dtype=np.float32)
            if weight.ndim != 2:
                raise ValueError("fc2 weight must be 2-d")
            return HeadPost(weight, 1.0, *common)
        fc2 = HadamardProducts(
            arrays["p"],
            arrays["s"],
            arrays["rows"],
            arrays["cols"],
            arrays["rsign"],
            arrays["csign"],
        )
        return HeadPost(fc2, scale, *common)
    except KeyError as exc:
        raise ValueError(f"{path.name}: missing array {exc}") from exc
