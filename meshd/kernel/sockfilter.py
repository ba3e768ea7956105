"""Classic BPF socket filters that admit datagrams by source address.

Why in the kernel: under a flood of forged datagrams the receive queue of a
UDP socket fills faster than Python empties it, and the kernel then drops
arrivals without looking at them, the master's adverts among them.  A socket
filter runs before the datagram is queued (udp_queue_rcv_skb), so what it
refuses costs no queue space and no system call.

The program (one block per admitted source, then a random sample):

    for each source:  load the source address word by word (the IP header,
                      at SKF_NET_OFF), compare; all equal: accept
    sample:           load a random word (SKF_AD_RANDOM), keep its low
                      `sample_shift` bits; zero: accept
    refuse

Blocks end with a long jump (BPF_JA, 32-bit offset) to the accept, so that
the 8-bit conditional offsets never have to reach past one block.
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
import struct

import trio

SO_ATTACH_FILTER = 26
SO_DETACH_FILTER = 27

SKF_AD_OFF = -0x1000
SKF_AD_RANDOM = 56
SKF_NET_OFF = -0x100000

BPF_LD_W_ABS = 0x00 | 0x00 | 0x20       # BPF_LD | BPF_W | BPF_ABS
BPF_JEQ_K = 0x05 | 0x10 | 0x00          # BPF_JMP | BPF_JEQ | BPF_K
BPF_JA = 0x05 | 0x00                    # BPF_JMP | BPF_JA
BPF_AND_K = 0x04 | 0x50 | 0x00          # BPF_ALU | BPF_AND | BPF_K
BPF_RET_K = 0x06 | 0x00

ACCEPT = 0xFFFFFFFF                     # keep the whole datagram
REFUSE = 0
BPF_MAXINSNS = 4096
# Where the source address starts in each family's header.
SOURCE_OFFSET = {4: 12, 6: 8}


class FilterError(ValueError):
    """A filter that cannot be built (too many sources, a wrong family)."""


def source_filter(family: int, sources, sample_shift: int | None) -> list[tuple[int, int, int, int]]:
    """The program, as (code, jt, jf, k) instructions.

    Args:
        family: 4 or 6, the socket's (an address of the other family is an error).
        sources: the addresses admitted.
        sample_shift: admit also one in 2**sample_shift of the other datagrams
            (0: every datagram; None: none of them).
    """
    if family not in SOURCE_OFFSET:
        raise FilterError(f"family {family}: 4 or 6")
    prog: list[tuple[int, int, int, int]] = []
    jumps: list[int] = []                    # indexes of the jumps to the accept
    for text in sources:
        addr = ipaddress.ip_address(text)
        if addr.version != family:
            raise FilterError(f"{text} is not an IPv{family} address")
        words = struct.unpack(f"!{len(addr.packed) // 4}I", addr.packed)
        block = 2 * len(words) + 1           # loads and compares, then the jump
        for i, word in enumerate(words):
            prog.append((BPF_LD_W_ABS, 0, 0, SKF_NET_OFF + SOURCE_OFFSET[family] + 4 * i))
            # Equal: on to the next word; different: past this block.
            left = block - 2 * (i + 1)
            prog.append((BPF_JEQ_K, 0, left, word))
        jumps.append(len(prog))
        prog.append((BPF_JA, 0, 0, 0))        # offset filled in below
    if sample_shift is not None:
        if not 0 <= sample_shift <= 31:
            raise FilterError(f"sample_shift {sample_shift}: 0 to 31")
        prog.append((BPF_LD_W_ABS, 0, 0, SKF_AD_OFF + SKF_AD_RANDOM))
        prog.append((BPF_AND_K, 0, 0, (1 << sample_shift) - 1))
        prog.append((BPF_JEQ_K, 1, 0, 0))    # zero: to the accept
    prog.append((BPF_RET_K, 0, 0, REFUSE))
    accept = len(prog)
    prog.append((BPF_RET_K, 0, 0, ACCEPT))
    for j in jumps:
        prog[j] = (BPF_JA, 0, 0, accept - j - 1)
    if len(prog) > BPF_MAXINSNS:
        raise FilterError(f"{len(prog)} instructions, the kernel takes {BPF_MAXINSNS}")
    return prog


def attach(sock: socket.socket, program: list[tuple[int, int, int, int]]) -> None:
    """Replace the socket's filter (raises OSError)."""
    # k is a u32: the negative SKF_* offsets as the kernel reads them.
    raw = b"".join(struct.pack("=HBBI", code, jt, jf, k & 0xFFFFFFFF) for code, jt, jf, k in program)
    buf = ctypes.create_string_buffer(raw, len(raw))
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }
    fprog = struct.pack("@HP", len(program), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)   # the kernel copies it


def detach(sock: socket.socket) -> None:
    """Remove the socket's filter; a socket with none is left as it is."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
    except OSError as e:
        if e.errno != 2:                      # ENOENT: no filter attached
            raise


def apply_guard(guard, sockets: dict, log, event: str) -> None:
    """Attach or remove the filter on each socket ({family: socket}) as a
    FloodGuard (meshd/floodguard.py) says, and log the change as `event`.
    A socket that refuses is logged (`EVENT_error`) and left as it was."""
    for family, s in sockets.items():
        try:
            if guard.engaged:
                admitted = [a for a in guard.admitted if ipaddress.ip_address(a).version == family]
                attach(s, source_filter(family, admitted, guard.sample_shift))
            else:
                detach(s)
        except (OSError, ValueError) as e:
            log(f"{event}_error", level="warning", family=family, error=str(e))
    if guard.engaged:
        log(event, level="warning", engaged=True, rejects_per_s=round(guard.last_rate),
            admitted=",".join(guard.admitted) or "-",
            sampled=f"1 in {1 << guard.sample_shift} of the other datagrams")
    else:
        log(event, engaged=False, rejects_per_s=round(guard.last_rate))


async def guard_clock(guard, on_change) -> None:
    """Time for a FloodGuard when nothing arrives (a flood that stopped sends
    nothing to count): a tick a second, `on_change()` when the filter must change."""
    while True:
        await trio.sleep(1.0)
        if guard.tick(trio.current_time()):
            on_change()
