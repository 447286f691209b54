"""teos.regtest.interpreter against Bitcoin Core's own (libbitcoinkernel through pbk).

The port gives the simulator Core's ScriptError texts and policy flags; Core's code decides validity. Here
every crafted spend (legacy, P2SH-wrapped and native segwit v0, taproot key and script paths, every sighash
type, and the failures the tower's transactions can meet) is checked both ways: the port must find the
error Core would report, and under consensus flags it must agree with the kernel on validity. A
property-based test mutates valid spends at random and requires the same agreement.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace

import coincurve
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.tx import Transaction, TxIn, TxOut, hash160
from common.types import Txid
from teos.regtest import scriptcheck
from teos.regtest.address import p2wpkh_script
from teos.regtest.interpreter import (
    MANDATORY_FLAGS,
    SECP256K1_ORDER,
    STANDARD_FLAGS,
    ScriptError,
    TxContext,
    error_string,
    legacy_sighash,
    num_decode,
    num_encode,
    push_data,
    tagged_hash,
    taproot_sighash,
    verify_input,
    witness_v0_sighash,
)
from teos.regtest.interpreter import _ExecData as ExecData
from teos.regtest.interpreter import _NumError as NumError
from teos.regtest.wallet import ToLocal

needs_kernel = pytest.mark.skipif(
    not scriptcheck.available(), reason=f"py-bitcoinkernel unavailable: {scriptcheck.unavailable_reason()}"
)

KEY = coincurve.PrivateKey(hashlib.sha256(b"interpreter-test-key").digest())
OTHER = coincurve.PrivateKey(hashlib.sha256(b"interpreter-test-other").digest())
PUB = KEY.public_key.format(compressed=True)
PREV = Txid(hashlib.sha256(b"prev").digest())
AMOUNT = 100_000
DEST = TxOut(90_000, p2wpkh_script(PUB))


def kernel_verdict(tx: Transaction, spent: Sequence[TxOut], index: int = 0) -> bool:
    import pbk
    from pbk.script import PrecomputedTransactionData

    ptx = pbk.Transaction(tx.raw)
    scripts = [pbk.ScriptPubkey(o.script_pubkey) for o in spent]
    outs = [pbk.TransactionOutput(s, o.value) for s, o in zip(scripts, spent, strict=True)]
    pre = PrecomputedTransactionData(ptx, outs)
    flags = pbk.ScriptVerificationFlags(int(MANDATORY_FLAGS))
    return bool(scripts[index].verify(spent[index].value, ptx, pre, index, flags))


def errors(tx: Transaction, spent: Sequence[TxOut], index: int = 0) -> tuple[ScriptError, ScriptError]:
    """(error under Core's standard flags, error under consensus flags) found by the port."""
    ctx = TxContext(tx, spent)
    return verify_input(ctx, index, int(STANDARD_FLAGS)), verify_input(ctx, index, int(MANDATORY_FLAGS))


def ecdsa(key: coincurve.PrivateKey, digest: bytes, hashtype: int = 1) -> bytes:
    return key.sign(digest, hasher=None) + bytes([hashtype])


def unsigned(sequence: int = 0xFFFFFFFD, version: int = 2, outputs: Sequence[TxOut] = (DEST,)) -> Transaction:
    return Transaction(version, (TxIn(PREV, 0, b"", sequence),), tuple(outputs), 0)


def with_input(tx: Transaction, script_sig: bytes = b"", witness: Sequence[bytes] = ()) -> Transaction:
    txin = replace(tx.inputs[0], script_sig=script_sig, witness=tuple(witness))
    return Transaction(tx.version, (txin, *tx.inputs[1:]), tx.outputs, tx.locktime)


def p2wpkh_spend(key: coincurve.PrivateKey = KEY, hashtype: int = 1) -> tuple[Transaction, list[TxOut]]:
    spent = [TxOut(AMOUNT, p2wpkh_script(PUB))]
    tx = unsigned(outputs=(DEST, TxOut(5_000, b"\x00\x14" + bytes(20))))
    code = b"\x76\xa9\x14" + hash160(PUB) + b"\x88\xac"
    sig = ecdsa(key, witness_v0_sighash(code, TxContext(tx, spent), 0, hashtype, AMOUNT), hashtype)
    return with_input(tx, witness=(sig, PUB)), spent


def to_local_spend(
    branch: str, sequence: int, selector: bytes | None = None, key: coincurve.PrivateKey | None = None
) -> tuple[Transaction, list[TxOut]]:
    to_local = ToLocal(KEY, OTHER, 10)
    spent = [TxOut(AMOUNT, to_local.script_pubkey)]
    tx = unsigned(sequence=sequence)
    signer = key or (KEY if branch == "revocation" else OTHER)
    sig = ecdsa(signer, witness_v0_sighash(to_local.script, TxContext(tx, spent), 0, 1, AMOUNT))
    chosen = selector if selector is not None else (b"\x01" if branch == "revocation" else b"")
    return with_input(tx, witness=(sig, chosen, to_local.script)), spent


def high_s(sig_with_hashtype: bytes) -> bytes:
    der = sig_with_hashtype[:-1]
    len_r = der[3]
    r = der[4 : 4 + len_r]
    s = int.from_bytes(der[6 + len_r :], "big")
    s_bytes = (SECP256K1_ORDER - s).to_bytes(33, "big").lstrip(b"\x00")
    if s_bytes[0] & 0x80:
        s_bytes = b"\x00" + s_bytes
    body = b"\x02" + bytes([len(r)]) + r + b"\x02" + bytes([len(s_bytes)]) + s_bytes
    return b"\x30" + bytes([len(body)]) + body + sig_with_hashtype[-1:]


# -- known answers -----------------------------------------------------------------------------------
def test_error_strings_are_cores() -> None:
    assert (
        error_string(ScriptError.SIG_NULLFAIL)
        == "Signature must be zero for failed CHECK(MULTI)SIG operation"
    )
    assert error_string(ScriptError.EVAL_FALSE) == (
        "Script evaluated without error but finished with a false/empty top stack element"
    )
    assert error_string(ScriptError.UNKNOWN_ERROR) == "unknown error"
    assert error_string(ScriptError.SCRIPTNUM) == "Script number overflowed or is non-minimally encoded"


def test_script_numbers_round_trip_like_cscriptnum() -> None:
    for value in (0, 1, -1, 127, 128, -128, 255, 256, 2**31 - 1, -(2**31 - 1), 2**39 - 1):
        assert num_decode(num_encode(value), True, 5) == value
    assert num_encode(128) == b"\x80\x00" and num_encode(-1) == b"\x81"
    with pytest.raises(NumError):
        num_decode(b"\x01\x00", True)  # non-minimal
    assert num_decode(b"\x01\x00", False) == 1


@pytest.mark.parametrize(
    "case, standard, consensus",
    [
        ("valid", ScriptError.OK, ScriptError.OK),
        ("forged", ScriptError.SIG_NULLFAIL, ScriptError.EVAL_FALSE),
        ("wrong key", ScriptError.SIG_NULLFAIL, ScriptError.EVAL_FALSE),
        ("high S", ScriptError.SIG_HIGH_S, ScriptError.OK),
        ("wrong pubkey", ScriptError.EQUALVERIFY, ScriptError.EQUALVERIFY),
        ("one item", ScriptError.WITNESS_PROGRAM_MISMATCH, ScriptError.WITNESS_PROGRAM_MISMATCH),
        ("scriptSig", ScriptError.WITNESS_MALLEATED, ScriptError.WITNESS_MALLEATED),
        ("bad hashtype", ScriptError.SIG_HASHTYPE, ScriptError.OK),
        ("bad DER", ScriptError.SIG_DER, ScriptError.SIG_DER),
    ],
)
def test_p2wpkh_cases(case: str, standard: ScriptError, consensus: ScriptError) -> None:
    tx, spent = p2wpkh_spend(
        OTHER if case == "wrong key" else KEY, hashtype=0x04 if case == "bad hashtype" else 1
    )
    sig, pub = tx.inputs[0].witness
    if case == "forged":
        tx = with_input(tx, witness=(sig[:10] + bytes([sig[10] ^ 1]) + sig[11:], pub))
    elif case == "high S":
        tx = with_input(tx, witness=(high_s(sig), pub))
    elif case == "wrong pubkey":
        tx = with_input(tx, witness=(sig, OTHER.public_key.format(compressed=True)))
    elif case == "one item":
        tx = with_input(tx, witness=(sig,))
    elif case == "scriptSig":
        tx = with_input(tx, script_sig=b"\x51", witness=(sig, pub))
    elif case == "bad DER":
        tx = with_input(tx, witness=(sig[:-2] + sig[-1:], pub))
    assert errors(tx, spent) == (standard, consensus)
    if scriptcheck.available():
        assert kernel_verdict(tx, spent) == (consensus == ScriptError.OK)


@pytest.mark.parametrize(
    "branch, sequence, selector, standard, consensus",
    [
        ("revocation", 0xFFFFFFFD, None, ScriptError.OK, ScriptError.OK),
        ("delayed", 10, None, ScriptError.OK, ScriptError.OK),
        ("delayed", 9, None, ScriptError.UNSATISFIED_LOCKTIME, ScriptError.UNSATISFIED_LOCKTIME),
        ("delayed", 0xFFFFFFFD, None, ScriptError.UNSATISFIED_LOCKTIME, ScriptError.UNSATISFIED_LOCKTIME),
        ("delayed", 10 | (1 << 22), None, ScriptError.UNSATISFIED_LOCKTIME, ScriptError.UNSATISFIED_LOCKTIME),
        ("delayed", 10, b"\x00", ScriptError.MINIMALIF, ScriptError.OK),
        ("revocation", 0xFFFFFFFD, b"\x02", ScriptError.MINIMALIF, ScriptError.OK),
        ("revocation", 0xFFFFFFFD, b"", ScriptError.UNSATISFIED_LOCKTIME, ScriptError.UNSATISFIED_LOCKTIME),
    ],
)
def test_to_local_cases(
    branch: str, sequence: int, selector: bytes | None, standard: ScriptError, consensus: ScriptError
) -> None:
    tx, spent = to_local_spend(branch, sequence, selector)
    assert errors(tx, spent) == (standard, consensus)
    if scriptcheck.available():
        assert kernel_verdict(tx, spent) == (consensus == ScriptError.OK)


def test_p2wsh_script_mismatch_and_cleanstack() -> None:
    tx, spent = to_local_spend("revocation", 0xFFFFFFFD)
    sig, sel, script = tx.inputs[0].witness
    mismatch = with_input(tx, witness=(sig, sel, script + b"\x51"))
    assert errors(mismatch, spent) == (ScriptError.WITNESS_PROGRAM_MISMATCH,) * 2
    extra = with_input(tx, witness=(b"\x01", sig, sel, script))
    assert errors(extra, spent) == (ScriptError.CLEANSTACK,) * 2
    empty = with_input(tx, witness=())
    assert errors(empty, spent) == (ScriptError.WITNESS_PROGRAM_WITNESS_EMPTY,) * 2


@needs_kernel
@pytest.mark.parametrize("hashtype", [0x01, 0x02, 0x03, 0x81, 0x82, 0x83])
def test_sighash_types_match_core(hashtype: int) -> None:
    """Legacy P2PKH, P2SH-P2WPKH and native P2WPKH inputs signed with every hashtype, in one transaction:
    both sighash algorithms agree with Core's."""
    p2pkh = b"\x76\xa9\x14" + hash160(PUB) + b"\x88\xac"
    p2sh_redeem = p2wpkh_script(PUB)
    p2sh = b"\xa9\x14" + hash160(p2sh_redeem) + b"\x87"
    spent = [TxOut(AMOUNT, p2pkh), TxOut(AMOUNT + 1, p2sh), TxOut(AMOUNT + 2, p2wpkh_script(PUB))]
    inputs = tuple(TxIn(PREV, n, b"", 0xFFFFFFF0 + n) for n in range(3))
    outputs = (DEST, TxOut(1_000, p2pkh), TxOut(2_000, p2sh))
    tx = Transaction(2, inputs, outputs, 0)
    ctx = TxContext(tx, spent)
    sig0 = ecdsa(KEY, legacy_sighash(p2pkh, tx, 0, hashtype), hashtype)
    sig1 = ecdsa(KEY, witness_v0_sighash(p2pkh, ctx, 1, hashtype, AMOUNT + 1), hashtype)
    sig2 = ecdsa(KEY, witness_v0_sighash(p2pkh, ctx, 2, hashtype, AMOUNT + 2), hashtype)
    signed = Transaction(
        2,
        (
            replace(inputs[0], script_sig=push_data(sig0) + push_data(PUB)),
            replace(inputs[1], script_sig=push_data(p2sh_redeem), witness=(sig1, PUB)),
            replace(inputs[2], witness=(sig2, PUB)),
        ),
        outputs,
        0,
    )
    for n in range(3):
        assert errors(signed, spent, n) == (ScriptError.OK, ScriptError.OK)
        assert kernel_verdict(signed, spent, n)


def _taproot_output(internal: coincurve.PrivateKey, merkle_root: bytes = b"") -> tuple[bytes, bytes, int]:
    """(scriptPubKey, tweaked secret, parity of the output key) for BIP341 with an optional script tree."""
    xonly = internal.public_key.format(compressed=True)[1:]
    secret = internal.to_int()
    if internal.public_key.format(compressed=True)[0] == 0x03:
        secret = SECP256K1_ORDER - secret
    tweak = int.from_bytes(tagged_hash("TapTweak", xonly + merkle_root), "big")
    tweaked = (secret + tweak) % SECP256K1_ORDER
    output = coincurve.PrivateKey.from_int(tweaked).public_key.format(compressed=True)
    return b"\x51\x20" + output[1:], tweaked.to_bytes(32, "big"), output[0] & 1


@needs_kernel
@pytest.mark.parametrize("hashtype", [0x00, 0x01, 0x83])
def test_taproot_key_path_matches_core(hashtype: int) -> None:
    spk, secret, _ = _taproot_output(KEY)
    spent = [TxOut(AMOUNT, spk)]
    tx = unsigned()
    digest = taproot_sighash(TxContext(tx, spent), 0, hashtype, 2, ExecData())
    assert digest is not None
    sig = coincurve.PrivateKey(secret).sign_schnorr(digest) + (bytes([hashtype]) if hashtype else b"")
    good = with_input(tx, witness=(sig,))
    assert errors(good, spent) == (ScriptError.OK, ScriptError.OK) and kernel_verdict(good, spent)
    bad = with_input(tx, witness=(sig[:5] + bytes([sig[5] ^ 1]) + sig[6:],))
    assert errors(bad, spent) == (ScriptError.SCHNORR_SIG,) * 2 and not kernel_verdict(bad, spent)
    if hashtype == 0:
        explicit_default = with_input(tx, witness=(sig + b"\x00",))
        assert errors(explicit_default, spent) == (ScriptError.SCHNORR_SIG_HASHTYPE,) * 2


@needs_kernel
def test_taproot_script_path_matches_core() -> None:
    leaf_key = OTHER.public_key.format(compressed=True)[1:]
    leaf = b"\x20" + leaf_key + b"\xac"  # <xonly> OP_CHECKSIG
    sibling = hashlib.sha256(b"sibling").digest()
    leaf_hash = tagged_hash("TapLeaf", b"\xc0" + bytes([len(leaf)]) + leaf)
    root = tagged_hash("TapBranch", min(leaf_hash, sibling) + max(leaf_hash, sibling))
    spk, _, parity = _taproot_output(KEY, root)
    control = bytes([0xC0 | parity]) + KEY.public_key.format(compressed=True)[1:] + sibling
    spent = [TxOut(AMOUNT, spk)]
    tx = unsigned()
    digest = taproot_sighash(TxContext(tx, spent), 0, 0, 3, ExecData(tapleaf_hash=leaf_hash))
    assert digest is not None
    good = with_input(tx, witness=(OTHER.sign_schnorr(digest), leaf, control))
    assert errors(good, spent) == (ScriptError.OK, ScriptError.OK) and kernel_verdict(good, spent)
    wrong_parity = with_input(
        tx, witness=(OTHER.sign_schnorr(digest), leaf, bytes([control[0] ^ 1]) + control[1:])
    )
    assert errors(wrong_parity, spent) == (ScriptError.WITNESS_PROGRAM_MISMATCH,) * 2
    assert not kernel_verdict(wrong_parity, spent)
    success_op = b"\x50"  # OP_SUCCESS80 in tapscript
    success_hash = tagged_hash("TapLeaf", b"\xc0\x01" + success_op)
    root2 = tagged_hash("TapBranch", min(success_hash, sibling) + max(success_hash, sibling))
    spk2, _, parity2 = _taproot_output(KEY, root2)
    spent2 = [TxOut(AMOUNT, spk2)]
    control2 = bytes([0xC0 | parity2]) + control[1:]
    upgrade = with_input(tx, witness=(success_op, control2))
    assert errors(upgrade, spent2) == (ScriptError.DISCOURAGE_OP_SUCCESS, ScriptError.OK)
    assert kernel_verdict(upgrade, spent2)


# -- agreement with Core under random damage --------------------------------------------------------
def _variants() -> list[tuple[Transaction, list[TxOut]]]:
    return [p2wpkh_spend(), to_local_spend("revocation", 0xFFFFFFFD), to_local_spend("delayed", 10)]


@needs_kernel
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    which=st.integers(0, 2),
    item=st.integers(0, 3),
    position=st.integers(0, 200),
    xor=st.integers(1, 255),
    sequence=st.one_of(st.none(), st.integers(0, 0xFFFFFFFF)),
    version=st.sampled_from([1, 2, 2, 2]),
)
def test_port_agrees_with_core_on_damaged_spends(
    which: int, item: int, position: int, xor: int, sequence: int | None, version: int
) -> None:
    tx, spent = _variants()[which]
    witness = list(tx.inputs[0].witness)
    n = item % len(witness)
    if witness[n]:
        damaged = bytearray(witness[n])
        damaged[position % len(damaged)] ^= xor
        witness[n] = bytes(damaged)
    txin = replace(tx.inputs[0], witness=tuple(witness))
    if sequence is not None:
        txin = replace(txin, sequence=sequence)
    mutated = Transaction(version, (txin,), tx.outputs, tx.locktime)
    standard, consensus = errors(mutated, spent)
    assert (consensus == ScriptError.OK) == kernel_verdict(mutated, spent)
    if consensus != ScriptError.OK:
        assert standard != ScriptError.OK  # policy flags only add rules
