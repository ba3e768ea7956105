"""The reference system meshd is benchmarked against: keepalived + conntrackd.

This is the setup conntrack-tools documents for a primary-backup firewall pair
(doc/sync/primary-backup.sh, doc/sync/keepalived.conf), on the netns lab:

- keepalived (VRRPv3, `--vrrp` only) in each fw namespace: VRID 1 on lan0 with
  192.0.2.1/24, VRID 2 on srv0 with 198.51.100.1/24, the IPv6 addresses as
  excluded (not advertised) addresses of the same instances, both instances in
  one sync group whose notify script runs the documented conntrackd steps;
- conntrackd (FTFW over unicast UDP on sync0) in each fw namespace.

Everything a node needs lives in `RUN_DIR/ref-fwN/`: configs, notify script,
lock file, UNIX socket, logs.  Nothing on the host is read or written (no
/etc/keepalived, /etc/conntrackd, /var/lock, /run pid files), nothing is started
through the host's init system, and the daemons are tracked and signalled by pid.

The class below is the interface the benchmark harness (meshlab.bench) drives
side by side with meshd.  conntrackd's FTFW protocol has one sequence stream and
no node id in its header, so a reference cluster is two nodes, never three.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from .procs import Procs
from .topology import (
    LAN_VIRTUAL,
    SRV_VIRTUAL,
    SYNC4,
    VIRTUAL_ADDRESSES,
    Lab,
    LabError,
    nsexec,
    run,
)

SYNC_PORT = 3780                    # conntrackd's documented default UDP port
PACKAGES = {"keepalived": "keepalived", "conntrackd": "conntrackd"}    # binary -> Debian package
SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")

# VRRPv3 priorities.  A backup waits 3 x advert + (256 - priority) / 256 x advert before it
# takes over; 246 makes fw2's skew 10/256 of an advert, the same as meshd's advskew 10 in
# the lab (meshd_node.default_groups), so both systems are timed with equal settings.
PRIORITY = {1: 254, 2: 246}
VRID = {"lan": 1, "srv": 2}

# conntrackd cache sizes for the benchmark's largest table (500k cached entries, 1M allowed):
# HashLimit is the most entries one cache may hold (the docs say twice nf_conntrack_max);
# HashSize the buckets (chained), so a few entries per bucket at 1M.
HASH_SIZE = 262144
HASH_LIMIT = 2097152
NETLINK_BUFFER = 16 << 20           # event socket: 16 MiB at start ...
NETLINK_BUFFER_MAX = 128 << 20      # ... doubled on overrun up to 128 MiB
SOCKET_BUFFER = 8 << 20             # UDP send/receive buffers on the sync link

START_TIMEOUT = 20.0
CLIENT_TIMEOUT = 10.0               # a conntrackd client request (-s, -c...)


def keepalived_name(n: int) -> str:
    return f"ref-keepalived-fw{n}"


def conntrackd_name(n: int) -> str:
    return f"ref-conntrackd-fw{n}"


# ====================================================================== installation


def binary(name: str) -> str | None:
    """Path of a daemon binary (also in sbin directories a non-root PATH may lack)."""
    found = shutil.which(name)
    if found:
        return found
    for d in SBIN_DIRS:
        path = os.path.join(d, name)
        if os.access(path, os.X_OK):
            return path
    return None


def missing_binaries() -> list[str]:
    return [b for b in PACKAGES if binary(b) is None]


POLICY_RC_D = "/usr/sbin/policy-rc.d"


def ensure_installed(timeout: float = 900.0) -> None:
    """apt-get install keepalived and conntrackd if their binaries are missing.

    Raises LabError with apt's output when the install fails, or when a
    keepalived/conntrackd is running in the host's network namespace afterwards
    (it is not stopped here: it may not be ours).
    """
    missing = missing_binaries()
    if not missing:
        return
    install_packages({b: PACKAGES[b] for b in missing}, timeout)
    host = host_daemons()
    if host:
        raise LabError("after installing, these run in the host's network namespace (a service "
                       f"started by the package?): {host}; stop them before benchmarking")


def install_packages(packages: dict[str, str], timeout: float = 900.0) -> None:
    """apt-get install the Debian packages of `packages` ({binary: package}) whose binary is
    missing (the relay benchmark's haproxy, nginx and wrk use it too).

    No service may start on the host: Debian's invoke-rc.d asks policy-rc.d, so one that
    denies everything (exit 101) is put in place for the install when there is none (and
    removed after; one already there is left as it is).  Raises LabError with apt's output
    when the install fails or a binary is still missing after it.
    """
    missing = [b for b in packages if binary(b) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        raise LabError(f"{', '.join(missing)} not installed, and installing needs root")
    if shutil.which("apt-get") is None:
        raise LabError(f"{', '.join(missing)} not installed and there is no apt-get to install them")
    packages = sorted({packages[b] for b in missing})
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    placed_policy = False
    if not os.path.exists(POLICY_RC_D):
        with open(POLICY_RC_D, "w") as f:
            f.write("#!/bin/sh\n# placed by meshlab.reference during an apt-get install: start no service\n"
                    "exit 101\n")
        os.chmod(POLICY_RC_D, 0o755)
        placed_policy = True
    try:
        argv = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, check=False)
        if p.returncode != 0 and "Unable to locate package" in (p.stderr + p.stdout):
            upd = subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True,
                                 timeout=timeout, env=env, check=False)
            if upd.returncode != 0:
                raise LabError(f"apt-get update failed ({upd.returncode}):\n{(upd.stderr or upd.stdout)[-3000:]}")
            p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, check=False)
        if p.returncode != 0:
            raise LabError(f"{' '.join(argv)} failed ({p.returncode}):\n{(p.stderr + p.stdout)[-3000:]}")
    except subprocess.TimeoutExpired as e:
        raise LabError(f"apt-get did not finish within {timeout:g} s: {e}") from None
    finally:
        if placed_policy:
            os.unlink(POLICY_RC_D)
    still = [b for b in missing if binary(b) is None]
    if still:
        raise LabError(f"apt-get installed {' '.join(packages)} but {', '.join(still)} is still missing")


def host_daemons() -> dict[int, str]:
    """keepalived/conntrackd processes in the host's (pid 1's) network namespace: {pid: comm}."""
    try:
        host_ns = os.readlink("/proc/1/ns/net")
    except OSError:
        return {}
    found = {}
    for pid in _all_pids():
        try:
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
            if comm in PACKAGES and os.readlink(f"/proc/{pid}/ns/net") == host_ns:
                found[pid] = comm
        except OSError:
            continue
    return found


# ====================================================================== processes


def _all_pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (index 0 is the state)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def descendants(roots: list[int]) -> list[int]:
    """roots (those alive) and every process below them, from one pass over /proc."""
    children: dict[int, list[int]] = {}
    alive = set()
    for pid in _all_pids():
        fields = _stat_fields(pid)
        if fields is None or fields[0] in ("Z", "X"):      # gone, or a zombie (its CPU is final)
            continue
        alive.add(pid)
        children.setdefault(int(fields[1]), []).append(pid)
    out: list[int] = []
    todo = [r for r in roots if r in alive]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


@dataclass(frozen=True)
class ProcessRef:
    """A pid with its start time, so a later signal never reaches a recycled pid."""
    pid: int
    start: str

    @classmethod
    def of(cls, pid: int) -> ProcessRef | None:
        fields = _stat_fields(pid)
        return None if fields is None else cls(pid, fields[19])

    def still_same(self) -> bool:
        fields = _stat_fields(self.pid)
        return fields is not None and fields[19] == self.start and fields[0] not in ("Z", "X")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.still_same():
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass


# ====================================================================== configuration


def _ip(address: str) -> str:
    return address.split("/")[0]


def conntrackd_config(lab: Lab, n: int, peer: int, node_dir: str, port: int = SYNC_PORT) -> str:
    """conntrackd.conf of node n: FTFW over UDP to `peer` on sync0, everything in node_dir.

    The Address Ignore filter is the Debian example's: the firewalls' own and
    virtual addresses (local traffic is not worth replicating), here for both
    nodes, since either may hold the virtual addresses.
    """
    own = [_ip(a) for m in (1, 2) for addrs in lab.fw_addresses(m).values() for a in addrs]
    ignored = ["127.0.0.1", "::1", *own, *(_ip(a) for a in VIRTUAL_ADDRESSES)]
    ignore_lines = "\n".join(f"\t\t\t{'IPv6' if ':' in a else 'IPv4'}_address {a}" for a in ignored)
    return f"""\
# conntrackd for fw{n} of the meshd benchmark's reference pair (generated by meshlab.reference)
Sync {{
	Mode FTFW {{
		ResendQueueSize 131072
	}}
	UDP {{
		IPv4_address {SYNC4}.{n}
		IPv4_Destination_Address {SYNC4}.{peer}
		Port {port}
		Interface sync0
		SndSocketBuffer {SOCKET_BUFFER}
		RcvSocketBuffer {SOCKET_BUFFER}
		Checksum on
	}}
}}
General {{
	Systemd off
	HashSize {HASH_SIZE}
	HashLimit {HASH_LIMIT}
	LogFile {os.path.join(node_dir, "conntrackd.log")}
	Syslog off
	LockFile {os.path.join(node_dir, "conntrackd.lock")}
	UNIX {{
		Path {os.path.join(node_dir, "conntrackd.ctl")}
	}}
	NetlinkBufferSize {NETLINK_BUFFER}
	NetlinkBufferSizeMaxGrowth {NETLINK_BUFFER_MAX}
	Filter From Userspace {{
		Protocol Accept {{
			TCP
			SCTP
			DCCP
		}}
		Address Ignore {{
{ignore_lines}
		}}
	}}
}}
"""


def notify_script(conntrackd: str, config: str, log: str) -> str:
    """The sync group's notify script: conntrack-tools' primary-backup.sh steps, each one timed.

    One JSON line per step into `log` (wall-clock times from bash's $EPOCHREALTIME,
    no fork): {"pid", "state", "step", "rc", "start", "end"}; step "begin" and "end"
    bracket a whole transition.  Unlike primary-backup.sh, `backup` does not
    (re)start conntrackd: the harness runs it and tracks its pid.
    """
    return f"""\
#!/bin/bash
# keepalived notify script (generated by meshlab.reference): the documented
# conntrackd steps of conntrack-tools' doc/sync/primary-backup.sh.
export LC_ALL=C
CONNTRACKD={conntrackd}
CONF={config}
LOG={log}
state=$1

record() {{  # record STEP RC START: one JSON line
	printf '{{"pid": %d, "state": "%s", "step": "%s", "rc": %d, "start": %s, "end": %s}}\\n' \\
		$$ "$state" "$1" "$2" "$3" "$EPOCHREALTIME" >> "$LOG"
}}

step() {{  # step NAME ARGS...: conntrackd -C CONF ARGS, timed
	local name=$1 t0=$EPOCHREALTIME
	shift
	"$CONNTRACKD" -C "$CONF" "$@" >> "$LOG.out" 2>&1
	record "$name" $? "$t0"
}}

t_begin=$EPOCHREALTIME
record begin 0 "$t_begin"
case "$state" in
	master)
		step commit -c          # external cache -> kernel table
		step flush -f           # flush the internal and external caches
		step resync -R          # internal cache <- kernel table
		step bulk -B            # bulk send to the backup
		;;
	backup)
		step shorten_timers -t  # purge zombie entries after PurgeTimeout
		step request_resync -n  # ask the master for its state
		;;
	fault)
		step shorten_timers -t
		;;
	*)
		record unknown_state 1 "$t_begin"
		exit 1
		;;
esac
record end 0 "$t_begin"
exit 0
"""


def keepalived_config(n: int, advbase_ms: int, notify: str) -> str:
    """keepalived.conf of node n: two VRRPv3 instances in one sync group, GARP/NA defaults."""
    advert = f"{advbase_ms / 1000:g}"

    def instance(name: str, dev: str, addresses: tuple[str, str]) -> str:
        v4 = [a for a in addresses if ":" not in a]
        v6 = [a for a in addresses if ":" in a]
        return f"""\
vrrp_instance {name} {{
    state BACKUP
    interface {dev}
    virtual_router_id {VRID[name]}
    priority {PRIORITY[n]}
    advert_int {advert}
    virtual_ipaddress {{
{chr(10).join(f"        {a} dev {dev}" for a in v4)}
    }}
    # IPv6 addresses in an IPv4 instance: moved with it, not advertised
    virtual_ipaddress_excluded {{
{chr(10).join(f"        {a} dev {dev}" for a in v6)}
    }}
}}
"""
    return f"""\
# keepalived for fw{n} of the meshd benchmark's reference pair (generated by meshlab.reference)
global_defs {{
    router_id fw{n}
    vrrp_version 3
    script_user root
    enable_script_security
}}
vrrp_sync_group edge {{
    group {{
        lan
        srv
    }}
    notify_master "{notify} master"
    notify_backup "{notify} backup"
    notify_fault "{notify} fault"
}}
{instance("lan", "lan0", LAN_VIRTUAL)}
{instance("srv", "srv0", SRV_VIRTUAL)}"""


# ====================================================================== statistics


_SECTION_RE = re.compile(r"^cache (internal|external):\s*$")
_ACTIVE_RE = re.compile(r"^current active connections:\s*(\d+)")
_PCKTS_RE = re.compile(r"^\s*(\d+) Pckts sent\s+(\d+) Pckts recv")


def parse_stats(text: str) -> dict[str, Any]:
    """`conntrackd -s` output -> {"internal": N, "external": N, "pkts_sent": N, "pkts_recv": N}
    (keys only for what the output has)."""
    out: dict[str, Any] = {}
    section = None
    for line in text.splitlines():
        m = _SECTION_RE.match(line)
        if m:
            section = m.group(1)
            continue
        m = _ACTIVE_RE.match(line)
        if m and section and section not in out:
            out[section] = int(m.group(1))
            continue
        m = _PCKTS_RE.match(line)
        if m:
            out["pkts_sent"], out["pkts_recv"] = int(m.group(1)), int(m.group(2))
    return out


# ====================================================================== the system


class ReferenceSystem:
    """keepalived + conntrackd on fw1 and fw2 of a lab, driven like meshd by the harness."""

    name = "reference"
    sync_port = SYNC_PORT

    def __init__(self, procs: Procs, lab: Lab, advbase_ms: int = 100):
        if advbase_ms < 10 or advbase_ms % 10:
            raise LabError(f"keepalived VRRPv3 adverts are in centiseconds: advbase_ms={advbase_ms} "
                           "must be a multiple of 10")
        self.procs = procs
        self.lab = lab
        self.advbase_ms = advbase_ms
        self.started: list[int] = []
        self._conntrackd = self._keepalived = ""

    # ------------------------------------------------------------------ paths

    def node_dir(self, n: int) -> str:
        return os.path.join(self.procs.run_dir, f"ref-fw{n}")

    def conntrackd_conf(self, n: int) -> str:
        return os.path.join(self.node_dir(n), "conntrackd.conf")

    def notify_log(self, n: int) -> str:
        return os.path.join(self.node_dir(n), "notify.log")

    # ------------------------------------------------------------------ start

    def start(self, nodes: tuple[int, ...] = (1, 2), commit: str | None = None) -> None:
        """Configs into run_dir/ref-fwN/, conntrackd then keepalived on each node; return once the
        expected master (fw1 when it runs) holds every virtual address, the other holds none,
        both notify scripts have finished, and the conntrackd pair has exchanged messages.

        `commit` is ignored: conntrackd commits on takeover only (notify script)."""
        nodes = tuple(sorted(set(nodes)))
        if len(nodes) > 2 or any(n not in (1, 2) for n in nodes):
            raise LabError(f"the reference runs on fw1 and fw2 only, not {nodes}: conntrackd FTFW has "
                           "one sequence stream and no node id in its messages, so it replicates "
                           "between exactly two nodes")
        if self.lab.nodes < 2:
            raise LabError(f"the reference needs a lab with two firewalls, not {self.lab}")
        missing = missing_binaries()
        if missing:
            raise LabError(f"{', '.join(missing)} not installed (meshlab.reference.ensure_installed())")
        self._conntrackd, self._keepalived = binary("conntrackd"), binary("keepalived")
        for n in nodes:
            for name in (conntrackd_name(n), keepalived_name(n)):
                if name in self.procs.procs and self.procs.procs[name].alive():
                    raise LabError(f"{name} is already running (pid {self.procs.procs[name].pid})")
        t_start = time.time()
        try:
            for n in nodes:
                self._write_configs(n)
            for n in nodes:
                self._start_conntrackd(n)
                if n not in self.started:
                    self.started.append(n)
            for n in nodes:
                self._wait_socket(n)
            # The expected master first, the other once it holds the addresses: started
            # together on a loaded machine, the backup could become master before the
            # first advert arrives, and its notify runs then race (a keepalived that
            # went MASTER and back has been seen with "master" as its last notify).
            first, *others = nodes
            self._start_keepalived(first)
            if others:
                self._wait_holding(first)
            for n in others:
                self._start_keepalived(n)
            self._wait_ready(nodes, t_start)
        except BaseException:
            self._stop_nodes(nodes)          # nothing of a failed start keeps running
            raise

    def _write_configs(self, n: int) -> None:
        d = self.node_dir(n)
        os.makedirs(d, exist_ok=True)
        os.chmod(d, 0o755)           # keepalived's script security: no path component writable by others
        peer = 2 if n == 1 else 1
        _write(self.conntrackd_conf(n), conntrackd_config(self.lab, n, peer, d, self.sync_port))
        notify = os.path.join(d, "notify.sh")
        _write(notify, notify_script(self._conntrackd, self.conntrackd_conf(n), self.notify_log(n)), 0o755)
        conf = os.path.join(d, "keepalived.conf")
        _write(conf, keepalived_config(n, self.advbase_ms, notify))
        # (in the namespace: the config names its interfaces)
        check = run(nsexec(self.lab.fw(n), self._keepalived, "--config-test", "-f", conf), check=False)
        if check.returncode != 0:
            raise LabError(f"keepalived rejects {conf} (exit {check.returncode}):\n"
                           f"{(check.stderr or check.stdout).strip()}")

    def _start_conntrackd(self, n: int) -> None:
        d = self.node_dir(n)
        for stale in ("conntrackd.lock", "conntrackd.ctl"):     # left by a SIGKILLed run of ours
            path = os.path.join(d, stale)
            if os.path.lexists(path):
                os.unlink(path)
        # No -d: it stays in the foreground, so its pid is the one Procs started.
        self.procs.start(conntrackd_name(n), self.lab.fw(n), [self._conntrackd, "-C", self.conntrackd_conf(n)])

    def _wait_socket(self, n: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            p = self._client(n, "-s", check=False)
            if p is not None and p.returncode == 0 and "cache internal" in p.stdout:
                return
            proc = self.procs.get(conntrackd_name(n))
            if not proc.alive():
                raise LabError(f"conntrackd in {self.lab.fw(n)} exited ({proc.popen.returncode}):\n"
                               f"{proc.log_tail()}")
            if time.monotonic() > deadline:
                raise LabError(f"conntrackd in {self.lab.fw(n)} does not answer -s after "
                               f"{START_TIMEOUT:g} s:\n{proc.log_tail()}")
            time.sleep(0.05)

    def _start_keepalived(self, n: int) -> None:
        d = self.node_dir(n)
        argv = [self._keepalived, "--dont-fork", "--log-console", "--log-detail", "--no-syslog", "--vrrp",
                "--use-file", os.path.join(d, "keepalived.conf"),
                "--pid", os.path.join(d, "keepalived.pid"),
                "--vrrp_pid", os.path.join(d, "vrrp.pid"),
                "--checkers_pid", os.path.join(d, "checkers.pid"),
                "--bfd_pid", os.path.join(d, "bfd.pid")]
        self.procs.start(keepalived_name(n), self.lab.fw(n), argv)

    def _wait_holding(self, n: int) -> None:
        """Until node n's keepalived holds every virtual address (it is MASTER)."""
        wanted = {_ip(a) for a in VIRTUAL_ADDRESSES}
        deadline = time.monotonic() + START_TIMEOUT
        while wanted - self._addresses(n):
            proc = self.procs.get(keepalived_name(n))
            if not proc.alive():
                raise LabError(f"{keepalived_name(n)} exited ({proc.popen.returncode}) during start-up:\n"
                               f"{proc.log_tail()}")
            if time.monotonic() > deadline:
                raise LabError(f"fw{n}'s keepalived holds {sorted(self._addresses(n))} after "
                               f"{START_TIMEOUT:g} s, not every virtual address\n{self.procs.logs(25)}")
            time.sleep(0.05)

    def _wait_ready(self, nodes: tuple[int, ...], t_start: float) -> None:
        """Until the roles are right and have stayed so for 3 adverts (on a loaded machine a
        backup may take over for a moment before the master's first advert arrives)."""
        running = [n for n in (1, 2) if self._alive(n)]
        master = min(running)
        want_state = {n: ("master" if n == master else "backup") for n in nodes}
        wanted = {_ip(a) for a in VIRTUAL_ADDRESSES}
        stable_for = max(0.3, 3 * self.advbase_ms / 1000)
        deadline = time.monotonic() + START_TIMEOUT
        good_since = None
        last: dict[str, Any] = {}
        while True:
            held = {n: wanted & self._addresses(n) for n in running}
            notified = {n: self.last_transition(n, t_start) for n in nodes}
            stats = {n: self.stats(n) for n in running}
            talking = len(running) < 2 or all(s.get("pkts_recv", 0) > 0 for s in stats.values())
            last = {"held": held, "last_transition": notified, "stats": stats}
            good = (held[master] == wanted and all(not held[n] for n in running if n != master)
                    and all(t == (want_state[n], True) for n, t in notified.items()) and talking)
            now = time.monotonic()
            if not good:
                good_since = None
            elif good_since is None:
                good_since = now
            elif now - good_since >= stable_for:
                return
            for n in nodes:
                for name in (conntrackd_name(n), keepalived_name(n)):
                    proc = self.procs.get(name)
                    if not proc.alive():
                        raise LabError(f"{name} exited ({proc.popen.returncode}) during start-up:\n"
                                       f"{proc.log_tail()}")
            if now > deadline:
                raise LabError(f"reference not ready after {START_TIMEOUT:g} s (want fw{master} MASTER with "
                               f"every virtual address, last notify transitions {want_state} done, "
                               f"conntrackd exchanging messages): {last}\n{self.procs.logs(25)}")
            time.sleep(0.05)

    def _alive(self, n: int) -> bool:
        return any(name in self.procs.procs and self.procs.procs[name].alive()
                   for name in (conntrackd_name(n), keepalived_name(n)))

    def _addresses(self, n: int) -> set[str]:
        return {_ip(a) for addrs in self.lab.addresses(self.lab.fw(n)).values() for a in addrs}

    def last_transition(self, n: int, since: float) -> tuple[str, bool] | None:
        """(state, finished) of node n's latest notify-script run begun at or after wall-clock
        time `since`; None if there was none."""
        runs: dict[tuple[int, float], dict[str, Any]] = {}
        for s in self.notify_steps(n):
            if s["wall_start"] >= since and s["step"] in ("begin", "end"):
                # (an "end" record's start is its run's begin time: pid + begin identify a run)
                runs.setdefault((s["pid"], s["wall_start"]), {})[s["step"]] = s
        begun = [r for r in runs.values() if "begin" in r]
        if not begun:
            return None
        latest = max(begun, key=lambda r: r["begin"]["start"])
        return latest["begin"]["state"], "end" in latest

    # ------------------------------------------------------------------ the notify log

    def notify_steps(self, n: int) -> list[dict[str, Any]]:
        """Node n's notify-script steps so far, oldest first: {"pid", "state", "step", "rc",
        "wall_start", "wall_end", "start", "end"} with start/end on time.monotonic()'s clock."""
        offset = time.time() - time.monotonic()
        steps = []
        try:
            with open(self.notify_log(n)) as f:
                lines = f.readlines()
        except FileNotFoundError:
            return []
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue            # a line being written right now
            rec["wall_start"], rec["wall_end"] = rec.pop("start"), rec.pop("end")
            rec["start"], rec["end"] = rec["wall_start"] - offset, rec["wall_end"] - offset
            steps.append(rec)
        return steps

    def takeover_commit(self, n: int, after: float) -> dict[str, Any] | None:
        """The `commit` step of node n's first master transition that began after monotonic time
        `after` (e.g. the kill), once it has finished; None before that."""
        for s in self.notify_steps(n):
            if s["state"] == "master" and s["step"] == "commit" and s["start"] >= after:
                return s
        return None

    # ------------------------------------------------------------------ processes

    def daemon_pids(self, n: int) -> list[int]:
        """Every live keepalived (parent, VRRP child, notify scripts) and conntrackd pid of node n."""
        roots = [self.procs.procs[name].pid for name in (keepalived_name(n), conntrackd_name(n))
                 if name in self.procs.procs and self.procs.procs[name].alive()]
        return descendants(roots)

    def kill(self, n: int) -> float:
        """SIGKILL every daemon process of node n; the time.monotonic() of the kill.

        Everything is frozen (SIGSTOP) before anything is killed: keepalived's VRRP child
        gets SIGTERM when its parent dies (PR_SET_PDEATHSIG) and would then send
        priority-0 adverts, a graceful hand-over a crashed node never makes (the backup
        would take over within its skew time instead of the master-down interval).
        """
        targets = [p for p in (ProcessRef.of(pid) for pid in self.daemon_pids(n)) if p is not None]
        t = time.monotonic()
        for p in targets:
            p.kill(signal.SIGSTOP)
        for p in targets:
            p.kill(signal.SIGKILL)
        for name in (keepalived_name(n), conntrackd_name(n)):
            if name in self.procs.procs:
                self.procs.send_signal(name, signal.SIGKILL)   # also anything forked meanwhile (its group)
        return t

    def stop(self) -> None:
        """SIGTERM every daemon started here (keepalived then removes its addresses), SIGKILL
        what is left after 5 s.  The lab itself stays as it is."""
        self._stop_nodes(tuple(self.started))

    def _stop_nodes(self, nodes: tuple[int, ...]) -> None:
        names = [name for n in nodes for name in (keepalived_name(n), conntrackd_name(n))
                 if name in self.procs.procs]
        every = [p for p in (ProcessRef.of(pid) for n in nodes for pid in self.daemon_pids(n)) if p]
        for name in names:
            self.procs.send_signal(name, signal.SIGTERM)
        for name in names:
            if self.procs.wait(name, 5.0) is None:
                self.procs.kill(name, signal.SIGKILL)
        for p in every:             # notify scripts and clients left without a parent
            p.kill(signal.SIGKILL)
        self.started = [n for n in self.started if n not in nodes]

    # ------------------------------------------------------------------ conntrackd client

    def _client(self, n: int, *args: str, check: bool = True,
                timeout: float = CLIENT_TIMEOUT) -> subprocess.CompletedProcess | None:
        """`conntrackd -C CONF ARGS` (a UNIX-socket client: no namespace needed).  None on timeout
        unless check, which raises LabError on timeout or failure."""
        argv = [self._conntrackd or binary("conntrackd") or "conntrackd", "-C", self.conntrackd_conf(n), *args]
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            if check:
                raise LabError(f"fw{n}: `{' '.join(argv)}` did not answer within {timeout:g} s") from None
            return None
        if check and p.returncode != 0:
            raise LabError(f"fw{n}: `{' '.join(argv)}` failed ({p.returncode}): "
                           f"{(p.stderr or p.stdout).strip()}")
        return p

    def stats(self, n: int) -> dict[str, Any]:
        """Parsed `conntrackd -s` of node n ({} when conntrackd does not answer)."""
        p = self._client(n, "-s", check=False)
        if p is None or p.returncode != 0:
            return {}
        return parse_stats(p.stdout)

    def external_count(self, n: int, origin: int = 1) -> int:
        """Entries in node n's external cache (-1 when conntrackd does not answer).  A reference
        node has one peer: `origin` must be the other node."""
        if origin == n or origin not in (1, 2):
            raise LabError(f"fw{n}'s external cache holds fw{3 - n}'s entries; no copy of fw{origin}'s")
        return int(self.stats(n).get("external", -1))

    def internal_count(self, n: int) -> int:
        return int(self.stats(n).get("internal", -1))

    def commit(self, n: int) -> None:
        """`conntrackd -c` on node n: the external cache into the kernel table; returns when done."""
        self._client(n, "-c", timeout=600.0)


def _write(path: str, text: str, mode: int = 0o644) -> None:
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
