"""Rollout: move a live gallery to a new query model without re-encoding it.

- upgrade.py: `upgrade` (gated by a check-compat report), `rollback`, aliases, history
- prune.py: drop model versions nothing needs any more
- shadow.py: old vs new query path on the same queries (overlap, rank shifts, flips)
- backfill.py: lazy, resumable re-embedding of older rows whose images exist
- overlay.py: where backfilled embeddings live (the original rows are never rewritten)
- state.py: upgrade lineage (for rollback) and the audit fields of history events
"""

from gallery.rollout.backfill import BackfillConfig, backfill
from gallery.rollout.prune import prune
from gallery.rollout.shadow import ShadowConfig, shadow
from gallery.rollout.upgrade import gate_failures, history, list_aliases, rollback, set_alias, upgrade

__all__ = ["upgrade", "rollback", "set_alias", "list_aliases", "history", "prune", "gate_failures",
           "shadow", "ShadowConfig", "backfill", "BackfillConfig"]
