"""loomd over HTTP on localhost: the `metrics` component (`component.py`), its small HTTP
server (`http.py`: Prometheus text at /metrics), and the status page (`page.py`: plain
HTML/CSS/JS with JSON under `/api/` and a live tail of bus events as server-sent events; see
docs/design/statuspage.md).

Light at import: the status page's modules load only when `[metrics] page` is on."""
