"""Abstract base classes: trainer, data loader, model."""
