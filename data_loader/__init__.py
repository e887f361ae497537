"""Data loaders. Importing this package registers every loader in ``DATA_LOADERS``."""
from data_loader import cifar, digits, image_list, samplers  # noqa: F401
from data_loader.nmr import dataset  # noqa: F401
