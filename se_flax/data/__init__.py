"""Input pipelines; the only part of se_flax that imports TensorFlow.

Importing this package does not import TensorFlow: `config`, `normalize`,
`synthetic`, `repeats` (timm's repeated-augmentation arithmetic) and
`rand_augment_config` (RandAugment's config strings) are TF-free;
`pipeline` (TFDS), `folder` (your own image folders), `stream` (what those
two share), `epoch_order`, `ops`, `rand_augment`, `prepare`,
`tiny_imagenet` and `benchmark` import it when imported themselves.

    from se_flax import data
    config.data = data.default_data_config()
    from se_flax.data import pipeline   # TF from here on
"""

from se_flax.data.config import default_data_config
from se_flax.data.normalize import normalize_images
from se_flax.data.tf_setup import hide_accelerators_from_tf
