"""The Dream-VLA prompt in the Qwen chat format, tokenised with the checkpoint's
`tokenizer.json` (the `tokenizers` library; the published Dream tokenizer for the
7B model, a byte-level one written by `byte_tokenizer` for tiny models).

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n
    <|im_start|>user\\n{<|vision_start|><|image_pad|>*64<|vision_end|> per image}
    What action should the robot take to {instruction}?<|im_end|>\\n
    <|im_start|>assistant\\n

Special tokens are inserted by id (from the model config), so the text pieces
never have to be recognised as specials by the tokenizer.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers
from tokenizers import decoders as tk_decoders

from dream_vla_ros.model.config import DreamVLAConfig

SYSTEM = "You are a helpful assistant."
QUESTION = "What action should the robot take to {instruction}?"


def question(instruction: str) -> str:
    return QUESTION.format(instruction=instruction.strip().rstrip("?.!").lower())


class PromptBuilder:
    def __init__(self, tokenizer: Tokenizer, cfg: DreamVLAConfig) -> None:
        self.tokenizer = tokenizer
        self.cfg = cfg
        self._cache: dict[tuple[str, int, int], list[int]] = {}

    @classmethod
    def from_dir(cls, path: str | Path, cfg: DreamVLAConfig) -> PromptBuilder:
        file = Path(path) / "tokenizer.json"
        if not file.exists():
            raise FileNotFoundError(f"{path} has no tokenizer.json")
        return cls(Tokenizer.from_file(str(file)), cfg)

    def _text(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        limit = self.cfg.base_vocab_size
        if any(not 0 <= i < limit for i in ids):
            raise ValueError(f"the tokenizer produced ids outside the text vocabulary for {text!r}")
        return ids

    def ids(self, instruction: str, n_images: int, tokens_per_image: int) -> list[int]:
        """Token ids of the prompt (up to and including 'assistant\\n'); cached per input."""
        key = (instruction, n_images, tokens_per_image)
        if key not in self._cache:
            c = self.cfg
            image = [c.vision_start_token_id, *[c.image_token_id] * tokens_per_image]
            image.append(c.vision_end_token_id)
            out = [c.im_start_token_id, *self._text("system\n" + SYSTEM), c.im_end_token_id]
            out += self._text("\n") + [c.im_start_token_id] + self._text("user\n")
            out += image * n_images
            out += self._text(question(instruction)) + [c.im_end_token_id]
            out += self._text("\n") + [c.im_start_token_id] + self._text("assistant\n")
            if len(self._cache) > 64:
                self._cache.clear()
            self._cache[key] = out
        return self._cache[key]


def byte_tokenizer(first_id: int) -> Tokenizer:
    """A byte-level tokenizer (256 ids from `first_id`) for tiny models and tests."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: first_id + i for i, ch in enumerate(alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = tk_decoders.ByteLevel()
    return tok
