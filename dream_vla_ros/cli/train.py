"""`dream-vla train RECIPE [KEY=VALUE ...]` and `dream-vla merge CKPT OUT`: finetuning."""

from __future__ import annotations

import argparse

from dream_vla_ros.finetune.entry import add_train_arguments, train_from_arguments, training_errors
from dream_vla_ros.guard import guarded


def add_parsers(sub) -> None:
    p_train = sub.add_parser("train", help="finetune on a dataset with a recipe (config/finetune)")
    add_train_arguments(p_train)
    p_train.set_defaults(run=run)
    p_merge = sub.add_parser("merge", help="LoRA checkpoint -> one with merged weights")
    p_merge.add_argument("checkpoint")
    p_merge.add_argument("out_dir")
    p_merge.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dream_vla_ros.finetune.export import merge_checkpoint

    def body() -> int:
        if args.command == "merge":
            print(f"merge: {args.checkpoint} -> {merge_checkpoint(args.checkpoint, args.out_dir)}")
            return 0
        return train_from_arguments(args)

    return guarded(args.command, training_errors(), body)
