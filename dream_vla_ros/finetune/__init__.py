"""Finetuning Dream-VLA on demonstrations (no ROS): recipes, data windows,
objectives, LoRA/full finetuning, the accelerate training loop, checkpoints."""
