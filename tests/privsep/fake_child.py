"""A misbehaving child for the supervisor's tests (python -m fake_child --fd N --parent P MODE)."""

import socket
import struct
import sys
import time

import msgpack


def frame(obj) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return struct.pack("!I", len(body)) + body


def main() -> None:
    args = sys.argv[1:]
    sock = socket.socket(fileno=int(args[args.index("--fd") + 1]))
    mode = args[-1]
    if mode == "silent":
        time.sleep(60)                                  # never says hello
    sock.sendall(frame(["hello", {"pid": 1, "uid": 0, "notes": ""}]))
    sock.sendall(struct.pack("!I", 3) + b"\xc1\xc1\xc1")                     # not msgpack
    sock.sendall(frame(["outcome", {"id": "seven", "ok": True}]))            # wrong type
    sock.sendall(frame(["log", {"event": "fine", "level": "info", "text": "still here"}]))
    sock.sendall(struct.pack("!I", 1 << 30))                                 # a lying length
    time.sleep(60)                                      # alive: the parent must end it


if __name__ == "__main__":
    main()
