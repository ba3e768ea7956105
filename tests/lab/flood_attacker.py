"""The flood attacker of tests/lab/test_flood_lab.py, run inside a lab namespace.

    python3 flood_attacker.py adverts|frames IFACE DST PORT SRC_NET RATE SECONDS [SENDER]

It first sniffs IFACE (an AF_PACKET socket) for a second for real datagrams
to PORT, then sends RATE forged datagrams per second to DST:PORT for
SECONDS, through a raw socket (IP_HDRINCL) so that every datagram can have
its own source address in SRC_NET (a /24 prefix such as "192.0.2"; "=" for
the namespace's own address on IFACE, which a sync-link attacker spoofs as
the peer).  The mix, a third each: random bytes; a valid header (a captured
one, counter and tail changed, for frames its sender set to SENDER) with a
bad MAC or tag; replays of captured datagrams (for frames, those that came
from the address it spoofs, when it saw any).  At the end it prints one JSON line: what it captured and sent,
and the rate it achieved.

Must not: send anything but to DST:PORT, or run longer than SECONDS + the
sniffing second.
"""

from __future__ import annotations

import json
import random
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003      # only ETH_P_ALL taps see outgoing packets too
ETH_P_IP = 0x0800
BATCH_S = 0.005


def sniff(iface: str, port: int, seconds: float) -> list[tuple[bytes, str]]:
    """(payload, source address) of the UDP datagrams to `port` seen on iface."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
    s.bind((iface, ETH_P_ALL))
    s.settimeout(0.05)
    got: list[tuple[bytes, str]] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end and len(got) < 2000:
        try:
            pkt, addr = s.recvfrom(65535)
        except TimeoutError:
            continue
        if addr[1] != ETH_P_IP:
            continue
        ihl = (pkt[0] & 15) * 4
        if pkt[9] != socket.IPPROTO_UDP or len(pkt) < ihl + 8:
            continue
        dport = struct.unpack_from("!H", pkt, ihl + 2)[0]
        if dport == port:
            got.append((pkt[ihl + 8:], socket.inet_ntoa(pkt[12:16])))
    s.close()
    return got


def forged(kind: str, captured: list[bytes], replays: list[bytes], sender: int | None,
           rng: random.Random) -> bytes:
    r = rng.randrange(3)
    if r == 2 and replays:
        return rng.choice(replays)                              # replay
    if r >= 1 and captured:
        base = bytearray(rng.choice(captured))                  # valid header, bad MAC / tag
        if kind == "adverts":
            base[32:40] = rng.getrandbits(64).to_bytes(8, "big")        # counter
            base[40:] = rng.randbytes(len(base) - 40)                   # MAC
        else:
            if sender is not None:
                base[4:8] = sender.to_bytes(4, "big")
            base[12:20] = (rng.getrandbits(40) + 1).to_bytes(8, "big")  # counter
            base[20:] = rng.randbytes(len(base) - 20)                   # ciphertext and tag
        return bytes(base)
    return rng.randbytes(72 if kind == "adverts" and rng.random() < 0.5 else rng.randint(1, 300))


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def packet(src: str, dst: str, port: int, payload: bytes, ident: int) -> bytes:
    udp = struct.pack("!HHHH", 40000 + ident % 20000, port, 8 + len(payload), 0) + payload
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), ident & 0xFFFF, 0, 255,
                      socket.IPPROTO_UDP, 0, socket.inet_aton(src), socket.inet_aton(dst))
    return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:] + udp


def own_address(iface: str) -> str:
    import fcntl
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        raw = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", iface.encode()[:15]))   # SIOCGIFADDR
    finally:
        s.close()
    return socket.inet_ntoa(raw[20:24])


def main(argv: list[str]) -> int:
    kind, iface, dst, port, src_net, rate, seconds, *rest = argv
    sender = int(rest[0]) if rest else None
    port, rate, seconds = int(port), float(rate), float(seconds)
    rng = random.Random(1)
    own = own_address(iface)
    captured = sniff(iface, port, 1.0)
    # A sync-link attacker replays the peer it impersonates (its own address here).
    replays = [d for d, src in captured if src_net != "=" or src == own]
    captured = [d for d, _src in captured]
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, iface.encode())
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    if dst.startswith("224."):
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(own))
    # Precomputed: building a packet costs more than sending it.
    pool = []
    for i in range(20000):
        src = own if src_net == "=" else f"{src_net}.{rng.randint(2, 250)}"
        pool.append(packet(src, dst, port, forged(kind, captured, replays, sender, rng), i))
    per_batch = max(1, int(rate * BATCH_S))
    sent = errors = 0
    start = time.monotonic()
    end = start + seconds
    next_at = start
    i = 0
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if now < next_at:
            time.sleep(next_at - now)
        for _ in range(per_batch):
            try:
                s.sendto(pool[i], (dst, 0))
                sent += 1
            except OSError:
                errors += 1
            i = (i + 1) % len(pool)
        next_at += BATCH_S
    took = time.monotonic() - start
    print(json.dumps({"kind": kind, "captured": len(captured), "replayable": len(replays), "sent": sent, "errors": errors,
                      "seconds": round(took, 3), "rate": round(sent / took)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
