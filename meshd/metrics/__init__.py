"""Prometheus metrics: the `[metrics]` endpoint (docs/metrics.md).

One room per part:

* `snapshot`: what is exported, copied from the node core and the shells'
  counts on the event loop's thread, as frozen values;
* `collector`: the metric families of a snapshot (prometheus-client), and
  the collector that fetches a snapshot per scrape;
* `server`: the HTTP server on its own threads, and the hand-over of a
  snapshot from the event loop with a timeout.

The counting itself is not here: the cores and shells count what they see
(meshd/histogram.py for durations), and this package only reads it.

Must not: count, decide or change anything in the daemon; run
prometheus-client's exposition on the event loop.
"""
