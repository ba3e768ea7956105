"""The benchmark: meshd against keepalived + conntrackd on the same lab (issue 4).

`netns-lab/bench` is the command line; docs/benchmarks.md says what each row measures.
"""
