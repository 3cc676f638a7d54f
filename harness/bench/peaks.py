"""The device's peak for MFU: a table of published dense GPU peaks (the default denominator, the usual
convention) and a measured dense matmul (reported beside it as the achievable ceiling, and the
denominator where the device is not in the table: a CPU or an unlisted GPU)."""
from __future__ import annotations

import contextlib
import re

import torch

from harness.timing import time_steps

# Dense (no sparsity) peak TFLOP/s per GPU: (pattern on torch.cuda.get_device_name, bf16, fp32 as cuDNN
# runs it, i.e. TF32 tensor cores where the GPU has them). None: the GPU has no such tensor-core path, so
# MFU falls back to the measured peak. First match wins, so the more specific names come first; patterns
# match whole words, so "A40" does not match "RTX A4000". Sources, NVIDIA's datasheets (they print the
# sparse figure, twice the dense one, with an asterisk):
#   H100 SXM/PCIe/NVL: "NVIDIA H100 Tensor Core GPU" datasheet (2023); H200 and H200 NVL: "NVIDIA H200
#   Tensor Core GPU" datasheet (2024); GH200: "NVIDIA GH200 Grace Hopper Superchip" datasheet; B200: "NVIDIA
#   DGX B200" datasheet (per GPU); A100 SXM/PCIe 40/80GB: "NVIDIA A100 Tensor Core GPU" datasheet (2021);
#   L40S, L40, L4, A10, A40: their "NVIDIA ... GPU" datasheets; V100: "NVIDIA Tesla V100" datasheet (SXM2
#   15.7, PCIe 14 FP32; no bf16); T4: "NVIDIA T4" datasheet (8.1 FP32; no bf16); RTX 4090: "NVIDIA Ada
#   GPU Architecture" whitepaper appendix (FP32-accumulate figures); RTX 3090: "NVIDIA Ampere GA102 GPU
#   Architecture" whitepaper.
DATASHEET = [
    (r"H100 PCIe", 756.0, 378.0),
    (r"H100 NVL", 835.0, 418.0),
    (r"H100", 989.0, 494.0),  # SXM: torch prints "NVIDIA H100 80GB HBM3"
    (r"GH200", 989.0, 494.0),
    (r"H200 NVL", 835.0, 418.0),
    (r"H200", 989.0, 494.0),  # SXM: "NVIDIA H200"
    (r"B200", 2250.0, 1100.0),
    (r"A100", 312.0, 156.0),  # SXM4 and PCIe, 40 and 80 GB alike: "NVIDIA A100-SXM4-80GB"
    (r"L40S", 362.0, 183.0),
    (r"L40", 181.0, 90.5),
    (r"L4", 121.0, 60.0),
    (r"A40", 150.0, 75.0),
    (r"A10", 125.0, 62.5),
    (r"V100-PCIE", None, 14.0),
    (r"V100", None, 15.7),
    (r"T4", None, 8.1),
    (r"RTX 4090", 165.0, 82.6),
    (r"RTX 3090", 71.0, 35.6),
]


def peak_from_table(device_name: str, precision: str) -> float | None:
    """The datasheet's dense peak for `precision` (bf16 | fp32), or None if the device is not listed."""
    for pattern, bf16, fp32 in DATASHEET:
        if re.search(rf"(?<![A-Za-z0-9]){pattern}(?![A-Za-z0-9])", device_name, flags=re.IGNORECASE):
            return bf16 if precision == "bf16" else fp32
    return None


def matmul_size(device: torch.device) -> int:
    return 8192 if device.type == "cuda" else 2048


def matmul_tflops(device: torch.device, precision: str) -> float:
    """Dense matmul TFLOP/s: 8192^3 on a GPU, 2048^3 on a CPU (2 cores take 0.1-0.2 s a product; 1024^3
    reached only 2/3 of it), the fastest of several products after warm-up: a peak, so noise cannot lower
    it. fp32 on a GPU runs with TF32 tensor cores when cuDNN runs fp32 convolutions that way (PyTorch's
    default), so fp32 rows are compared with what their convolutions can reach."""
    cuda = device.type == "cuda"
    n = matmul_size(device)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    with tf32_matmul(cuda and conv_uses_tf32()):
        step = lambda: a @ b  # noqa: E731
        _, times, _ = time_steps(step, steps=10 if cuda else 3, warmup=3 if cuda else 2, repeats=1, device=device)
    return 2 * n**3 / min(times) / 1e12


# torch >= 2.9 has the fp32_precision flags; reading the legacy allow_tf32 ones after the new ones were
# set raises, so the new ones are used where they exist.
def conv_uses_tf32() -> bool:
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        return conv.fp32_precision == "tf32"
    return torch.backends.cudnn.allow_tf32


@contextlib.contextmanager
def tf32_matmul(enabled: bool):
    matmul = torch.backends.cuda.matmul
    new = hasattr(matmul, "fp32_precision")
    saved = matmul.fp32_precision if new else matmul.allow_tf32
    if new:
        matmul.fp32_precision = "tf32" if enabled else "ieee"
    else:
        matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        if new:
            matmul.fp32_precision = saved
        else:
            matmul.allow_tf32 = saved


def choose_peak(table: float | None, measured: float, use: str) -> tuple[float, str]:
    """(MFU denominator, its source): the datasheet unless `use` is measured or the device is unlisted."""
    return (table, "table") if use == "table" and table else (measured, "measured")


def device_peaks(precisions: set[str], device: torch.device, device_name: str, use: str,
                 measure=matmul_tflops) -> tuple[dict, dict]:
    """(precision -> (peak TFLOP/s used for MFU, source, measured achievable TFLOP/s), every figure for the
    report: measured_tflops, table_tflops (None: not in the table), matmul)."""
    used, seen = {}, {}
    for p in sorted(precisions):
        measured, table = measure(device, p), peak_from_table(device_name, p)
        seen[p] = {"measured_tflops": measured, "table_tflops": table, "matmul": f"{matmul_size(device)}^3 {p}"}
        used[p] = (*choose_peak(table, measured, use), measured)
    return used, seen
