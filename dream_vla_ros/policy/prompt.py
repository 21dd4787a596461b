"""The Dream-VLA prompt in the Qwen chat format, tokenised with the checkpoint's
`tokenizer.json` (the `tokenizers` library; the published Dream tokenizer for the
7B model, a byte-level one written by `byte_tokenizer` for tiny models).

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n
    <|im_start|>user\\n{<|vision_start|><|image_pad|>*64<|vision_end|> per image}
    What action should the robot take to {instruction}?<|im_end|>\\n
    <|im_start|>assistant\\n

Special tokens are inserted by id (from the model config), so the text pieces
never have to be recognised as specials by the tokenizer.

With `drop_instruction` the instruction's tokens are replaced by the diffusion LM's
mask token (same length, same positions): the "no instruction" prompt that
instruction dropout trains and classifier-free guidance compares against
(docs/finetune.md).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers
from tokenizers import decoders as tk_decoders

from dream_vla_ros.model.config import DreamVLAConfig

SYSTEM = "You are a helpful assistant."
QUESTION = "What action should the robot take to {instruction}?"


def _normalised(instruction: str) -> str:
    return instruction.strip().rstrip("?.!").lower()


def question(instruction: str) -> str:
    return QUESTION.format(instruction=_normalised(instruction))


class PromptBuilder:
    def __init__(self, tokenizer: Tokenizer, cfg: DreamVLAConfig) -> None:
        self.tokenizer = tokenizer
        self.cfg = cfg
        self._cache: dict[tuple[str, int, int, bool], list[int]] = {}

    @classmethod
    def from_dir(cls, path: str | Path, cfg: DreamVLAConfig) -> PromptBuilder:
        file = Path(path) / "tokenizer.json"
        if not file.exists():
            raise FileNotFoundError(f"{path} has no tokenizer.json")
        return cls(Tokenizer.from_file(str(file)), cfg)

    def _encode(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """(ids, character offsets) of `text`, the ids checked against the text vocabulary."""
        enc = self.tokenizer.encode(text, add_special_tokens=False)
        limit = self.cfg.base_vocab_size
        if any(not 0 <= i < limit for i in enc.ids):
            raise ValueError(f"the tokenizer produced ids outside the text vocabulary for {text!r}")
        return enc.ids, enc.offsets

    def _text(self, text: str) -> list[int]:
        return self._encode(text)[0]

    def _question(self, instruction: str, drop_instruction: bool) -> list[int]:
        text = question(instruction)
        ids, offsets = self._encode(text)
        if not drop_instruction:
            return ids
        start = QUESTION.index("{instruction}")
        end = start + len(_normalised(instruction))
        dropped = [
            self.cfg.mask_token_id if lo < end and hi > start else i
            for i, (lo, hi) in zip(ids, offsets, strict=True)
        ]
        if dropped == ids:
            raise ValueError(f"no token of the instruction found in {text!r}")
        return dropped

    def ids(
        self,
        instruction: str,
        n_images: int,
        tokens_per_image: int,
        drop_instruction: bool = False,
    ) -> list[int]:
        """Token ids of the prompt (up to and including 'assistant\\n'); cached per input.
        `drop_instruction`: the instruction's tokens masked (see the module docstring)."""
        key = (instruction, n_images, tokens_per_image, drop_instruction)
        if key not in self._cache:
            c = self.cfg
            image = [c.vision_start_token_id, *[c.image_token_id] * tokens_per_image]
            image.append(c.vision_end_token_id)
            out = [c.im_start_token_id, *self._text("system\n" + SYSTEM), c.im_end_token_id]
            out += self._text("\n") + [c.im_start_token_id] + self._text("user\n")
            out += image * n_images
            out += self._question(instruction, drop_instruction) + [c.im_end_token_id]
            out += self._text("\n") + [c.im_start_token_id] + self._text("assistant\n")
            if len(self._cache) > 64:
                self._cache.clear()
            self._cache[key] = out
        return self._cache[key]


def instruction_words(instructions: Iterable[str]) -> list[str]:
    """The words of `instructions` as the prompt writes them (lower case), most
    frequent first: the word list of a tiny model's tokenizer."""
    counts: Counter[str] = Counter()
    for text in instructions:
        counts.update(w.strip("?.!,;:") for w in _normalised(text).split())
    counts.pop("", None)
    return sorted(counts, key=lambda w: (-counts[w], w))


def byte_tokenizer(first_id: int, words: Sequence[str] = (), end_id: int = 0) -> Tokenizer:
    """A byte-level tokenizer for tiny models and tests: 256 byte ids from `first_id`,
    then ids (BPE merges) that make each word of `words` with its leading space one
    token, for the words that fit below `end_id` (0: no limit). Whole-word ids
    matter to a model trained from scratch: spelt out byte by byte, "red" and "blue"
    differ only in a few character tokens at shifted positions, which a 2-layer
    model learns to tell apart slowly if at all."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: first_id + i for i, ch in enumerate(alphabet)}
    merges: list[tuple[str, str]] = []
    space = "\u0120"  # the byte-level alphabet's space
    for word in words:
        text = space + word
        if any(ch not in vocab for ch in text):  # not plain text in the byte alphabet
            continue
        prefixes = [text[: k + 1] for k in range(1, len(text))]  # "Ġr", "Ġre", "Ġred"
        missing = [p for p in prefixes if p not in vocab]
        if end_id and first_id + len(vocab) + len(missing) > end_id:
            continue  # no room for this one; a shorter word may still fit
        for prefix in missing:
            vocab[prefix] = first_id + len(vocab)
            merges.append((prefix[:-1], prefix[-1]))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = tk_decoders.ByteLevel()
    return tok
