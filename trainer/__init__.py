"""Trainers. Importing this package registers every trainer in ``TRAINERS``."""
from trainer import classifier, hyper_experts, lnr, mixup, test_time  # noqa: F401
