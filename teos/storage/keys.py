"""The LevelDB key layout: the one place that says where everything lives.

All data sits in one LevelDB database (one atomic batch can then cover a block's effects across
appointments, trackers, users and the "last processed block" marker). Keys begin with a one-byte prefix;
the parts that follow are fixed-size or self-delimiting, so prefix scans work on raw bytes. Heights are
4-byte big-endian so that they sort numerically. A user is known by a *user number* (``usernum``: given
at registration, never reused while the user exists, a LEB128 varint in keys: 2 bytes up to 16383 users,
3 up to two million), which keys the per-appointment entries instead of the 33-byte user id.

    w | locator(16) | usernum        -> appointment body    appointments under watch, found by locator
                                                            (``AppointmentRecord.encode_body``: what the
                                                            key and the user do not already say)
    f | ...                          -> ...                 the locator index and the counters (users,
                                                            appointments, trackers): snapshots and a journal
                                                            of deltas, layout in ``teos.storage.index``
    u | user_id(33)                  -> UserRecord          registered users (with their usernum)
    r | usernum                      -> user_id(33)         who a user number is
    n | user_id(33)                  -> u32 BE              how many ``h|`` entries the user has (written
                                                            with them; absent in databases that predate
                                                            it: they are then counted once)
    h | usernum | locator(16)        -> b""                 a user's appointments (watched or responded),
                                                            until they complete or the user is deleted
    x | height(4) | user_id(33)      -> b""                 users whose data is deleted at this height
                                                            (subscription_expiry + expiry_delta)
    t | uuid(20)                     -> TrackerRecord       penalties the Responder is following
    m | name (ascii)                 -> bytes               metadata:
      m | tower_id                   -> 33 bytes            the tower's public key (its id; not secret)
      m | tower_key                  -> 32 bytes            legacy: the secret key, written before the key
                                                            file became its only home; migrated, then deleted
      m | network                    -> ascii               the chain the database was made for ("regtest")
      m | schema                     -> u8                  the layout version: 2 (1, or absent: the layout
                                                            of ``teos.storage.migrate``, migrated at start)
      m | next_usernum               -> u64 BE              the number the next new user gets
      m | last_block:watcher         -> hash(32)|height(4)  the last block the engine processed
      m | last_block:responder       -> hash(32)|height(4)  legacy: written by earlier versions, always
                                                            equal to the above; read only in its absence
      m | recent:engine: | height(4) -> hash|prev|height    the record of recent blocks (reorgs while down)
    c | key                          -> bytes               the atomic store's namespace (paid towers):
                                                            teos.storage.atomic.LevelDBAtomicStore puts
                                                            every key it is given under ``c``. The payment
                                                            channels use, inside it:
        c | s | channel_id(36)       -> ChannelState        teos.payments.state (channel_id: funding txid
                                                            in internal order | vout u32 BE)
        c | k | channel_id(36)       -> ClaimRecord         the tower's claim of that channel, once decided
    g | channel_id(36) | nonce(4 BE) -> b""                 grant applied: the registration paid by that
                                                            payment was added to its user. Written by the
                                                            Gatekeeper in the same batch as the user record
                                                            it changes, so a grant is applied at most once
                                                            (see teos.payments.handler). Deleted with the
                                                            channel's record once it is forgotten.

Every read and write of ``w|`` and ``h|`` entries goes through ``teos.storage.watched``, which stages the
changes of watched appointments in the locator index in the same batch. The Watcher asks the index (in
memory, 4 bytes per appointment) which of a block's locators may be watched and seeks ``w|locator`` for
those only; the Gatekeeper reads ``u|user_id`` per request; expiry walks ``x|`` up to the tip;
``gettowerinfo`` and ``/metrics`` read the index's counters.

Left by earlier versions: ``a | locator(16) | uuid(20) -> AppointmentRecord`` and ``i | user_id(33) |
uuid(20) -> locator(16)``, moved to ``w|`` and ``h|`` by ``teos.storage.migrate`` at the first start (the
layout took 570 bytes per appointment with a 250-byte blob; this one about 370); ``l | locator(16) -> b""``
(a marker the Watcher read per locator) and ``m | n_appointments`` (the count of ``i|`` entries, now a
counter), deleted when the locator index is first built; ``m | n_users`` (the count of ``u|`` entries,
now a counter), deleted by the migration.
"""

from __future__ import annotations

import struct

from common.types import Locator, UserId, Uuid

APPOINTMENT = b"w"
LOCATOR_MARKER = b"l"  # legacy (see above)
INDEX = b"f"
USER = b"u"
USER_NUMBER = b"r"
USER_APPOINTMENT = b"h"
EXPIRY = b"x"
TRACKER = b"t"
USER_COUNT = b"n"
META = b"m"
ATOMIC = b"c"
GRANT = b"g"

# Metadata names (values documented beside each).
# 32-byte secp256k1 secret key, written by teosd before issue 13; only read to migrate it to the key file
# (see teos.towerkey), then deleted: the secret lives in the 0600 key file alone.
META_TOWER_KEY = b"m" + b"tower_key"
META_TOWER_ID = b"m" + b"tower_id"  # 33-byte compressed public key of the tower (its id), not secret
META_N_APPOINTMENTS = b"m" + b"n_appointments"  # legacy (see above)
META_N_USERS = b"m" + b"n_users"  # legacy (see above)
META_NETWORK = b"m" + b"network"  # ascii chain name the database was created for ("regtest", ...)
META_SCHEMA = b"m" + b"schema"  # u8: the layout version (see the module docstring)
META_NEXT_USERNUM = b"m" + b"next_usernum"  # u64 BE: the number the next new user gets
SCHEMA = 2

_HEIGHT = struct.Struct(">I")


# The last block the engine processed (written in each block's batch). Value: 32-byte block hash
# (internal order) followed by the 4-byte BE height. The name is historical: when the Watcher and the
# Responder each kept a pointer, this was the Watcher's.
META_LAST_BLOCK = META + b"last_block:watcher"
# The Responder's pointer, written by earlier versions in the same batches as META_LAST_BLOCK (so always
# equal to it); no longer written, and read only if META_LAST_BLOCK is missing.
META_LAST_BLOCK_LEGACY = META + b"last_block:responder"
# Prefix of the bounded record of recently processed blocks, keyed by height. Lets the engine walk back to
# a fork point after a restart even when bitcoind's best chain moved while the tower was down.
# Value: hash(32) | previous hash(32) | height(4 BE), hashes in internal order.
META_RECENT_BLOCKS = META + b"recent:engine:"


def meta_recent_block(height: int) -> bytes:
    return META_RECENT_BLOCKS + _HEIGHT.pack(height)


def varint(value: int) -> bytes:
    """LEB128: 7 bits a byte, low bits first; a set top bit means more bytes follow (self-delimiting, so
    no number's encoding is a prefix of another's: ``h|usernum`` prefixes never overlap)."""
    if value < 0:
        raise ValueError("a varint is not negative")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it; ValueError if ``data`` ends inside it."""
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def appointment(locator: Locator, usernum: int) -> bytes:
    return APPOINTMENT + locator.raw + varint(usernum)


def appointments_by_locator(locator: Locator) -> bytes:
    """Prefix of every appointment (of any user) for ``locator``."""
    return APPOINTMENT + locator.raw


def parse_appointment(key: bytes) -> tuple[Locator, int]:
    """(locator, usernum) of an ``w|`` key; ValueError if it is not one."""
    usernum, end = read_varint(key, 17)
    if end != len(key) or len(key) < 18:
        raise ValueError("not an appointment key")
    return Locator(key[1:17]), usernum


def user(user_id: UserId) -> bytes:
    return USER + user_id.raw


def user_number(usernum: int) -> bytes:
    return USER_NUMBER + varint(usernum)


def user_count(user_id: UserId) -> bytes:
    return USER_COUNT + user_id.raw


def usernum_of_user_number_key(key: bytes) -> int:
    usernum, end = read_varint(key, 1)
    if end != len(key):
        raise ValueError("not a user number key")
    return usernum


def user_appointment(usernum: int, locator: Locator) -> bytes:
    return USER_APPOINTMENT + varint(usernum) + locator.raw


def user_appointments(usernum: int) -> bytes:
    """Prefix of a user's appointment index."""
    return USER_APPOINTMENT + varint(usernum)


def locator_of_user_appointment_key(key: bytes) -> Locator:
    return Locator(key[-16:])


def expiry(height: int, user_id: UserId) -> bytes:
    return EXPIRY + _HEIGHT.pack(height) + user_id.raw


def parse_expiry(key: bytes) -> tuple[int, UserId]:
    (height,) = _HEIGHT.unpack_from(key, 1)
    return height, UserId(key[5:])


def expiry_upto(height: int) -> tuple[bytes, bytes]:
    """Key range [start, stop) of users whose deletion height is <= ``height``."""
    return EXPIRY, EXPIRY + _HEIGHT.pack(height + 1)


def tracker(uuid: Uuid) -> bytes:
    return TRACKER + uuid.raw


def uuid_of_tracker_key(key: bytes) -> Uuid:
    return Uuid(key[1:])


def grant(channel_id_raw: bytes, nonce: int) -> bytes:
    """Key of the marker saying that the payment ``nonce`` of a channel (36 raw id bytes) was granted."""
    if len(channel_id_raw) != 36:
        raise ValueError("a channel id is 36 bytes")
    return GRANT + channel_id_raw + _HEIGHT.pack(nonce)


def grants_of_channel(channel_id_raw: bytes) -> bytes:
    """Prefix of every grant marker of one channel."""
    return GRANT + channel_id_raw
