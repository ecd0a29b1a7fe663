# Convenience targets; the README's Quick start uses the scripts directly (make is not on every fresh Pi).
# bench-chaos and bench-memory: docs/reliability.md
.PHONY: demo test lint bench-chaos bench-memory bench-pipeline bench-ghostnet bench-monitor bench-ota bench-dashboard bench-train

PY := PYTHONPATH=. .venv/bin/python

demo:
	scripts/demo.sh

test:
	scripts/test.sh

lint:
	PATH="$$PWD/.venv/bin:$$PATH" scripts/lint.sh

bench-pipeline:
	$(PY) bench/bench_pipeline.py

bench-ghostnet:
	$(PY) bench/bench_ghostnetv2_int8.py --rounds 15 --runs 20

bench-monitor:
	$(PY) -m bench.bench_monitor_ingest --nodes 200 --rate 10 --seconds 10

bench-ota:
	$(PY) -m bench.ota_swap --updates 5

bench-dashboard:
	$(PY) -m bench.bench_dashboard --nodes 200 --rate 10 --seconds 60

bench-chaos:
	$(PY) -m bench.chaos --log /tmp/chaos-node.log

bench-memory:
	$(PY) bench/session_memory.py

bench-train:
	$(PY) -m bench.train_schedules
