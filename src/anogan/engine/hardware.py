"""What the hardware can do: native bfloat16, the precision ``trainer.precision=auto`` resolves to
(the one place that decides it), and what asking for bf16 without native support costs."""

from __future__ import annotations

import logging
import time
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when the CPU has bfloat16 arithmetic instructions (x86: AVX512_BF16 or AMX-BF16;
    ARM: the bf16 feature), read from /proc/cpuinfo (False where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags |= set(line.split(":", 1)[1].split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def bf16_slowdown(repeats: int = 3) -> float:
    """Time of a DCGAN-sized convolution (forward + backward) under bf16 autocast over fp32, on
    this CPU now (fastest of ``repeats``): > 1 means bf16 is slower."""
    x = torch.randn(64, 64, 16, 16, requires_grad=True)
    w = torch.randn(128, 64, 4, 4, requires_grad=True)

    def run(bf16: bool) -> float:
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                F.conv2d(x, w, stride=2, padding=1).float().sum().backward()
            best = min(best, time.perf_counter() - t0)
        return best

    run(False), run(True)  # warm-up
    return run(True) / run(False)


def device_has_native_bf16(accelerator: str) -> bool:
    """True when the device Lightning will use for ``accelerator`` computes in bfloat16 natively:
    a CUDA GPU that supports bf16, or (``cpu``, or ``auto`` without a GPU) a CPU with AVX512_BF16,
    AMX-BF16 or ARM's bf16 (:func:`cpu_has_native_bf16`)."""
    accelerator = str(accelerator)
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if accelerator in ("cpu", "auto"):
        return cpu_has_native_bf16()
    return False  # mps, tpu, ...: Lightning's bf16 there is not what this project measured


def resolve_precision(precision: str | int, accelerator: str) -> str | int:
    """``trainer.precision`` as Lightning takes it: ``auto`` becomes ``bf16-mixed`` where the device
    does bf16 natively (:func:`device_has_native_bf16`) and ``32-true`` elsewhere; any other value is
    returned unchanged. bf16-mixed keeps weights and optimiser state in fp32 and runs convolutions and
    matrix products in bf16 (docs/performance.md has the speed and AUROC measurements)."""
    if str(precision) != "auto":
        return precision
    return "bf16-mixed" if device_has_native_bf16(accelerator) else "32-true"


def warn_if_slow_bf16(precision: str | int | None, accelerator: str) -> float | None:
    """On a CPU without native bf16, a bf16 precision is emulated: warn once with the measured
    slowdown (returned), so advice follows the machine rather than a table. On a CPU with native
    bf16 (AVX512_BF16 or AMX) nothing is measured or printed: bf16 is the fast choice there.
    ``precision`` is the resolved value (:func:`resolve_precision`)."""
    if "bf16" not in str(precision) or str(accelerator) not in ("cpu", "auto") or torch.cuda.is_available():
        return None
    if cpu_has_native_bf16():
        return None
    ratio = bf16_slowdown()
    log.warning(
        "trainer.precision=%s on a CPU without native bfloat16: a convolution just ran %.1fx %s than in fp32 here. "
        "Fix: trainer.precision=32 (make bench compares both on this machine).",
        precision,
        ratio if ratio >= 1 else 1 / ratio,
        "slower" if ratio >= 1 else "faster",
    )
    return ratio
