"""ONNX Runtime sessions: the CUDA provider when it loads, the CPU otherwise.

Shared by the service (scoring) and training (agreement checks), so that both run a model the same
way; it lives here because the service must not need the training extra.
"""

from __future__ import annotations

import os

import onnxruntime

#: CUDA provider options. TF32 off: with it a GEMM-form tree model gave wrong risks on the GPU
#: (max error 0.73 at batch 1024, measured on an H100; ≤ 1.5e-5 without).
CUDA_OPTIONS = {"use_tf32": "0"}


def session_for(
    model: str | os.PathLike[str] | bytes, prefer_cuda: bool, *, intra_op_threads: int = 0
) -> onnxruntime.InferenceSession:
    """An ORT session on the CUDA provider when it loads, on the CPU otherwise.

    Which provider the session really uses is ``used_providers(session)``. ``intra_op_threads`` 0
    lets ORT take one thread per core; 1 suits prefork workers and small batches, where ORT's
    thread pool costs more than it saves.
    """
    providers: list[str | tuple[str, dict[str, str]]] = ["CPUExecutionProvider"]
    if prefer_cuda:
        providers.insert(0, ("CUDAExecutionProvider", dict(CUDA_OPTIONS)))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    source = model if isinstance(model, bytes) else os.fspath(model)
    return onnxruntime.InferenceSession(source, options, providers=providers)


def used_providers(session: onnxruntime.InferenceSession) -> list[str]:
    """The providers ``session`` runs on, best first.

    ``onnxruntime.get_available_providers()`` lists CUDA for the GPU build even where no GPU or CUDA
    library is present; ``session.get_providers()`` reports what the session actually got.
    """
    return list(session.get_providers())


def cuda_available() -> bool:
    """Whether this ORT build offers CUDA at all (a session may still fail to get it)."""
    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()
