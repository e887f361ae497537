"""Models, losses and metrics. Importing this package registers them."""
from model import expert_loss, experts, loss, metric, resnet_cifar, resnet_imagenet  # noqa: F401
