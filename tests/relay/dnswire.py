"""DNS messages for the relay's tests, built with struct (dnslib is not a
dependency): queries, A answers, and the pieces to break them with.

Written apart from meshd/relay/dns.py on purpose: a test that built its
packets with the code under test would agree with any bug in it.
"""

from __future__ import annotations

import socket
import struct

TYPE_A = 1
TYPE_AAAA = 28
CLASS_IN = 1
QR = 0x8000
RD = 0x0100
RA = 0x0080


def encode_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode("ascii")
    return out + b"\x00"


def header(msg_id: int, flags: int, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", msg_id, flags, qd, an, ns, ar)


def query(msg_id: int, name: str, qtype: int = TYPE_A, qclass: int = CLASS_IN,
          flags: int = RD) -> bytes:
    return header(msg_id, flags) + encode_name(name) + struct.pack("!HH", qtype, qclass)


def answer_a(msg_id: int, name: str, address: str, qtype: int = TYPE_A, ttl: int = 60,
             flags: int = QR | RD | RA, rcode: int = 0) -> bytes:
    """An answer with one A record; the answer's name is a compression
    pointer to the question (offset 12), as servers write it."""
    question = encode_name(name) + struct.pack("!HH", qtype, CLASS_IN)
    record = struct.pack("!HHHIH", 0xC00C, TYPE_A, CLASS_IN, ttl, 4) + socket.inet_aton(address)
    return header(msg_id, flags | rcode, an=1) + question + record


def message_id(data: bytes) -> int:
    return struct.unpack_from("!H", data)[0]


def rcode(data: bytes) -> int:
    return struct.unpack_from("!H", data, 2)[0] & 0xF


def flags(data: bytes) -> int:
    return struct.unpack_from("!H", data, 2)[0]


def question_of(data: bytes) -> tuple[str, int, int]:
    """(name, qtype, qclass) of a message's first question (uncompressed)."""
    offset, labels = 12, []
    while data[offset]:
        n = data[offset]
        labels.append(data[offset + 1:offset + 1 + n].decode("ascii"))
        offset += 1 + n
    qtype, qclass = struct.unpack_from("!HH", data, offset + 1)
    return ".".join(labels), qtype, qclass


def a_address(data: bytes) -> str:
    """The address of the last A record of an answer written by answer_a()."""
    return socket.inet_ntoa(data[-4:])


def frame(data: bytes) -> bytes:
    """RFC 1035 4.2.2: a 2-byte length, then the message (DNS over TCP)."""
    return struct.pack("!H", len(data)) + data
