"""`stream-app demo`: the whole product on a laptop, watched live, with a report at the end.

`run` orchestrates (broker, topics, trainer and scorer subprocesses, replay,
score requests), `watch` + `scrape` read the processes' /metrics like
Prometheus would, `display` prints. Plots live in `stream_app.report`.
"""
