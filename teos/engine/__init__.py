"""The engine: runs the chain's blocks through the Watcher and the Responder (see ``teos.engine.engine``)."""

from teos.engine.engine import BootstrapError, Engine, EngineConfig, decode_penalty

__all__ = ["BootstrapError", "Engine", "EngineConfig", "decode_penalty"]
