"""Accelerator set-up shared by training and serving."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bfloat16 matrix instructions (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def configure(*, mixed_precision: bool = False) -> dict[str, str]:
    """Turn on GPU memory growth and, when asked, the mixed-precision policy for this device.

    Returns what was chosen, for logging. Without memory growth TensorFlow takes all GPU memory at
    start, which starves anything else on the card (a second worker, a serving process).
    """
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        # RuntimeError: the GPU is already initialised in this process and the setting is fixed.
        with contextlib.suppress(RuntimeError):
            tf.config.experimental.set_memory_growth(gpu, True)
    policy = "float32"
    if mixed_precision:
        if gpus:
            policy = "mixed_float16"
        elif cpu_supports_bf16():
            policy = "mixed_bfloat16"
        else:
            log.warning(
                "mixed_precision asked for, but this CPU has no bf16 support: using float32"
            )
    keras.mixed_precision.set_global_policy(policy)
    device = f"GPU x{len(gpus)}" if gpus else "CPU"
    log.info("device: %s, precision policy: %s", device, policy)
    return {"device": device, "precision_policy": policy}
