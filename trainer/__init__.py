"""Trainers. Importing this package registers every trainer in ``TRAINERS``."""
from trainer import classifier, hyper_experts, lnr, mixup, nmr_denoise, test_time  # noqa: F401
