"""Persistent state in LevelDB: key layout (keys.py), record encodings (codec.py), the store (store.py)."""

from teos.storage.store import Batch, StorageError, Store, Ticket

__all__ = ["Batch", "StorageError", "Store", "Ticket"]
