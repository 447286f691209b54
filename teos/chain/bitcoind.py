"""The JSON-RPC client for bitcoind, written over ``http.client``: the one the tower, the demo and the
tests use.

The tower talks to bitcoind for three things: following the chain (best hash, blocks by height and
hash), broadcasting penalties, and a few checks at start-up (network, pruning). This client turns the
ways bitcoind can fail into a few typed errors so callers decide on policy in one place:

- ``RPCError(code, message)``: bitcoind answered with a JSON-RPC error (e.g. -5 ``Block not found``).
- ``BitcoindWarmingUp``: the -28 error bitcoind returns while it loads its indexes; transient.
- ``BitcoindUnreachable``: no usable answer at all: connection refused or reset, timeout, or
  ``HTTPStatusError`` (HTTP 401: bad credentials); transient except the 401.
- ``BitcoindUnreadable`` (a ``BitcoindUnreachable``, so transient): bitcoind, or something in between,
  answered something the tower cannot read: a body that does not parse, an HTTP error page (a reverse
  proxy's HTML 500, Core's text/plain 503 "Work queue depth exceeded"), a JSON-RPC answer without a
  result, a result of the wrong type, with a member missing or a value out of range, or one that does not
  answer the question (``getblock`` of another block). It names the method and carries a short excerpt.

Every answer is untrusted input: the typed helpers (``get_block`` ...) check each member they read and
convert it into a value type (``BlockHash``, ``Txid``, heights in [0, 2^31)) before anything else sees
it, so no ValueError, TypeError, KeyError or AttributeError from a garbled answer reaches the engine.

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

from common.types import BlockHash, Txid, Txids

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
    """bitcoind refused the call at the HTTP level (401 bad credentials, 403, 404 path...)."""

    def __init__(self, message: str, status: int, body: bytes) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


EXCERPT_CHARS = 120


class BitcoindUnreadable(BitcoindUnreachable):
    """bitcoind answered ``method`` with something the tower cannot read (see the module docstring);
    ``problem`` says what, ``excerpt`` shows the start of the answer on one line."""

    def __init__(self, method: str, problem: str, answer: Any = None) -> None:
        self.method = method
        self.problem = problem
        self.excerpt = excerpt(answer) if answer is not None else ""
        shown = f"; answer: {self.excerpt}" if self.excerpt else ""
        super().__init__(f"bitcoind answered something unreadable to {method}: {problem}{shown}")


def excerpt(answer: Any, limit: int = EXCERPT_CHARS) -> str:
    """The start of an answer (raw bytes or a parsed value) on one printable line."""
    if isinstance(answer, bytes | bytearray):
        text = bytes(answer).decode("utf-8", "replace")
    elif isinstance(answer, str):
        text = answer
    else:
        try:
            text = json.dumps(answer, separators=(",", ":"), ensure_ascii=True)
        except (TypeError, ValueError):
            text = repr(answer)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# Errors after which trying again later may succeed.
TRANSIENT_ERRORS: tuple[type[BitcoindError], ...] = (BitcoindUnreachable, BitcoindWarmingUp)


def encode_call(method: str, params: Sequence[Any], call_id: int | str) -> bytes:
    """One JSON-RPC 1.0 request body, as bitcoin-cli sends it."""
    return json.dumps({"jsonrpc": "1.0", "id": call_id, "method": method, "params": list(params)}).encode()


def basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def decode_reply(status: int, data: bytes, method: str, where: str) -> Any:
    """The ``result`` of bitcoind's answer to ``method``; raises ``RPCError`` (``BitcoindWarmingUp`` for
    -28) for a JSON-RPC error, ``HTTPStatusError`` for a 401 and ``BitcoindUnreadable`` for anything that
    is not a JSON-RPC answer. ``where`` names the node in messages."""
    if status == 401:
        raise HTTPStatusError(
            f"bitcoind at {where} refused our credentials (HTTP 401): check rpcuser/rpcpassword "
            "(or the cookie file)", status, data,
        )  # fmt: skip
    try:
        answer = json.loads(data)
    except (ValueError, RecursionError):
        raise BitcoindUnreadable(method, f"HTTP {status} with a body that is not JSON", data) from None
    if not isinstance(answer, dict):
        raise BitcoindUnreadable(method, f"HTTP {status} with JSON that is not an object", data)
    error = answer.get("error")
    if error:
        code = error.get("code") if isinstance(error, dict) else None
        message = error.get("message", "") if isinstance(error, dict) else None
        if not isinstance(code, int) or isinstance(code, bool) or not isinstance(message, str):
            raise BitcoindUnreadable(method, f"HTTP {status} with a malformed error", data)
        if code == RPC_IN_WARMUP:
            raise BitcoindWarmingUp(code, message)
        raise RPCError(code, message)
    if status != 200:
        raise BitcoindUnreadable(method, f"HTTP {status} without an error", data)
    if "result" not in answer:
        raise BitcoindUnreadable(method, "no result", data)
    return answer["result"]


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
    txids: Sequence[Txid]  # from bitcoind: a ``Txids``


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
        """Calls ``method`` and returns its ``result`` (unchecked: the typed helpers below check it);
        raises one of the errors above."""
        status, data = self._send_with_one_reconnect(method, encode_call(method, params, next(self._ids)))
        return decode_reply(status, data, method, f"{self.config.host}:{self.config.port}")

    def _send_with_one_reconnect(self, method: str, body: bytes) -> tuple[int, bytes]:
        # A kept-alive connection may have been closed by bitcoind (restart, idle timeout): the first
        # failure re-opens the connection (re-reading the cookie) and tries once more.
        for attempt in (1, 2):
            try:
                return self._post(body)
            except (OSError, http.client.HTTPException) as e:
                self._drop_connection()
                if attempt == 2 or isinstance(e, TimeoutError | socket.timeout):
                    raise BitcoindUnreachable(
                        f"bitcoind at {self.config.host}:{self.config.port} unreachable calling {method}: "
                        f"{_short(e)}"
                    ) from e
        raise AssertionError("unreachable")  # pragma: no cover

    # -- typed helpers ---------------------------------------------------------------------------

    def get_best_block_hash(self) -> BlockHash:
        method = "getbestblockhash"
        return read_hash(method, self.call(method))

    def get_block_count(self) -> int:
        method = "getblockcount"
        return read_height(method, self.call(method))

    def get_block_hash(self, height: int) -> BlockHash:
        """Hash of the best-chain block at ``height``; RPCError -8 above the tip."""
        method = "getblockhash"
        return read_hash(method, self.call(method, height))

    def get_block(self, block_hash: BlockHash) -> Block:
        """The block with its txids (verbosity 1); RPCError -5 when unknown, -1 when pruned."""
        method = "getblock"
        data = read_object(method, self.call(method, block_hash.hex(), 1))
        answered, height, prev = _block_place(method, data, block_hash)
        tx = member(method, data, "tx")
        if not isinstance(tx, list) or not tx:
            raise BitcoindUnreadable(method, "tx is not a list of txids", tx)
        try:
            txids = Txids.from_hex(tx)  # thousands: one bytes object, no Txid made
        except ValueError:
            for t in tx:
                read_txid(method, t, "tx")  # names the first bad one
            raise BitcoindUnreadable(method, "tx is not a list of txids", tx) from None
        return Block(answered, height, prev, txids)

    def get_block_header(self, block_hash: BlockHash) -> BlockHeader:
        method = "getblockheader"
        data = read_object(method, self.call(method, block_hash.hex(), True))
        answered, height, prev = _block_place(method, data, block_hash)
        confirmations = read_int(method, member(method, data, "confirmations"), "confirmations", -1)
        return BlockHeader(answered, height, prev, confirmations)

    def get_blockchain_info(self) -> ChainInfo:
        method = "getblockchaininfo"
        data = read_object(method, self.call(method))
        chain = member(method, data, "chain")
        if chain not in NETWORKS:
            raise BitcoindUnreadable(method, "chain is not a network Bitcoin Core knows", chain)
        pruned = read_bool(method, member(method, data, "pruned"), "pruned")
        prune_height = 0
        if pruned:
            prune_height = read_height(method, member(method, data, "pruneheight"), "pruneheight")
        ibd = data.get("initialblockdownload", False)
        return ChainInfo(
            chain=chain,
            blocks=read_height(method, member(method, data, "blocks"), "blocks"),
            best_block_hash=read_hash(method, member(method, data, "bestblockhash"), "bestblockhash"),
            pruned=pruned,
            prune_height=prune_height,
            initial_block_download=read_bool(method, ibd, "initialblockdownload"),
        )

    def send_raw_transaction(self, raw_tx: bytes) -> Txid:
        method = "sendrawtransaction"
        return read_txid(method, self.call(method, raw_tx.hex()))

    def get_raw_transaction(self, txid: Txid, block_hash: BlockHash | None = None) -> TxInfo | None:
        """Where ``txid`` is, or None when bitcoind does not know it (-5).

        Without ``-txindex`` bitcoind finds confirmed transactions only when given their block.
        """
        method = "getrawtransaction"
        params: list[Any] = [txid.hex(), True]
        if block_hash is not None:
            params.append(block_hash.hex())
        try:
            data = read_object(method, self.call(method, *params))
        except RPCError as e:
            if e.code == RPC_INVALID_ADDRESS_OR_KEY:
                return None
            raise
        answered = read_txid(method, member(method, data, "txid"), "txid")
        if answered != txid:
            raise BitcoindUnreadable(method, f"the answer is about another transaction, not {txid}", data)
        blockhash = data.get("blockhash")
        return TxInfo(
            txid=answered,
            confirmations=read_int(method, data.get("confirmations", 0), "confirmations", 0),
            block_hash=read_hash(method, blockhash, "blockhash") if blockhash is not None else None,
        )


# -- reading answers -----------------------------------------------------------------------------

MAX_HEIGHT = 2**31 - 1  # Bitcoin Core keeps heights and counts in a signed 32-bit int
NETWORKS = frozenset({"main", "test", "testnet4", "signet", "regtest"})
_HEX = frozenset("0123456789abcdefABCDEF")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _short(e: BaseException) -> str:
    return excerpt(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__, 200)


def read_object(method: str, value: Any) -> dict[str, Any]:
    """A result that must be a JSON object."""
    if not isinstance(value, dict):
        raise BitcoindUnreadable(method, "the result is not an object", value)
    return value


def member(method: str, data: dict[str, Any], name: str) -> Any:
    """``data[name]``, which must be there."""
    if name not in data:
        raise BitcoindUnreadable(method, f"no {name}", data)
    return data[name]


def read_hash(method: str, value: Any, what: str = "the result") -> BlockHash:
    """A block hash: exactly 64 hex digits."""
    return BlockHash.from_hex(_hex64(method, value, what))


def read_txid(method: str, value: Any, what: str = "the result") -> Txid:
    """A txid: exactly 64 hex digits."""
    return Txid.from_hex(_hex64(method, value, what))


def _hex64(method: str, value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) != 64 or not _HEX.issuperset(value):
        raise BitcoindUnreadable(method, f"{what} is not 64 hex digits", value)
    return value


def read_int(method: str, value: Any, what: str, low: int) -> int:
    """An integer (not a boolean, a float or a string) in [``low``, 2^31)."""
    if not _is_int(value) or not low <= value <= MAX_HEIGHT:
        raise BitcoindUnreadable(method, f"{what} is not an integer in [{low}, {MAX_HEIGHT}]", value)
    return int(value)


def read_height(method: str, value: Any, what: str = "the result") -> int:
    """A height or a count: an integer in [0, 2^31)."""
    return read_int(method, value, what, 0)


def read_bool(method: str, value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise BitcoindUnreadable(method, f"{what} is not true or false", value)
    return value


def _block_place(
    method: str, data: dict[str, Any], asked: BlockHash
) -> tuple[BlockHash, int, BlockHash | None]:
    """Hash, height and parent of a block or header answer, which must be the block asked for."""
    answered = read_hash(method, member(method, data, "hash"), "hash")
    if answered != asked:
        raise BitcoindUnreadable(method, f"the answer is about another block, not {asked}", data)
    height = read_height(method, member(method, data, "height"), "height")
    prev = data.get("previousblockhash")
    if height > 0 and prev is None:
        raise BitcoindUnreadable(method, "no previousblockhash above the genesis block", data)
    return answered, height, (read_hash(method, prev, "previousblockhash") if prev is not None else None)


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
    retry_if: Callable[[BaseException], bool] | None = None,
) -> T:
    """Calls ``fn`` until it returns, sleeping with exponential backoff after each error in
    ``retry_on`` (for which ``retry_if``, when given, says yes; other errors are raised at once).
    Raises ``Cancelled`` if ``stop`` is set while waiting, and re-raises the last error once
    ``policy.max_wait`` seconds of waiting have passed. ``on_error(error, delay)`` is called before each
    wait (for logging and reachability flags)."""
    delay = policy.initial_delay
    waited = 0.0
    while True:
        if stop.is_set():
            raise Cancelled()
        try:
            return fn()
        except retry_on as e:
            if retry_if is not None and not retry_if(e):
                raise
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
