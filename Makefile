# Every target sets up .venv first (idempotent, fast when nothing changed).
VENV := .venv/bin

.PHONY: setup demo test lint bench bench-model bench-e2e bench-train bench-executor closed-loop clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/dream-vla demo

test: setup
	$(VENV)/python -m pytest

lint: setup
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
	$(VENV)/mypy dream_vla_ros/control dream_vla_ros/robot dream_vla_ros/sim dream_vla_ros/graphs dream_vla_ros/evaluation/driver.py \
	    dream_vla_ros/evaluation/homing.py dream_vla_ros/evaluation/closed_loop.py \
	    dream_vla_ros/launcher.py dream_vla_ros/data/images.py dream_vla_ros/policy/observations.py

bench: setup
	$(VENV)/python bench/control_loop.py

bench-model: setup
	$(VENV)/python bench/model_latency.py

bench-e2e: setup
	$(VENV)/python bench/e2e_latency.py

bench-train: setup
	$(VENV)/python bench/train_step.py

bench-executor: setup
	$(VENV)/python bench/executor_spin.py

# collect -> dataset -> finetune -> closed-loop evaluation in the MuJoCo world (docs/sim.md)
closed-loop: setup
	$(VENV)/dream-vla sim pipeline runs/closed_loop --episodes 60 --per-layout 3 --seeds 20 --no-progress

clean:
	rm -rf .venv build *.egg-info
