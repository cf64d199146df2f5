"""Backends that are planned but not written yet: they refuse clearly."""

from __future__ import annotations


class Unavailable:
    """A backend placeholder; ``auto`` skips it, naming it explicitly raises."""

    def __init__(self, name: str, plan: str):
        self.NAME = name
        self._message = (f"attention backend {name!r} is not implemented yet ({plan}); "
                         f"use impl='xla' (any device), impl='triton' (CUDA GPU, every mask), "
                         f"impl='cudnn' (GPU, no segments, plain causal or full mask), or impl='auto'")

    def unsupported(self, call) -> str:
        del call
        return "not implemented yet"

    def attention(self, *args, **kwargs):
        raise NotImplementedError(self._message)

    def attention_bwd(self, *args, **kwargs):
        raise NotImplementedError(self._message)


mosaic = Unavailable("mosaic", "planned: Pallas Mosaic GPU kernels for Hopper")
