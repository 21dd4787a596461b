"""CUDA graphs for inference: capture a module call once per input shape, then replay it.

At batch 1 the 7B model is bound by the CPU launching kernels, not by the GPU
running them (bench/model_latency.py: a backbone pass takes 24 ms of launches for
about 10 ms of GPU work; the vision tower 22 ms for a few). A captured graph replays
every kernel of the call with one launch. Shapes must repeat for that to pay: the
images have the checkpoint's one size (`image_size`, 224 by default), and the
prompt length is fixed for one instruction, so
an episode captures once and replays from then on.

Rules a captured call must keep, and how this module keeps them:
- no CPU-GPU synchronisation inside (`.item()`, `.tolist()` on GPU tensors): the
  vision tower is called with its grid on the CPU and its rotary positions
  precomputed on the GPU (`DreamVLA.sync_free_vision`);
- inputs are copied into static buffers, outputs cloned out of the graph's own
  buffers, so a later replay never overwrites a result the caller still holds;
- parameters must stay the same tensors (in-place updates are seen by replays);
  a model whose parameters are replaced (reloaded, moved) needs `clear()` or a new
  cache (`DreamVLA.use_cuda_graphs`). Training never captures: `DreamVLA` uses
  graphs only without gradients, in eval mode.
A capture that fails (an operation that cannot be captured) is reported once
through `failures` and that key runs eagerly from then on.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch


@dataclass
class _Entry:
    graph: torch.cuda.CUDAGraph
    inputs: tuple[torch.Tensor, ...]
    output: torch.Tensor


class GraphCache:
    """Captured graphs keyed by (caller's key, input shapes and dtypes), least recently
    used first out once more than `max_entries` are held."""

    def __init__(self, max_entries: int = 8, warmup: int = 2) -> None:
        self.max_entries = max_entries
        self.warmup = warmup
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self.failures: dict[Hashable, str] = {}
        self.captures = 0
        self.replays = 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self.failures.clear()

    def run(
        self,
        key: Hashable,
        fn: Callable[..., torch.Tensor],
        *inputs: torch.Tensor,
    ) -> torch.Tensor:
        """fn(*inputs), from a graph captured for this key and these input shapes.

        `fn` must depend on nothing but its inputs and `key` (it is called at capture
        only; replays rerun the kernels it launched then)."""
        full = (key, tuple((tuple(t.shape), t.dtype, t.device) for t in inputs))
        if full in self.failures:
            return fn(*inputs)
        entry = self._entries.get(full)
        if entry is None:
            try:
                entry = self._capture(fn, inputs)
            except Exception as exc:  # anything that cannot be captured runs eagerly
                self.failures[full] = f"{type(exc).__name__}: {exc}"
                torch.cuda.synchronize()
                return fn(*inputs)
            self._entries[full] = entry
            self.captures += 1
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(full)
            for static, value in zip(entry.inputs, inputs):
                static.copy_(value)
        entry.graph.replay()
        self.replays += 1
        return entry.output.clone()

    def _capture(self, fn: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...]) -> _Entry:
        static = tuple(t.detach().clone() for t in inputs)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up runs (lazy inits, cuBLAS workspaces)
            for _ in range(self.warmup):
                fn(*static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            output = fn(*static)
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"a graphed call must return one tensor, got {type(output).__name__}")
        return _Entry(graph, static, output)
