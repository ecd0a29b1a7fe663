# Convenience targets; the README's Quick start uses the scripts directly (make is not on every fresh Pi).
.PHONY: demo test lint bench-pipeline bench-ghostnet bench-monitor bench-ota bench-train

PY := PYTHONPATH=. .venv/bin/python

demo:
	scripts/demo.sh

test:
	scripts/test.sh

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy

bench-pipeline:
	$(PY) bench/bench_pipeline.py

bench-ghostnet:
	$(PY) bench/bench_ghostnetv2_int8.py --rounds 15 --runs 20

bench-monitor:
	$(PY) -m bench.bench_monitor_ingest --nodes 200 --rate 10 --seconds 10

bench-ota:
	$(PY) -m bench.ota_swap --updates 5

bench-train:
	$(PY) -m bench.train_schedules
