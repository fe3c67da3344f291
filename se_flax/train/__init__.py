"""Training: state, optimizer, pure steps, sharding, checkpoints, the loop.

Importing this package does not import TensorFlow; only the TFDS input
source does, when a config asks for it.
"""
