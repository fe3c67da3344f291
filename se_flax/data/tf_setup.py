"""Keeps TensorFlow off the accelerators that JAX owns.

TF grabs (and preallocates) every visible GPU on its first op, which starves
JAX; the input pipeline only needs the CPU. `tensorflow-cpu` sees no GPU
anyway, so this is a guard for setups where full TensorFlow got installed.
"""

from absl import logging


def hide_accelerators_from_tf() -> None:
  """Makes TF's GPUs and TPUs invisible to it; idempotent.

  Call before any TF op (the pipeline constructors call it too). Raises
  RuntimeError if TF already initialised an accelerator, since JAX may then
  have lost its memory.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  for kind in ('GPU', 'TPU'):
    try:
      tf.config.set_visible_devices([], kind)
    except RuntimeError:
      # TF's runtime is up already: fine as long as it got no accelerator.
      visible = tf.config.get_visible_devices(kind)
      if visible:
        raise RuntimeError(
            f'TensorFlow already initialised {visible}; call '
            'hide_accelerators_from_tf() before any TensorFlow op.'
        ) from None
    except ValueError:
      # No device of this kind is registered with TF: nothing to hide.
      logging.debug('TF knows no %s devices.', kind)
