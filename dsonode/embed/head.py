"""The projection head of the paper's Algorithm 1 and its deterministic seeded default.

    x (hidden, L2-normalised mean-pooled encoder output)
      -> fc1 Linear(hidden -> 6144) -> GELU -> ln1 LayerNorm
      -> fc2 Linear(6144 -> 7680)   -> ln2 LayerNorm -> L2 normalise

The default space must be identical on every machine without shipping 190 MB of weights, so
`build_seeded_head` derives every weight from a fixed seed with integer arithmetic only: each
weight matrix is +-scale times a randomised Hadamard matrix (rows permuted and selected,
columns permuted and selected, signs flipped, all from SHAKE-256 streams; the exact recipe is
in the comment block below). Every scale is a power of two, so the weights are exact in
float32, bfloat16 and int8-times-one-scale: nothing depends on torch's RNG, the CPU's vector
width or the numpy version, and another implementation can rebuild the head from the recipe.
Biases are zero and LayerNorms are the identity affine map.

The scale of fc1 sets how non-linear the GELU is on unit-norm inputs; a small scale keeps it
in its near-linear region, so the seeded head is an isometry up to a uniform scale and keeps
the encoder's retrieval quality (measured: see BENCHMARKS.md, "embed").
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dsonode.core.constants import DIM
from dsonode.embed.defaults import DEFAULT_HEAD_SEED, HEAD_HIDDEN
from dsonode.embed.errors import ModelLoadError

#: Magnitude of the seeded weights: fc1 keeps GELU near-linear on unit-norm inputs; fc2's
#: scale only has to keep ln2's input variance well above its epsilon (both powers of two).
SEEDED_FC1_SCALE = 2.0**-4
SEEDED_FC2_SCALE = 2.0**-6
#: Label prefix of the SHAKE-256 streams (version it if the construction ever changes).
_SEED_LABEL = b"dso/head/seeded/v1/"
#: Tensor names a head file must hold, in the order they are hashed.
HEAD_TENSORS = (
    "fc1.weight",
    "fc1.bias",
    "ln1.weight",
    "ln1.bias",
    "fc2.weight",
    "fc2.bias",
    "ln2.weight",
    "ln2.bias",
)
#: Bound on what a head file may declare (guards memory against a hostile file).
MAX_HEAD_DIM = 65_536


class ProjectionHead(nn.Module):
    """Linear -> GELU -> LayerNorm -> Linear -> LayerNorm -> L2 normalise (Algorithm 1)."""

    def __init__(
        self,
        in_dim: int,
        hidden: int = HEAD_HIDDEN,
        out_dim: int = DIM,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("in_dim", in_dim), ("hidden", hidden), ("out_dim", out_dim)):
            if not isinstance(value, int) or not 0 < value <= MAX_HEAD_DIM:
                raise ValueError(f"{name} must be an int in 1..{MAX_HEAD_DIM}, got {value!r}")
        self.in_dim = in_dim
        self.hidden = hidden
        self.out_dim = out_dim
        # device="meta" skips the default random init when weights are about to be overwritten.
        self.fc1 = nn.Linear(in_dim, hidden, device=device)
        self.act = nn.GELU()
        self.ln1 = nn.LayerNorm(hidden, device=device)
        self.fc2 = nn.Linear(hidden, out_dim, device=device)
        self.ln2 = nn.LayerNorm(out_dim, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(self.act(self.fc1(x)))
        z = self.ln2(self.fc2(h))
        return nn.functional.normalize(z, p=2.0, dim=-1)


# ----------------------------------------------------------------------------- seeded head
#
# Reproducible by anyone from this description (integer arithmetic and SHAKE-256 only):
#
#   stream(seed, name, n) = SHAKE-256(b"dso/head/seeded/v1/" || u64le(seed) || b"/" || name)[:n]
#   signs(seed, name, n)  = bits of stream(.., ceil(n/8)), least significant bit first, as +-1
#   perm(seed, name, n)   = stable argsort of the n little-endian u64 words of stream(.., 8n)
#   hadamard(N)           = Paley(q) (x) Sylvester(N / (q+1)), q the first of PALEY_PRIMES with
#                           (q+1) | N and N/(q+1) a power of two; Sylvester(m)[i, j] =
#                           (-1)^popcount(i & j); Paley(q) = I + S of order q+1 with S[0, j] = 1,
#                           S[i, 0] = -1 (i, j >= 1), S[i, j] = legendre(j - i mod q)
#   layer W (out x in), N = max(out, in), H = hadamard(N):
#       W[i, j] = scale * rsign[i] * csign[j] * H[rows[i], cols[j]]
#       rows = perm(name + "/rows", N)[:out], cols = perm(name + "/cols", N)[:in],
#       rsign = signs(name + "/row-signs", out), csign = signs(name + "/col-signs", in)
#
# Columns (or rows) of a Hadamard matrix are exactly orthogonal, so with a small fc1 scale
# (GELU near-linear) the head is an isometry up to a uniform scale: cosines between encoder
# vectors survive almost unchanged, unlike an i.i.d. random matrix, whose 384-d image is
# distorted by ~1/sqrt(width) per pair. The random permutations and signs make each output
# coordinate a "random-looking" direction, which the 1-bit codes (SimHash) need.

#: Primes q = 3 (mod 4): Paley construction I gives a Hadamard matrix of order q + 1.
PALEY_PRIMES = (3, 11, 19, 23, 31, 43, 47, 59, 67, 71, 79, 83)


def _stream(seed: int, name: str, nbytes: int) -> bytes:
    label = _SEED_LABEL + int(seed).to_bytes(8, "little", signed=False) + b"/" + name.encode()
    return hashlib.shake_256(label).digest(nbytes)


def seeded_signs(seed: int, name: str, count: int) -> np.ndarray:
    """`count` values in {-1, +1} (int8) from the seeded stream, bits least significant first."""
    raw = _stream(seed, name, (count + 7) // 8)
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder="little")[:count]
    return bits.astype(np.int8) * 2 - 1


def seeded_permutation(seed: int, name: str, n: int) -> np.ndarray:
    """A permutation of range(n): stable argsort of n little-endian u64 keys from the stream."""
    keys = np.frombuffer(_stream(seed, name, 8 * n), dtype="<u8")
    return np.argsort(keys, kind="stable")


def _paley(q: int) -> np.ndarray:
    residues = np.full(q, -1, dtype=np.int64)
    residues[0] = 0
    residues[(np.arange(1, q) ** 2) % q] = 1
    idx = np.arange(q)
    s = np.zeros((q + 1, q + 1), dtype=np.int64)
    s[0, 1:] = 1
    s[1:, 0] = -1
    s[1:, 1:] = residues[(idx[None, :] - idx[:, None]) % q]
    return np.eye(q + 1, dtype=np.int64) + s


def _sylvester(m: int) -> np.ndarray:
    idx = np.arange(m, dtype=np.uint64)
    parity = np.bitwise_count(idx[:, None] & idx[None, :]) & 1
    return (1 - 2 * parity.astype(np.int64)).astype(np.int64)


def _hadamard_factors(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(Paley or [[1]], Sylvester) int8 factors with hadamard(n) = kron(first, second)."""
    if n >= 1 and n & (n - 1) == 0:
        return np.ones((1, 1), dtype=np.int8), _sylvester(n).astype(np.int8)
    for q in PALEY_PRIMES:
        m, rest = divmod(n, q + 1)
        if rest == 0 and m & (m - 1) == 0:
            return _paley(q).astype(np.int8), _sylvester(m).astype(np.int8)
    raise ValueError(f"no Hadamard construction here for order {n}")


def hadamard(n: int) -> np.ndarray:
    """An n x n matrix of +-1 (int8) with H @ H.T == n * I, for the orders built here."""
    p, s = _hadamard_factors(n)
    return np.kron(p, s)


def seeded_sign_factors(
    seed: int, name: str, rows: int, cols: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """(p, s, r, c, rsign, csign) with seeded_orthogonal_signs(...)[i, j] = rsign[i] * csign[j]
    * kron(p, s)[r[i], c[j]], or None where no Hadamard construction exists (i.i.d. signs).

    The structure lets a layer be applied without its matrix (dsonode.embed.fastpath).
    """
    n = max(rows, cols)
    try:
        p, s = _hadamard_factors(n)
    except ValueError:
        return None
    r = seeded_permutation(seed, name + "/rows", n)[:rows]
    c = seeded_permutation(seed, name + "/cols", n)[:cols]
    rsign = seeded_signs(seed, name + "/row-signs", rows)
    csign = seeded_signs(seed, name + "/col-signs", cols)
    return p, s, r, c, rsign, csign


def seeded_orthogonal_signs(seed: int, name: str, rows: int, cols: int) -> np.ndarray:
    """(rows, cols) int8 +-1 matrix with orthogonal columns (rows >= cols) or rows (else).

    For an order with no construction here (not 2^k or (q+1) 2^k), i.i.d. seeded signs:
    still bit-exact everywhere, merely not exactly orthogonal.
    """
    factors = seeded_sign_factors(seed, name, rows, cols)
    if factors is None:
        return seeded_signs(seed, name, rows * cols).reshape(rows, cols)
    p, s, r, c, rsign, csign = factors
    m = s.shape[0]
    # hadamard(n)[r][:, c] without building the n x n matrix: kron(p, s)[i, j] =
    # p[i // m, j // m] * s[i % m, j % m]. Row and column signs fold into the factors' rows.
    left = p[r // m] * rsign[:, None]  # (rows, n // m)
    out = left[:, c // m]
    out *= s[r % m][:, c % m]
    out *= csign[None, :]
    return out


def _materialize(head: ProjectionHead) -> ProjectionHead:
    """Give a head built on the meta device uninitialised CPU parameters (to be overwritten).

    Cheaper than nn.Module.to_empty, whose first call imports torch._refs (about a second).
    """
    for module in head.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            setattr(module, name, nn.Parameter(torch.empty(param.shape, dtype=param.dtype)))
    return head


def build_seeded_head(
    in_dim: int,
    seed: int = DEFAULT_HEAD_SEED,
    hidden: int = HEAD_HIDDEN,
    out_dim: int = DIM,
    fc1_scale: float = SEEDED_FC1_SCALE,
    fc2_scale: float = SEEDED_FC2_SCALE,
) -> ProjectionHead:
    """The deterministic default head: bit-identical weights on every machine for one seed."""
    if not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
    head = _materialize(ProjectionHead(in_dim, hidden, out_dim, device="meta"))
    with torch.no_grad():
        for name, layer, scale in (
            ("fc1.weight", head.fc1, fc1_scale),
            ("fc2.weight", head.fc2, fc2_scale),
        ):
            signs = seeded_orthogonal_signs(seed, name, layer.out_features, layer.in_features)
            layer.weight.copy_(torch.from_numpy(signs).to(torch.float32) * scale)
            layer.bias.zero_()
        for norm in (head.ln1, head.ln2):
            norm.weight.fill_(1.0)
            norm.bias.zero_()
    return head.eval()


def head_weights_sha256(head: ProjectionHead) -> str:
    """sha256 over every tensor (name, shape, float32 little-endian bytes) in a fixed order."""
    state = head.state_dict()
    digest = hashlib.sha256(b"dso/head/weights/v1")
    for name in HEAD_TENSORS:
        tensor = state[name].detach().to("cpu", torch.float32).contiguous()
        digest.update(name.encode() + b"\0")
        digest.update(json.dumps(list(tensor.shape)).encode() + b"\0")
        digest.update(tensor.numpy().astype("<f4", copy=False).tobytes())
    return digest.hexdigest()


def save_head(
    head: ProjectionHead, path: str | Path, metadata: dict[str, Any] | None = None
) -> None:
    """Write the head's float32 weights to a safetensors file.

    `metadata` values that are not str are stored JSON-encoded (safetensors holds str -> str);
    the head's dimensions are always recorded under `in_dim`, `hidden`, `out_dim`.
    """
    from safetensors.torch import save_file

    meta = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    meta.update(
        {
            "format": "dso-head-1",
            "in_dim": str(head.in_dim),
            "hidden": str(head.hidden),
            "out_dim": str(head.out_dim),
        }
    )
    state = {
        name: t.detach().to("cpu", torch.float32).contiguous()
        for name, t in head.state_dict().items()
    }
    save_file(state, str(path), metadata=meta)


def load_head(path: str | Path) -> tuple[ProjectionHead, dict[str, str]]:
    """Load a head written by `save_head` (or any safetensors with the same tensors).

    Raises ModelLoadError naming what is wrong: missing file, not safetensors, a missing or
    extra tensor, a shape that does not fit, non-finite weights.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"head file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            keys = set(f.keys())
            missing = [n for n in HEAD_TENSORS if n not in keys]
            extra = sorted(keys - set(HEAD_TENSORS))
            if missing or extra:
                raise ModelLoadError(
                    f"head file {path}: missing tensors {missing}, unexpected tensors {extra}"
                )
            shapes = {n: tuple(f.get_slice(n).get_shape()) for n in HEAD_TENSORS}
            if len(shapes["fc1.weight"]) != 2 or len(shapes["fc2.weight"]) != 2:
                raise ModelLoadError(f"head file {path}: fc1/fc2 weights must be 2-d")
            hidden, in_dim = shapes["fc1.weight"]
            out_dim = shapes["fc2.weight"][0]
            try:
                head = ProjectionHead(int(in_dim), int(hidden), int(out_dim), device="meta")
            except ValueError as exc:
                raise ModelLoadError(f"head file {path}: {exc}") from exc
            expected = {n: tuple(t.shape) for n, t in head.state_dict().items()}
            for name in HEAD_TENSORS:
                if shapes[name] != expected[name]:
                    raise ModelLoadError(
                        f"head file {path}: tensor {name} has shape {shapes[name]}, "
                        f"expected {expected[name]}"
                    )
            state = {n: f.get_tensor(n).to(torch.float32) for n in HEAD_TENSORS}
    except ModelLoadError:
        raise
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"head file {path} is not a readable safetensors file: {exc}") from exc
    for name, tensor in state.items():
        if not torch.isfinite(tensor).all():
            raise ModelLoadError(f"head file {path}: tensor {name} has NaN or inf values")
    head = _materialize(head)
    head.load_state_dict(state)
    return head.eval(), metadata
