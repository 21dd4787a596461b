"""Grounding pretraining of a small base model on rendered scenes (no ROS imports).

Dream-VLA finetunes a base whose Qwen2-VL tower and language model were
pretrained on web-scale images and text, grounding included: they arrive able
to say where "the red cube" is. A preset trained from scratch on a few dozen
demonstrations does not learn that (docs/sim.md: the tiny policy predicted the
average reach, with or without the colour word). This module gives the tiny
preset the same starting point on the world's own rendered scenes, in two
stages that leave the architecture untouched:

1. vision: the ViT + projector learn, for every merged image token, which cube
   colours it shows (MuJoCo's segmentation render gives the per-pixel truth)
   and where on the table that cube stands;
2. referring: with the tower frozen, the language model reads "touch the
   {colour} cube" and learns (a) to mark the image tokens of the named cube and
   (b) to point: the mean hidden state of the answer positions (the positions
   the action heads read) predicts the named cube's table position.

The linear read-outs of both stages are discarded; what is kept is a base
checkpoint in the published layout that `model.base` of a recipe can name
(config/finetune/touch_tiny_cpu.yaml uses models/tiny_grounded).

The place task's base (`task` "place") learns the same on the place world's
scenes, with five objects (three cubes, two bowls): the scenes are snapshots of
the place expert's physics rollouts (cubes on the table, in the fingers, in the
bowls), and the referring stage reads "put the {colour} cube in the {colour}
bowl", marks both named objects' tokens and points at both.

Both stages and both tasks' scenes are in this one module (longer than most): the
scene labels and the stages' read-outs must agree on the objects and their order.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dream_vla_ros.control.kinematics import DHChain
from dream_vla_ros.finetune.objectives import BatchEncoder
from dream_vla_ros.model.actions import ActionDecoder
from dream_vla_ros.model.checkpoint import NormStats, save_checkpoint
from dream_vla_ros.model.config import preset
from dream_vla_ros.model.modeling import DreamVLA
from dream_vla_ros.policy.preprocess import ImagePreprocessor
from dream_vla_ros.policy.prompt import PromptBuilder, byte_tokenizer, instruction_words
from dream_vla_ros.sim.place import BOWL_COLOURS, PlaceExpert, sample_place_layout
from dream_vla_ros.sim.place import X_RANGE as PLACE_X_RANGE
from dream_vla_ros.sim.place import Y_RANGE as PLACE_Y_RANGE
from dream_vla_ros.sim.task import COLOURS, HOME, X_RANGE, Y_RANGE, TouchExpert, sample_layout
from dream_vla_ros.sim.world import PiperWorld

CAMERAS = ("front", "wrist")
PRESENT = 0.02  # a token "shows" an object when it covers >= 2 % of its pixels


@dataclass(frozen=True)
class SceneTask:
    """The objects a task's scenes label, the table region their positions are
    scaled from, and how an instruction names them."""

    name: str
    objects: tuple[str, ...]  # cube colours, then bowl colours
    bowls: tuple[str, ...]
    x_range: tuple[float, float]
    y_range: tuple[float, float]

    @property
    def named(self) -> int:
        """Objects an instruction names: the cube (touch) or the cube and the bowl."""
        return 2 if self.bowls else 1

    def instruction(self, named: tuple[int, ...]) -> str:
        if not self.bowls:
            return f"touch the {self.objects[named[0]]} cube"
        return f"put the {self.objects[named[0]]} cube in the {self.objects[named[1]]} bowl"

    def instructions(self) -> list[str]:
        if not self.bowls:
            return [self.instruction((i,)) for i in range(len(COLOURS))]
        n = len(COLOURS)
        return [self.instruction((i, n + j)) for i in range(n) for j in range(len(self.bowls))]


SCENE_TASKS = {
    "touch": SceneTask("touch", COLOURS, (), X_RANGE, Y_RANGE),
    "place": SceneTask(
        "place", (*COLOURS, *BOWL_COLOURS), BOWL_COLOURS, PLACE_X_RANGE, PLACE_Y_RANGE
    ),
}


@dataclass(frozen=True)
class GroundingSettings:
    preset: str = "tiny"
    layouts: int = 600  # training scenes (layout seeds 10000+)
    test_layouts: int = 40  # held-out scenes for the report (seeds 90000+)
    vision_steps: int = 1600
    refer_steps: int = 1200
    batch_size: int = 16
    lr: float = 3e-3
    warmup_steps: int = 30
    seed: int = 0
    width: int = 320  # the sim graphs' camera size
    height: int = 240
    image_size: int = 224  # the model's input (DreamVLAConfig.image_size)
    # the vision tower's layers and width (0: the preset's); heads of 16 channels
    vision_depth: int = 0
    vision_width: int = 0
    # the base's action head shape (the finetune recipe may change it)
    action_dim: int = 7
    chunk: int = 16
    action_period_s: float = 0.1
    task: str = "touch"  # touch | place (SCENE_TASKS)

    def problem(self) -> str:
        """What is wrong with these settings, in a sentence naming the option ("": none)."""
        if min(self.layouts, self.vision_steps, self.refer_steps) < 1:
            return "--layouts, --vision-steps and --refer-steps must be >= 1"
        if self.vision_depth < 0 or self.vision_width < 0 or self.vision_width % 16:
            return (
                "--vision-depth must be >= 0 and --vision-width a multiple of 16 "
                "(0 keeps the tiny preset's)"
            )
        if self.image_size < 28 or self.image_size % 28:
            return (
                f"--image-size {self.image_size} is not a multiple of 28 pixels (the tiny "
                "preset's merged token); use 224, 336 or 448"
            )
        return ""


@dataclass
class Scenes:
    images: torch.Tensor  # (N, cameras, 3, S, S) uint8, as the policy resizes them
    coverage: torch.Tensor  # (N, cameras * T, objects): pixel fraction per merged token
    cube_xy: torch.Tensor  # (N, objects, 2): object centres, table region scaled to [-1, 1]
    task: SceneTask = SCENE_TASKS["touch"]

    def __len__(self) -> int:
        return self.images.shape[0]


def table_xy(p: np.ndarray, task: SceneTask = SCENE_TASKS["touch"]) -> np.ndarray:
    """Object centre (x, y) [m] -> the task's table region scaled to [-1, 1]."""
    lo = np.array([task.x_range[0], task.y_range[0]])
    hi = np.array([task.x_range[1], task.y_range[1]])
    return 2.0 * (np.asarray(p)[:2] - lo) / (hi - lo) - 1.0


def xy_metres(err: torch.Tensor, task: SceneTask = SCENE_TASKS["touch"]) -> torch.Tensor:
    """(..., 2) error in scaled units -> its length in metres."""
    xr, yr = task.x_range, task.y_range
    half = torch.tensor([(xr[1] - xr[0]) / 2, (yr[1] - yr[0]) / 2])
    return (err * half).norm(dim=-1)


def scene_pose(rng: np.random.Generator, layout, lower, upper, chain: DHChain) -> np.ndarray:
    """Where the arm is in a scene: half at home (jittered), half along the expert's
    reach to a random cube, as the policy sees them in closed loop."""
    if rng.random() < 0.5:
        return HOME + np.r_[rng.normal(0.0, 0.1, 6), 0.0]
    target = COLOURS[int(rng.integers(len(COLOURS)))]
    expert = TouchExpert(replace(layout, target=target), lower, upper, chain=chain)
    expert.start(0.0, HOME)
    q = expert.command(float(rng.uniform(0.0, expert.duration_s)))
    assert q is not None
    return q + np.r_[rng.normal(0.0, 0.05, 6), 0.0]


def place_scene(
    rng: np.random.Generator, world: PiperWorld, seed: int, lower, upper
) -> dict[str, np.ndarray]:
    """Set `world` to a snapshot of the place expert's physics rollout on layout
    `seed` (a random naming, at a random time: half the scenes at home, jittered);
    returns the objects' centres."""
    from dream_vla_ros.evaluation.physics import reset, rollout

    cube = COLOURS[int(rng.integers(len(COLOURS)))]
    bowl = BOWL_COLOURS[int(rng.integers(len(BOWL_COLOURS)))]
    layout = sample_place_layout(seed, cube, bowl)
    if rng.random() < 0.5:
        reset(world, layout)
        world.set_joints(HOME + np.r_[rng.normal(0.0, 0.1, 6), 0.0])
    else:
        expert = PlaceExpert(layout, lower, upper, chain=world.chain)
        expert.start(0.0, HOME)
        duration = expert.duration_s
        rollout(world, layout, expert, float(rng.uniform(0.1, duration + 0.5)))
    return {
        **{c: world.cube(c) for c in COLOURS},
        **{b: world.bowl(b) for b in BOWL_COLOURS},
    }


def render_scenes(
    world: PiperWorld,
    seeds: range,
    lower: np.ndarray,
    upper: np.ndarray,
    pre: ImagePreprocessor,
    rng_seed: int,
    task: SceneTask = SCENE_TASKS["touch"],
) -> Scenes:
    """RGB and segmentation renders of each seed's layout at one pose (touch) or
    of a moment of the place expert's rollout on it (place)."""
    objects = task.objects
    geoms = {c: [int(world.model.body_geomadr[world.model.body(f"cube_{c}").id])] for c in COLOURS}
    for b in task.bowls:
        body = world.model.body(f"bowl_{b}").id
        geoms[b] = [g for g in range(world.model.ngeom) if world.model.geom_bodyid[g] == body]
    rng = np.random.default_rng(rng_seed)
    grid = pre.size // (pre.patch * pre.merge)
    block = pre.patch * pre.merge
    images, coverage, cube_xy = [], [], []
    renderer = world.renderer
    for seed in seeds:
        if task.bowls:
            centres = place_scene(rng, world, seed, lower, upper)
        else:
            layout = sample_layout(seed)
            world.set_cubes(layout.cubes)
            world.set_joints(scene_pose(rng, layout, lower, upper, world.chain))
            centres = layout.cubes
        rgb = [world.render(cam) for cam in CAMERAS]
        renderer.enable_segmentation_rendering()
        try:
            cov = []
            for cam in CAMERAS:
                renderer.update_scene(world.data, cam)
                seg = renderer.render()[..., 0]
                masks = torch.from_numpy(
                    np.stack([np.isin(seg, geoms[c]) for c in objects]).astype(np.float32)
                )
                # the policy's resize to size x size, then one value per merged token
                # (row-major, the order ImagePreprocessor.patchify gives the tokens)
                m = F.interpolate(masks[None], size=(pre.size, pre.size), mode="area")
                cov.append(F.avg_pool2d(m, block)[0].reshape(len(objects), grid * grid).T)
        finally:
            renderer.disable_segmentation_rendering()
        images.append(pre.resized(rgb))
        coverage.append(torch.cat(cov))
        cube_xy.append(
            torch.tensor(
                np.stack([table_xy(centres[c], task) for c in objects]), dtype=torch.float32
            )
        )
    return Scenes(torch.stack(images), torch.stack(coverage), torch.stack(cube_xy), task)


def _lr(settings: GroundingSettings, step: int, steps: int) -> float:
    warm = min(1.0, (step + 1) / settings.warmup_steps)
    return settings.lr * warm * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * step / steps)))


def _detection(logits: torch.Tensor, present: torch.Tensor) -> dict[str, float]:
    pred, truth = logits > 0, present > 0.5
    hit = (pred & truth).sum().item()
    return {
        "recall": hit / max(1, int(truth.sum())),
        "precision": hit / max(1, int(pred.sum())),
    }


class VisionStage:
    """Stage 1: per merged token, the colours shown and where that cube stands."""

    def __init__(
        self, model: DreamVLA, pre: ImagePreprocessor, task: SceneTask = SCENE_TASKS["touch"]
    ) -> None:
        self.model, self.pre, self.task = model, pre, task
        n = len(task.objects)
        self.readout = nn.Linear(model.cfg.hidden_size, n + 2)

    def losses(self, scenes: Scenes, idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        images = scenes.images[idx]
        pixel_values, grid = self.pre.patchify(images.reshape(-1, *images.shape[2:]))
        out = self.readout(self.model.image_features(pixel_values, grid))
        n = len(self.task.objects)
        cov = scenes.coverage[idx].reshape(-1, n)
        present = (cov > PRESENT).float()
        # ~10 % of the tokens show a cube: weigh them up so "nothing" is not the answer
        detect = F.binary_cross_entropy_with_logits(
            out[:, :n], present, pos_weight=torch.tensor(20.0)
        )
        # the cube's table position, on tokens that show one cube (coverage-weighted)
        tokens_per_scene = cov.shape[0] // len(idx)
        xy = scenes.cube_xy[idx].repeat_interleave(tokens_per_scene, 0)  # (tokens, n, 2)
        weight = cov / cov.sum(-1, keepdim=True).clamp_min(1e-6)
        target = (weight[..., None] * xy).sum(1)
        shows = (cov.sum(-1) > PRESENT).float()
        err = out[:, n:] - target
        where = ((err**2).sum(-1) * shows).sum() / shows.sum().clamp_min(1)
        metrics = {
            **_detection(out[:, :n], present),
            "xy_error_m": float(
                (xy_metres(err.detach(), self.task) * shows).sum() / shows.sum().clamp_min(1)
            ),
        }
        return detect + where, metrics

    def parameters(self) -> list[nn.Parameter]:
        m = self.model
        return [*m.visual.parameters(), *m.projector.parameters(), *self.readout.parameters()]


class ReferringStage:
    """Stage 2: the language model marks the named cube's tokens and points at it."""

    def __init__(
        self, model: DreamVLA, prompts: PromptBuilder, task: SceneTask = SCENE_TASKS["touch"]
    ) -> None:
        self.model, self.task = model, task
        self.encoder = BatchEncoder(model, prompts)
        self.decoder = ActionDecoder(model)
        d, k = model.cfg.hidden_size, task.named
        self.mark, self.point = nn.Linear(d, k), nn.Linear(d, 2 * k)

    def losses(
        self, scenes: Scenes, idx: torch.Tensor, named: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """`named` (b,) object indices (touch) or (b, 2): the cube's and the bowl's."""
        model, cfg, b = self.model, self.model.cfg, len(idx)
        named = named.reshape(b, -1)
        k = named.shape[1]
        batch = {
            "images": scenes.images[idx],
            "task": [self.task.instruction(tuple(int(v) for v in row)) for row in named],
            "actions": torch.zeros(b, 1, 1),
            "pad": torch.ones(b, 1, dtype=torch.bool),
        }
        inputs = self.encoder(batch, torch.device("cpu"))
        prompt = model.embed_prompt(inputs["input_ids"], inputs["pixel_values"], inputs["grid_thw"])
        length, d = prompt.shape[1], prompt.shape[2]
        # the answer positions as the L1 head fills them (zeros); the hidden state at
        # p - 1 describes position p (Dream's shifted logits)
        n_answer = self.decoder.n_actions
        answers = prompt.new_zeros(b, n_answer, d)
        hidden = self.decoder.sequence_hidden(prompt, inputs["attention_mask"], answers, None)
        answer_hidden = hidden[:, length - 1 : length - 1 + n_answer]
        is_image = inputs["input_ids"] == cfg.image_token_id
        image_hidden = hidden[:, :length][is_image].reshape(b, -1, d)
        rows = torch.arange(b)[:, None]
        cov = scenes.coverage[idx].transpose(1, 2)[rows, named]  # (b, k, tokens) named ones
        present = (cov > PRESENT).float()
        mark_logits = self.mark(image_hidden).transpose(1, 2)  # (b, k, tokens)
        mark = F.binary_cross_entropy_with_logits(
            mark_logits, present, pos_weight=torch.tensor(20.0)
        )
        target = scenes.cube_xy[idx][rows, named]  # (b, k, 2)
        err = self.point(answer_hidden.mean(1)).reshape(b, k, 2) - target
        point = (err**2).sum(-1).mean()
        metrics = {
            **_detection(mark_logits, present),
            "point_error_m": float(xy_metres(err.detach(), self.task).mean()),
        }
        return mark + point, metrics

    def parameters(self) -> list[nn.Parameter]:
        return [*self.model.model.parameters(), *self.mark.parameters(), *self.point.parameters()]


def _train(
    stage: VisionStage | ReferringStage,
    scenes: Scenes,
    settings: GroundingSettings,
    steps: int,
    seed: int,
    name: str,
    log: Callable[[str], None],
) -> None:
    params = stage.parameters()
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr(settings, step, steps)
        idx = torch.randint(0, len(scenes), (settings.batch_size,), generator=g)
        if isinstance(stage, ReferringStage):
            named = torch.randint(0, len(COLOURS), (settings.batch_size,), generator=g)
            if stage.task.bowls:
                bowl = torch.randint(0, len(stage.task.bowls), (settings.batch_size,), generator=g)
                named = torch.stack([named, len(COLOURS) + bowl], 1)
            loss, metrics = stage.losses(scenes, idx, named)
        else:
            loss, metrics = stage.losses(scenes, idx)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if (step + 1) % 100 == 0 or step + 1 == steps:
            shown = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items())
            took = time.perf_counter() - started
            log(f"{name} {step + 1}/{steps}: loss {loss.item():.3f}, {shown} ({took:.0f} s)")


@torch.no_grad()
def evaluate(
    vision: VisionStage, refer: ReferringStage, scenes: Scenes, batch: int = 16
) -> dict[str, float]:
    """Held-out figures of both read-outs (each named colour in every scene)."""
    totals: dict[str, list[float]] = {}
    for start in range(0, len(scenes), batch):
        idx = torch.arange(start, min(start + batch, len(scenes)))
        _, m = vision.losses(scenes, idx)
        for k, v in m.items():
            totals.setdefault(f"vision_{k}", []).append(v)
        task = refer.task
        namings = (
            [(c, len(COLOURS) + j) for c in range(len(COLOURS)) for j in range(len(task.bowls))]
            if task.bowls
            else [(c,) for c in range(len(COLOURS))]
        )
        for naming in namings:
            named = torch.tensor(naming).expand(len(idx), len(naming))
            _, m = refer.losses(scenes, idx, named)
            for k, v in m.items():
                totals.setdefault(f"referring_{k}", []).append(v)
    return {k: float(np.mean(v)) for k, v in totals.items()}


def build_base(
    out: str | Path,
    settings: GroundingSettings | None = None,
    lower: np.ndarray | None = None,
    upper: np.ndarray | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Pretrain a preset on rendered scenes and write it as a base checkpoint to
    `out` (published layout, tokenizer.json, grounding.json with the held-out
    figures before and after). Returns the report."""
    from dream_vla_ros.control import load_safety_config

    s = settings or GroundingSettings()
    if lower is None or upper is None:
        limits = load_safety_config()
        lower, upper = np.asarray(limits.soft_lower), np.asarray(limits.soft_upper)
    torch.manual_seed(s.seed)
    started = time.perf_counter()
    cfg = preset(
        s.preset,
        head="flow",
        action_dim=s.action_dim,
        chunk=s.chunk,
        proprio_dim=0,
        action_period_s=s.action_period_s,
    )
    vision = cfg.vision
    if s.vision_width:
        vision = replace(vision, embed_dim=s.vision_width, num_heads=s.vision_width // 16)
    if s.vision_depth:
        vision = replace(vision, depth=s.vision_depth)
    cfg = replace(cfg, image_size=s.image_size, vision=vision)
    model = DreamVLA(cfg)
    model.train()
    task = SCENE_TASKS[s.task]
    tokenizer = byte_tokenizer(
        cfg.newline_token_id + 1, instruction_words(task.instructions()), cfg.base_vocab_size
    )
    pre = ImagePreprocessor(
        size=cfg.image_size,
        patch_size=cfg.vision.patch_size,
        merge_size=cfg.vision.spatial_merge_size,
        temporal_patch_size=cfg.vision.temporal_patch_size,
    )
    world = PiperWorld(width=s.width, height=s.height, bowls=task.bowls)
    try:
        train = render_scenes(
            world, range(10000, 10000 + s.layouts), lower, upper, pre, s.seed, task
        )
        test = render_scenes(
            world, range(90000, 90000 + s.test_layouts), lower, upper, pre, s.seed + 1, task
        )
    finally:
        world.close()
    rendered = time.perf_counter() - started
    log(f"grounding: rendered {s.layouts} + {s.test_layouts} scenes in {rendered:.0f} s")
    vision = VisionStage(model, pre, task)
    refer = ReferringStage(model, PromptBuilder(tokenizer, cfg), task)
    before = evaluate(vision, refer, test)
    _train(vision, train, s, s.vision_steps, s.seed, "vision", log)
    model.visual.requires_grad_(False)
    model.projector.requires_grad_(False)
    _train(refer, train, s, s.refer_steps, s.seed + 1, "referring", log)
    model.requires_grad_(True)
    after = evaluate(vision, refer, test)
    out = Path(out)
    # placeholder action statistics: finetuning computes its own from the dataset
    stats = NormStats(np.full(s.action_dim, -1.0), np.full(s.action_dim, 1.0))
    model.eval()
    save_checkpoint(model, out, stats, None)
    tokenizer.save(str(out / "tokenizer.json"))
    report = {
        "settings": asdict(s),
        "held_out_before": before,
        "held_out_after": after,
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / "grounding.json").write_text(json.dumps(report, indent=2))
    log(
        f"grounding: held-out named-object pointing error {before['referring_point_error_m']:.3f}"
        f" -> {after['referring_point_error_m']:.3f} m, tokens of the named cube found "
        f"{after['referring_recall']:.0%} (precision {after['referring_precision']:.0%}); "
        f"base written to {out} in {report['seconds']:.0f} s"
    )
    return report
