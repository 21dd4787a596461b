"""Load a folder in the official finetune layout as run_libero_eval_dream.py does and print
the actions its predict_action returns for this folder's fixture inputs (JSON).

Runs in the scratch environment of make_fixtures.py (not by CI):

    python test/data/official/run_official.py --official /path/to/Dream-VLX/vla \\
        --checkpoint DIR --head l1|flow|discrete [--unnorm-key K]

It checks `dream-vla export`: a model of this project, exported, is loaded by the
official loading path (DreamVLAConfig/DreamVLAForActionPrediction.from_pretrained,
dataset_statistics.json replacing norm_stats, find_checkpoint_file and
load_component_state_dict for the heads) and gives the actions this project's
decoder gives (docs/model.md, "Using the published weights").
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch
from make_fixtures import import_official, inputs

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--head", required=True, choices=["l1", "flow", "discrete"])
    parser.add_argument("--unnorm-key", default="")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--compare", type=Path, help="JSON {'actions': ...} to compare with")
    args = parser.parse_args()
    off = import_official(args.official.resolve())
    c = off.constants
    ckpt = str(args.checkpoint)

    # run_libero_eval_dream.initialize_model / load_dream_vla, on the CPU in fp32
    norm_stats = json.loads((args.checkpoint / "dataset_statistics.json").read_text())
    cfg = off.config.DreamVLAConfig.from_pretrained(ckpt, n_action_bins=256, norm_stats={})
    cfg._attn_implementation = "sdpa"
    cfg.vision_config._attn_implementation = "sdpa"
    model = off.modeling.DreamVLAForActionPrediction.from_pretrained(
        ckpt, config=cfg, torch_dtype=torch.float32
    ).eval()
    model.norm_stats = norm_stats
    key = args.unnorm_key or next(iter(norm_stats))

    def component(name: str) -> dict:
        """openvla_utils.find_checkpoint_file, then load_component_state_dict."""
        [f] = [f for f in os.listdir(ckpt) if name in f and "checkpoint" in f]
        state = torch.load(os.path.join(ckpt, f), weights_only=True)
        return {k.removeprefix("module."): v for k, v in state.items()}

    h = model.config.hidden_size
    proprio_projector = off.projectors.ProprioProjector(llm_dim=h, proprio_dim=c.PROPRIO_DIM)
    proprio_projector.load_state_dict(component("proprio_projector"))
    kwargs = {"proprio_projector": proprio_projector.eval()}
    if args.head == "l1":
        head = off.heads.L1RegressionActionHead(h, h, c.ACTION_DIM)
        head.load_state_dict(component("action_head"))
        kwargs["action_head"] = head.eval()
    elif args.head == "flow":
        head = off.heads.FlowMatchingActionHead(h, h, c.ACTION_DIM)
        head.load_state_dict(component("action_head"))
        projector = off.projectors.NoisyActionProjector(h)
        projector.load_state_dict(component("noisy_action_projector"))
        recorded = json.loads((HERE / "outputs.json").read_text())["results"]["flow_noise"]
        head.sample_noise = lambda shape, device: torch.tensor([recorded])
        kwargs.update(
            action_head=head.eval(),
            noisy_action_projector=projector.eval(),
            use_flow_matching=True,
            steps=args.steps,
        )
    else:
        kwargs.update(use_discrete_diffusion=True, steps=args.steps, alg="maskgit_plus")
        kwargs.update(temperature=0.0, alg_temp=0.0)

    from transformers import PreTrainedTokenizerFast

    template = json.loads((args.checkpoint / "chat_template.json").read_text())["chat_template"]
    processor = off.processing.DreamVLProcessor(
        image_processor=off.image_processing.DreamVLImageProcessor.from_pretrained(ckpt),
        tokenizer=PreTrainedTokenizerFast.from_pretrained(ckpt),
        chat_template=template,
    )
    batch = inputs(processor)
    outputs = json.loads((HERE / "outputs.json").read_text())
    proprio = torch.tensor([outputs["proprio_normalised"]], dtype=torch.float32)
    with torch.no_grad():
        actions = model.predict_action(
            batch["input_ids"],
            attention_mask=batch["attention_mask"].bool(),
            pixel_values=batch["pixel_values"],
            image_grid_thw=batch["image_grid_thw"],
            unnorm_key=key,
            vocab_size=len(processor.tokenizer),
            proprio=proprio,
            action_chunk=c.NUM_ACTIONS_CHUNK,
            **kwargs,
        )
    out = {"unnorm_key": key, "actions": np.asarray(actions).tolist()}
    if args.compare:
        ours = np.asarray(json.loads(args.compare.read_text())["actions"])
        out["max_difference"] = float(np.abs(ours - np.asarray(actions)).max())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
