"""The tower's payment key, derived from its tower key, and the forms an operator's wallet imports.

``SHA256("teos/payment-key/v1" || tower secret key)`` (docs/PAYMENTS.md §1): the datadir holds no second
secret to back up, and the identity key never signs a claim. Claims (and their fee-bump children) pay
P2WPKH of the payment key; to spend what the tower earned, an operator imports the key in a wallet:
``wif`` (Wallet Import Format) or ``descriptor`` (``wpkh(<WIF>)#checksum``, for Bitcoin Core's
``importdescriptors``). Here, not in the tower's packages, so that ``teos-cli`` can compute them from the
key file alone (it loads nothing of the server).
"""

from __future__ import annotations

from common.tx import sha256, sha256d

DERIVATION_TAG = b"teos/payment-key/v1"
SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
# Bitcoin Core's descriptor checksum: the character sets and the generator of its BCH code.
_INPUT_CHARSET = (
    "0123456789()[],'/*abcdefgh@:$%{}IJKLMNOPQRSTUVWXYZ&+-.;<=>?!^_|~ijklmnopqrstuvwxyzABCDEFGH`#\"\\ "
)
_CHECKSUM_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_GENERATOR = (0xF5DEE51989, 0xA9FDCA3312, 0x1BAB10E32D, 0x3706B1677A, 0x644D626FFD)


def derive_payment_secret(tower_secret: bytes) -> bytes:
    """``SHA256("teos/payment-key/v1" || tower_secret)``, checked to be a valid secp256k1 scalar."""
    if not isinstance(tower_secret, bytes) or len(tower_secret) != 32:
        raise ValueError("the tower secret is 32 bytes")
    secret = sha256(DERIVATION_TAG + tower_secret)
    if not 0 < int.from_bytes(secret, "big") < SECP256K1_ORDER:  # about 2^-128 likely
        raise ValueError("the derived payment key is out of range")
    return secret


def _b58check(payload: bytes) -> str:
    data = payload + sha256d(payload)[:4]
    n = int.from_bytes(data, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = _B58[r] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


def wif(secret: bytes, network: str) -> str:
    """The key in Wallet Import Format, for a compressed public key (mainnet 0x80, the others 0xef)."""
    return _b58check(bytes([0x80 if network == "mainnet" else 0xEF]) + secret + b"\x01")


def descriptor_checksum(descriptor: str) -> str:
    """The 8-character checksum Bitcoin Core appends to a descriptor after ``#``."""

    def polymod(c: int, value: int) -> int:
        top = c >> 35
        c = ((c & 0x7FFFFFFFF) << 5) ^ value
        for i in range(5):
            if (top >> i) & 1:
                c ^= _GENERATOR[i]
        return c

    c, cls, count = 1, 0, 0
    for ch in descriptor:
        pos = _INPUT_CHARSET.find(ch)
        if pos < 0:
            raise ValueError(f"character {ch!r} cannot be in a descriptor")
        c = polymod(c, pos & 31)
        cls = cls * 3 + (pos >> 5)
        count += 1
        if count == 3:
            c, cls, count = polymod(c, cls), 0, 0
    if count:
        c = polymod(c, cls)
    for _ in range(8):
        c = polymod(c, 0)
    c ^= 1
    return "".join(_CHECKSUM_CHARSET[(c >> (5 * (7 - i))) & 31] for i in range(8))


def descriptor(secret: bytes, network: str) -> str:
    """``wpkh(<WIF>)#checksum``: the descriptor of the outputs claims pay to, with its private key."""
    body = f"wpkh({wif(secret, network)})"
    return f"{body}#{descriptor_checksum(body)}"
