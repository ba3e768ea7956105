"""Track scripts: programs whose repeated failure raises a demotion counter.

`scripts` holds the counting (ScriptTracker, sans-I/O) and the trio loop that
runs one script; the election shell starts one loop per [[track_script]].

Must not: import anything: callers import meshd.track.scripts.
"""
