"""The benchmark: meshd against keepalived + conntrackd on the same lab (issue 4); row 9
(issue 15) meshd's HTTP relay against HAProxy.

`netns-lab/bench` is the command line; docs/benchmarks.md says what each row measures.
The modules, each importing only modules listed above it:

  load      the sizes, rates and time limits of the runs; the kinds of run (constants)
  rows      which runs make which issue row; medians, ratios, targets (pure)
  plan      which run comes when, and what the time budget may cut (pure)
  report    the JSON object, the text table, the markdown, the plot
  measure   CPU, RSS, table sizes, flow sockets, address holders (reads only)
  relayrun  row 9's run: HTTP load through one relay (meshd's or HAProxy), wrk direct, py-spy
  runs      one measured run of one system: start, load, kill, measure
  session   the runs of the plan on one lab, always cleaned up (`run_benchmark`)

This file imports nothing: importing `rows` or `plan` loads no run, probe or session.
"""
