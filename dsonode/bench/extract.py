"""`dsonode bench extract`: the offline extractor on held-out and on tuned rollouts.

Two sets, both from the generator of examples/rollouts (generate.py), which labels every
rollout: `meta.good_steps` (the steps that made a successful attempt succeed) and
`meta.params` (the values filled into the task: names, numbers, entities, derived results).

- tuned (`--path`, default examples/rollouts): the set the extractor was developed on;
- held-out (`--heldout`, default examples/rollouts/heldout): other task templates, another
  generator seed, never run through the extractor while it was tuned (BENCHMARKS.md).

Quality figures, on the held-out set, and the tuned set's beside them as `tuned_<name>`:

- `precision`: the share of lessons whose source step is one of its rollout's
  `meta.good_steps` (a step that made the difference, not filler, setup or the answer);
- `recall`: the share of annotated groups with signal that yield >= 1 such lesson (a merged
  lesson counts for every group it came from);
- `task_specific_fraction`: the share of lessons that `dsonode.extract.general.task_specific`
  flags against any of their source tasks (0 by construction for the offline path: the
  figure guards against regressions of the wiring, not of the rule);
- `param_leak_fraction`: the share of lessons holding, as a whole word (case-insensitive),
  any of the `meta.params` values of any of their source tasks. This label is the
  generator's own record, independent of the rule, so it sees what the rule cannot (a value
  that is in neither the prompt nor the ground truth, or a common word such as "orders");
- `baseline_precision`: a random step of a successful rollout, for scale.

Throughput (`rollouts_per_s`: extraction including the embedding of every step, model already
loaded; median of --repeats runs) is measured on the tuned set, as before.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsonode.argtypes import SubParsers, bounded_int
from dsonode.bench.common import add_output_args, report
from dsonode.core.errors import DsoError

if TYPE_CHECKING:  # types only: the CLI imports this module at start (ARCHITECTURE.md)
    from dsonode.extract.offline import EmbedFn, Lesson, Source
    from dsonode.extract.rollouts import Group


def default_rollouts_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "examples" / "rollouts"


def default_heldout_dir() -> Path:
    return default_rollouts_dir() / "heldout"


def _load(path: Path) -> tuple[list[Any], int]:
    from dsonode.api.ingest import load_rollouts

    rollouts, bad = [], 0
    for f in _files(path):
        parsed = load_rollouts(f)
        rollouts.extend(parsed.rollouts)
        bad += len(parsed.errors)
    return rollouts, bad


def register(bench_sub: SubParsers) -> None:
    p = bench_sub.add_parser("extract", help="offline extractor on the sample rollouts")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--repeats", type=bounded_int(1, 50), default=3, help="timed runs (median)")
    p.add_argument(
        "--path",
        type=Path,
        default=None,
        help="a .jsonl file or a folder of them (default: examples/rollouts)",
    )
    p.add_argument(
        "--heldout",
        type=Path,
        default=None,
        help="held-out rollouts for the quality figures (default: examples/rollouts/heldout)",
    )
    p.add_argument(
        "--llm-recorded",
        action="store_true",
        help="also time the LLM path against a local server of canned completions: our "
        "overhead (HTTP, prompts, parsing), not a model's speed",
    )
    add_output_args(p, "extract", plot=False)
    p.set_defaults(func=cmd_bench_extract)


def _llm_overhead(groups: Sequence[Group], embed: EmbedFn, repeats: int) -> dict[str, Any]:
    """The LLM extractor against RecordedLLMServer with no fixtures: every summary is canned and
    every operations answer is "[]", so this times our side alone (prompt building, one HTTP
    round trip per call on loopback, JSON repair and validation), never a model."""
    from dsonode.extract.llm import ChatClient, LLMConfig, LLMExtractor
    from dsonode.extract.testing import RecordedLLMServer

    times = []
    requests = 0
    with RecordedLLMServer() as server:
        config = LLMConfig(base_url=server.base_url, model="recorded", timeout_s=30)
        for _ in range(repeats):
            with ChatClient(config) as chat:
                t0 = time.perf_counter()
                result = LLMExtractor(chat, embed).extract(groups)
                times.append(time.perf_counter() - t0)
                requests = chat.requests
            if result.failed:
                raise DsoError(f"recorded LLM run failed: {result.failed[0].error}")
    med = statistics.median(times)
    n = sum(len(g.rollouts) for g in groups)
    return {
        "llm_overhead_rollouts_per_s": n / med,
        "llm_overhead_requests_per_s": requests / med,
        "llm_overhead_requests": requests,
        "llm_overhead_note": "local canned-completion server: our overhead only, not a model",
    }


def _files(path: Path) -> list[Path]:
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise DsoError(f"no rollouts found at {path}")
    return files


def _leaks(text: str, params: Sequence[Any]) -> bool:
    low = text.lower()
    for value in params:
        v = str(value).strip().lower()
        if v and re.search(r"(?<![\w.])" + re.escape(v) + r"(?![\w]|\.\d)", low):
            return True
    return False


def score_lessons(groups: Sequence[Group], lessons: Sequence[Lesson]) -> dict[str, Any]:
    """precision, recall, task_specific_fraction, param_leak_fraction (module docstring)."""
    from dsonode.extract.general import task_specific

    by_task = {g.task_id: g for g in groups}
    specific = leaked = 0
    for lesson in lessons:
        tasks = {s.task_id for s in lesson.sources}
        if any(task_specific(lesson.text, by_task[t]) is not None for t in tasks):
            specific += 1
        params = [p for t in tasks for r in by_task[t].rollouts for p in r.meta.get("params") or []]
        if _leaks(lesson.text, params):
            leaked += 1

    def is_good(src: Source) -> bool:
        meta = by_task[src.task_id].rollouts[src.rollout].meta
        good = meta.get("good_steps")
        return isinstance(good, list) and src.step in good

    annotated = [
        g for g in groups if any(isinstance(r.meta.get("good_steps"), list) for r in g.rollouts)
    ]
    correct = [lesson for lesson in lessons if is_good(lesson.source)]
    # a merged lesson stands for every group it came from
    tasks_hit = {s.task_id for lesson in lessons for s in lesson.sources if is_good(s)}
    # A random step of a rollout rewarded above its group's mean:
    good_steps = all_steps = 0
    for g in annotated:
        for r, label in zip(g.rollouts, g.labels(), strict=True):
            if label > 0:
                all_steps += len(r.steps())
                good_steps += len(r.meta.get("good_steps") or [])
    return {
        "precision": len(correct) / len(lessons) if lessons else None,
        "recall": len(tasks_hit) / len(annotated) if annotated else None,
        "baseline_precision": good_steps / all_steps if all_steps else None,
        "annotated_groups": len(annotated),
        "task_specific_fraction": specific / len(lessons) if lessons else None,
        "param_leak_fraction": leaked / len(lessons) if lessons else None,
        "lessons": len(lessons),
        "max_words": max((len(lesson.text.split()) for lesson in lessons), default=0),
    }


def cmd_bench_extract(args: argparse.Namespace) -> int:
    from dsonode.embed import get_embedder
    from dsonode.extract.offline import OfflineExtractor
    from dsonode.extract.rollouts import group_rollouts

    rollouts, bad = _load(args.path or default_rollouts_dir())
    heldout_rollouts, heldout_bad = _load(args.heldout or default_heldout_dir())
    groups, skipped = group_rollouts(rollouts)
    heldout_groups, _ = group_rollouts(heldout_rollouts)
    t0 = time.perf_counter()
    embedder = get_embedder()
    load_s = time.perf_counter() - t0
    extractor = OfflineExtractor(embedder.encode_base)
    extractor.extract(groups[:2])  # warm-up (first torch calls are slow)
    times, result = [], None
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        result = extractor.extract(groups)
        times.append(time.perf_counter() - t0)
    assert result is not None
    heldout = extractor.extract(heldout_groups)
    med = statistics.median(times)
    in_groups = sum(len(g.rollouts) for g in groups)
    out: dict[str, Any] = {
        "rollouts": len(rollouts),
        "bad_lines": bad + heldout_bad,
        "groups": len(groups),
        "skipped_groups": len(skipped),
        "steps": result.steps,
        "experiences": len(result.lessons),
        "merged": result.merged,
        "dropped_steps": len(result.dropped),
        "rollouts_per_s": in_groups / med,
        "steps_per_s": result.steps / med,
        "extract_s_median": med,
        "extract_s_all": times,
        "model_load_s": load_s,
        "encoder": "encoder only (encode_base, 384-d), as the extractor uses it",
        "heldout_rollouts": len(heldout_rollouts),
        "heldout_groups": len(heldout_groups),
        "heldout_dropped_steps": len(heldout.dropped),
        "labels": "meta.good_steps and meta.params of the same generator (generate.py) for "
        "both sets; held-out = other templates and seed, not the extractor's tuning data",
    }
    out.update(score_lessons(heldout_groups, heldout.lessons))
    tuned = score_lessons(groups, result.lessons)
    out.update({f"tuned_{k}": v for k, v in tuned.items()})
    if out["precision"] is not None and out["baseline_precision"]:
        out["precision_vs_baseline"] = out["precision"] / out["baseline_precision"]
    if args.llm_recorded:
        out.update(_llm_overhead(groups, embedder.encode_base, args.repeats))
    report(out, args.json, args)
    return 0
