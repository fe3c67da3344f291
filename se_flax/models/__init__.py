"""The model zoo: `create_model(name)` for every registered network."""

from se_flax.models.features import feature_info
from se_flax.models.inception import BNInception, InceptionResNetV2
from se_flax.models.mobilenet import MobileNetV1
from se_flax.models.registry import create_model, list_models, model_fields
from se_flax.models.resnet import ResNet
from se_flax.models.shufflenet import ShuffleNetV1
from se_flax.models.stats import ModelStats, model_stats
from se_flax.models.vgg import VGG
