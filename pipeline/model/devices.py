"""Accelerator set-up shared by training and serving."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)
# Set to 1 to see everything TensorFlow's C++ side prints; by default its start-up notes are hidden.
VERBOSE_SWITCH = "PIPELINE_TF_LOGS"
# What TensorFlow's C++ side prints on every import, before its log level applies.
STARTUP_CHATTER = re.compile(
    r"All log messages before absl::InitializeLog|port\.cc:\d+\] oneDNN custom operations"
    r"|cpu_feature_guard\.cc|^To enable the following instructions"
)


def import_tensorflow() -> None:
    """Import TensorFlow with its C++ start-up chatter filtered out of stderr.

    TF_CPP_MIN_LOG_LEVEL=2 (unless set) hides its info and warning logs; the oneDNN note comes
    before that level applies, so stderr is caught during the import and replayed without the
    known lines. Anything else it printed (a real error) is passed on; TensorFlow's Python logger
    is set to errors only. PIPELINE_TF_LOGS=1 shows all.
    """
    if os.environ.get(VERBOSE_SWITCH) == "1" or "tensorflow" in sys.modules:
        import tensorflow

        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as caught:
        os.dup2(caught.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            text = caught.read().decode(errors="replace")
    kept = [line for line in text.splitlines() if not STARTUP_CHATTER.search(line)]
    if kept:
        print("\n".join(kept), file=sys.stderr)
    # Its Python warnings (tf.function retracing when evaluate runs several models) say nothing
    # a user can act on.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


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
