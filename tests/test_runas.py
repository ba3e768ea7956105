"""Hooks, track scripts and script checks run as [node] script_user (meshd/runas.py).

The argument building and the configuration need no root; the tests that
start programs record `id -u`, `id -g` and `id -G` from inside them, and the
ones that change the user need root (CI runs the suite as root).
"""

from __future__ import annotations

import os
import pwd
import tomllib

import pytest
import trio

from meshd.config import ConfigError, TrackScriptConfig, parse_config
from meshd.health.checks import run_check
from meshd.health.checkspec import CheckSpec, CheckTarget
from meshd.health.scriptpool import ScriptPool
from meshd.hooks import HookRun, HookRunner
from meshd.reload import plan_reload
from meshd.runas import (
    identity_arguments,
    resolve_run_as,
    script_environment,
    spawn_options,
)
from meshd.track.scripts import run_check as run_track_check

NOBODY = pwd.getpwnam("nobody")
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="starting a program as another user needs root")


def config(node: str = ""):
    text = f"""
[node]
id = 1
{node}
[[cluster.keys]]
id = 1
secret_file = "k.key"
[[group]]
id = 1
name = "lan"
interface = "lo"
addresses = ["192.0.2.1/24"]
"""
    return parse_config(tomllib.loads(text), "meshd.toml", read_secrets=False)


def problems(node: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        config(node)
    return e.value.problems


# ------------------------------------------------------------------ configuration


def test_default_is_nobody_never_root():
    run_as = config().node.run_as
    assert (run_as.user, run_as.uid, run_as.gid) == ("nobody", NOBODY.pw_uid, NOBODY.pw_gid)
    assert config().node.script_user == "nobody" and config().node.script_group is None


def test_names_and_numeric_ids_are_accepted():
    assert config('script_user = "root"').node.run_as.uid == 0
    by_id = config(f"script_user = {NOBODY.pw_uid}").node
    assert by_id.run_as.user == "nobody" and by_id.script_user == str(NOBODY.pw_uid)
    grouped = config('script_user = "nobody"\nscript_group = 0').node.run_as
    assert (grouped.uid, grouped.gid) == (NOBODY.pw_uid, 0) and 0 in grouped.groups
    assert config('script_user = "nobody"\nscript_group = "root"').node.run_as.gid == 0


def test_unknown_user_or_group_is_a_config_error_naming_key_and_value():
    assert problems('script_user = "nosuchuser"') == [
        'meshd.toml: node.script_user: no user "nosuchuser" on this machine (getent passwd)']
    assert problems('script_group = "nosuchgroup"') == [
        'meshd.toml: node.script_group: no group "nosuchgroup" on this machine (getent group)']
    assert problems("script_user = 4000000000") == [
        "meshd.toml: node.script_user: no user uid 4000000000 on this machine (getent passwd)"]
    assert problems("script_user = true") == [
        "meshd.toml: node.script_user: expected a user or group name, or a numeric id, found true"]
    assert problems('script_user = ""') == [
        'meshd.toml: node.script_user: expected a user or group name, or a numeric id, found ""']


def test_a_reload_applies_a_new_script_user_live():
    old, new = config(), config('script_user = "root"')
    plan = plan_reload(old, new)
    assert plan.refusals == ()
    assert plan.changes == ('node.script_user: nobody -> root',
                            (f"node.script_user: runs as nobody (uid {NOBODY.pw_uid}, gid {NOBODY.pw_gid}) "
                            f"-> root (uid 0, gid 0), groups {list(old.node.run_as.groups)} -> "
                            f"{list(new.node.run_as.groups)}"))


# ------------------------------------------------------------------ the arguments


def test_as_root_the_identity_is_always_set_so_meshds_groups_never_leak():
    nobody = resolve_run_as("nobody")
    assert identity_arguments(nobody, euid=0) == {
        "user": NOBODY.pw_uid, "group": NOBODY.pw_gid, "extra_groups": list(nobody.groups)}
    root = resolve_run_as("root")
    assert identity_arguments(root, euid=0)["user"] == 0
    # Not root: its own uid needs no change; another one is asked for (and refused by the kernel).
    assert identity_arguments(nobody, euid=NOBODY.pw_uid) == {}
    assert identity_arguments(root, euid=1000)["user"] == 0


def test_spawn_options_directory_descriptors_session_environment(monkeypatch):
    monkeypatch.setenv("HOME", "/root")
    monkeypatch.setenv("MESHD_TEST_VAR", "kept")
    options = spawn_options(resolve_run_as("nobody"))
    assert options["cwd"] == "/" and options["close_fds"] is True and options["start_new_session"] is True
    env = options["env"]
    assert (env["HOME"], env["USER"], env["LOGNAME"]) == (NOBODY.pw_dir, "nobody", "nobody")
    assert env["MESHD_TEST_VAR"] == "kept"
    assert "NOTIFY_SOCKET" not in script_environment(resolve_run_as("nobody"), {"PATH": "/bin"})


# ------------------------------------------------------------------ from inside the programs


def identity_script(script_dir, name: str) -> tuple[str, str]:
    """A program that writes `uid gid groups cwd HOME` to its own file in script_dir."""
    out = script_dir / f"{name}.out"
    path = script_dir / name
    path.write_text(f'#!/bin/sh\necho "$(id -u) $(id -g) $(id -G) $(pwd) $HOME" > {out}\n')
    path.chmod(0o755)
    return str(path), str(out)


def run_all_three(script_dir, run_as) -> dict[str, list[str]]:
    """A hook, a track script and a script check, each run once as run_as."""
    hook, hook_out = identity_script(script_dir, "hook")
    track, track_out = identity_script(script_dir, "track")
    check, check_out = identity_script(script_dir, "check")
    logged = []

    async def main():
        runner = HookRunner(lambda event, **f: logged.append((event, f)))
        async with trio.open_nursery() as n:
            n.start_soon(runner.run)
            runner.submit(HookRun((hook,), "lan", "MASTER", 245, 5.0, run_as))
            assert await run_track_check(TrackScriptConfig("t", (track,)), run_as) == (True, "")
            outcome = await run_check(CheckTarget("192.0.2.9", 80, CheckSpec("script", script=check)),
                                      scripts=ScriptPool(run_as=run_as))
            assert outcome.ok, outcome
            with trio.fail_after(5):
                while not logged:
                    await trio.sleep(0.01)
            n.cancel_scope.cancel()

    trio.run(main)
    assert logged[0][1]["exit"] == 0, logged
    return {name: open(out).read().split() for name, out in
            (("hook", hook_out), ("track", track_out), ("check", check_out))}


@as_root
def test_hook_track_and_check_run_as_the_script_user(script_dir):
    nobody = config().node.run_as
    seen = run_all_three(script_dir, nobody)
    for name, (uid, gid, *rest) in seen.items():
        groups, cwd, home = rest[:-2], rest[-2], rest[-1]
        assert (int(uid), int(gid)) == (NOBODY.pw_uid, NOBODY.pw_gid), (name, seen)
        assert sorted(map(int, groups)) == sorted(nobody.groups), (name, seen)   # not root's groups
        assert (cwd, home) == ("/", NOBODY.pw_dir), (name, seen)


@as_root
def test_with_script_user_root_they_run_as_root(script_dir):
    seen = run_all_three(script_dir, config('script_user = "root"').node.run_as)
    assert {name: (v[0], v[1]) for name, v in seen.items()} == {n: ("0", "0") for n in ("hook", "track", "check")}


@as_root
def test_script_group_is_the_primary_group(script_dir):
    seen = run_all_three(script_dir, config('script_group = "root"').node.run_as)
    assert {name: (int(v[0]), int(v[1])) for name, v in seen.items()} == {
        n: (NOBODY.pw_uid, 0) for n in ("hook", "track", "check")}


@as_root
def test_a_hook_as_nobody_cannot_write_where_root_keeps_its_files(script_dir):
    """The point of it all: a hook is no longer root."""
    target = script_dir / "private"
    target.mkdir(mode=0o700)
    target.chmod(0o700)
    hook = script_dir / "hook"
    hook.write_text(f"#!/bin/sh\ntouch {target}/pwned\n")
    hook.chmod(0o755)
    logged = []

    async def main():
        runner = HookRunner(lambda event, **f: logged.append((event, f)))
        async with trio.open_nursery() as n:
            n.start_soon(runner.run)
            runner.submit(HookRun((str(hook),), "lan", "MASTER", 245, 5.0, config().node.run_as))
            with trio.fail_after(5):
                while not logged:
                    await trio.sleep(0.01)
            n.cancel_scope.cancel()

    trio.run(main)
    assert logged[0][1]["exit"] != 0 and "Permission denied" in logged[0][1]["output"]
    assert not (target / "pwned").exists()
