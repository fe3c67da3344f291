"""Fine-tuning: timm's ImageNet SE-ResNet-50 on your own labelled images.

    python train.py --config configs/finetune.py --workdir /tmp/finetune \
        --config.data.folder_root=/path/to/images

Images: ROOT/train/<class>/*.jpg|png and ROOT/val/<class>/*.jpg|png (the
folder source, se_flax/data/folder.py); label i is the i-th class folder in
sorted order, written to <workdir>/label_names.json. `init_from` takes
anything `se_flax.load_pretrained` takes: a timm tag (fetched into the
Hugging Face cache on first use), a weights file (.safetensors, .pth,
.npz; set config.model.name to its architecture) or another run's workdir.
Every weight whose name and shape match is loaded; the classifier is new
when the class count differs; the log lists what was loaded and what was
re-initialised. A restart resumes from the workdir's checkpoint and does
not read `init_from` again.

Transfer options: `backbone_lr_multiplier` (here the backbone learns at a
tenth of the head's rate), `freeze_stages=N` (the stem and stage1_..stageN_
get no parameter updates; their BN statistics still move unless
`freeze_bn_stats`), `freeze_bn_stats=True` (BN keeps the pretrained
statistics; useful for small batches).
"""

from se_flax.train.config import base_config


def get_config():
  config = base_config()
  config.model.name = 'seresnet50'
  config.init_from = 'seresnet50.a1_in1k'
  config.backbone_lr_multiplier = 0.1
  config.data.source = 'folder'
  config.data.image_size = 224
  config.data.interpolation = 'bicubic'  # As the a1_in1k weights trained.
  config.batch_size = 64
  config.learning_rate = 0.05  # Per 256 images: the head's; backbone x0.1.
  config.lr_schedule = 'cosine'
  config.warmup_epochs = 0.5
  config.num_epochs = 10.0
  config.weight_decay = 1e-4
  config.label_smoothing = 0.1
  config.log_every_steps = 20
  config.eval_every_epochs = 1.0
  config.checkpoint_every_steps = 500
  return config
