# Convenience targets; the README's Quick start uses the scripts directly (make is not on every fresh Pi).
.PHONY: demo test lint bench-pipeline bench-ghostnet bench-monitor bench-ota

demo:
	scripts/demo.sh

test:
	scripts/test.sh

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy

bench-pipeline:
	.venv/bin/python bench/bench_pipeline.py

bench-ghostnet:
	.venv/bin/python bench/bench_ghostnetv2_int8.py

bench-monitor:
	.venv/bin/python bench/bench_monitor_ingest.py

bench-ota:
	PYTHONPATH=. .venv/bin/python -m bench.ota_swap --updates 5
