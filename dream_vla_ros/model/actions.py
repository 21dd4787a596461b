"""Action tokens and action decoding for Dream-VLA.

Discrete actions: `n_bins` uniform bin edges over [-1, 1] (255 centres for 256
edges), one token per bin: the n_bins ids below `cfg.token_end` (appended after the
text vocabulary in this project's layout; 151667..151922 in the official one). As in
the official code, a normalised value a maps to token `token_end - digitize(a,
edges)` and a token back to centre `token_end - token - 1` (clipped), so higher bins
get lower ids. The restricted decoding (ours) considers only the action tokens at
action positions: a text token there could not be turned into a motion. The
official decoding (`action.decoding: official`, for official checkpoints) decodes
over the whole vocabulary and, like the official code, clips a text token to an
extreme bin; it also masks the two suffix positions (<|im_end|> and newline) and
counts them in the unmasking schedule.

Masked-diffusion unmasking (Dream's `_sample`): all A action positions start as
[MASK]; at step i of `steps` (noise levels t = linspace(1, eps, steps + 1)) the
model sees the whole sequence and its logits, shifted by one position, propose a
token for every masked position; `origin` reveals each with probability
1 - s/t, the confidence algorithms reveal the int(n_masked * (1 - s/t)) most
confident ones (all on the last step): `maskgit_plus` (top-1 probability),
`topk_margin` (top-1 minus top-2), `entropy` (negative entropy). One step
reveals every token in parallel. `left_to_right` (A steps, one token each) is
autoregressive order with the same weights, used as the benchmark baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dream_vla_ros.model.config import DreamVLAConfig
from dream_vla_ros.model.heads import euler_integrate
from dream_vla_ros.model.modeling import DreamVLA, PrefixCache

ALGORITHMS = ("origin", "maskgit_plus", "topk_margin", "entropy", "left_to_right")


class ActionTokenizer:
    def __init__(self, cfg: DreamVLAConfig) -> None:
        self.vocab_size = cfg.token_end  # the official code's len(tokenizer)
        self.n_bins = cfg.action.n_bins
        self.edges = np.linspace(-1.0, 1.0, self.n_bins)
        self.centres = (self.edges[:-1] + self.edges[1:]) / 2.0
        self.first_token = self.vocab_size - self.n_bins

    def encode(self, normalised: np.ndarray) -> np.ndarray:
        """Normalised actions in [-1, 1] (any shape) -> token ids (same shape)."""
        digitized = np.digitize(np.clip(normalised, -1.0, 1.0), self.edges)  # 1..n_bins
        return self.vocab_size - digitized

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        """Token ids -> bin centres in [-1, 1]."""
        index = np.clip(self.vocab_size - np.asarray(tokens) - 1, 0, self.centres.shape[0] - 1)
        return self.centres[index]

    def decode_torch(self, tokens: torch.Tensor) -> torch.Tensor:
        centres = torch.as_tensor(self.centres, dtype=torch.float32, device=tokens.device)
        index = (self.vocab_size - tokens - 1).clamp(0, centres.shape[0] - 1)
        return centres[index]


@dataclass(frozen=True)
class DecodeSettings:
    steps: int = 1
    algorithm: str = "maskgit_plus"
    temperature: float = 0.0
    top_p: float | None = None
    eps: float = 1e-3

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"unknown decoding algorithm '{self.algorithm}'; one of {ALGORITHMS}")
        if self.steps < 1:
            raise ValueError(f"decoding needs >= 1 step, got {self.steps}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
    drop = cumulative > top_p
    drop[..., 1:] = drop[..., :-1].clone()  # keep the token that crosses the threshold
    drop[..., 0] = False
    mask = torch.zeros_like(drop).scatter(-1, order, drop)
    return logits.masked_fill(mask, torch.finfo(logits.dtype).min)


def sample_tokens(
    logits: torch.Tensor,
    temperature: float,
    top_p: float | None,
    confidence: str,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, V) logits -> (confidence (N,), token index (N,))."""
    logits = logits.float()
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1:
        logits = _top_p_filter(logits, top_p)
    probs = torch.softmax(logits, dim=-1)
    if temperature > 0:
        choice = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        conf = probs.gather(-1, choice[:, None]).squeeze(-1)
    else:
        conf, choice = probs.max(dim=-1)
    if confidence == "topk_margin":
        top2 = probs.topk(2, dim=-1).values
        conf = top2[:, 0] - top2[:, 1]
    elif confidence == "entropy":
        conf = (probs * torch.log(probs + 1e-10)).sum(-1)
    return conf, choice


def _extended(mask: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """A prompt's padding mask (B, S) with `n` real positions appended."""
    if mask is None:
        return None
    return torch.cat([mask, mask.new_ones(mask.shape[0], n)], dim=1)


class ActionDecoder:
    """Turns a prompt into a normalised action chunk with the model's action head."""

    def __init__(self, model: DreamVLA) -> None:
        self.model = model
        self.cfg = model.cfg
        self.tokens = ActionTokenizer(self.cfg)
        self.n_actions = self.cfg.action_tokens

    def _suffix(self, batch: int) -> torch.Tensor:
        ids = torch.tensor(
            [self.cfg.im_end_token_id, self.cfg.newline_token_id], device=self.model.device
        )
        return self.model.model.embed_tokens(ids)[None].expand(batch, -1, -1)

    @property
    def prompt_cached(self) -> bool:
        return self.cfg.action.flow_attention == "prompt_cached"

    def sequence_hidden(
        self,
        prompt: torch.Tensor,
        mask: torch.Tensor | None,
        action_embeds: torch.Tensor,
        proprio: torch.Tensor | None,
        time_token: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Hidden states of the whole sequence: prompt, action positions, suffix.

        The prompt-cached flow head puts its time token after the prompt instead of
        in front (the block the Euler steps recompute: time, actions, suffix), and the
        prompt does not attend to that block."""
        b, length = prompt.shape[0], prompt.shape[1]
        pieces = [prompt, action_embeds.to(prompt.dtype), self._suffix(b)]
        prefix_len = 0
        if self.prompt_cached and time_token is not None:
            pieces.insert(1, time_token.to(prompt.dtype))
            time_token, prefix_len = None, length
        seq = torch.cat(pieces, dim=1)
        full_mask = _extended(mask, seq.shape[1] - length)
        return self.model.forward_embeds(
            seq, full_mask, proprio, time_token, prefix_len=prefix_len
        ).hidden

    def action_hidden(
        self,
        prompt: torch.Tensor,
        mask: torch.Tensor | None,
        action_embeds: torch.Tensor,
        proprio: torch.Tensor | None,
        time_token: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Hidden states that describe the A action positions (one position earlier)."""
        length = prompt.shape[1]
        hidden = self.sequence_hidden(prompt, mask, action_embeds, proprio, time_token)
        if self.prompt_cached and time_token is not None:
            length += 1  # the time token sits between the prompt and the actions
        return hidden[:, length - 1 : length - 1 + self.n_actions]

    def action_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, A, D) -> (B, A, n_bins): the lm_head rows of the action tokens only."""
        first = self.tokens.first_token
        return F.linear(hidden, self.model.lm_head.weight[first : first + self.cfg.action.n_bins])

    @torch.no_grad()
    def discrete(
        self,
        prompt: torch.Tensor,
        mask: torch.Tensor | None,
        proprio: torch.Tensor | None,
        settings: DecodeSettings,
        generator: torch.Generator | None = None,
        history: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Masked-diffusion unmasking -> normalised actions (B, chunk, action_dim)."""
        b, A = prompt.shape[0], self.n_actions
        mask_id = self.cfg.mask_token_id
        official = self.cfg.action.decoding == "official"
        n = A + 2 if official else A  # the official decoder unmasks the suffix too
        x = torch.full((b, n), mask_id, dtype=torch.long, device=prompt.device)
        first = 0 if official else self.tokens.first_token  # token id of logit column 0
        steps = n if settings.algorithm == "left_to_right" else settings.steps
        levels = torch.linspace(1.0, settings.eps, steps + 1).tolist()
        for i in range(steps):
            if official:
                logits = self._official_logits(prompt, mask, x, proprio)
            else:
                embeds = self.model.model.embed_tokens(x)
                logits = self.action_logits(self.action_hidden(prompt, mask, embeds, proprio))
            masked = x == mask_id
            last = i == steps - 1
            ratio = 1.0 - levels[i + 1] / levels[i]
            for row in range(b):
                idx = masked[row].nonzero().squeeze(-1)
                if idx.numel() == 0:
                    continue
                conf, choice = sample_tokens(
                    logits[row, idx],
                    settings.temperature,
                    settings.top_p,
                    settings.algorithm,
                    generator,
                )
                if settings.algorithm == "left_to_right":
                    reveal = torch.zeros_like(idx, dtype=torch.bool)
                    reveal[0] = True
                elif settings.algorithm == "origin":
                    reveal = (
                        torch.ones_like(idx, dtype=torch.bool)
                        if last
                        else torch.rand(idx.shape, generator=generator, device=idx.device) < ratio
                    )
                else:
                    n = idx.numel() if last else int(idx.numel() * ratio)
                    reveal = torch.zeros_like(idx, dtype=torch.bool)
                    if n > 0:
                        reveal[conf.topk(n).indices] = True
                x[row, idx[reveal]] = first + choice[reveal]
            if history is not None:
                history.append(x.clone())
        values = self.tokens.decode_torch(x[:, :A])
        return values.reshape(b, self.cfg.action.chunk, self.cfg.action.action_dim)

    def _official_logits(
        self,
        prompt: torch.Tensor,
        mask: torch.Tensor | None,
        x: torch.Tensor,
        proprio: torch.Tensor | None,
    ) -> torch.Tensor:
        """Whole-vocabulary logits (B, A + 2, V) of the A action and 2 suffix
        positions, whose current tokens are `x` (B, A + 2)."""
        length = prompt.shape[1]
        seq = torch.cat([prompt, self.model.model.embed_tokens(x).to(prompt.dtype)], dim=1)
        hidden = self.model.forward_embeds(seq, _extended(mask, x.shape[1]), proprio).hidden
        return self.model.lm_head(hidden[:, length - 1 : length - 1 + x.shape[1]])

    @torch.no_grad()
    def flow(
        self,
        prompt: torch.Tensor,
        mask: torch.Tensor | None,
        proprio: torch.Tensor | None,
        steps: int,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        prefix: torch.Tensor | None = None,
        prefix_weights: torch.Tensor | None = None,
        guidance: float = 1.0,
        guidance_until: float = 1.0,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Euler integration of the flow head from Gaussian noise -> (B, chunk, action_dim).

        With the prompt-cached head (`action.flow_attention`) and no padding mask, the
        prompt's keys and values are computed once and each step runs only the time
        token, the action tokens and the suffix (`use_cache` False: the whole
        block-causal sequence every step, the same numbers; for tests).

        `noise` (B, chunk, action_dim) replaces the sampled start, e.g. to compare the
        same integration on two devices. `prefix` (B, m, action_dim), normalised, with
        `prefix_weights` (m,) inpaints the chunk's first m actions (`euler_integrate`):
        the policy passes what is left of its previous chunk.

        `guidance` w != 1 is classifier-free guidance: `prompt` holds 2B rows, the B
        prompts and then the same B with their instruction masked (`proprio`: B rows),
        and each step that starts before flow time `guidance_until` follows
        v_masked + w * (v - v_masked) (later steps: v); B chunks come back."""
        head, projector = self.model.action_head, self.model.noisy_action_projector
        if projector is None or not hasattr(head, "predict_velocity"):
            raise ValueError("this model has no flow-matching head (action.head != 'flow')")
        guided = guidance != 1.0
        if guided and prompt.shape[0] % 2:
            raise ValueError(
                f"guidance needs 2B prompt rows (with and without the instruction), "
                f"got {prompt.shape[0]}"
            )
        b = prompt.shape[0] // 2 if guided else prompt.shape[0]
        if guided and proprio is not None:
            proprio = torch.cat([proprio, proprio])  # the same state for both rows
        shape = (b, self.cfg.action.chunk, self.cfg.action.action_dim)
        if noise is None:
            noise = torch.randn(
                shape, generator=generator, device=prompt.device, dtype=torch.float32
            )
        elif tuple(noise.shape) != shape:
            raise ValueError(f"noise must have shape {shape}, got {tuple(noise.shape)}")
        else:
            noise = noise.to(device=prompt.device, dtype=torch.float32)

        cache = None
        if self.prompt_cached and use_cache and mask is None:
            cache = PrefixCache()
            self.model.forward_embeds(prompt, None, proprio, cache=cache)

        def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            if guided:
                x, t = torch.cat([x, x]), torch.cat([t, t])
            tokens = projector(x.reshape(x.shape[0], -1, 1).to(prompt.dtype))
            if cache is not None:
                block = [head.time_token(t).to(prompt.dtype), tokens, self._suffix(x.shape[0])]
                out = self.model.forward_embeds(torch.cat(block, dim=1), cache=cache)
                hidden = out.hidden[:, : self.n_actions]
            else:
                hidden = self.action_hidden(prompt, mask, tokens, proprio, head.time_token(t))
            v = head.predict_velocity(hidden).float()
            if not guided:
                return v
            with_instruction, masked = v[:b], v[b:]
            w = torch.where(t[:b] < guidance_until, guidance, 1.0)[:, None, None]
            return masked + w * (with_instruction - masked)

        return euler_integrate(velocity, noise, steps, prefix, prefix_weights)

    @torch.no_grad()
    def regression(
        self, prompt: torch.Tensor, mask: torch.Tensor | None, proprio: torch.Tensor | None
    ) -> torch.Tensor:
        head = self.model.action_head
        if not hasattr(head, "predict_action"):
            raise ValueError("this model has no L1 regression head (action.head != 'l1')")
        b, _, d = prompt.shape
        zeros = prompt.new_zeros(b, self.n_actions, d)
        return head.predict_action(self.action_hidden(prompt, mask, zeros, proprio)).float()
