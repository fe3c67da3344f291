"""Default input-pipeline settings: `config.data = default_data_config()`.

TF-free (only `ml_collections`), so configs can import it cheaply. Every
number the input pipeline varies lives here; `pipeline.py` reads nothing else.
"""

import ml_collections

# Re-exported: configs and the pipeline import them from here.
from se_flax.constants import MEAN_RGB, STDDEV_RGB  # pylint: disable=unused-import


def default_data_config() -> ml_collections.ConfigDict:
  """Returns the input-pipeline defaults (the SENet paper's ImageNet recipe).

  Fields:
    name: TFDS dataset name, e.g. 'imagenet2012'; any prepared TFDS
      image-classification dataset works (see image_key / label_key).
    data_dir: TFDS data directory, local or gs://; None means TFDS's default
      (~/tensorflow_datasets or $TFDS_DATA_DIR).
    manual_dir: where the ImageNet archives live (preparation only, and named
      in the error when the prepared data is missing). None means
      `<data_dir>/downloads/manual`, TFDS's default.
    train_split / eval_split: TFDS split strings; slicing such as
      'train[:99%]' is allowed.
    image_key / label_key: feature names in the TFDS dataset (an Image
      and a ClassLabel feature).
    folder_root: for the folder source (`folder.py`): ROOT holding
      train/<class>/* and val/<class>/* images (JPEG or PNG), local or
      gs://. The folder source reads image files, so name, data_dir,
      splits, keys, shuffle_buffer, file_cycle_length, cache and
      skip_corrupt_records do not apply to it (its epochs are exact
      permutations of the file list).
    image_size: side of the square training crop, pixels.
    eval_image_size: side of the square eval crop; None means `image_size`.
    crop_pct: eval centre-crop fraction of the shorter side: equivalent to
      resizing the shorter side to eval_image_size / crop_pct (256 for 224 at
      0.875) and centre-cropping eval_image_size.
    interpolation: 'bilinear' or 'bicubic' (any `tf.image.resize` method).
    antialias: antialias when downsampling (PIL-like; slower).
    min_area: smallest fraction of the image area a training crop covers.
    aspect_ratio: (min, max) width / height of training crops.
    max_attempts: crop-sampling attempts before the whole image is used.
    random_rotation: max rotation in degrees for training (0 = off; the
      official SENet repository uses 10).
    pixel_jitter: max per-channel colour shift in 0..255 pixel units for
      training (0 = off; the official SENet repository uses 20).
    shuffle_buffer: examples in the training shuffle buffer (per process;
      each holds a JPEG of ~110 kB on ImageNet).
    file_cycle_length: files read concurrently (interleaved) for training.
    num_parallel_calls: preprocessing parallelism; -1 = tf.data AUTOTUNE.
    threads: size of the private tf.data thread pool; 0 = TF's default.
    prefetch: batches prefetched on the host; -1 = AUTOTUNE.
    cache: keep the raw records (JPEG bytes, not pixels) in host memory
      after the first pass; only for small datasets.
    rand_augment: timm's RandAugment config string for training, e.g.
      'rand-m7-mstd0.5-inc1' (ResNet strikes back); '' = off.
    repeated_augmentation: timm's RepeatAugSampler repeats (RSB A1/A2: 3):
      each chosen example appears this many times per epoch, each with its
      own augmentation, and an epoch stays one dataset's worth of examples;
      0 or 1 = off.
    skip_corrupt_records: train past corrupt or truncated record files
      instead of stopping with `CorruptRecordError` (which names the file and
      the byte offset): the records that can not be read (for a damaged
      file, all of it past the damage) are skipped each epoch, counted in the
      train iterator's `num_corrupt_records`, and warned about once per
      file; their batch slots take copies of other examples, so batches stay
      a function of (seed, step) and resumption stays exact. Evaluation
      never skips: a damaged eval file is always an error.
  """
  c = ml_collections.ConfigDict()
  c.name = 'imagenet2012'
  c.data_dir = ml_collections.config_dict.placeholder(str)
  c.manual_dir = ml_collections.config_dict.placeholder(str)
  c.train_split = 'train'
  c.eval_split = 'validation'
  c.image_key = 'image'
  c.label_key = 'label'
  c.folder_root = ml_collections.config_dict.placeholder(str)
  c.image_size = 224
  c.eval_image_size = ml_collections.config_dict.placeholder(int)
  c.crop_pct = 0.875
  c.interpolation = 'bilinear'
  c.antialias = False
  c.min_area = 0.08
  c.aspect_ratio = (3 / 4, 4 / 3)
  c.max_attempts = 10
  c.random_rotation = 0.0
  c.pixel_jitter = 0.0
  c.rand_augment = ''
  c.repeated_augmentation = 0
  c.shuffle_buffer = 16_384
  c.file_cycle_length = 16
  c.num_parallel_calls = -1
  c.threads = 0
  c.prefetch = 4
  c.cache = False
  c.skip_corrupt_records = False
  return c
