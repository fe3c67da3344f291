"""Pretrained weights: timm's tags on the Hugging Face Hub, local files and
training workdirs -> `(model, variables)` with their preprocessing.

    pretrained = se_flax.load_pretrained('seresnet50.a1_in1k')
    model, variables = pretrained
    logits = model.apply(variables, images_nhwc, train=False)
    pretrained.config.eval_size(), pretrained.config.label_descriptions
"""

from se_flax.pretrained.config import PretrainedConfig
from se_flax.pretrained.hub import PretrainedNotAvailableError
from se_flax.pretrained.labels import imagenet_descriptions
from se_flax.pretrained.labels import imagenet_label_names
from se_flax.pretrained.load import Pretrained
from se_flax.pretrained.load import list_pretrained
from se_flax.pretrained.load import load_pretrained
from se_flax.pretrained.tags import Tag
from se_flax.pretrained.tags import find as find_tag
