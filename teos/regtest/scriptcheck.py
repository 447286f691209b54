"""Script and signature checks for the simulator: Bitcoin Core's own code decides, as Core words it.

Validity comes from libbitcoinkernel (Bitcoin Core's consensus library, through the ``pbk`` package,
py-bitcoinkernel): every input of every transaction that enters the mempool or a block is run through
Core's ``VerifyScript`` with the consensus flags in force. libbitcoinkernel answers only yes or no and
accepts only consensus flags, while Core's mempool also applies its policy flags and both mempool and
blocks report the interpreter's ``ScriptError``. Those come from ``teos.regtest.interpreter``, a Python
interpreter that checks in Core's order: it runs with the full flag set (policy flags in the mempool),
and its first error is the ``<reason>`` of Core's messages. When the two disagree on a consensus
question, Core's code wins: a spend the kernel rejects is rejected even if the interpreter passed it
(reason ``unknown error``, and a warning is logged), and a spend the kernel accepts is never rejected for
a consensus reason by the interpreter.

Flags, as Bitcoin Core v31 applies them on regtest (``GetBlockScriptFlags``; BIP34/65/66 and CSV at height
1, segwit at 0, taproot always): P2SH, WITNESS, TAPROOT and NULLDUMMY at every height, DERSIG,
CHECKLOCKTIMEVERIFY and CHECKSEQUENCEVERIFY from height 1. The mempool checks with
``STANDARD_SCRIPT_VERIFY_FLAGS`` and then, as Core's ConsensusScriptChecks does, with the tip's block
flags. Successes are cached per (wtxid, flags) the way Core's script execution cache does: the kernel's
run during the policy check used exactly the consensus flags, so the second pass, and a later block that
includes the transaction at a height with the same flags, verify nothing again.

libbitcoinkernel is loaded the first time a script is checked (a tenth of a second of CPU that a node that
only mines never pays). Without ``pbk`` (another Python or platform) nothing is verified: ``available()``
is false, a warning is logged at start, and ``getnetworkinfo`` lists it under ``warnings``.
``TEOS_REGTEST_NO_KERNEL=1`` in the environment forces that mode (to measure what validation costs, or to
see how tests behave on such a platform).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from common.tx import Transaction, TxOut
from teos.regtest.interpreter import (
    MANDATORY_FLAGS,
    STANDARD_FLAGS,
    Flag,
    ScriptError,
    TxContext,
    error_string,
    verify_input,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Kernel:
    pbk: Any  # the pbk module, or None
    precomputed: Any  # pbk.script.PrecomputedTransactionData
    error: str  # why it could not be loaded


class _KernelLoader:
    """Loads libbitcoinkernel once, when a script is first checked. Loading the shared library costs a
    tenth of a second of CPU, which most simulator runs (those that only mine) would pay for nothing;
    ``probe()`` tells at start, without loading it, whether it can be found."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kernel: _Kernel | None = None

    def get(self) -> _Kernel:
        with self._lock:
            if self._kernel is None:
                self._kernel = self._import()
                if self._kernel.pbk is None:
                    logger.warning(NOT_VALIDATED_WARNING.format(reason=self._kernel.error))
            return self._kernel

    @property
    def loaded(self) -> _Kernel | None:
        return self._kernel

    @staticmethod
    def probe() -> str:
        """Why the kernel cannot be loaded, or "" when its package is installed (loading may still fail,
        which ``get()`` then reports)."""
        if os.environ.get("TEOS_REGTEST_NO_KERNEL"):
            return "TEOS_REGTEST_NO_KERNEL is set"
        try:
            found = importlib.util.find_spec("pbk") is not None
        except (ImportError, ValueError) as e:
            return f"{type(e).__name__}: {e}"
        return "" if found else "ModuleNotFoundError: No module named 'pbk'"

    @classmethod
    def _import(cls) -> _Kernel:
        missing = cls.probe()
        if missing:
            return _Kernel(None, None, missing)
        try:
            import pbk
            from pbk.script import PrecomputedTransactionData
        except Exception as e:  # ImportError, or OSError when the shared library cannot be loaded
            return _Kernel(None, None, f"{type(e).__name__}: {e}")
        return _Kernel(pbk, PrecomputedTransactionData, "")


_loader = _KernelLoader()


def validation_warning() -> str | None:
    """The NOT-validated warning when scripts are (or will be) unverified, else None; never loads the
    kernel, so a node that only mines never pays for it."""
    loaded = _loader.loaded
    reason = loaded.error if loaded is not None else _loader.probe()
    return NOT_VALIDATED_WARNING.format(reason=reason) if reason else None


def warn_if_unavailable() -> None:
    """At start: the loud warning when py-bitcoinkernel is not installed (without loading it if it is)."""
    missing = _loader.probe()
    if missing:
        _loader.get()  # logs the warning once


# Core v31 regtest deployment heights that set script flags (kernel/chainparams.cpp, CRegTestParams)
BIP65_HEIGHT = 1
BIP66_HEIGHT = 1
CSV_HEIGHT = 1
SEGWIT_HEIGHT = 0

NOT_VALIDATED_WARNING = (
    "scripts and signatures are NOT validated: py-bitcoinkernel (import pbk) is unavailable on this "
    "Python/platform ({reason}); any witness is accepted, unlike Bitcoin Core"
)


def available() -> bool:
    """Whether libbitcoinkernel could be loaded, i.e. whether scripts are verified at all."""
    return _loader.get().pbk is not None


def unavailable_reason() -> str:
    return _loader.get().error


def block_script_flags(height: int) -> int:
    """Core's GetBlockScriptFlags for a regtest block at ``height``."""
    flags = Flag.P2SH | Flag.WITNESS | Flag.TAPROOT
    if height >= BIP66_HEIGHT:
        flags |= Flag.DERSIG
    if height >= BIP65_HEIGHT:
        flags |= Flag.CHECKLOCKTIMEVERIFY
    if height >= CSV_HEIGHT:
        flags |= Flag.CHECKSEQUENCEVERIFY
    if height >= SEGWIT_HEIGHT:
        flags |= Flag.NULLDUMMY
    return int(flags)


@dataclass(frozen=True)
class ScriptFailure:
    """The first input that failed and why (Core's CScriptCheck result)."""

    index: int
    error: ScriptError
    exact: bool  # False when the kernel rejected a spend the port passed: the reason is a stand-in

    @property
    def reason(self) -> str:
        return error_string(self.error)

    def debug(self, tx: Transaction) -> str:
        """CScriptCheck's debug string: ``input N of TXID (wtxid WTXID), spending PREV:N``."""
        txin = tx.inputs[self.index]
        return (
            f"input {self.index} of {tx.txid} (wtxid {tx.wtxid}), spending {txin.prev_txid}:{txin.prev_vout}"
        )


class ScriptChecker:
    """Verifies transactions' inputs; remembers successes per (wtxid, flags) like Core's script cache."""

    def __init__(self, cache_size: int = 50_000) -> None:
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[bytes, int], None] = OrderedDict()
        self.verified_inputs = 0  # inputs run through the kernel (for measurements)
        self.cache_hits = 0

    @property
    def enabled(self) -> bool:
        return available()

    def check(self, tx: Transaction, spent: Sequence[TxOut], flags: int) -> ScriptFailure | None:
        """None when every input of ``tx`` passes with ``flags``; else the first failure.

        ``spent`` are the outputs the inputs spend, in input order. The kernel checks the consensus
        part of ``flags``; the port checks all of them (and words any failure)."""
        kernel_lib = _loader.get()
        if kernel_lib.pbk is None or tx.is_coinbase:
            return None
        key = (tx.wtxid.raw, flags)
        if key in self._cache:
            self._cache.move_to_end(key)
            self.cache_hits += 1
            return None
        ctx = TxContext(tx, spent)
        policy = flags & ~int(MANDATORY_FLAGS)
        kernel = _KernelTx(kernel_lib, tx, spent)
        for index in range(len(tx.inputs)):
            if policy:
                error = verify_input(ctx, index, flags)
                if error != ScriptError.OK:
                    return ScriptFailure(index, error, True)
            self.verified_inputs += 1
            if not kernel.verify(index, flags & int(MANDATORY_FLAGS)):
                error = ScriptError.OK if policy else verify_input(ctx, index, flags)
                if error == ScriptError.OK:
                    logger.warning(
                        "script port passed a spend libbitcoinkernel rejects txid=%s input=%d flags=%#x",
                        tx.txid,
                        index,
                        flags,
                    )
                    return ScriptFailure(index, ScriptError.UNKNOWN_ERROR, False)
                return ScriptFailure(index, error, True)
        self._remember(key)
        if policy:  # the kernel just ran every input with exactly the consensus part of the flags
            self._remember((key[0], flags & int(MANDATORY_FLAGS)))
        return None

    def _remember(self, key: tuple[bytes, int]) -> None:
        self._cache[key] = None
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)


class _KernelTx:
    """One transaction as libbitcoinkernel objects, built once for all its inputs."""

    def __init__(self, kernel: _Kernel, tx: Transaction, spent: Sequence[TxOut]) -> None:
        pbk = kernel.pbk
        self.pbk = pbk
        self.tx = pbk.Transaction(tx.raw)
        self.spent = list(spent)
        self.scripts = [pbk.ScriptPubkey(out.script_pubkey) for out in spent]
        outputs = [pbk.TransactionOutput(s, out.value) for s, out in zip(self.scripts, spent, strict=True)]
        self.precomputed = kernel.precomputed(self.tx, outputs)

    def verify(self, index: int, flags: int) -> bool:
        try:
            return bool(
                self.scripts[index].verify(
                    self.spent[index].value,
                    self.tx,
                    self.precomputed,
                    index,
                    self.pbk.ScriptVerificationFlags(flags),
                )
            )
        except self.pbk.ScriptVerifyException as e:  # invalid flag combination or missing spent outputs
            raise RuntimeError(f"libbitcoinkernel refused the check: {e}") from e


STANDARD_SCRIPT_VERIFY_FLAGS = int(STANDARD_FLAGS)
