"""The engine and the parts it was split into: the block loop (``engine``), the start-up checks
(``startup``), the pointer store (``pointer``) and progress reporting (``progress``)."""

from teos.engine.engine import Engine, EngineConfig, decode_penalty
from teos.engine.startup import BootstrapError

__all__ = ["BootstrapError", "Engine", "EngineConfig", "decode_penalty"]
