"""Shared infrastructure: registry, errors, checkpoints, logging, seeding, distributed helpers."""
