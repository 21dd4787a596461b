"""The speed settings against the plain model on the same inputs (prints figures).

For each weights setting (plain, int8, and fp8 on a CUDA device): chunk latency of
discrete 1 step and flow matching N steps, peak GPU memory, and the accuracy against
the plain model's chunk for the same prompt, proprio and start noise: the largest
difference of the un-normalised actions (rad; actions scaled to the PiPER's joint
ranges, as the random checkpoints are) and the discrete action tokens that differ
(count, and the largest difference in bins). Random weights, batch 1, two 224x224
images, the preset's 56 action tokens.

    python bench/speed_settings.py --preset mid                      # CPU
    python bench/speed_settings.py --preset dream-vla-7b --device cuda --dtype bf16
"""

from __future__ import annotations

import argparse
import json

import model_latency  # bench/, beside this script
import numpy as np
import torch

from dream_vla_ros.control import load_safety_config
from dream_vla_ros.model import ActionDecoder, DecodeSettings, DreamVLA, preset
from dream_vla_ros.model.checkpoint import DTYPES, NormStats
from dream_vla_ros.model.quantize import quantize_backbone


def timed(fn, repeats: int, device: str) -> float:
    """Median seconds (model_latency's timing, without its memory figure)."""
    return model_latency.timed(fn, repeats, device)[0]


def measure(args: argparse.Namespace, weights: str) -> dict:
    cfg = preset(args.preset, head="flow")
    torch.manual_seed(0)  # the same random weights for every setting
    with torch.device(args.device):
        model = DreamVLA(cfg).to(DTYPES[args.dtype]).eval()
    replaced = quantize_backbone(model, weights)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    decoder = ActionDecoder(model)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(10, 200, (1, 170), generator=g)
    ids[0, 20:84] = cfg.image_token_id
    ids[0, 100:164] = cfg.image_token_id
    pixels = torch.rand(512, 1176, generator=g).to(args.device) * 4 - 2
    grid = torch.tensor([[1, 16, 16], [1, 16, 16]], device=args.device)
    proprio = (torch.rand(1, 7, generator=g) * 2 - 1).to(args.device, DTYPES[args.dtype])
    noise = torch.randn(1, cfg.action.chunk, cfg.action.action_dim, generator=g)
    input_ids = ids.to(args.device)

    def prompt() -> torch.Tensor:
        return model.embed_prompt(input_ids, pixels, grid)

    out: dict = {"weights": weights, "linear_layers_replaced": replaced}
    with torch.no_grad():
        history: list[torch.Tensor] = []
        decoder.discrete(prompt(), None, proprio, DecodeSettings(steps=1), history=history)
        out["discrete_tokens"] = history[-1][0].tolist()
        out["flow_normalised"] = decoder.flow(prompt(), None, proprio, 4, noise=noise)[0].tolist()
        out["discrete 1 step ms"] = 1e3 * timed(
            lambda: decoder.discrete(prompt(), None, proprio, DecodeSettings(steps=1)),
            args.repeats,
            args.device,
        )
        out["flow 4 steps ms"] = 1e3 * timed(
            lambda: decoder.flow(prompt(), None, proprio, 4, noise=noise), args.repeats, args.device
        )
    if args.device.startswith("cuda"):
        out["peak GiB"] = torch.cuda.max_memory_allocated() / 2**30
    return out  # the model is freed with this frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="mid")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    settings = ["plain", "int8"] + (["fp8"] if args.device.startswith("cuda") else [])
    limits = load_safety_config()
    stats = NormStats(np.asarray(limits.soft_lower), np.asarray(limits.soft_upper))
    rows = []
    plain = None
    for weights in settings:
        try:
            r = measure(args, weights)
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
        except (RuntimeError, ValueError) as exc:
            print(f"{weights}: failed: {str(exc)[:300]}")
            rows.append({"weights": weights, "error": str(exc)[:300]})
            continue
        actions = stats.unnormalise(np.asarray(r.pop("flow_normalised"), dtype=np.float64))
        tokens = np.asarray(r.pop("discrete_tokens"))
        if plain is None:
            plain = (actions, tokens)
        r["flow max action difference rad"] = float(np.abs(actions - plain[0]).max())
        r["discrete tokens that differ"] = int((tokens != plain[1]).sum())
        r["discrete largest bin difference"] = int(np.abs(tokens - plain[1]).max())
        rows.append(r)
    print(f"speed settings, preset {args.preset}, {args.device} {args.dtype}, batch 1, 2 images")
    for r in rows:
        print(
            "  "
            + ", ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()
            )
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"preset": args.preset, "device": args.device, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
