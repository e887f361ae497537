"""Models, losses and metrics. Importing this package registers them."""
from model import expert_loss, experts, loss, metric, nmr_loss, resnet_cifar, resnet_imagenet, unet1d  # noqa: F401
