"""One training over several devices of one machine: `fit.distribute: mirrored`.

`tf.distribute.MirroredStrategy` keeps a copy of the model on each device, splits every batch
between them (`fit.batch_size` stays the global batch) and averages the gradients. Devices:
every visible GPU, or `fit.logical_cpu_devices` logical CPU devices when set (how the tests run
it on a machine without GPUs). The model trained this way is an ordinary Keras model once
`pipeline.stages.train.servable` has rebuilt it, so what is saved, registered and served is the same
kind of file as without. Across machines (MultiWorkerMirroredStrategy) is not offered: it does
not work with Keras 3 (keras-team/keras#20585, tensorflow/tensorflow#72388).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from pipeline.config import FitConfig

log = logging.getLogger(__name__)


def split_cpu(count: int) -> None:
    """Make `count` logical devices of the first CPU; before TensorFlow starts its runtime."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    wanted = [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) == count:
        return
    try:
        tf.config.set_logical_device_configuration(cpu, wanted)
    except RuntimeError as error:
        raise RuntimeError(
            f"fit.logical_cpu_devices={count}: TensorFlow's devices were already set up in this"
            f" process ({error}); set it in a fresh process"
        ) from None


def devices_for(fit: FitConfig) -> list[str]:
    """The devices a mirrored fit uses: the logical CPUs when asked, else every GPU."""
    import tensorflow as tf

    if fit.logical_cpu_devices:
        split_cpu(fit.logical_cpu_devices)
        return [device.name for device in tf.config.list_logical_devices("CPU")]
    gpus = [device.name for device in tf.config.list_logical_devices("GPU")]
    if not gpus:
        raise RuntimeError(
            "fit.distribute=mirrored: no GPU is visible; set fit.logical_cpu_devices to mirror"
            " over CPU devices, or fit.distribute=none"
        )
    return gpus


@contextlib.contextmanager
def scope(fit: FitConfig) -> Iterator[dict[str, str]]:
    """Inside, models are built and compiled for `fit.distribute`; yields what was chosen."""
    if fit.distribute == "none":
        yield {}
        return
    import tensorflow as tf

    devices = devices_for(fit)
    strategy = tf.distribute.MirroredStrategy(devices)
    log.info("mirrored over %d devices: %s", strategy.num_replicas_in_sync, ", ".join(devices))
    with strategy.scope():
        yield {"distribute": "mirrored", "replicas": str(strategy.num_replicas_in_sync)}
