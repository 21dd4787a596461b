"""`dream-vla convert SRC DST` and `dream-vla export SRC DST`: official Dream-VLA
checkpoints to this project's layout and back (docs/model.md, "Using the published
weights")."""

from __future__ import annotations

import argparse

from dream_vla_ros.guard import guarded
from dream_vla_ros.model.official import DEFAULT_CHUNK, platform_defaults


def add_parsers(sub) -> None:
    p_convert = sub.add_parser(
        "convert",
        help="official checkpoint (published base or finetune output) -> this project's layout",
        description="Official platform constants: " + platform_defaults() + ".",
    )
    p_convert.add_argument("src", help="the official folder (config.json, *_checkpoint.pt)")
    p_convert.add_argument("dst", help="a new folder for the converted checkpoint")
    p_convert.add_argument(
        "--head",
        default="",
        choices=("", "discrete", "l1", "flow"),
        help="the action head, when the module files do not say",
    )
    p_convert.add_argument(
        "--chunk", type=int, default=DEFAULT_CHUNK, help="actions per chunk (LIBERO: 8)"
    )
    p_convert.add_argument(
        "--action-dim", type=int, default=0, help="action dimension (default: the statistics')"
    )
    p_convert.add_argument(
        "--unnorm-key", default="", help="the dataset statistics to keep, when there are several"
    )
    p_convert.set_defaults(run=run)
    p_export = sub.add_parser(
        "export", help="checkpoint of this project -> the official finetune layout"
    )
    p_export.add_argument("src")
    p_export.add_argument("dst", help="a new folder for the official files")
    p_export.add_argument(
        "--unnorm-key",
        default="robot",
        help="the dataset name its statistics get (when it was not converted from one)",
    )
    p_export.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dream_vla_ros.model.checkpoint import CheckpointError
    from dream_vla_ros.model.convert import ConvertSettings, convert, export
    from dream_vla_ros.model.official import OfficialLayoutError

    def body() -> int:
        if args.command == "convert":
            if args.chunk < 1 or args.action_dim < 0:
                raise OfficialLayoutError("--chunk must be >= 1 and --action-dim >= 0")
            settings = ConvertSettings(args.head, args.chunk, args.action_dim, args.unnorm_key)
            print(f"convert: {args.src} -> {convert(args.src, args.dst, settings)}")
        else:
            print(f"export: {args.src} -> {export(args.src, args.dst, args.unnorm_key)}")
        return 0

    return guarded(args.command, (OfficialLayoutError, CheckpointError, OSError), body)
