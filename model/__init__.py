"""Models, losses and metrics. Importing this package registers them."""
from model import loss, metric, resnet_cifar  # noqa: F401
