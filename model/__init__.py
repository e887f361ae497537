"""Models, losses and metrics. Importing this package registers them."""
from model import loss, metric, resnet_cifar, resnet_imagenet  # noqa: F401
