"""Trainers that save each rank's state, for the torchrun tests (tests/test_distributed*.py).

Imported only by the torchrun processes, through a config's ``"plugins": ["ddp_plugin"]`` (``fixtures.torchrun``
puts tests/ on their PYTHONPATH), never by pytest itself, so the registries the suite is parametrised over stay
as shipped. Each rank writes ``<weights_dir>/<kind><rank>.pt``: ``rank`` after training (weights, epoch log and
``rank_state()``), ``test`` after the final test, ``ttt`` after test-time training.
"""
import os
from pathlib import Path

import torch

from trainer.classifier import ClassifierTrainer
from trainer.hyper_experts import HyperExpertTrainer
from trainer.lnr import LNRTrainer
from trainer.nmr_denoise import NMRDenoiseTrainer
from trainer.test_time import TestTimeTrainer
from utils import dist
from utils.registry import TRAINERS


class SavesRanks:
    """Mixin before a trainer class: ``weights_dir`` is its one extra argument."""

    def __init__(self, config, weights_dir: str, **kwargs):
        super().__init__(config, **kwargs)
        self.weights_dir = Path(weights_dir)

    def keep(self, kind: str, content: dict) -> None:
        self.weights_dir.mkdir(parents=True, exist_ok=True)
        torch.save({**content, "world_size": dist.world_size()}, self.weights_dir / f"{kind}{dist.rank()}.pt")

    def rank_state(self) -> dict:
        """What else a trainer saves with its weights after training."""
        return {}

    def train(self):
        log = super().train()
        self.keep("rank", {"model": self.raw_model.state_dict(), "log": log, **self.rank_state()})
        return log

    def test(self, *args, **kwargs):
        result = super().test(*args, **kwargs)
        self.keep("test", {"result": result, "model": self.raw_model.state_dict()})
        return result


@TRAINERS.register()
class RankWeightsClassifierTrainer(SavesRanks, ClassifierTrainer):
    """ClassifierTrainer saving each rank's weights, epoch log and test result."""


@TRAINERS.register()
class RankWeightsNMRDenoiseTrainer(SavesRanks, NMRDenoiseTrainer):
    """NMRDenoiseTrainer saving each rank's weights, epoch log and test result."""


@TRAINERS.register()
class RankWeightsHyperExpertTrainer(SavesRanks, HyperExpertTrainer):
    """HyperExpertTrainer saving each rank's weights and epoch log."""


@TRAINERS.register()
class RankWeightsLNRTrainer(SavesRanks, LNRTrainer):
    """LNRTrainer saving each rank's weights and label flips."""

    def rank_state(self) -> dict:
        return {"flipped": self.flipped}


@TRAINERS.register()
class RankWeightsTestTimeTrainer(SavesRanks, TestTimeTrainer):
    """TestTimeTrainer saving each rank's adapted results."""

    def adapt_all(self, *args, **kwargs):
        results = super().adapt_all(*args, **kwargs)
        self.keep("ttt", {"results": results})
        return results


@TRAINERS.register()
class InterruptedClassifierTrainer(SavesRanks, ClassifierTrainer):
    """ClassifierTrainer that ends the process right after saving epoch ``stop_after`` (0: never), as a kill
    between epochs would, and saves each rank's final weights when it completes."""

    def __init__(self, config, weights_dir: str, stop_after: int = 0, **kwargs):
        super().__init__(config, weights_dir, **kwargs)
        self.stop_after = stop_after

    def _save(self, epoch, improved):
        super()._save(epoch, improved)
        if epoch == self.stop_after:
            os._exit(0)
