"""MNIST-style image classification pipeline: one module per DVC stage."""
