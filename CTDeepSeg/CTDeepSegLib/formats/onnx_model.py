"""Models handed over as ONNX files, run with onnxruntime inside CTDeepSeg's pipeline.

An ONNX file is a graph of standard operators and their weights (protobuf): loading it runs no Python code, so it
is as safe as safetensors. The model folder's ``model.json`` says everything the graph does not: orientation,
spacing, normalisation, window size, activation, post-processing. The network is ``{"class": "ONNX"}`` and the
weights ``{"file": "model.onnx", "format": "onnx", "sha256": ...}``, checked like any card's weights.

onnxruntime is not part of Slicer: it is installed on first use (``dependencies``), and its GPU build
(``onnxruntime-gpu``) runs on CUDA when that is the device asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CTDeepSegError

ONNX_CLASS = "ONNX"


def _runtime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise CTDeepSegError(
            "This model is an ONNX file and onnxruntime is not installed; install it with "
            "`pip install onnxruntime` (or onnxruntime-gpu for CUDA), or from the CTDeepSeg panel."
        ) from None
    return onnxruntime


class OnnxNetwork:
    """An onnxruntime session that the sliding window calls like a torch network: (B, C, ...) float tensors in,
    the graph's first output (the logits; deep-supervision heads after it are ignored) out."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.device = "cpu"
        self._session = self._open("cpu")

    def _open(self, device: str) -> Any:
        runtime = _runtime()
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in runtime.get_available_providers():
                raise CTDeepSegError(
                    "CUDA was asked for, but the installed onnxruntime has no CUDA support; install "
                    "onnxruntime-gpu, or use --device cpu."
                )
            providers.insert(0, "CUDAExecutionProvider")
        options = runtime.SessionOptions()
        options.log_severity_level = 3
        try:
            session = runtime.InferenceSession(str(self.path), sess_options=options, providers=providers)
        except Exception as error:  # onnxruntime raises its own exception types for damaged or foreign files
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise CTDeepSegError(f"{self.path}: not a usable ONNX model ({first}).") from None
        inputs = session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 5:
            shapes = ", ".join(str(item.shape) for item in inputs)
            raise CTDeepSegError(
                f"{self.path}: CTDeepSeg runs 3D models with one (batch, channel, x, y, z) input; this one takes "
                f"{shapes}."
            )
        self._input = inputs[0].name
        return session

    def to(self, device: str, **_: Any) -> OnnxNetwork:
        """Run on ``device`` (CUDA with onnxruntime-gpu, else the CPU); torch's memory-format hint does not apply."""
        device = "cuda" if str(device).startswith("cuda") else "cpu"
        if device != self.device:
            self._session = self._open(device)
            self.device = device
        return self

    def eval(self) -> OnnxNetwork:
        return self

    def __call__(self, windows: Any) -> Any:
        import torch

        data = np.ascontiguousarray(windows.detach().float().cpu().numpy())
        output = self._session.run(None, {self._input: data})[0]
        return torch.from_numpy(np.asarray(output, dtype=np.float32)).to(windows.device)


def load_onnx(path: Path) -> OnnxNetwork:
    """The session for a model file whose checksum the caller has verified."""
    return OnnxNetwork(path)
