"""Trainers. Importing this package registers every trainer in ``TRAINERS``."""
from trainer import classifier  # noqa: F401
