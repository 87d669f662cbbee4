"""Store lifecycle (ARCHITECTURE.md "Trust"): TTL of unvouched items, the storage cap and its
eviction order, `dsonode export` / `import` (signed items, verified, a tampered line rejected)
and `dsonode compact`, on a real `Library` and LMDB store and through the real commands."""

from __future__ import annotations

import base64
import json
import subprocess
import sys

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dsonode.config.paths import STORE_DIR_NAME
from dsonode.core import bitdelta, wire
from dsonode.core.quota import QuotaRules
from dsonode.core.trust import EvictionCandidate, eviction_order, expired
from dsonode.identity import public_key_bytes
from dsonode.library import ConsensusRules, Library, LightEmbedder, TrustSettings
from dsonode.library.transfer import import_lines
from dsonode.store import CodeIndex, Store

SPACE = "ab" * 32
DAY_MS = 86_400_000
REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def _library(path, **kw) -> Library:
    store = Store(path, space_id=SPACE)
    return Library(
        store=store,
        index=CodeIndex(),
        embedder=LightEmbedder(SPACE, "test"),
        key=Ed25519PrivateKey.generate(),
        rules=ConsensusRules(quorum=1, method="median", committee=None),
        trust=TrustSettings(**kw),
    )


def _items(key, text: str, created: int, rng) -> list[tuple[bytes, wire.Item]]:
    exp = wire.make_experience(key, "ops", text, created=created)
    v = rng.standard_normal(7680).astype(np.float32)
    code = bitdelta.encode(v / np.linalg.norm(v))
    assert isinstance(code, bytes)
    sub = wire.make_submission(key, exp.id, SPACE, code, created=created + 1)
    return [(wire.encode_item(i), i) for i in (exp, sub)]


def _id(items) -> bytes:
    return items[0][1].id


def test_the_pure_rules():
    assert expired(0, 2 * DAY_MS, DAY_MS, vouched=False)
    assert not expired(0, 2 * DAY_MS, DAY_MS, vouched=True)
    assert not expired(0, 2 * DAY_MS, 0, vouched=False)  # ttl 0: never
    c = [
        EvictionCandidate(b"v-old", True, True, 0),
        EvictionCandidate(b"u-new", False, False, 30),
        EvictionCandidate(b"u-old", False, False, 10),
        EvictionCandidate(b"u-heavy", False, True, 20),
    ]
    assert eviction_order(c) == [b"u-heavy", b"u-old", b"u-new", b"v-old"]


def test_unvouched_items_expire_vouched_and_own_ones_stay(tmp_path, rng):
    friend, stranger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    lib = _library(
        tmp_path / "s", allow=frozenset({public_key_bytes(friend)}), unvouched_ttl_s=86_400
    )
    now = wire.now_ms()
    old_spam = _items(stranger, "Old junk.", now - 3 * DAY_MS, rng)
    new_spam = _items(stranger, "New junk.", now - 1000, rng)
    old_good = _items(friend, "Old wisdom.", now - 3 * DAY_MS, rng)
    lib.accept_items(old_spam + new_spam + old_good)
    assert lib.sweep(now) == {"expired": 1, "evicted": 0}
    assert not lib.store.has_experience(_id(old_spam)) and lib.store.is_tombstoned(_id(old_spam))
    assert lib.store.has_experience(_id(new_spam)) and lib.store.has_experience(_id(old_good))
    report: dict[str, int] = {}
    lib.accept_items(old_spam, report)  # sync offers it again: never back
    assert report["stored"] == 0
    lib.store.close()


def test_cap_evicts_unvouched_over_quota_and_oldest_first_never_vouched_before(tmp_path, rng):
    friend, heavy, light = (Ed25519PrivateKey.generate() for _ in range(3))
    lib = _library(
        tmp_path / "s",
        max_experiences=4,
        quota=QuotaRules(items_per_hour=100, max_bytes=4096, standing_factor=10),
    )
    now = wire.now_ms()
    old, new = _items(light, "Old light.", now - 5 * DAY_MS, rng), _items(light, "New.", now, rng)
    lib.accept_items(old + new)  # under the cap: admitted
    lib.set_listed("allow", public_key_bytes(friend), True)
    lib.set_listed("allow", public_key_bytes(heavy), True)  # 40 KiB and no cap while allowed
    good = _items(friend, "Vouched and oldest.", now - 9 * DAY_MS, rng)
    big = [_items(heavy, f"{'y' * 900} {i}", now - DAY_MS + i, rng) for i in range(5)]
    lib.accept_items([x for b in big for x in b] + good)
    lib.set_listed("allow", public_key_bytes(heavy), False)  # now over its 4 KiB quota
    assert lib.store.author_bytes(public_key_bytes(heavy)) > 4096
    assert lib.store.count("experiences") == 8
    assert lib.sweep(now) == {"expired": 0, "evicted": 4}
    held = {i for i in [_id(good), _id(old), _id(new), *(_id(b) for b in big)]}
    kept = {i for i in held if lib.store.has_experience(i)}
    # the heavy author's 5 go first (oldest of them first), then nothing else is needed
    # except one more: 8 - 4 = 4 evicted, all of them the heavy author's oldest
    assert kept == {_id(good), _id(old), _id(new), _id(big[4])}
    assert lib.sweep(now)["evicted"] == 0
    # full: a new unvouched experience is refused before it is stored
    lib.accept_items(_items(light, "One too many.", now, rng))
    assert lib.counters()["store_full"] == 1
    lib.store.close()


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dsonode", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=120,
        cwd=REPO,
    )


def test_export_import_round_trip_rejects_a_tampered_line_and_compact(tmp_path, rng):
    src, dst = tmp_path / "a", tmp_path / "b"
    author, voter = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    lib = _library(src / STORE_DIR_NAME, mode="open")
    items = _items(author, "Export me.", wire.now_ms() - 5000, rng)
    items += _items(author, "Me too.", wire.now_ms() - 4000, rng)
    vote = wire.make_feedback(voter, _id(items), 1.0)
    items.append((wire.encode_item(vote), vote))
    lib.accept_items(items)
    lib.store.close()

    out = _cli("export", str(tmp_path / "lib.jsonl"), "--data-dir", str(src))
    assert out.returncode == 0, out.stderr
    lines = (tmp_path / "lib.jsonl").read_text().splitlines()
    assert json.loads(lines[0]) == {"format": "dsonode-export", "version": 1, "items": 5}
    raws = sorted(base64.b64decode(json.loads(x)["item"]) for x in lines[1:])
    assert raws == sorted(r for r, _ in items)

    # tamper with the second experience's text bytes (its signature no longer verifies)
    clean = list(lines)
    entry = json.loads(lines[2])
    raw = bytearray(base64.b64decode(entry["item"]))
    raw[raw.index(b"Me too.")] = ord("W")
    entry["item"] = base64.b64encode(bytes(raw)).decode()
    lines[2] = json.dumps(entry)
    (tmp_path / "bad.jsonl").write_text("\n".join(lines) + "\n")
    Store(dst / STORE_DIR_NAME, space_id=SPACE).close()
    got = _cli("import", str(tmp_path / "bad.jsonl"), "--data-dir", str(dst), "--json")
    assert got.returncode == 1, got.stderr
    report = json.loads(got.stdout)
    assert report["stored"] == 4 and report["rejected"] == 1
    assert report["rejected_lines"][0]["line"] == 3
    assert "Error" in report["rejected_lines"][0]["error"]
    with Store(dst / STORE_DIR_NAME) as store:
        assert store.counts()["experiences"] == 1 and store.counts()["feedback"] == 1
        # consensus recomputed at the next start (the second one's submission came alone)
        assert set(store.pending_ids()) == {_id(items), _id(items[2:])}
        again = import_lines(store, clean)  # the clean file: only the rejected one is new
        assert (again.stored, again.duplicates, again.rejected) == (1, 4, 0)
    seeded = _cli("import", str(tmp_path / "lib.jsonl"), "--data-dir", str(tmp_path / "new"))
    assert seeded.returncode == 0 and "5 stored" in seeded.stdout  # seeding a new node
    with Store(dst / STORE_DIR_NAME) as store:
        held = store.counts()
    done = _cli("compact", "--data-dir", str(dst), "--json")
    assert done.returncode == 0, done.stderr
    sizes = json.loads(done.stdout)
    assert 0 < sizes["after_bytes"] <= sizes["before_bytes"]
    with Store(dst / STORE_DIR_NAME) as store:
        assert store.counts() == held  # the same data after compaction


def test_import_refuses_a_file_without_header(tmp_path):
    with Store(tmp_path / "s", space_id=SPACE) as store:
        report = import_lines(store, ['{"kind": "experience", "item": ""}'])
    assert report.rejected == 1 and report.stored == 0


@pytest.mark.parametrize("line", ["not json", '{"kind": 1, "item": "x"}', '{"item": "@@"}'])
def test_import_rejects_malformed_lines(tmp_path, line):
    header = json.dumps({"format": "dsonode-export", "version": 1, "items": 1})
    with Store(tmp_path / "s", space_id=SPACE) as store:
        report = import_lines(store, [header, line])
    assert (report.rejected, report.stored) == (1, 0)
