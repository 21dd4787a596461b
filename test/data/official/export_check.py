"""A model of this project in the official layout, and the actions this project's
decoder gives for the fixture inputs: the input of run_official.py (README.md).

    python test/data/official/export_check.py OUT --head l1|flow|discrete

Converts the fixture's finetune output, changes every weight a little (a model
trained here, not the fixture), drops what `convert` recorded of the original, writes
it with `dream-vla export` to OUT/official and the decoded actions to OUT/ours.json.
Runs in this project's environment."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the test folder: test_official's helpers

from test_official import PROPRIO, finetune_output, prompt  # noqa: E402

from dream_vla_ros.model.actions import ActionDecoder, DecodeSettings  # noqa: E402
from dream_vla_ros.model.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from dream_vla_ros.model.convert import convert, export  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--head", required=True, choices=["l1", "flow", "discrete"])
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        converted = load_checkpoint(convert(finetune_output(Path(tmp), args.head), Path(tmp) / "c"))
        torch.manual_seed(0)
        with torch.no_grad():
            for p in converted.model.parameters():
                p.add_(0.05 * p.abs().mean() * torch.randn_like(p))
        trained = Path(tmp) / "trained"
        save_checkpoint(converted.model, trained, converted.action_stats, converted.proprio_stats)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                     "chat_template.json", "preprocessor_config.json"):  # fmt: skip
            shutil.copyfile(converted.path / name, trained / name)
        ckpt = load_checkpoint(trained)
        with torch.no_grad():
            decoder, p = ActionDecoder(ckpt.model), prompt(ckpt)
            if args.head == "l1":
                normed = decoder.regression(p, None, PROPRIO)
            elif args.head == "flow":
                recorded = json.loads((HERE / "outputs.json").read_text())["results"]
                noise = torch.tensor([recorded["flow_noise"]])
                normed = decoder.flow(p, None, PROPRIO, args.steps, noise=noise)
            else:
                normed = decoder.discrete(p, None, PROPRIO, DecodeSettings(steps=args.steps))
        actions = ckpt.action_stats.unnormalise(normed[0].double().numpy())
        args.out.mkdir(parents=True, exist_ok=True)
        export(trained, args.out / "official", unnorm_key="libero_spatial_no_noops")
    (args.out / "ours.json").write_text(json.dumps({"actions": np.asarray(actions).tolist()}))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
