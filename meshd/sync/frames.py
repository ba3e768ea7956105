"""Sync frames: a 20-byte header, an AES-256-GCM sealed msgpack body.

See proto/sync.md for the layout, the key schedule and the body schemas; the
golden vectors are proto/vectors/sync.json.  Everything that can go wrong
with bytes from the network raises FrameError(reason); the reason is the
stats counter name.

    header (associated data)   version u8, type u8, key id u8, flags u8,
                               sender u32, epoch u32, boot id 16 bytes, counter u64
    sealed body                AES-256-GCM(frame key, nonce, msgpack body, header)
    frame key                  HKDF-SHA256(sync key of key id, salt "meshd sync frame v2",
                                           info "meshd sync frame key" || sender u32 || epoch u32
                                                || boot id)
    nonce                      sender u32 || counter u64

The boot id is 16 random bytes the sender draws at each start (os.urandom),
so no two starts share a frame key even when an epoch recurs (a lost
state_dir after a crash loop): the counter restarting at 1 never repeats a
(key, nonce) pair.  proto/sync.md, section 3, has the argument.

The counter is also the frame's *stamp*: records carry the state of a flow
as it was when their frame was sealed, so a receiver orders records by it.

Must not: keep replay state (meshd/replay.py; SyncCore.receive checks the window
before open()), know what a frame's records mean or which frames to send (the
core's parts do), or raise anything but FrameError on bytes from the network.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..crypto import KeyRing
from .digest import DIGEST_BYTES, NBUCKETS

VERSION = 2
HEADER = struct.Struct("!BBBBII16sQ")
HEADER_LEN = HEADER.size            # 36
TAG_LEN = 16
BOOT_ID_LEN = 16
OVERHEAD = HEADER_LEN + TAG_LEN     # 52 bytes around the msgpack body
MIN_DATAGRAM = 256                  # smaller max_datagram values are refused by SyncCore
FRAME_KEY_SALT = b"meshd sync frame v2"
FRAME_KEY_INFO = b"meshd sync frame key"
MAX_COUNTER = 2**64 - 1

# Stream kinds in supersedes and STATUS entries.
STREAM_MCAST = 0     # the sender's multicast stream of live changes
STREAM_DIRECT = 1    # the sender's stream to this receiver (resends, bulk, repairs)

# DATA controls.
CTL_BULK_BEGIN = 1   # (1, request id, instance, mcast base, direct base)
CTL_SWEEP = 2        # (2, bucket, start stamp, instance)


class FrameType(enum.IntEnum):
    DATA = 1
    STATUS = 2
    HEARTBEAT = 3
    DIGEST = 4
    RESYNC_REQUEST = 5
    REPAIR_REQUEST = 6
    ABOUT = 7
    BULK_INFO = 8


class FrameError(Exception):
    """A frame that must be dropped; `reason` is a short counter name."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True, slots=True)
class Header:
    type: int
    key_id: int
    flags: int
    sender: int
    epoch: int
    boot_id: bytes
    counter: int


# ------------------------------------------------------------------ keys and AEAD

def frame_key(sync_key: bytes, sender: int, epoch: int, boot_id: bytes) -> bytes:
    """The AES-256 key of one (sender, epoch, boot id): see proto/sync.md, section 3."""
    if len(boot_id) != BOOT_ID_LEN:
        raise ValueError(f"boot id must be {BOOT_ID_LEN} bytes")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=FRAME_KEY_SALT,
                info=FRAME_KEY_INFO + sender.to_bytes(4, "big") + epoch.to_bytes(4, "big") + boot_id
                ).derive(sync_key)


def nonce_for(sender: int, counter: int) -> bytes:
    return sender.to_bytes(4, "big") + counter.to_bytes(8, "big")


class FrameSealer:
    """Seals this node's frames.  One per start; owns the counter.

    The counter starts at 1 and never repeats within the start, and the frame
    key is bound to the start's boot id (16 random bytes), so a (frame key,
    nonce) pair is never used twice, even if the epoch recurs after a lost
    state_dir.
    """

    def __init__(self, keys: KeyRing, sender: int, epoch: int, boot_id: bytes):
        if len(boot_id) != BOOT_ID_LEN:
            raise ValueError(f"boot id must be {BOOT_ID_LEN} bytes")
        self.sender = sender
        self.epoch = epoch
        self.boot_id = boot_id
        self._nonce_prefix = sender.to_bytes(4, "big")
        self.counter = 0
        self.rekey(keys)

    def rekey(self, keys: KeyRing) -> None:
        """Seal under keys.send_id from the next frame on (a reload rotated the keys).

        The counter goes on: it is the nonce, so restarting it (a new sealer)
        would seal new frames under nonces that an earlier frame of this epoch
        already used, with the same frame key if the send key comes back
        (1 -> 2 -> 1), which breaks AES-GCM.  Running on, no nonce is ever
        used twice in the epoch, whatever the keys.
        """
        self.key_id = keys.send_id
        self._aead = AESGCM(frame_key(keys.send_key, self.sender, self.epoch, self.boot_id))

    def seal(self, ftype: int, body: bytes) -> bytes:
        self.counter += 1
        if self.counter > MAX_COUNTER:       # 2**64 frames: unreachable, but never wrap
            raise OverflowError("sync frame counter exhausted; restart with a new epoch")
        header = HEADER.pack(VERSION, ftype, self.key_id, 0, self.sender, self.epoch, self.boot_id,
                             self.counter)
        return header + self._aead.encrypt(self._nonce_prefix + self.counter.to_bytes(8, "big"),
                                           body, header)

    @property
    def next_counter(self) -> int:
        return self.counter + 1


def parse_header(data: bytes) -> Header:
    """Length and version only: every other field is trusted after open()."""
    if len(data) < OVERHEAD:
        raise FrameError("truncated", f"{len(data)} bytes, at least {OVERHEAD} needed")
    if data[0] != VERSION:
        raise FrameError("bad version", f"version {data[0]}, expected {VERSION}")
    _, ftype, key_id, flags, sender, epoch, boot_id, counter = HEADER.unpack_from(data)
    return Header(ftype, key_id, flags, sender, epoch, boot_id, counter)


class FrameOpener:
    """Opens frames; caches one AESGCM per (key id, sender, epoch, boot id).

    A cache entry is only added after a frame opened under it, so forged
    headers with made-up epochs cost a key derivation each but cannot push
    the real peers' keys out of the cache.
    """

    CACHE_LIMIT = 64

    def __init__(self, keys: KeyRing):
        self.keys = keys
        self._cache: dict[tuple[int, int, int, bytes], AESGCM] = {}

    def rekey(self, keys: KeyRing) -> None:
        """Open under `keys` from now on (a reload rotated the keys).

        Cached AESGCM objects of a key id that is gone, or whose secret
        changed, are dropped: a cache entry is a key, and keeping it would go
        on opening frames sealed under a key the operator removed.
        """
        self._cache = {ident: aead for ident, aead in self._cache.items()
                       if keys.get(ident[0]) is not None and keys.get(ident[0]) == self.keys.get(ident[0])}
        self.keys = keys

    def open(self, data: bytes, header: Header) -> bytes:
        """Check the key id and the tag; return the plaintext body."""
        ident = (header.key_id, header.sender, header.epoch, header.boot_id)
        aead = self._cache.get(ident)
        fresh = aead is None
        if fresh:
            key = self.keys.get(header.key_id)
            if key is None:
                raise FrameError("unknown key", f"key id {header.key_id}")
            aead = AESGCM(frame_key(key, header.sender, header.epoch, header.boot_id))
        try:
            body = aead.decrypt(nonce_for(header.sender, header.counter), data[HEADER_LEN:],
                                data[:HEADER_LEN])
        except InvalidTag:
            raise FrameError("bad tag", f"from node {header.sender} key id {header.key_id}") from None
        if fresh:
            if len(self._cache) >= self.CACHE_LIMIT:
                self._cache.pop(next(iter(self._cache)))
            self._cache[ident] = aead
        return body

    def check_fields(self, header: Header) -> None:
        """Authenticated header fields: a bad value is a peer bug, not an attack."""
        if header.type not in _BODY_DECODERS:
            raise FrameError("bad type", f"type {header.type}")
        if header.flags != 0:
            raise FrameError("bad flags", f"flags {header.flags:#x}")
        if header.sender == 0:
            raise FrameError("bad id", "sender node id 0")
        if header.counter == 0:
            raise FrameError("bad counter", "counter 0 is never sent")


# ------------------------------------------------------------------ bodies
#
# Every body is a msgpack array (a tuple after decoding, use_list=False);
# byte strings are msgpack bin, integers unsigned.  Decoders check the whole
# shape so that the core only ever sees well-formed values.

_packer = msgpack.Packer(use_bin_type=True)
packb = _packer.pack


def _unpack(body: bytes):
    try:
        return msgpack.unpackb(body, use_list=False, raw=False, strict_map_key=True)
    except Exception as e:      # msgpack raises several unrelated types on bad input
        raise FrameError("bad body", f"msgpack: {type(e).__name__}") from None


def _bad(what: str):
    raise FrameError("bad body", what)


def _is_uint(x, bits: int = 64) -> bool:
    return type(x) is int and 0 <= x < (1 << bits)


def _array(x, n: int, what: str) -> tuple:
    if type(x) is not tuple or len(x) != n:
        _bad(f"{what}: expected an array of {n}")
    return x


def _uints(values, what: str, bits: int = 64) -> None:
    for v in values:
        if type(v) is not int or not 0 <= v < (1 << bits):
            _bad(f"{what}: expected unsigned integers")


def _ranges(x, what: str) -> tuple:
    if type(x) is not tuple:
        _bad(f"{what}: expected an array")
    for r in x:
        if type(r) is not tuple or len(r) != 2:
            _bad(f"{what}: expected [lo, hi] pairs")
        lo, hi = r
        if not (_is_uint(lo) and _is_uint(hi) and 1 <= lo <= hi):
            _bad(f"{what}: expected 1 <= lo <= hi")
    return x


def _records(x) -> tuple:
    if type(x) is not tuple:
        _bad("records: expected an array")
    for r in x:
        if type(r) is not tuple or len(r) != 2:
            _bad("records: expected [key, attrs or nil]")
        k, a = r
        if type(k) is not bytes or not k:
            _bad("records: key must be non-empty bin")
        if a is not None and (type(a) is not bytes or not a):
            _bad("records: attrs must be non-empty bin, or nil for a flow that is gone")
    return x


def _directs(x) -> tuple:
    if type(x) is not tuple:
        _bad("directs: expected an array")
    for d in x:
        if type(d) is not tuple or len(d) != 3:
            _bad("directs: expected [peer, peer epoch, high]")
        _uints(d, "directs", 64)
        if d[0] == 0 or d[0] >= 1 << 32 or d[1] >= 1 << 32:
            _bad("directs: bad peer or epoch")
    return x


def _decode_data(v) -> tuple:
    target, target_epoch, seq, records, supersedes, controls = _array(v, 6, "DATA")
    if not (_is_uint(target, 32) and _is_uint(target_epoch, 32) and _is_uint(seq) and seq >= 1):
        _bad("DATA: target, target epoch, seq")
    if target == 0 and target_epoch != 0:
        _bad("DATA: a multicast frame has target epoch 0")
    _records(records)
    if type(supersedes) is not tuple:
        _bad("supersedes: expected an array")
    for s in supersedes:
        if type(s) is not tuple or len(s) != 4:
            _bad("supersedes: expected [stream, lo, hi, deps]")
        kind, lo, hi, deps = s
        if kind not in (STREAM_MCAST, STREAM_DIRECT) or type(kind) is not int:
            _bad("supersedes: unknown stream")
        if not (_is_uint(lo) and _is_uint(hi) and 1 <= lo <= hi):
            _bad("supersedes: expected 1 <= lo <= hi")
        _ranges(deps, "supersedes deps")
        if deps and max(d[1] for d in deps) >= seq:
            _bad("supersedes deps: must be frames before this one")
    if supersedes and target == 0:
        _bad("supersedes: only on direct frames")
    if type(controls) is not tuple:
        _bad("controls: expected an array")
    if controls and target == 0:
        _bad("controls: only on direct frames")
    for c in controls:
        if type(c) is not tuple or not c:
            _bad("controls: expected arrays")
        _uints(c, "controls")
        if c[0] == CTL_BULK_BEGIN:
            if len(c) != 5 or c[2] == 0:
                _bad("BULK_BEGIN: [1, request id, instance >= 1, mcast base, direct base]")
        elif c[0] == CTL_SWEEP:
            if len(c) != 4 or c[1] >= NBUCKETS or c[2] == 0:
                _bad("SWEEP: [2, bucket < 256, start >= 1, instance]")
        else:
            _bad(f"controls: unknown control {c[0]}")
    return v


def _decode_status(v) -> tuple:
    origin_epoch, streams = _array(v, 2, "STATUS")
    if not _is_uint(origin_epoch, 32) or type(streams) is not tuple or len(streams) > 2:
        _bad("STATUS: origin epoch, streams")
    for s in streams:
        kind, cum, high, start, bitmap = _array(s, 5, "STATUS stream")
        if kind not in (STREAM_MCAST, STREAM_DIRECT) or type(kind) is not int \
                or not _is_uint(cum) or not _is_uint(high) or cum > high or not _is_uint(start):
            _bad("STATUS stream: kind, cum <= high, start")
        if type(bitmap) is not bytes:
            _bad("STATUS stream: bitmap must be bin")
        if bitmap:
            # Asked-for seqs lie in (cum, high]: the first and last set bits say.
            first = next(i for i, byte in enumerate(bitmap) if byte)
            last = max(i for i, byte in enumerate(bitmap) if byte)
            lo = start + 8 * first + (8 - bitmap[first].bit_length())
            hi = start + 8 * last + 7 - ((bitmap[last] & -bitmap[last]).bit_length() - 1)
            if lo <= cum or hi > high:
                _bad("STATUS bitmap: asked-for seqs must lie in (cum, high]")
    return v


def _decode_heartbeat(v) -> tuple:
    mcast_high, directs, ask, echoes = _array(v, 4, "HEARTBEAT")
    if not _is_uint(mcast_high) or ask not in (0, 1) or type(ask) is not int:
        _bad("HEARTBEAT: mcast high, ask 0 or 1")
    _directs(directs)
    if type(echoes) is not tuple:
        _bad("echoes: expected an array")
    for e in echoes:
        if type(e) is not tuple or len(e) != 2 or not _is_uint(e[0], 32) or e[0] == 0 \
                or type(e[1]) is not bytes or len(e[1]) != BOOT_ID_LEN:
            _bad("echoes: expected [peer, 16-byte boot id]")
    return v


def _decode_digest(v) -> tuple:
    mcast_high, directs, first, blob = _array(v, 4, "DIGEST")
    if not _is_uint(mcast_high) or not _is_uint(first, 8):
        _bad("DIGEST: mcast high, first bucket")
    _directs(directs)
    if type(blob) is not bytes or not blob or len(blob) % DIGEST_BYTES \
            or first + len(blob) // DIGEST_BYTES > NBUCKETS:
        _bad("DIGEST: digests must be 8 bytes per bucket, within 256 buckets")
    return v


def _decode_resync_request(v) -> tuple:
    (request_id,) = _array(v, 1, "RESYNC_REQUEST")
    if not _is_uint(request_id) or request_id == 0:
        _bad("RESYNC_REQUEST: request id >= 1")
    return v


def _decode_repair_request(v) -> tuple:
    origin_epoch, bitmap = _array(v, 2, "REPAIR_REQUEST")
    if not _is_uint(origin_epoch, 32) or type(bitmap) is not bytes or len(bitmap) != NBUCKETS // 8:
        _bad("REPAIR_REQUEST: origin epoch, 32-byte bucket bitmap")
    return v


# ABOUT (4.7): who the sender is, its groups as it sees them, and the settings
# every node must agree on (meshd/config/shared.py), as text.
ABOUT_STATES = ("INIT", "BACKUP", "MASTER", "FAULT", "DISABLED")
ABOUT_NAME_MAX = 64
ABOUT_VERSION_MAX = 32
ABOUT_GROUPS_MAX = 255
ABOUT_SETTINGS_MAX = 512
ABOUT_SETTING_NAME_MAX = 128
ABOUT_SETTING_VALUE_MAX = 256
ABOUT_DIGEST_LEN = 16


def _short_str(x, limit: int) -> bool:
    return type(x) is str and len(x) <= limit


def _decode_about(v) -> tuple:
    name, version, groups, digest, settings, complete = _array(v, 6, "ABOUT")
    if not _short_str(name, ABOUT_NAME_MAX) or not _short_str(version, ABOUT_VERSION_MAX):
        _bad(f"ABOUT: name (at most {ABOUT_NAME_MAX}) and version (at most {ABOUT_VERSION_MAX}) strings")
    if type(groups) is not tuple or len(groups) > ABOUT_GROUPS_MAX:
        _bad(f"ABOUT: groups, an array of at most {ABOUT_GROUPS_MAX}")
    for g in groups:
        if type(g) is not tuple or len(g) != 3 or not _is_uint(g[0], 16) or g[0] == 0 \
                or g[1] not in ABOUT_STATES or type(g[1]) is not str or not _is_uint(g[2], 32):
            _bad("ABOUT: groups: [id 1..65535, state, demotion]")
    if type(digest) is not bytes or len(digest) != ABOUT_DIGEST_LEN:
        _bad(f"ABOUT: settings digest, {ABOUT_DIGEST_LEN} bytes")
    if type(settings) is not tuple or len(settings) > ABOUT_SETTINGS_MAX:
        _bad(f"ABOUT: settings, an array of at most {ABOUT_SETTINGS_MAX}")
    for pair in settings:
        if type(pair) is not tuple or len(pair) != 2 or not _short_str(pair[0], ABOUT_SETTING_NAME_MAX) \
                or not _short_str(pair[1], ABOUT_SETTING_VALUE_MAX):
            _bad("ABOUT: settings: [name, value] strings")
    if complete not in (0, 1) or type(complete) is not int:
        _bad("ABOUT: complete 0 or 1")
    return v


# BULK_INFO (4.8): the size of the bulk that answers a request.
def _decode_bulk_info(v) -> tuple:
    request_id, instance, entries = _array(v, 3, "BULK_INFO")
    if not (_is_uint(request_id) and request_id >= 1 and _is_uint(instance) and instance >= 1
            and _is_uint(entries)):
        _bad("BULK_INFO: request id >= 1, instance >= 1, entries")
    return v


_BODY_DECODERS = {
    FrameType.DATA: _decode_data,
    FrameType.STATUS: _decode_status,
    FrameType.HEARTBEAT: _decode_heartbeat,
    FrameType.DIGEST: _decode_digest,
    FrameType.RESYNC_REQUEST: _decode_resync_request,
    FrameType.REPAIR_REQUEST: _decode_repair_request,
    FrameType.ABOUT: _decode_about,
    FrameType.BULK_INFO: _decode_bulk_info,
}


def decode_body(ftype: int, plaintext: bytes) -> tuple:
    return _BODY_DECODERS[ftype](_unpack(plaintext))


# ------------------------------------------------------------------ convenience

@dataclass(frozen=True)
class Frame:
    header: Header
    body: tuple


def decode_frame(data: bytes, keys: KeyRing, opener: FrameOpener | None = None) -> Frame:
    """Parse, open and validate one datagram (no replay check: that needs history).

    The order of checks is the order of the reject reasons in proto/sync.md.
    """
    header = parse_header(data)
    opener = opener or FrameOpener(keys)
    plaintext = opener.open(data, header)
    opener.check_fields(header)
    return Frame(header, decode_body(header.type, plaintext))


def encode_frame(keys: KeyRing, sender: int, epoch: int, counter: int, ftype: int, body: tuple,
                 *, boot_id: bytes = bytes(BOOT_ID_LEN), key_id: int | None = None, flags: int = 0,
                 version: int = VERSION) -> bytes:
    """Seal one frame with an explicit counter (tests and vectors; the core uses FrameSealer)."""
    kid = keys.send_id if key_id is None else key_id
    header = HEADER.pack(version, ftype, kid, flags, sender, epoch, boot_id, counter)
    aead = AESGCM(frame_key(keys.get(kid), sender, epoch, boot_id))
    return header + aead.encrypt(nonce_for(sender, counter), packb(body), header)
