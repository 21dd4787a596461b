"""The command line of training, shared by `dream-vla train` and
`python -m dream_vla_ros.finetune` (for `accelerate launch -m`, multi-GPU)."""

from __future__ import annotations

import argparse
import sys


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe YAML, e.g. config/finetune/touch_tiny_cpu.yaml")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. train.steps=50")
    p.add_argument("--resume", default="", help="continue from this checkpoint folder")
    p.add_argument("--merge", action="store_true", help="also export OUT/final-merged")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def train_from_arguments(args: argparse.Namespace) -> int:
    from dream_vla_ros.finetune.export import merge_checkpoint
    from dream_vla_ros.finetune.recipe import load_recipe
    from dream_vla_ros.finetune.trainer import Trainer

    recipe = load_recipe(args.recipe, args.overrides)
    result = Trainer(recipe, resume=args.resume, progress=not args.no_progress).run()
    if args.merge:
        out = merge_checkpoint(result.final, result.output / "final-merged")
        print(f"merge: {result.final} -> {out}")
    return 0


def training_errors() -> tuple[type[BaseException], ...]:
    """The errors a user can cause: recipes, datasets, checkpoints, the loop's checks."""
    from dream_vla_ros.data.lerobot import DatasetError
    from dream_vla_ros.finetune.errors import TrainingError
    from dream_vla_ros.finetune.recipe import RecipeError
    from dream_vla_ros.model.checkpoint import CheckpointError

    return (RecipeError, TrainingError, DatasetError, CheckpointError, OSError)


def main(argv: list[str] | None = None) -> int:
    """`python -m dream_vla_ros.finetune RECIPE [KEY=VALUE ...] [--resume DIR]`."""
    from dream_vla_ros.guard import guarded

    parser = argparse.ArgumentParser(prog="python -m dream_vla_ros.finetune")
    add_train_arguments(parser)
    args, extra = parser.parse_known_args(argv)
    if extra:
        if all("=" in a and not a.startswith("-") for a in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return guarded("train", training_errors(), lambda: train_from_arguments(args))


if __name__ == "__main__":
    sys.exit(main())
