"""PyTorch reference backend: the bundle's model.pt checkpoint run eagerly (CPU) or on CUDA.

model.pt is optional (`edgelm export --with-reference`); it is loaded from its verified bytes
with torch.load(weights_only=True), and its state spec must be the manifest's.

The CPU path wraps the numpy buffers as tensors (shared memory, no copies). On CUDA the step
for each batch size is captured once as a CUDA graph over static device tensors and replayed;
state is copied between the host buffers and those tensors around each replay.
torch is imported only when this backend is picked.
"""

from __future__ import annotations

from ...errors import EdgelmError
from ...python_support import COMPILER_PYTHON, compiler_side_runs, dotted
from .base import Backend

MISSING = "torch is not installed; pip install 'edgelm[export]'"


def available() -> str | None:
    if not compiler_side_runs():  # the export extra installs no torch there
        return (f"the torch backend needs torch, which edgelm installs on Python {dotted(COMPILER_PYTHON)}+ only; "
                "use --backend onnxruntime or native here")
    try:
        import torch  # noqa: F401
    except ImportError:
        return MISSING
    return None


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, bundle, device, max_streams):
        super().__init__(bundle, device, max_streams)
        import torch

        from ...checkpoint import model_from_bytes
        from ..manifest import REFERENCE

        self.torch = torch
        if not bundle.has(REFERENCE):
            raise EdgelmError(f"bundle {bundle.path} has no {REFERENCE} (the torch backend's input); "
                              "re-export it with --with-reference")
        if device not in (None, "cpu", "cuda"):
            raise EdgelmError(f"unknown device {device!r} for torch; use cpu or cuda")
        if device == "cuda" and not torch.cuda.is_available():
            raise EdgelmError("device='cuda' asked for but torch sees no CUDA GPU (CPU-only torch build "
                              "or no driver); use device='cpu'")
        self.dev = torch.device(device or "cpu")
        model = model_from_bytes(bundle.read(REFERENCE), f"{bundle.path}/{REFERENCE}")
        if [(n, tuple(s)) for n, s in model.state_spec()] != [(s.name, s.shape) for s in bundle.state]:
            raise EdgelmError(f"{bundle.path}/{REFERENCE} is not this bundle's model (its state differs from "
                              "the manifest's); re-export the bundle")
        self.model = model.to(self.dev).eval()
        self._host = {}  # id(numpy buffer) -> tensor sharing its memory
        for a in [*self.state_in, *self.state_out, self.ids_step, self.ids_prefill, self.logits]:
            self._host[id(a)] = torch.from_numpy(a)
        self._graphs: dict[int, tuple] = {}

    def _t(self, a, batch: int):
        return self._host[id(a)][:batch]

    def _run(self, graph: str, batch: int) -> None:
        with self.torch.inference_mode():
            if self.dev.type == "cuda" and graph == "step":
                return self._run_cuda_graph(batch)
            ids = self._t(self.ids_prefill if graph == "prefill" else self.ids_step, batch).to(self.dev)
            states = tuple(self._t(a, batch).to(self.dev) for a in self.state_in)
            if graph == "prefill":
                logits, new = self.model(ids, states)
                logits = logits[:, -1]
            else:
                logits, new = self.model.step(ids, states)
            self._t(self.logits, batch).copy_(logits)
            for a, t in zip(self.state_out, new):
                self._t(a, batch).copy_(t)

    def _capture(self, batch: int) -> tuple:
        torch = self.torch
        ids = torch.zeros(batch, dtype=torch.long, device=self.dev)
        states = tuple(torch.zeros((batch, *s.shape), device=self.dev) for s in self.bundle.state)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):  # warm-up allocations before capture
                self.model.step(ids, states)
        torch.cuda.current_stream().wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            logits, new = self.model.step(ids, states)
        return g, ids, states, logits, new

    def _run_cuda_graph(self, batch: int) -> None:
        if batch not in self._graphs:
            self._graphs[batch] = self._capture(batch)
        g, ids, states, logits, new = self._graphs[batch]
        ids.copy_(self._t(self.ids_step, batch))
        for t, a in zip(states, self.state_in):
            t.copy_(self._t(a, batch))
        g.replay()
        self._t(self.logits, batch).copy_(logits)
        for a, t in zip(self.state_out, new):
            self._t(a, batch).copy_(t)

    def describe(self) -> str:
        return f"torch {self.torch.__version__} ({self.dev})"


BACKEND = TorchBackend
