"""State: one LMDB environment with KV namespaces and the durable journal, written by
one group-commit thread. See docs/design/state.md."""

from loomd.state.journal import Journal
from loomd.state.kv import KV
from loomd.state.records import JournalEntry
from loomd.state.store import State

__all__ = ["KV", "Journal", "JournalEntry", "State"]
