"""PyTorch with torch.compile: the eager runtime's module, compiled in the point's mode. The compilation happens
on the first run, which the caller times apart from the warm runs."""

from __future__ import annotations

from engine.runtimes.torch_eager import EagerRuntime

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


class CompiledRuntime(EagerRuntime):
    name = "compile"

    def load(self) -> None:
        import torch

        super().load()
        self.fn = torch.compile(self.module, mode=self.options.compile_mode)


__all__ = ["COMPILE_MODES", "CompiledRuntime"]
