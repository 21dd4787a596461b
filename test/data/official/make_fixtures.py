"""Write the official-implementation fixtures in test/data/official (see README.md there).

Runs in a scratch environment that is not a dependency of this project: Python 3.11,
torch 2.13.0 (CPU), transformers 4.51.3, diffusers 0.33.1 (the official action-head
module imports its DDIM scheduler), numpy, pillow; and the official code, DreamLM/
Dream-VLX at a72fa41, whose `vla/` folder is passed as --official:

    python test/data/official/make_fixtures.py --official /path/to/Dream-VLX/vla

It builds tiny random Dream-VLA models with the official classes (`DreamVLAConfig`,
`DreamVLAForActionPrediction`, `DreamVLProcessor`, `DreamVLImageProcessor`, the
heads and projectors of `prismatic.models`), with the LIBERO platform constants
(chunk 8, action dimension 7, proprio dimension 8), saves them in the official
layouts and records what the official code computes on fixed inputs. Nothing of the
official code is copied: it is imported from --official.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
INSTRUCTION = "pick up the red cube and place it in the basket"
UNNORM_KEY = "libero_spatial_no_noops"
HIDDEN = 16
# Qwen2 special tokens and Dream's two, at their published ids (the official code
# hard-codes 151645, 198 and the action-token begin 151666, so the ids must be real)
SPECIAL = [
    (151643, "<|endoftext|>"), (151644, "<|im_start|>"), (151645, "<|im_end|>"),
    (151646, "<|object_ref_start|>"), (151647, "<|object_ref_end|>"), (151648, "<|box_start|>"),
    (151649, "<|box_end|>"), (151650, "<|quad_start|>"), (151651, "<|quad_end|>"),
    (151652, "<|vision_start|>"), (151653, "<|vision_end|>"), (151654, "<|vision_pad|>"),
    (151655, "<|image_pad|>"), (151656, "<|video_pad|>"), (151657, "<tool_call>"),
    (151658, "</tool_call>"), (151659, "<|fim_prefix|>"), (151660, "<|fim_middle|>"),
    (151661, "<|fim_suffix|>"), (151662, "<|fim_pad|>"), (151663, "<|repo_name|>"),
    (151664, "<|file_sep|>"), (151665, "<|beginoftext|>"), (151666, "<|mask|>"),
]  # fmt: skip
# Qwen2-VL's chat template (the Dream-VL processor carries the same one)
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def import_official(vla: Path):
    """The official modules, without running the package __init__ files that pull in
    the training stack (TensorFlow, draccus, ...)."""
    sys.argv = [sys.argv[0], "libero"]  # prismatic.vla.constants picks LIBERO from argv
    sys.path.insert(0, str(vla))
    for name in ("prismatic", "prismatic.vla", "prismatic.models"):
        pkg = types.ModuleType(name)
        pkg.__path__ = [str(vla / name.replace(".", "/"))]
        sys.modules[name] = pkg
    return types.SimpleNamespace(
        constants=importlib.import_module("prismatic.vla.constants"),
        heads=importlib.import_module("prismatic.models.action_heads"),
        projectors=importlib.import_module("prismatic.models.projectors"),
        config=importlib.import_module("dreamvla.configuration_dreamvl"),
        modeling=importlib.import_module("dreamvla.modeling_dreamvl"),
        processing=importlib.import_module("dreamvla.processing_dreamvl"),
        image_processing=importlib.import_module("dreamvla.image_processing_dreamvl"),
    )


def make_tokenizer():
    """A byte-level tokenizer with the published ids that matter: the 256 byte tokens
    at Qwen2's ids (bytes in the byte-level alphabet's order, so '\\n' is 198 and ' '
    is 220), filler tokens up to 151642, the special tokens, 151667 entries in all
    as the Dream tokenizer has; no merges (every byte is a token)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    for i in range(len(vocab), SPECIAL[0][0]):
        vocab[f"<f{i}>"] = i
    for i, text in SPECIAL:
        vocab[text] = i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for _, t in SPECIAL])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    assert len(fast) == 151667 and fast.encode("\n") == [198] and fast.encode(" ") == [220]
    return fast


def stats(dim: int, rng: np.random.Generator, mask_last: bool) -> dict:
    q01 = rng.uniform(-1.0, -0.1, dim)
    q99 = rng.uniform(0.1, 1.0, dim)
    out = {
        "mean": ((q01 + q99) / 2).tolist(), "std": (q99 - q01).tolist() ,
        "max": (q99 + 0.1).tolist(), "min": (q01 - 0.1).tolist(),
        "q01": q01.tolist(), "q99": q99.tolist(),
    }  # fmt: skip
    if mask_last:
        out["mask"] = [True] * (dim - 1) + [False]  # the gripper is not normalised
    return out


def images() -> list:
    """A 224x224 front frame (the size the official evaluation hands its processor)
    and a 236x212 wrist frame (which the processor itself resizes to 224x224)."""
    from PIL import Image

    y, x = np.mgrid[0:224, 0:224]
    front = np.stack([x, y, (x + y) // 2], -1).astype(np.uint8)
    front[60:120, 80:150] = (200, 30, 40)  # a red block
    y, x = np.mgrid[0:212, 0:236]
    wrist = np.stack([(x * 3) % 256, 255 - y, (x * y) % 256], -1).astype(np.uint8)
    return [Image.fromarray(front), Image.fromarray(wrist)]


def build(off, rng: np.random.Generator):
    c = off.constants
    torch.manual_seed(0)
    action_stats = stats(c.ACTION_DIM, rng, mask_last=True)
    proprio_stats = stats(c.PROPRIO_DIM, rng, mask_last=False)
    dataset_statistics = {
        UNNORM_KEY: {
            "action": action_stats, "proprio": proprio_stats,
            "num_transitions": 1000, "num_trajectories": 10,
        }
    }  # fmt: skip
    other = {"bridge_orig": {"action": stats(c.ACTION_DIM, rng, mask_last=True)}}
    cfg = off.config.DreamVLAConfig(
        vocab_size=152064, hidden_size=HIDDEN, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
        rope_theta=1_000_000.0, mrope_section=[2, 1, 1], projector_hidden_act="gelu",
        vision_config={
            "depth": 2, "embed_dim": 32, "hidden_size": 24, "num_heads": 2, "mlp_ratio": 2,
            "hidden_act": "quick_gelu", "patch_size": 14, "spatial_merge_size": 2,
            "temporal_patch_size": 2, "in_channels": 3,
        },
        n_action_bins=256, norm_stats={**dataset_statistics, **other},
        torch_dtype="float32",
    )  # fmt: skip
    cfg._attn_implementation = "sdpa"
    cfg.vision_config._attn_implementation = "sdpa"
    model = off.modeling.DreamVLAForActionPrediction(cfg).eval()
    with torch.no_grad():
        # rows of tokens that the fixtures use get N(0, 1); the others stay zero so
        # that the 152064-row matrices compress to almost nothing in git
        used = torch.zeros(152064, dtype=torch.bool)
        used[:256] = True
        used[151643:151923] = True
        for weight in (model.model.embed_tokens.weight, model.lm_head.weight):
            weight.zero_()
            weight[used] = torch.randn(int(used.sum()), HIDDEN)
    h = HIDDEN
    parts = {
        "l1": {"action_head": off.heads.L1RegressionActionHead(h, h, c.ACTION_DIM)},
        "flow": {
            "action_head": off.heads.FlowMatchingActionHead(h, h, c.ACTION_DIM),
            "noisy_action_projector": off.projectors.NoisyActionProjector(h),
        },
        "discrete": {},
    }
    proprio = off.projectors.ProprioProjector(llm_dim=h, proprio_dim=c.PROPRIO_DIM)
    for head in parts.values():
        head["proprio_projector"] = proprio
        for module in head.values():
            module.eval()
    return model, cfg, parts, dataset_statistics


def processor_for(off):
    ip = off.image_processing.DreamVLImageProcessor(min_pixels=3136, max_pixels=3211264)
    tokenizer = make_tokenizer()
    tokenizer.add_tokens([f"<|action_{n}|>" for n in range(256)])  # as finetune_dream.py
    return off.processing.DreamVLProcessor(
        image_processor=ip, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE
    )


def inputs(processor, n_images: int = 2):
    """What run_libero_eval_dream.get_action hands predict_action (fp32 here)."""
    conversation = [
        {
            "role": "user",
            "content": [{"type": "image"}] * n_images
            + [{"type": "text", "text": f"What action should the robot take to {INSTRUCTION}?"}],
        }
    ]
    text = processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    return processor(text=[text], images=images()[:n_images], padding=True, return_tensors="pt")


def save_pt(module: torch.nn.Module, path: Path) -> None:
    """torch.save of the state dict as DDP training leaves it ('module.' prefix)."""
    torch.save({f"module.{k}": v for k, v in module.state_dict().items()}, path)


def record(off, model, processor, parts, proprio_norm, noise) -> dict:
    """Run the official predict_action paths; everything the tests compare."""
    c = off.constants
    batch = inputs(processor)
    vocab_size = len(processor.tokenizer)
    pixel_values = batch.pop("pixel_values")
    n = c.NUM_ACTIONS_CHUNK * c.ACTION_DIM
    out: dict = {
        "input_ids": batch["input_ids"][0].tolist(),
        "image_grid_thw": batch["image_grid_thw"].tolist(),
        "pixel_values": pixel_values,  # saved separately
        "vocab_size": vocab_size,
        "proprio_normalised": proprio_norm.tolist(),
    }
    ids = batch["input_ids"]
    # On a CPU the official SDPA attention hands the 2-D mask to PyTorch unchanged
    # (it builds the 4-D one only on CUDA), which accepts it only as bool: all ones
    # at batch 1, so the same attention.
    batch["attention_mask"] = batch["attention_mask"].bool()
    proprio = torch.tensor(proprio_norm, dtype=torch.float32)[None]
    common = dict(
        pixel_values=pixel_values, image_grid_thw=batch["image_grid_thw"],
        attention_mask=batch["attention_mask"], unnorm_key=UNNORM_KEY,
        vocab_size=vocab_size, proprio=proprio, action_chunk=c.NUM_ACTIONS_CHUNK,
    )  # fmt: skip

    # logits and hidden states at the action positions: one forward of the
    # regression/discrete path (zero embeddings at the action positions)
    captured = {}

    def keep(module, args, kwargs, output):
        captured["logits"] = output.logits.detach().clone()
        captured["hidden"] = output.hidden_states.detach().clone()

    results = {}
    for name, head in parts.items():
        hook = model.register_forward_hook(keep, with_kwargs=True)
        if name == "discrete":
            actions = model.predict_action(
                ids, proprio_projector=head["proprio_projector"], temperature=0.0, **common
            )
            logits = captured["logits"][0, -(n + 3) : -3]  # the official slice
            results["discrete_one_pass"] = {
                "actions": actions.tolist(),
                "action_token_logits": logits[:, 151667:151923].tolist(),
                "argmax": logits.argmax(-1).tolist(),
            }
            hook.remove()
            for steps in (1, 4):
                torch.manual_seed(0)
                gen = model.diffusion_generate(
                    ids, attention_mask=batch["attention_mask"], pixel_values=pixel_values,
                    image_grid_thw=batch["image_grid_thw"], proprio=proprio,
                    proprio_projector=head["proprio_projector"], max_new_tokens=n + 2,
                    steps=steps, alg="maskgit_plus", temperature=0.0, alg_temp=0.0,
                    return_dict_in_generate=True, output_history=True,
                )  # fmt: skip
                torch.manual_seed(0)
                actions = model.predict_action(
                    ids, proprio_projector=head["proprio_projector"],
                    use_discrete_diffusion=True, steps=steps, alg="maskgit_plus",
                    temperature=0.0, alg_temp=0.0, **common,
                )  # fmt: skip
                results[f"discrete_diffusion_{steps}"] = {
                    "tokens": gen.sequences[0, ids.shape[1] :].tolist(),
                    "history": [h[0, ids.shape[1] :].tolist() for h in gen.history],
                    "actions": actions.tolist(),
                }
            continue
        kwargs = dict(action_head=head["action_head"], proprio_projector=head["proprio_projector"])
        if name == "l1":
            actions = model.predict_action(ids, **kwargs, **common)
            hidden = captured["hidden"][0, :-1][-(n + 2) : -2]
            results["l1"] = {
                "actions": actions.tolist(),
                "normalised": head["action_head"]
                .predict_action(hidden[None])
                .reshape(-1, c.ACTION_DIM)
                .tolist(),
                "action_hidden": hidden.tolist(),
            }
        else:
            kwargs["noisy_action_projector"] = head["noisy_action_projector"]
            for steps in (1, 4):
                head["action_head"].sample_noise = lambda shape, device: noise.clone()
                actions = model.predict_action(
                    ids, use_flow_matching=True, steps=steps, **kwargs, **common
                )
                results[f"flow_{steps}"] = {"actions": actions.tolist()}
            results["flow_noise"] = noise[0].tolist()
        hook.remove()
    out["results"] = results
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="Dream-VLX's vla/ folder")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    off = import_official(args.official.resolve())
    from safetensors.torch import save_file

    rng = np.random.default_rng(0)
    model, _, parts, dataset_statistics = build(off, rng)
    processor = processor_for(off)
    c = off.constants

    # the published base layout: config.json (norm_stats by dataset), weights, processor
    base = args.out / "base"
    base.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(base, safe_serialization=True)
    processor.save_pretrained(base)

    # official finetune outputs: config, statistics, DDP-prefixed .pt files; the merged
    # model.safetensors and processor files equal base's (the tests copy them in)
    finetune = {"l1": "50000", "flow": "latest", "discrete": "50000"}
    for name, step in finetune.items():
        d = args.out / f"finetune_{name}"
        d.mkdir(parents=True, exist_ok=True)
        model.config.save_pretrained(d)
        (d / "dataset_statistics.json").write_text(json.dumps(dataset_statistics, indent=2))
        suffix = "latest_checkpoint.pt" if step == "latest" else f"{step}_checkpoint.pt"
        for module_name, module in parts[name].items():
            save_pt(module, d / f"{module_name}--{suffix}")

    # the official evaluation replaces norm_stats with dataset_statistics.json
    model.norm_stats = dataset_statistics
    raw_proprio = rng.uniform(-1.5, 1.5, c.PROPRIO_DIM)
    p = dataset_statistics[UNNORM_KEY]["proprio"]
    low, high = np.array(p["q01"]), np.array(p["q99"])
    proprio_norm = np.clip(2 * (raw_proprio - low) / (high - low + 1e-8) - 1, -1, 1)
    noise = torch.randn(
        1, c.NUM_ACTIONS_CHUNK, c.ACTION_DIM, generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        out = record(off, model, processor, parts, proprio_norm, noise)
    pixel_values = out.pop("pixel_values")
    save_file(
        {"pixel_values": pixel_values.contiguous()}, str(args.out / "pixel_values.safetensors")
    )
    for i, img in enumerate(images()):
        img.save(args.out / f"image_{i}.png")
    out["raw_proprio"] = raw_proprio.tolist()
    out["instruction"] = INSTRUCTION
    out["unnorm_key"] = UNNORM_KEY
    out["constants"] = {
        "NUM_ACTIONS_CHUNK": c.NUM_ACTIONS_CHUNK, "ACTION_DIM": c.ACTION_DIM,
        "PROPRIO_DIM": c.PROPRIO_DIM,
    }  # fmt: skip
    (args.out / "outputs.json").write_text(json.dumps(out))
    print("wrote", args.out, {k: v for k, v in out["constants"].items()})


if __name__ == "__main__":
    main()
