"""Compiling a configuration for the lean embedder (dsonode.embed.lean): torch in, plain files out.

Runs in its own process (`python -m dsonode.embed.compile`, or `dsonode embed compile`), so the
node that asked for it never imports torch. It loads the torch `Embedder`, writes the compiled
folder's files (see dsonode.embed.lean), then checks them against the torch path before it
writes the manifest that makes the folder valid:

- the tokenizer gives the same ids on `FIDELITY_TEXTS` (accents, CJK, an empty string, a text
  past the max length, a prefix);
- the numpy fc2 gives bit-identical outputs to the torch kernel on random inputs (seeded head);
- every fidelity text's vector has cosine >= MIN_FIDELITY_COSINE to the torch vector; how many
  of its code's sign bits differ is recorded in the manifest (`fidelity`).

A check that fails leaves no folder behind (the node then runs the torch embedder). Several
nodes starting together on one machine compile once: the others wait on a lock, then load.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dsonode.core import bitdelta
from dsonode.embed import encoder as _enc
from dsonode.embed import lean
from dsonode.embed import runtime as _rt
from dsonode.embed.embedder import Embedder
from dsonode.embed.errors import ModelLoadError
from dsonode.embed.fastpath import FastHead, HadamardSignLinear
from dsonode.embed.numpy_head import load_post, save_post
from dsonode.embed.quantize import QuantizeError

#: Texts the compiled folder is checked on (not from any benchmark's data).
FIDELITY_TEXTS = (
    "",
    "ok",
    "retry a request after a network timeout, with exponential backoff and jitter",
    "Überprüfe die Einheiten, bevor du Zahlen in eine Formel einsetzt.",
    "数学の証明では帰納法の基底を先に確かめる",
    "When the parser crashes on empty input, add a guard clause before the first token is read. "
    * 40,
    "a slow query over a large table needs an index on the join column",
    "check the edge case n = 0 before the loop; off-by-one errors hide there",
)
#: Lowest cosine between a lean vector and the torch vector of the same text.
MIN_FIDELITY_COSINE = 0.9999
_LOCK = ".lean-compile.lock"


class _HeadPre(torch.nn.Module):
    """fc1 -> GELU -> ln1 of a projection head (the part compiled to ONNX)."""

    def __init__(self, head: Any) -> None:
        super().__init__()
        self.fc1, self.act, self.ln1 = head.fc1, head.act, head.ln1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.ln1(self.act(self.fc1(x)))
        return out


def _export_head_pre(emb: Embedder, dest: Path) -> None:
    head = emb.head_runner if isinstance(emb.head_runner, FastHead) else emb.head
    pooled = torch.zeros(1, emb.hidden_size)
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(
            _HeadPre(head).eval(),
            (pooled,),
            str(dest),
            input_names=["pooled"],
            output_names=["pre"],
            dynamic_axes={"pooled": {0: "batch"}, "pre": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )


def _post_arrays(emb: Embedder) -> dict[str, np.ndarray]:
    """fc2 and ln2 as arrays: the Hadamard factors of the seeded head, else fc2's matrix."""
    runner = emb.head_runner
    ln2 = runner.ln2 if isinstance(runner, FastHead) else emb.head.ln2

    def arr(t: torch.Tensor) -> np.ndarray:
        return t.detach().to("cpu", torch.float32).numpy().copy()

    common = {"ln2_weight": arr(ln2.weight), "ln2_bias": arr(ln2.bias)}
    if isinstance(runner, FastHead) and isinstance(runner.fc2, HadamardSignLinear):
        fc2 = runner.fc2
        bias = arr(fc2.bias) if fc2.bias is not None else np.zeros(fc2.out_features, np.float32)
        return {
            "scale": np.asarray(fc2.scale, dtype=np.float64),
            "p": arr(fc2.p),
            "s": arr(fc2.s),
            "rows": fc2.rows.numpy().copy(),
            "cols": fc2.cols.numpy().copy(),
            "rsign": arr(fc2.rsign),
            "csign": arr(fc2.csign),
            "fc2_bias": bias,
            **common,
        }
    dense = emb.head.fc2
    return {
        "scale": np.asarray(1.0, dtype=np.float64),
        "weight": arr(dense.weight),
        "fc2_bias": arr(dense.bias),
        **common,
    }


def _check_fc2(emb: Embedder, folder: Path) -> bool:
    """True when the numpy fc2 equals the torch kernel bit for bit (seeded head), or to float32
    rounding (any other head)."""
    post = load_post(folder / "head-post.npz")
    runner = emb.head_runner
    x = np.random.default_rng(0).standard_normal((4, post.in_features)).astype(np.float32)
    if isinstance(runner, FastHead):
        with torch.inference_mode():
            want = runner.fc2(torch.from_numpy(x)).numpy()
        if post.kernel == "hadamard-limbs":
            return bool(np.array_equal(post.fc2_out(x), want))
    else:
        with torch.inference_mode():
            want = emb.head.fc2(torch.from_numpy(x)).numpy()
    return bool(np.allclose(post.fc2_out(x), want, rtol=1e-4, atol=1e-5))


def _fidelity(emb: Embedder, lean_emb: lean.LeanEmbedder) -> dict[str, Any]:
    """Compare the compiled folder with the torch path on FIDELITY_TEXTS; raise on failure."""
    texts = list(FIDELITY_TEXTS)
    for kind in ("document", "query"):
        if emb.token_ids(texts, kind) != lean_emb.token_ids(texts, kind):
            raise lean.LeanUnavailable(f"the tokenizer gives other ids than transformers ({kind})")
    cosines, bits, scales_equal = [], [], 0
    for text in texts:
        want = emb.embed_query(text)
        got = lean_emb.embed_query(text)
        cosines.append(float(want @ got))
        a, b = bitdelta.encode(want), bitdelta.encode(got)
        sign_bytes = len(a) - 4
        xor = np.frombuffer(a[:sign_bytes], np.uint8) ^ np.frombuffer(b[:sign_bytes], np.uint8)
        bits.append(int(np.unpackbits(xor).sum()))
        scales_equal += a[sign_bytes:] == b[sign_bytes:]
    if min(cosines) < MIN_FIDELITY_COSINE:
        raise lean.LeanUnavailable(
            f"compiled vectors at cosine {min(cosines):.6f} to the torch path "
            f"(at least {MIN_FIDELITY_COSINE} required)"
        )
    return {
        "texts": len(texts),
        "min_cosine": round(min(cosines), 8),
        "code_bits_differ_mean": round(float(np.mean(bits)), 3),
        "code_bits_differ_max": max(bits),
        "scales_equal": int(scales_equal),
    }


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".manifest.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(doc, f, sort_keys=True, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _build(emb: Embedder, key: dict[str, Any], work: Path, say: Callable[[str], None]) -> None:
    """Write every compiled file and then the manifest into `work`."""
    (work / "tokenizer.json").write_text(emb.tokenizer.backend_tokenizer.to_str(), "utf-8")
    say("exporting the encoder (float32)")
    _rt.export_float32(emb.model, emb.token_pad_id, work / "encoder.onnx")
    say("quantising the query encoder (int8)")
    _rt.quantize_int8(
        work / "encoder.onnx", work / "query-int8.onnx", _rt.calibration_ids(emb.token_ids)
    )
    say("exporting the head")
    _export_head_pre(emb, work / "head-pre.onnx")
    save_post(work / "head-post.npz", _post_arrays(emb))
    if not _check_fc2(emb, work):
        raise lean.LeanUnavailable("the numpy fc2 does not reproduce the torch kernel")
    manifest: dict[str, Any] = {
        "key": key,
        "files": {name: _enc.file_sha256(work / name, use_cache=False) for name in lean.FILES},
        "space_id": emb.space_id,
        "model_name": emb.model_name,
        "hidden_size": emb.hidden_size,
        "max_length": emb.max_length,
        "pad_id": emb.token_pad_id,
        "dim": emb.dim,
        "head_sha256": emb.head_sha256,
        "head_metadata": emb.head_metadata,
        "built_with": {name: version(name) for name in ("torch", "transformers", "tokenizers")},
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    say("checking the compiled model against torch")
    lean_emb = lean.LeanEmbedder(
        work, manifest, emb.encoder_path, emb.options, emb.head_path, threads=1
    )
    manifest["fidelity"] = _fidelity(emb, lean_emb)
    _write_json(work / lean.MANIFEST, manifest)


def compile_model(
    encoder: str | Path | None = None,
    head: str | Path | None = None,
    cache_dir: Path | None = None,
    say: Callable[[str], None] = lambda s: None,
) -> tuple[Path, dict[str, Any]]:
    """(folder, manifest) of the compiled configuration, compiling it unless a valid folder
    exists. Raises LeanUnavailable (unsupported options, a failed check) or ModelLoadError."""
    cache_dir = cache_dir if cache_dir is not None else _rt.default_cache_dir()
    key, _, _, options = lean.compile_key(encoder, head)
    reason = lean.unsupported_reason(options, "cpu")
    if reason is not None:
        raise lean.LeanUnavailable(f"cannot compile {reason}")
    dest = lean.folder_for(cache_dir, key)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / _LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return dest, lean.read_manifest(dest, key)
        except lean.LeanUnavailable:
            pass
        say("loading the torch model")
        emb = Embedder(encoder, head, device="cpu")
        if emb.encoder_sha256 != key["encoder_sha256"]:  # the folder changed under us
            raise lean.LeanUnavailable("the encoder's files changed while compiling")
        # Under the lock no other compilation runs: a work folder left here was a crash's.
        for stale in cache_dir.glob(".lean-*"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".lean-"))
        try:
            _build(emb, key, work, say)
            if dest.exists():  # an invalid or stale folder of the same key
                shutil.rmtree(dest)
            os.replace(work, dest)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return dest, lean.read_manifest(dest, key)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m dsonode.embed.compile",
        description="compile an encoder and head for the lean (torch-free) embedder",
    )
    p.add_argument("--encoder", default=None, help="encoder folder (default: the packaged one)")
    p.add_argument("--head", default=None, help="head file (default: the seeded head)")
    p.add_argument("--cache-dir", type=Path, default=None, help="default: the user cache")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    args = p.parse_args(argv)
    started = time.monotonic()
    # torch's exporter warns about tracing a fixed-shape path it does not take here, and
    # onnxruntime's quantiser suggests a pre-processing step the recipe does not use: the
    # checks below are what decide whether the folder is good.
    warnings.filterwarnings("ignore")
    logging.getLogger().setLevel(logging.ERROR)

    def say(msg: str) -> None:
        print(f"[compile] {msg}", file=sys.stderr, flush=True)

    try:
        folder, manifest = compile_model(args.encoder, args.head, args.cache_dir, say)
    except (lean.LeanUnavailable, ModelLoadError, QuantizeError, OSError) as exc:
        print(f"dsonode: cannot compile the lean embedder: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"folder": str(folder), **manifest}, sort_keys=True))
    else:
        fid = manifest.get("fidelity", {})
        print(
            f"compiled {folder} in {time.monotonic() - started:.1f} s (space "
            f"{manifest['space_id'][:16]}..., min cosine {fid.get('min_cosine')}, code bits "
            f"differing from torch: mean {fid.get('code_bits_differ_mean')})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
