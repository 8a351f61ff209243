"""Swap a document's vectors to a new processing version, on any ``VectorStore``.

Order (docs/design.md, "Identity and versions": the new version is written and verified,
then the old versions' ids are deleted):
1. upsert every record of the new version (ids are deterministic, so this is
   idempotent);
2. list ``<document_id>#<new_version>#`` until every new id is listed (bounded polls:
   Pinecone's listing is eventually consistent); give up with VectorStoreUnavailable
   and leave the old version untouched;
3. list ``<document_id>#`` and delete every id that is not one of the new records:
   older versions, and ids of the new version left over from an earlier run that
   produced more chunks;
4. re-list until none of those is listed any more (re-deleting what is still there).

A query therefore finds the document during the whole swap (old, then old + new, then
new) and finds it once after this returns. Every step is idempotent, so a run
interrupted anywhere (during the upsert, between steps, during the deletes) is
repaired by running it again with the same records: it ends with exactly the new
version's vectors.

Deletes use the store's optional ``delete_ids(ids)`` when it has one (exact, one pass);
otherwise ``delete_prefix`` per old version (``<doc>#<ver>#``, exact thanks to the
trailing ``#``), and per leftover id only when that prefix cannot touch a kept id.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from docpipe import identity
from docpipe.errors import StageFailed, VectorStoreUnavailable
from ray_jobs.backends.base import VectorRecord, VectorStore
from ray_jobs.backends.retry import Backoff

log = logging.getLogger(__name__)


def _version_of(vector_id: str, document_id: str) -> str | None:
    """The processing version of one of ``document_id``'s vector ids, else None."""
    try:
        doc_id, version, _ = identity.parse_vector_id(vector_id)
    except ValueError:
        return None
    return version if doc_id == document_id else None


def _old_versions(ids: list[str], document_id: str, new_version: str) -> list[str]:
    return sorted({v for v in (_version_of(i, document_id) for i in ids) if v and v != new_version})


def _delete(store: VectorStore, stale: list[str], keep: set[str], document_id: str, new_version: str) -> int:
    if not stale:
        return 0
    delete_ids = getattr(store, "delete_ids", None)
    if callable(delete_ids):
        return int(delete_ids(stale))
    deleted = 0
    old_versions = _old_versions(stale, document_id, new_version)
    for version in old_versions:
        deleted += store.delete_prefix(identity.vector_id_prefix(document_id, version))
    for vid in stale:
        if _version_of(vid, document_id) in old_versions:
            continue
        if any(k.startswith(vid) for k in keep):
            raise StageFailed(f"cannot delete {vid} by prefix without deleting kept vectors; the store needs delete_ids")
        deleted += store.delete_prefix(vid)
    return deleted


def replace_document_version(
    store: VectorStore,
    records: list[VectorRecord],
    document_id: str,
    new_version: str,
    *,
    verify_attempts: int = 8,
    base_delay: float = 0.25,
    max_delay: float = 8.0,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Make ``records`` (all of ``new_version``) the document's only vectors.

    Returns ``{"upserted", "kept", "deleted", "old_versions"}``.
    """
    if "#" in document_id or "#" in new_version:
        raise ValueError("document_id and version must not contain '#'")
    doc_prefix = identity.vector_id_prefix(document_id)
    new_prefix = identity.vector_id_prefix(document_id, new_version)
    foreign = [r.id for r in records if not r.id.startswith(new_prefix)]
    if foreign:
        raise ValueError(f"{len(foreign)} records are not of {new_prefix!r}, e.g. {foreign[0]!r}")
    keep = {r.id for r in records}
    # Listings are eventually consistent (Pinecone): poll them with backoff.
    polls = Backoff(attempts=verify_attempts, base_delay=base_delay, max_delay=max_delay, sleep=sleep)

    # 1. new version in (idempotent: same ids, same values).
    upserted = store.upsert(records) if records else 0

    # 2. every new id visible before anything old goes.
    missing: set[str] = set()

    def all_listed() -> bool:
        nonlocal missing
        missing = keep - set(store.list_ids(new_prefix))
        return not missing

    if not polls.until(all_listed):
        raise VectorStoreUnavailable(
            f"{len(missing)} of {len(keep)} new vectors of {new_prefix} not listed after the upsert; "
            "the old version was left in place"
        )

    # 3. everything else under the document goes.
    stale = [i for i in store.list_ids(doc_prefix) if i not in keep]
    old_versions = _old_versions(stale, document_id, new_version)
    deleted = _delete(store, stale, keep, document_id, new_version)

    # 4. confirm (listings may lag deletes); re-delete whatever is still listed.
    leftover: list[str] = []

    def none_left() -> bool:
        nonlocal leftover
        leftover = [i for i in store.list_ids(doc_prefix) if i not in keep]
        if leftover:
            _delete(store, leftover, keep, document_id, new_version)
        return not leftover

    if not polls.until(none_left):
        raise VectorStoreUnavailable(
            f"{len(leftover)} superseded vectors of {document_id} still listed after delete, e.g. {leftover[0]}"
        )

    log.info("document %s now at %s: %d vectors kept, %d superseded deleted (%s)",
             document_id, new_version, len(keep), deleted, ", ".join(old_versions) or "none")
    return {"upserted": upserted, "kept": len(keep), "deleted": deleted, "old_versions": old_versions}
