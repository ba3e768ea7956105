"""An unprivileged local user on a firewall node, for tests/lab/test_local_users_lab.py.

Run as root inside a node's namespace (`ip netns exec`) with any python 3;
it drops to uid/gid nobody (no supplementary groups, no capabilities) before
it does anything else, then, as that user:

1. tries to read the files of the plan (the cluster secret) and to connect
   to its control sockets;
2. tries to bind every (port, address) of the plan with SO_REUSEADDR,
   SO_REUSEPORT and both (and IPv6 with and without V6ONLY), joining the
   multicast groups of the plan on the sockets it got;
3. sends the plan's forged datagrams to the node's own ports, with TTL 255;
4. listens for `listen_s` seconds on every socket it got.

It prints one JSON object: uid, CapEff, what each read and connect gave, each bind
attempt's outcome and the datagrams each bound socket received.  Plain
standard library: it must run under the system python, whose files nobody
can read (a pyenv under /root cannot be).

Must not: import meshd (the plan carries what it needs), or run as root past
the first lines.
"""

import json
import os
import select
import socket
import struct
import sys
import time

NOBODY = 65534
OPTIONS = {"SO_REUSEADDR": [socket.SO_REUSEADDR], "SO_REUSEPORT": [socket.SO_REUSEPORT],
           "SO_REUSEADDR+SO_REUSEPORT": [socket.SO_REUSEADDR, socket.SO_REUSEPORT]}


def drop_privileges() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    if os.getuid() == 0 or os.geteuid() == 0:
        raise SystemExit("local_user: still root after setuid")


def cap_eff() -> str:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return line.split()[1]
    return "?"


def try_read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.read()
        return "read"
    except OSError as e:
        return e.strerror


def try_connect(path: str) -> str:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return "connected"
    except OSError as e:
        return e.strerror
    finally:
        s.close()


def join(s: socket.socket, group: str, ifindex: int) -> str:
    try:
        if ":" in group:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP,
                         socket.inet_pton(socket.AF_INET6, group) + struct.pack("=I", ifindex))
        else:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                         socket.inet_aton(group) + struct.pack("=4si", b"\0" * 4, ifindex))
        return "joined"
    except OSError as e:
        return e.strerror


def bind_all(plan: dict) -> tuple[list[dict], list[tuple[socket.socket, dict]]]:
    attempts, bound = [], []
    for port in plan["ports"]:
        targets = [(socket.AF_INET, a, None) for a in plan["addresses4"]]
        targets += [(socket.AF_INET6, a, only) for a in plan["addresses6"] for only in (0, 1)]
        for family, address, v6only in targets:
            for name, options in OPTIONS.items():
                s = socket.socket(family, socket.SOCK_DGRAM)
                attempt = {"port": port, "address": address, "options": name}
                if v6only is not None:
                    attempt["v6only"] = v6only
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
                try:
                    for opt in options:
                        s.setsockopt(socket.SOL_SOCKET, opt, 1)
                    s.bind((address, port))
                except OSError as e:
                    attempt["bind"] = e.strerror
                    s.close()
                    attempts.append(attempt)
                    continue
                attempt["bind"] = "bound"
                attempt["joined"] = {g: join(s, g, plan["ifindex"][g]) for g in plan["groups"]
                                     if (":" in g) == (family == socket.AF_INET6)}
                attempt["received"] = 0
                s.setblocking(False)
                bound.append((s, attempt))
                attempts.append(attempt)
    return attempts, bound


def send_forgeries(plan: dict) -> list[dict]:
    sent = []
    for f in plan["forgeries"]:
        family = socket.AF_INET6 if ":" in f["to"] else socket.AF_INET
        s = socket.socket(family, socket.SOCK_DGRAM)
        outcome = {"what": f["what"], "from": f["from"], "to": f["to"], "port": f["port"]}
        try:
            if family == socket.AF_INET:
                s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 255)
            else:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
            s.bind((f["from"], 0))
            for _ in range(f["copies"]):
                s.sendto(bytes.fromhex(f["data"]), (f["to"], f["port"]))
            outcome["sent"] = f["copies"]
        except OSError as e:
            outcome["sent"] = 0
            outcome["error"] = e.strerror
        finally:
            s.close()
        sent.append(outcome)
    return sent


def listen(bound: list[tuple[socket.socket, dict]], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    by_fd = {s.fileno(): (s, a) for s, a in bound}
    while by_fd and time.monotonic() < deadline:
        ready, _, _ = select.select(list(by_fd), [], [], max(0.0, deadline - time.monotonic()))
        for fd in ready:
            s, attempt = by_fd[fd]
            try:
                while True:
                    s.recvfrom(4096)
                    attempt["received"] += 1
            except BlockingIOError:
                pass
    if not by_fd:
        time.sleep(seconds)


def main() -> None:
    plan = json.loads(sys.argv[1])
    drop_privileges()
    result = {"uid": os.getuid(), "euid": os.geteuid(), "cap_eff": cap_eff(),
              "files": {p: try_read(p) for p in plan["files"]},
              "control": {p: try_connect(p) for p in plan["control_sockets"]}}
    result["binds"], bound = bind_all(plan)
    result["forgeries"] = send_forgeries(plan)
    listen(bound, plan["listen_s"])
    for s, _ in bound:
        s.close()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
