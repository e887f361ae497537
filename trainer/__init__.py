"""Trainers. Importing this package registers every trainer in ``TRAINERS``."""
from trainer import classifier, lnr, mixup  # noqa: F401
