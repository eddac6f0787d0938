"""How a variant is compiled and fitted: the learning-rate schedule and optimizer, the tf.data
input (shuffling, mirroring and shifts), the per-epoch callbacks and `fit` itself. Shared by the
`train` stage, the sweep's trials (`pipeline.sweep.trial`) and bench/train_throughput.py."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from pipeline import tracking
from pipeline.config import FitConfig

if TYPE_CHECKING:
    import keras

HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "epoch_seconds")


def learning_rate(fit: FitConfig, steps_per_epoch: int):
    """A constant rate, or cosine decay to zero after an optional linear warm-up."""
    import keras

    if fit.schedule == "constant":
        return fit.learning_rate
    warmup_steps = fit.warmup_epochs * steps_per_epoch
    decay_steps = max(1, fit.epochs * steps_per_epoch - warmup_steps)
    if warmup_steps:
        return keras.optimizers.schedules.CosineDecay(
            fit.learning_rate * 0.1,
            decay_steps,
            warmup_target=fit.learning_rate,
            warmup_steps=warmup_steps,
        )
    return keras.optimizers.schedules.CosineDecay(fit.learning_rate, decay_steps)


def make_optimizer(fit: FitConfig, steps_per_epoch: int):
    import keras

    rate = learning_rate(fit, steps_per_epoch)
    if fit.optimizer == "sgd":
        return keras.optimizers.SGD(rate, momentum=fit.momentum)
    if fit.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(rate, momentum=fit.momentum)
    if fit.optimizer == "adamw":
        return keras.optimizers.AdamW(rate, weight_decay=fit.weight_decay)
    return keras.optimizers.Adam(rate)


def compile_model(model: keras.Model, fit: FitConfig, *, train_size: int) -> None:
    """Attach optimizer, loss and metrics as the fit config says; the loss suits the output
    layer's activation (`pipeline.model.losses`)."""
    from pipeline.model import architectures, losses

    steps_per_epoch = int(np.ceil(train_size / fit.batch_size))
    _, output_activation = architectures.output_layer(model)
    model.compile(
        optimizer=make_optimizer(fit, steps_per_epoch),
        loss=losses.crossentropy(output_activation, label_smoothing=fit.label_smoothing),
        metrics=["accuracy"],
        jit_compile=fit.jit_compile,
    )


def without_autotune(data):
    """`data` with tf.data's autotuning off.

    Keras makes a new iterator over the training and validation data every epoch. Tearing an
    autotuned one down waits for its tuning thread: 5-30 s, idle, in about half the epochs
    (TensorFlow 2.21, 2 cores), a fifth to a quarter of the `cnn`'s training time. Nothing here
    needs tuning: the data is in memory and one batch is prefetched.
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return data.with_options(options)


def training_data(x: np.ndarray, y: np.ndarray, fit: FitConfig):
    """A shuffled, batched, prefetched tf.data pipeline, with random mirroring and shifts when
    asked (each image its own draw)."""
    import keras
    import tensorflow as tf

    data = tf.data.Dataset.from_tensor_slices((x, y))
    data = data.shuffle(len(x), seed=fit.seed, reshuffle_each_iteration=True).batch(fit.batch_size)
    # float32 layers: built under a mixed policy they would hand the model bf16 images.
    augment = []
    if fit.augment_flip:
        augment.append(keras.layers.RandomFlip("horizontal", seed=fit.seed, dtype="float32"))
    if fit.augment_shift:
        factor = fit.augment_shift / x.shape[1]
        augment.append(
            keras.layers.RandomTranslation(
                factor, factor, fill_mode="constant", seed=fit.seed, dtype="float32"
            )
        )
    if augment:
        # Layer by layer: a keras.Sequential made under a mixed policy would cast to bf16 first.
        layers = [
            keras.layers.Reshape((*x.shape[1:], 1), dtype="float32"),
            *augment,
            keras.layers.Reshape(x.shape[1:], dtype="float32"),
        ]

        def augmented(images, labels):
            for layer in layers:
                images = layer(images, training=True)
            return images, labels

        # One batch at a time: the layers draw from one seeded stream, and batches drawing in
        # parallel would take its draws in a different order each run.
        data = data.map(augmented)
    return without_autotune(data.prefetch(1))


def batched(x: np.ndarray, y: np.ndarray, batch_size: int):
    """`x` and `y` in order, batched, as a dataset without autotuning (Keras would autotune one
    it made from the arrays): the validation split, and the benchmarks' data."""
    import tensorflow as tf

    return without_autotune(tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size))


def epoch_logger(on_epoch=None):
    """A callback that adds `epoch_seconds` and the current learning rate to each epoch's logs,
    then hands the logs to `on_epoch(epoch, logs)` (MLflow logging, progress output)."""
    import keras

    class EpochLogger(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self._started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs if logs is not None else {}
            logs["epoch_seconds"] = time.perf_counter() - self._started
            logs["learning_rate"] = float(np.asarray(self.model.optimizer.learning_rate))
            if on_epoch is not None:
                on_epoch(epoch, {key: float(value) for key, value in logs.items()})

    return EpochLogger()


def stop_when_asked():
    """A callback that ends `fit` after the current step once a stop signal came in."""
    import keras

    class StopWhenAsked(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if tracking.stop_requested():
                self.model.stop_training = True

    return StopWhenAsked()


def fit_model(
    model: keras.Model,
    *,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    fit: FitConfig,
    on_epoch=None,
) -> dict[str, list[float]]:
    """Fit a compiled model with early stopping on val_loss; return the per-epoch history."""
    import keras

    callbacks = [epoch_logger(on_epoch), stop_when_asked()]
    if fit.early_stopping_patience:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=fit.early_stopping_patience, restore_best_weights=True
            )
        )
    with tracking.stop_deferred():
        history = model.fit(
            training_data(x_train, y_train, fit),
            validation_data=batched(x_val, y_val, fit.batch_size),
            epochs=fit.epochs,
            callbacks=callbacks,
            # The tf.data pipeline already shuffles, each epoch anew.
            shuffle=False,
            verbose=0,
        )
    return {key: [float(value) for value in history.history[key]] for key in HISTORY_KEYS}
