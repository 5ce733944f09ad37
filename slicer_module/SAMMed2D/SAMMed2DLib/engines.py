"""The model the module calls: in Slicer's own Python (torch from the PyTorch extension) or
on a `sammed2d serve` elsewhere, which needs no torch in Slicer at all.

Both engines take and return the same things (arrays in IJK voxel order, prompts in IJK
pixels), so the Logic does not care which one runs.
"""

from __future__ import annotations


class LocalEngine:
    remote = False

    def __init__(self, nameOrPath: str, precision: str = "fp32") -> None:
        from sammed2d import EmbeddingCache, graphs, load_model

        self.name = nameOrPath
        # bf16 where the CPU or GPU has it; elsewhere load_model refuses in one line
        self.model = load_model(nameOrPath, precision=precision)
        # Background runs share Python's lock with Slicer's GUI thread: graphs run the model
        # without it (sammed2d.graphs; fp32 only, bf16 runs eager under autocast).
        graphs.enable(self.model)
        self.cache = EmbeddingCache(max_bytes=2 << 30)

    def describe(self) -> str:
        return f"{self.model.spec.name} on {self.model.device}, {self.model.precision}"

    def record(self):
        """(model name, weights SHA-256) for a prompts file."""
        from sammed2d.prompt_files import model_record

        return model_record(self.model)

    def segment_slice(self, data, index, prompt, axis, affine, preset):
        from sammed2d.propagate import segment_slice

        return segment_slice(
            data, index, prompt, self.model, axis=axis, affine=affine, preset=preset,
            cache=self.cache,
        )  # fmt: skip

    def propagate(self, data, objects, axis, affine, preset, settings=None, progress=None,
                  shouldStop=None):  # fmt: skip
        from sammed2d.propagate import propagate

        return propagate(
            data, objects, self.model, axis=axis, affine=affine, preset=preset,
            settings=settings, cache=self.cache, progress=progress, should_stop=shouldStop,
        )  # fmt: skip


class RemoteEngine:
    remote = True

    def __init__(self, url: str, apiKey: str | None = None) -> None:
        from sammed2d.remote import Client

        self.client = Client(url, apiKey or None)
        self.info = self.client.info()  # fails here, in one line, on a wrong URL or key
        self.name = url

    def describe(self) -> str:
        info = self.info
        return f"{info['model']['name']} on {info['device']} at {self.client.url}"

    def record(self):
        return self.info["model"]["name"], self.info["model"].get("sha256")

    def segment_slice(self, data, index, prompt, axis, affine, preset):
        return self.client.segment_slice(
            data, index, prompt, axis=axis, affine=affine, preset=preset
        )

    def propagate(self, data, objects, axis, affine, preset, settings=None, progress=None,
                  shouldStop=None):  # fmt: skip
        return self.client.propagate(
            data, objects, axis=axis, affine=affine, preset=preset, settings=settings,
            progress=progress, should_stop=shouldStop,
        )  # fmt: skip


def make_engine(kind: str, modelOrUrl: str, apiKey: str | None = None, precision: str = "fp32"):
    """`kind` "local" (a model name or checkpoint path, in `precision`) or "remote" (a
    server URL; the server's model and precision)."""
    if kind == "remote":
        return RemoteEngine(modelOrUrl, apiKey)
    return LocalEngine(modelOrUrl or "litemedsam", precision)
