"""The JSON-RPC client for bitcoind, written over ``http.client``: the one the tower, the demo and the
tests use.

The tower talks to bitcoind for three things: following the chain (best hash, blocks by height and
hash), broadcasting penalties, and a few checks at start-up (network, pruning). This client turns the
ways bitcoind can fail into a few typed errors so callers decide on policy in one place:

- ``RPCError(code, message)``: bitcoind answered with a JSON-RPC error (e.g. -5 ``Block not found``).
- ``BitcoindWarmingUp``: the -28 error bitcoind returns while it loads its indexes; transient.
- ``BitcoindUnreachable``: no usable answer at all: connection refused or reset, timeout, or
  ``HTTPStatusError``, an HTTP answer without a JSON-RPC body (HTTP 401: bad credentials); transient
  except the 401.

``BitcoindClient`` gives each thread its own keep-alive connection (``http.client`` connections are not
thread-safe). A connection that fails is dropped and re-opened once before the error is raised; the cookie
file (when cookie auth is used) is read again on every (re)connect because bitcoind writes a new cookie
each time it starts. Retrying with backoff is explicit: ``retry_call`` / ``RetryPolicy``, used by the
start-up checks. ``rpc_call`` is one call on a connection of its own that lets transport errors through
as they come (``OSError``, ``http.client.HTTPException``), for tools and tests that look at them.
"""

from __future__ import annotations

import base64
import http.client
import itertools
import json
import logging
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from common.types import BlockHash, Txid

log = logging.getLogger(__name__)

T = TypeVar("T")

# Bitcoin Core RPC error codes the tower acts on.
RPC_MISC_ERROR = -1
RPC_TYPE_ERROR = -3
RPC_INVALID_ADDRESS_OR_KEY = -5  # block / transaction not found
RPC_INVALID_PARAMETER = -8  # e.g. block height out of range
RPC_DESERIALIZATION_ERROR = -22  # TX decode failed
RPC_VERIFY_ERROR = -25  # bad-txns-inputs-missingorspent
RPC_VERIFY_REJECTED = -26  # policy rejection (fees, conflicts)
RPC_VERIFY_ALREADY_IN_CHAIN = -27  # outputs already in the utxo set
RPC_IN_WARMUP = -28


class BitcoindError(Exception):
    """Base of every error this client raises."""


class RPCError(BitcoindError):
    """bitcoind answered the call with a JSON-RPC error."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"bitcoind error {code}: {message}")
        self.code = code
        self.message = message


class BitcoindWarmingUp(RPCError):
    """bitcoind is starting (loading the block index, verifying blocks); try again later."""


class BitcoindUnreachable(BitcoindError):
    """bitcoind could not be reached or did not give a usable answer."""


class HTTPStatusError(BitcoindUnreachable):
    """bitcoind answered with an HTTP status and no JSON-RPC body (401 bad credentials, 403, 404 path...)."""

    def __init__(self, message: str, status: int, body: bytes) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


# Errors after which trying again later may succeed.
TRANSIENT_ERRORS: tuple[type[BitcoindError], ...] = (BitcoindUnreachable, BitcoindWarmingUp)


def encode_call(method: str, params: Sequence[Any], call_id: int | str) -> bytes:
    """One JSON-RPC 1.0 request body, as bitcoin-cli sends it."""
    return json.dumps({"jsonrpc": "1.0", "id": call_id, "method": method, "params": list(params)}).encode()


def basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def decode_reply(status: int, data: bytes, method: str, where: str) -> Any:
    """The ``result`` of bitcoind's answer to ``method``; raises ``RPCError`` (``BitcoindWarmingUp`` for
    -28) for a JSON-RPC error, ``HTTPStatusError`` for an answer that is not one. ``where`` names the
    node in messages."""
    if status == 401:
        raise HTTPStatusError(
            f"bitcoind at {where} refused our credentials (HTTP 401): check rpcuser/rpcpassword "
            "(or the cookie file)", status, data,
        )  # fmt: skip
    try:
        answer = json.loads(data)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        what = "unexpected JSON" if answer is not None else "no JSON"
        raise HTTPStatusError(f"bitcoind answered HTTP {status} with {what} to {method}", status, data)
    error = answer.get("error")
    if error:
        code = int(error.get("code", 0)) if isinstance(error, dict) else 0
        message = str(error.get("message", "")) if isinstance(error, dict) else str(error)
        if code == RPC_IN_WARMUP:
            raise BitcoindWarmingUp(code, message)
        raise RPCError(code, message)
    if status != 200:
        raise HTTPStatusError(f"bitcoind answered HTTP {status} to {method}", status, data)
    return answer.get("result")


def rpc_call(
    host: str, port: int, user: str, password: str, method: str, params: Sequence[Any], timeout: float = 30.0
) -> Any:
    """One call on a connection of its own; returns ``result``. Raises what ``decode_reply`` raises, and
    transport errors as they come (``OSError``, e.g. ConnectionRefusedError or TimeoutError, and
    ``http.client.HTTPException``)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("POST", "/", encode_call(method, params, "teos"),
                     {"Authorization": basic_auth(user, password), "Content-Type": "application/json"})
        response = conn.getresponse()
        status, data = response.status, response.read()
    finally:
        conn.close()
    return decode_reply(status, data, method, f"{host}:{port}")


@dataclass(frozen=True)
class BitcoindConfig:
    """Where bitcoind listens and how to authenticate (user/password, or a cookie file when given)."""

    host: str = "127.0.0.1"
    port: int = 8332
    user: str = ""
    password: str = ""
    cookie_file: Path | None = None
    timeout: float = 30.0


@dataclass(frozen=True)
class Block:
    """What the tower needs of a block: where it sits and the ids of its transactions."""

    hash: BlockHash
    height: int
    prev_hash: BlockHash | None  # None only for the genesis block
    txids: tuple[Txid, ...]


@dataclass(frozen=True)
class BlockHeader:
    hash: BlockHash
    height: int
    prev_hash: BlockHash | None
    confirmations: int  # -1 when the block is not on the best chain


@dataclass(frozen=True)
class ChainInfo:
    chain: str  # main, test, testnet4, signet, regtest
    blocks: int
    best_block_hash: BlockHash
    pruned: bool
    prune_height: int  # lowest height with block data (0 when not pruned)
    initial_block_download: bool


@dataclass(frozen=True)
class TxInfo:
    """``getrawtransaction`` (verbose) reduced to where the transaction is."""

    txid: Txid
    confirmations: int  # 0 while in the mempool
    block_hash: BlockHash | None


class BitcoindClient:
    """JSON-RPC over HTTP to one bitcoind; safe to share between threads."""

    def __init__(self, config: BitcoindConfig) -> None:
        self.config = config
        self._local = threading.local()
        self._ids = itertools.count(1)

    # -- transport -------------------------------------------------------------------------------

    def _auth_header(self) -> str:
        if self.config.cookie_file is not None:
            try:
                secret = self.config.cookie_file.read_text().strip()
            except OSError as e:
                raise BitcoindUnreachable(f"cannot read cookie file {self.config.cookie_file}: {e}") from e
            user, _, password = secret.partition(":")
            return basic_auth(user, password)
        return basic_auth(self.config.user, self.config.password)

    def _connection(self) -> tuple[http.client.HTTPConnection, str]:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(self.config.host, self.config.port, timeout=self.config.timeout)
            self._local.conn = conn
            self._local.auth = self._auth_header()
        return conn, self._local.auth

    def _drop_connection(self) -> None:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()

    def close(self) -> None:
        """Closes the calling thread's connection (others close when their thread ends)."""
        self._drop_connection()

    def _post(self, body: bytes) -> tuple[int, bytes]:
        conn, auth = self._connection()
        conn.request(
            "POST", "/", body=body, headers={"Authorization": auth, "Content-Type": "application/json"}
        )
        response = conn.getresponse()
        return response.status, response.read()

    def call(self, method: str, *params: Any) -> Any:
        """Calls ``method`` and returns its ``result``; raises one of the errors above."""
        status, data = self._send_with_one_reconnect(encode_call(method, params, next(self._ids)))
        return decode_reply(status, data, method, f"{self.config.host}:{self.config.port}")

    def _send_with_one_reconnect(self, body: bytes) -> tuple[int, bytes]:
        # A kept-alive connection may have been closed by bitcoind (restart, idle timeout): the first
        # failure re-opens the connection (re-reading the cookie) and tries once more.
        for attempt in (1, 2):
            try:
                return self._post(body)
            except (OSError, http.client.HTTPException) as e:
                self._drop_connection()
                if attempt == 2 or isinstance(e, TimeoutError | socket.timeout):
                    raise BitcoindUnreachable(
                        f"bitcoind at {self.config.host}:{self.config.port} unreachable: {e!r}"
                    ) from e
        raise AssertionError("unreachable")  # pragma: no cover

    # -- typed helpers ---------------------------------------------------------------------------

    def get_best_block_hash(self) -> BlockHash:
        return BlockHash.from_hex(self.call("getbestblockhash"))

    def get_block_count(self) -> int:
        return int(self.call("getblockcount"))

    def get_block_hash(self, height: int) -> BlockHash:
        """Hash of the best-chain block at ``height``; RPCError -8 above the tip."""
        return BlockHash.from_hex(self.call("getblockhash", height))

    def get_block(self, block_hash: BlockHash) -> Block:
        """The block with its txids (verbosity 1); RPCError -5 when unknown, -1 when pruned."""
        data = self.call("getblock", block_hash.hex(), 1)
        prev = data.get("previousblockhash")
        return Block(
            hash=BlockHash.from_hex(data["hash"]),
            height=int(data["height"]),
            prev_hash=BlockHash.from_hex(prev) if prev else None,
            txids=Txid.many_from_hex(data["tx"]),  # thousands: parsed at once
        )

    def get_block_header(self, block_hash: BlockHash) -> BlockHeader:
        data = self.call("getblockheader", block_hash.hex(), True)
        prev = data.get("previousblockhash")
        return BlockHeader(
            hash=BlockHash.from_hex(data["hash"]),
            height=int(data["height"]),
            prev_hash=BlockHash.from_hex(prev) if prev else None,
            confirmations=int(data["confirmations"]),
        )

    def get_blockchain_info(self) -> ChainInfo:
        data = self.call("getblockchaininfo")
        pruned = bool(data.get("pruned", False))
        return ChainInfo(
            chain=str(data["chain"]),
            blocks=int(data["blocks"]),
            best_block_hash=BlockHash.from_hex(data["bestblockhash"]),
            pruned=pruned,
            prune_height=int(data.get("pruneheight", 0)) if pruned else 0,
            initial_block_download=bool(data.get("initialblockdownload", False)),
        )

    def send_raw_transaction(self, raw_tx: bytes) -> Txid:
        return Txid.from_hex(self.call("sendrawtransaction", raw_tx.hex()))

    def get_raw_transaction(self, txid: Txid, block_hash: BlockHash | None = None) -> TxInfo | None:
        """Where ``txid`` is, or None when bitcoind does not know it (-5).

        Without ``-txindex`` bitcoind finds confirmed transactions only when given their block.
        """
        params: list[Any] = [txid.hex(), True]
        if block_hash is not None:
            params.append(block_hash.hex())
        try:
            data = self.call("getrawtransaction", *params)
        except RPCError as e:
            if e.code == RPC_INVALID_ADDRESS_OR_KEY:
                return None
            raise
        blockhash = data.get("blockhash")
        return TxInfo(
            txid=Txid.from_hex(data["txid"]),
            confirmations=int(data.get("confirmations", 0)),
            block_hash=BlockHash.from_hex(blockhash) if blockhash else None,
        )


# -- retrying ------------------------------------------------------------------------------------


class Cancelled(Exception):
    """A retry loop was stopped by its stop event."""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: ``initial_delay`` doubling up to ``max_delay``; give up after ``max_wait``
    seconds in total (None: never)."""

    initial_delay: float = 0.5
    max_delay: float = 10.0
    max_wait: float | None = None


def retry_call(
    fn: Callable[[], T],
    stop: threading.Event,
    policy: RetryPolicy,
    retry_on: tuple[type[BaseException], ...] = TRANSIENT_ERRORS,
    on_error: Callable[[BaseException, float], None] | None = None,
) -> T:
    """Calls ``fn`` until it returns, sleeping with exponential backoff after each error in
    ``retry_on``. Raises ``Cancelled`` if ``stop`` is set while waiting, and re-raises the last error
    once ``policy.max_wait`` seconds of waiting have passed. ``on_error(error, delay)`` is called
    before each wait (for logging and reachability flags)."""
    delay = policy.initial_delay
    waited = 0.0
    while True:
        if stop.is_set():
            raise Cancelled()
        try:
            return fn()
        except retry_on as e:
            if policy.max_wait is not None and waited >= policy.max_wait:
                raise
            wait = min(delay, policy.max_delay)
            if policy.max_wait is not None:
                wait = min(wait, max(policy.max_wait - waited, 0.0))
            if on_error is not None:
                on_error(e, wait)
            if stop.wait(wait):
                raise Cancelled() from e
            waited += wait
            delay = min(delay * 2, policy.max_delay)
