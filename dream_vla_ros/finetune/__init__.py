"""Finetuning Dream-VLA on demonstrations (no ROS): recipes, data windows, objectives,
LoRA or full finetuning, the accelerate training loop, training checkpoints, and the
grounding pretraining of the tiny base on rendered scenes."""
