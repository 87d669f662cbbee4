"""Persistence and search: the LMDB store (`Store`) and the code index (`CodeIndex`).

from dsonode.store import Store, CodeIndex
with Store(data_dir / "store", space_id=space_hex) as store:
    flags = store.put_items([signed_bytes, ...])        # True = new, False = duplicate
    store.put_consensus([ConsensusRecord(space, exp_id, code, count, confirmed, domain)])
    index = CodeIndex.from_store(store, space_hex)      # rebuilt at start
    hits = index.search(query_vector, k=10, domain="math", confirmed_only=False)
"""

from dsonode.store.index import CodeIndex, IndexInputError
from dsonode.store.lmdb_store import (
    SCHEMA_VERSION,
    ConsensusRecord,
    ExperienceRecord,
    Store,
    StoreError,
    StoreSchemaError,
    SubmissionRecord,
)

__all__ = [
    "SCHEMA_VERSION",
    "CodeIndex",
    "ConsensusRecord",
    "ExperienceRecord",
    "IndexInputError",
    "Store",
    "StoreError",
    "StoreSchemaError",
    "SubmissionRecord",
]
