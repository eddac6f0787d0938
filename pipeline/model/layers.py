"""A training-time layer: Keras's batch normalization on TensorFlow's fused kernel.

Keras 3 normalises a batch through separate TensorFlow ops (cast to float32, two reductions for
the moments, the affine transform, cast back), each a pass over the activations, forwards and
backwards. `FusedBatchNormalization` computes the same thing in one fused kernel: the default
`cnn` trains in 0.75x the time on this project's 2 CPU cores (`python bench/train_throughput.py
--options` times both). It is the stock layer in all else: the same variables in the same
order, the same moving-statistics update, the same inference. `pipeline.stages.train` trains with it
and copies the weights into a model of stock layers before anything is measured, saved or
served, so no saved model depends on this module.

Importing this module imports Keras and TensorFlow; `pipeline.model.architectures` imports it only
when asked."""

from __future__ import annotations

import keras
import tensorflow as tf


class FusedBatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` whose training step runs TensorFlow's fused kernel.

    Only over the last axis, with both `center` and `scale` and no mask; anything else, and every
    inference call, goes through the stock layer's code."""

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        shape = tf.shape(inputs)
        # The kernel wants NHWC; a dense layer's (batch, units) is (batch, 1, 1, units).
        images = inputs if len(inputs.shape) == 4 else tf.reshape(inputs, [-1, 1, 1, shape[-1]])
        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            images,
            tf.cast(self.gamma, "float32"),
            tf.cast(self.beta, "float32"),
            epsilon=self.epsilon,
            data_format="NHWC",
            is_training=True,
        )
        # The kernel returns the unbiased variance (over n - 1); Keras keeps the population one.
        count = tf.cast(tf.size(images) // tf.shape(images)[-1], "float32")
        variance = variance * (count - 1.0) / tf.maximum(count, 1.0)
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(
            self.moving_variance * self.momentum + variance * (1.0 - self.momentum)
        )
        outputs = outputs if len(inputs.shape) == 4 else tf.reshape(outputs, shape)
        return tf.cast(outputs, self.compute_dtype)

    def _fusable(self, inputs, training, mask) -> bool:
        return bool(
            training
            and self.trainable
            and mask is None
            and self.center
            and self.scale
            and not self.renorm
            and not self.synchronized
            and len(inputs.shape) in (2, 4)
            and self.axis in (-1, len(inputs.shape) - 1)
            # The fused kernel wants an epsilon of at least 1.001e-5.
            and self.epsilon >= 1.001e-5
        )
