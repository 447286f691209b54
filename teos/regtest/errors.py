"""Errors the simulator answers with, carrying Bitcoin Core's JSON-RPC codes and messages."""

from __future__ import annotations

# Bitcoin Core's RPC error codes (src/rpc/protocol.h) that the simulator uses.
RPC_INVALID_REQUEST = -32600
RPC_METHOD_NOT_FOUND = -32601
RPC_INVALID_PARAMS = -32602
RPC_INTERNAL_ERROR = -32603
RPC_PARSE_ERROR = -32700
RPC_MISC_ERROR = -1
RPC_TYPE_ERROR = -3
RPC_INVALID_ADDRESS_OR_KEY = -5
RPC_INVALID_PARAMETER = -8
RPC_DESERIALIZATION_ERROR = -22
RPC_VERIFY_ERROR = -25
RPC_VERIFY_REJECTED = -26
RPC_VERIFY_ALREADY_IN_UTXO_SET = -27
RPC_IN_WARMUP = -28
RPC_CLIENT_P2P_DISABLED = -31


class RpcError(Exception):
    """An error answer: ``code`` and ``message`` go into the JSON-RPC ``error`` object verbatim."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class TxReject(Exception):
    """A transaction refused by consensus or policy, worded as Core's ``TxValidationState::ToString``."""

    def __init__(self, reason: str, debug: str = "", missing_inputs: bool = False) -> None:
        super().__init__(reason + (f", {debug}" if debug else ""))
        self.reason = reason
        self.debug = debug
        self.missing_inputs = missing_inputs

    @property
    def text(self) -> str:
        return str(self)
