# Every target sets up .venv first (idempotent, fast when nothing changed).
VENV := .venv/bin

.PHONY: setup demo test lint bench bench-model clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/dream-vla demo

test: setup
	$(VENV)/python -m pytest

lint: setup
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
	$(VENV)/mypy dream_vla_ros/control dream_vla_ros/robot

bench: setup
	$(VENV)/python bench/control_loop.py

bench-model: setup
	$(VENV)/python bench/model_latency.py

clean:
	rm -rf .venv build *.egg-info
