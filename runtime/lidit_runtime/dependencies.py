"""Optional dependencies: imported on first use through one helper, which says how to install what is missing."""
from __future__ import annotations

import importlib
import warnings

from .errors import LiditError

INSTALL = {  # module -> how to get it
    "modelopt.torch.quantization": "NVIDIA ModelOpt: `pip install nvidia-modelopt==0.47.0` (the [quant] extra)",
    "tensorrt": "full TensorRT: `pip install tensorrt` where NVIDIA's package index is reachable",
    "tensorrt_rtx": "TensorRT for RTX: `pip install tensorrt-rtx` (the [trt-rtx] extra)",
    "cupy": "CuPy for device memory: `pip install cupy-cuda12x` (or cupy-cuda13x)",
    "polygraphy": "polygraphy: `pip install polygraphy` (the [dev] extra)",
    "onnx": "onnx: `pip install onnx` (the [cpu] extra)",
    "onnxruntime.quantization.matmul_nbits_quantizer": "onnxruntime and onnx-ir: `pip install onnxruntime onnx-ir` "
                                                       "(the [cpu] extra)",
    "pytriton": "NVIDIA PyTriton: `pip install 'lidit-runtime[serve]'` (best in a runtime-only venv: it pins numpy < 2)",
}


class MissingDependency(LiditError):
    """An optional package a feature needs is not installed."""


def install_hint(module: str) -> str:
    return INSTALL.get(module, f"`pip install {module.split('.')[0]}`")


def require(module: str, purpose: str):
    """Import `module` (cached by Python after the first time), or raise MissingDependency naming `purpose`
    and the install command. Import-time warnings of these packages are silenced."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(module)
    except ImportError:
        raise MissingDependency(f"{purpose} needs {install_hint(module)}, which is not installed") from None
