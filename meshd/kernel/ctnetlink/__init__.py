"""ctnetlink (conntrack over netlink), sans-I/O: a codec written for the hot path.

One room per part; a room imports only rooms above it in this list (parse
needs just the first two), and none imports the rest of meshd or does I/O:

    constants   the kernel's numbers: message types, CTA_* attributes, IPS_* bits
    netlink     framing all parts share: header layouts, the error types,
                attribute walking and building
    events      the hot path: events and dumps decoded into (key, attrs) with
                per-shape plans; the key's layout; merge_attrs, attr_value
    tuples      a tuple as raw fields and as the kernel writes it; key_tuple
    requests    delete, get, dump, flush and barrier requests; iter_acks
    nat         a NATed entry told to the kernel as CTA_NAT_* ranges
    create      encode_create(s): an entry rewritten for injection, per-shape plans
    parse       parse_entry: the full, slow decode for `meshctl dump` and tests
    expect      expectations (the helpers' expected connections): their key,
                master and helper read from attrs, create / delete / dump
                requests, parse_expect (their events are decoded in events)

Callers import the package, `from meshd.kernel import ctnetlink as ct`, and
use `ct.decode_into`, `ct.CTA_STATUS`, ...: every public name of the rooms is
re-exported here. A private name (a plan cache a test resets, the tuple
helpers the lab builds entries with) is imported from the room that owns it;
rebinding it anywhere else would not reach the code that reads it.

Errors: malformed input raises CtDecodeError, and only that; an NLMSG_ERROR
or NLMSG_OVERRUN in a stream of events raises its subclass CtNetlinkError,
which carries .errno.

Must not: hold code of its own (only the re-exports), do I/O (the sockets are
meshd/kernel/conntrack/'s), or import the rest of meshd.
"""

from . import constants
from .constants import *
from .create import (
    CREATE_ONLY,
    IPS_SETTABLE,
    NOT_INJECTED,
    encode_create,
    encode_creates,
    rewrite_timeout,
)
from .events import (
    DESTROY,
    DONE,
    DUMP_INTERRUPTED,
    EXP_DESTROY,
    EXP_NEW,
    NEW,
    UPDATE,
    CtEvent,
    CtKind,
    attr_value,
    decode_events,
    decode_into,
    merge_attrs,
)
from .expect import (
    EXPECT_NOT_INJECTED,
    encode_expect_create,
    encode_expect_delete,
    encode_expect_dump,
    expect_helper,
    expect_master_key,
    is_expect_key,
    parse_expect,
)
from .netlink import (
    HDR_LEN,
    NFGEN_LEN,
    CtDecodeError,
    CtNetlinkError,
    iter_attrs,
    nest,
    nla,
)
from .parse import parse_entry
from .requests import (
    encode_barrier,
    encode_delete,
    encode_dump,
    encode_flush,
    encode_get,
    iter_acks,
)
from .tuples import key_tuple

__all__ = constants.__all__ + [
    "CtDecodeError", "CtNetlinkError", "HDR_LEN", "NFGEN_LEN", "iter_attrs", "nla", "nest",
    "CtKind", "CtEvent", "NEW", "UPDATE", "DESTROY", "DONE", "DUMP_INTERRUPTED",
    "decode_events", "decode_into", "merge_attrs", "attr_value",
    "key_tuple",
    "encode_delete", "encode_get", "encode_dump", "encode_flush", "encode_barrier", "iter_acks",
    "IPS_SETTABLE", "NOT_INJECTED", "CREATE_ONLY", "encode_create", "encode_creates", "rewrite_timeout",
    "parse_entry",
    "EXP_NEW", "EXP_DESTROY", "EXPECT_NOT_INJECTED", "is_expect_key", "expect_master_key", "expect_helper",
    "encode_expect_create", "encode_expect_delete", "encode_expect_dump", "parse_expect",
]
