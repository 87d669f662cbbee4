"""Coverage-guided fuzzing of the same four targets with atheris (libFuzzer), if installed.

    python -m qa.atheris_fuzz CORPUS_DIR -runs=100000 -timeout=5

The first byte of an input picks the target (item, batch, sync, frame), the rest is the
input. A WireError is the expected answer to bad bytes; anything else propagates and libFuzzer
records a crash (exit code != 0, the input saved as crash-*). `write_corpus` seeds CORPUS_DIR
with the test vectors. `run_atheris` runs it in a subprocess and parses libFuzzer's summary.
atheris is optional (the `dev` extra pins it); without it `available()` is False.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from qa import qa_env

TARGET_NAMES = ("item", "batch", "sync", "frame")


def available() -> bool:
    return importlib.util.find_spec("atheris") is not None


def write_corpus(directory: Path) -> int:
    """One file per seed (target byte + encoded vector); returns how many were written."""
    from qa.fuzz import seeds_for
    from qa.mutate import load_seeds

    directory.mkdir(parents=True, exist_ok=True)
    seeds = load_seeds()
    n = 0
    for code, target in enumerate(TARGET_NAMES):
        own, _ = seeds_for(target, seeds)
        for data in own:
            blob = bytes([code]) + data
            (directory / hashlib.sha1(blob).hexdigest()).write_bytes(blob)
            n += 1
    return n


def run_atheris(
    corpus: Path, runs: int, timeout_s: int = 5, max_len: int = 70_000, wall_s: float = 1800
) -> dict[str, Any]:
    """Run the harness in a subprocess; returns runs done, crashes, coverage and the exit code."""
    write_corpus(corpus)
    artifacts = corpus.parent / "artifacts"
    artifacts.mkdir(exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "qa.atheris_fuzz",
        str(corpus),
        f"-runs={runs}",
        f"-timeout={timeout_s}",
        f"-max_len={max_len}",
        "-rss_limit_mb=2048",
        f"-artifact_prefix={artifacts}/",
        "-print_final_stats=1",
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=wall_s, check=False, env=qa_env()
    )
    out = proc.stdout + proc.stderr
    done = re.search(r"Done (\d+) runs in (\d+) second", out)
    cov = re.findall(r"cov: (\d+) ft: (\d+)", out)
    crash_files = sorted(p.name for p in artifacts.iterdir())
    return {
        "runs": int(done.group(1)) if done else None,
        "seconds": int(done.group(2)) if done else None,
        "coverage_edges": int(cov[-1][0]) if cov else None,
        "features": int(cov[-1][1]) if cov else None,
        "exit_code": proc.returncode,
        "crash_files": crash_files,
        "crashed": proc.returncode != 0 or bool(crash_files),
        "output_tail": out.strip().splitlines()[-8:] if proc.returncode != 0 else [],
    }


def main() -> None:
    import atheris

    with atheris.instrument_imports(include=["dsonode"]):
        from dsonode.core.errors import WireError
        from qa import fuzz

    targets = [fuzz.TARGETS[name] for name in TARGET_NAMES]

    def test_one_input(data: bytes) -> None:
        if not data:
            return
        with contextlib.suppress(WireError):
            targets[data[0] % len(targets)](data[1:])

    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
