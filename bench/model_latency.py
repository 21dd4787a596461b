"""Dream-VLA chunk latency, peak memory and preprocessing speed (prints figures).

Per preset (random weights, batch 1, two 224x224 images + instruction + proprio):
discrete 1-step, discrete k-step, flow matching N steps (plain, with
classifier-free guidance: two batch rows, ratio guided / plain, and the
prompt-cached head: ratio full / prompt-cached), L1 regression, and
left-to-right (autoregressive order) decoding of the same action tokens with the
same weights; ratio AR / diffusion. On a GPU every mode runs eagerly and with CUDA
graphs (the policy's default there), with the ratio. Preprocessing of 2x640x480 frames: ours
against transformers' Qwen2-VL processor (PIL) on the same frames.

Usage: python bench/model_latency.py [--presets tiny mid] [--device cpu|cuda]
       [--dtype fp32|bf16] [--repeats 5] [--k 4]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from dream_vla_ros.model import ActionDecoder, DecodeSettings, DreamVLA, preset
from dream_vla_ros.model.checkpoint import DTYPES
from dream_vla_ros.policy.preprocess import ImagePreprocessor


def timed(fn, repeats: int, device: str) -> tuple[float, float]:
    """(median seconds, peak GPU memory GB or nan)."""
    fn()  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 1e9 if device.startswith("cuda") else float("nan")
    return float(np.median(times)), peak


def bench_head(name: str, head: str, device: str, dtype: str, repeats: int, k: int) -> dict:
    cached = head == "flow-cached"
    if cached:
        cfg = preset(name, head="flow", flow_attention="prompt_cached")
        head = "flow"
    else:
        cfg = preset(name, head=head)
    torch.manual_seed(0)
    with torch.device(device):
        model = DreamVLA(cfg).to(DTYPES[dtype]).eval()
    pre = ImagePreprocessor(device=device)
    frames = [np.zeros((480, 640, 3), np.uint8), np.full((480, 640, 3), 90, np.uint8)]
    ids = [cfg.im_start_token_id] * 40  # ~40 text tokens
    for _ in range(2):
        ids += [cfg.vision_start_token_id, *[cfg.image_token_id] * 64, cfg.vision_end_token_id]
    input_ids = torch.tensor([ids], device=device)
    proprio = torch.zeros(1, 7, device=device, dtype=DTYPES[dtype])
    decoder = ActionDecoder(model)

    def prompt() -> torch.Tensor:
        pixels, grid = pre(frames)
        return model.embed_prompt(input_ids, pixels, grid)

    def guided_prompt() -> torch.Tensor:  # with and without the instruction: 2 rows
        pixels, grid = pre(frames)
        rows = input_ids.expand(2, -1)
        return model.embed_prompt(rows, pixels, grid, shared_images=True)

    results = {}
    # on a GPU each mode runs eagerly and then with CUDA graphs (the policy's default)
    variants = [("", False)] + ([(", graphs", True)] if device.startswith("cuda") else [])
    with torch.no_grad():
        for suffix, graphs in variants:
            model.use_cuda_graphs(graphs)
            if head == "discrete":
                for label, settings, n in (
                    ("discrete 1 step", DecodeSettings(steps=1), repeats),
                    (f"discrete {k} steps", DecodeSettings(steps=k), repeats),
                    ("left-to-right (AR)", DecodeSettings(algorithm="left_to_right"), 1),
                ):
                    results[label + suffix] = timed(
                        lambda s=settings: decoder.discrete(prompt(), None, proprio, s), n, device
                    )
            elif head == "flow":
                steps = cfg.action.flow_steps
                kind = ", prompt-cached" if cached else ""
                results[f"flow {steps} steps{kind}{suffix}"] = timed(
                    lambda n=steps: decoder.flow(prompt(), None, proprio, n), repeats, device
                )
                if cached:
                    continue
                results[f"flow {steps} steps, guided{suffix}"] = timed(
                    lambda n=steps: decoder.flow(guided_prompt(), None, proprio, n, guidance=2.0),
                    repeats,
                    device,
                )
            else:
                results["L1 regression" + suffix] = timed(
                    lambda: decoder.regression(prompt(), None, proprio), repeats, device
                )
            if graphs and model.graphs is not None and model.graphs.failures:
                print(f"  graph capture failed, ran eagerly: {model.graphs.failures}")
    return results


def bench_preset(name: str, device: str, dtype: str, repeats: int, k: int) -> dict:
    results: dict = {}
    for head in ("discrete", "flow", "flow-cached", "l1"):
        results.update(bench_head(name, head, device, dtype, repeats, k))
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    print(f"preset {name} on {device} {dtype} ({preset(name).action_tokens} action tokens):")
    for label, (sec, peak) in results.items():
        mem = "" if np.isnan(peak) else f"   peak {peak:6.2f} GB"
        print(f"  {label:30s} {sec * 1000:9.1f} ms{mem}")
    for suffix in ("", ", graphs"):
        if "discrete 1 step" + suffix in results:
            ar = results["left-to-right (AR)" + suffix][0]
            one = results["discrete 1 step" + suffix][0]
            print(f"  {'AR / discrete 1 step' + suffix:30s} {ar / one:9.1f}x")
    for label in [k for k in results if ", prompt-cached" in k]:
        full = label.replace(", prompt-cached", "")
        ratio = results[full][0] / results[label][0]
        print(f"  {'full / prompt-cached, ' + full:30s} {ratio:9.1f}x")
    for label in [k for k in results if ", guided" in k]:
        plain = label.replace(", guided", "")
        ratio = results[label][0] / results[plain][0]
        print(f"  {'guided / plain, ' + plain:30s} {ratio:9.1f}x")
    if "discrete 1 step, graphs" in results:
        for label in [k for k in results if not k.endswith(", graphs")]:
            ratio = results[label][0] / results[label + ", graphs"][0]
            print(f"  {'eager / graphs, ' + label:30s} {ratio:9.1f}x")
    return {label: {"ms": sec * 1000, "peak_gb": peak} for label, (sec, peak) in results.items()}


def bench_preprocessing(repeats: int, device: str) -> None:
    """Ours on the CPU (and on `device` when it is a GPU: the policy node preprocesses
    on the model's device) against transformers' PIL processor, which runs on the CPU."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(2)]
    reference = Qwen2VLImageProcessorPil(max_pixels=224 * 224, min_pixels=224 * 224)
    t_ref, _ = timed(lambda: reference(images=frames, return_tensors="pt"), repeats, "cpu")
    print(f"preprocessing 2x640x480: transformers (PIL, cpu) {t_ref * 1000:.2f} ms")
    devices = ["cpu"] + ([device] if device.startswith("cuda") else [])
    for where in devices:
        ours = ImagePreprocessor(device=where)
        t_ours, _ = timed(lambda o=ours: o(frames), repeats * 4, where)
        print(
            f"  ours on {where:4s} {t_ours * 1000:7.2f} ms (numpy frames in, patches on "
            f"{where}), ratio {t_ref / t_ours:.1f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--presets", nargs="+", default=["tiny", "mid"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--json", default="", help="also write the figures to this file")
    args = parser.parse_args()
    bench_preprocessing(args.repeats, args.device)
    figures = {}
    for name in args.presets:
        figures[name] = bench_preset(name, args.device, args.dtype, args.repeats, args.k)
    if args.json:
        import json

        with open(args.json, "w") as f:
            json.dump({"device": args.device, "dtype": args.dtype, "presets": figures}, f, indent=2)


if __name__ == "__main__":
    main()
