"""test_all.py's one pass over the test set against scoring the 11 test-agnostic splits one by one.

    python benchmarks/test_all_speed.py [--device cpu|cuda] [--width 16] [--test-per-class 100]

Generates CIFAR-100 files (random pixels) in a temporary directory, builds a ResNet-32 classifier through
the framework (untrained weights: the cost does not depend on them), then times, in one run:

* ours: ``test_all.evaluate_all``: the model runs once over the 10,000 test images and every split
  (forward50 ... uniform ... backward50, 52,832 images in all) is scored from those logits by index;
* per split: what SADE's ``test_all_cifar.py`` does: for each of the 11 splits, a loader over that split's
  images and a full evaluation pass.

Prints both times and the ratio (per split / ours). Numbers, not assertions.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import test_all  # noqa: E402
import train  # noqa: E402
from benchmarks.cifar_pipeline import machine, sync, write_cifar100  # noqa: E402
from data_loader.cifar import TensorImageSet  # noqa: E402
from parse_config import ConfigParser  # noqa: E402


def config_for(data_dir: Path, device: str, width: int) -> dict:
    return {
        "name": "bench_test_all",
        "arch": {"type": "ResNet32", "args": {"num_classes": 100, "width": width}},
        "data_loader": {"type": "CIFAR100LT", "args": {"data_dir": str(data_dir), "imb_factor": 0.01,
                                                       "batch_size": 500, "validation": "none"}},
        "loss": {"type": "CrossEntropy", "args": {}},
        "metrics": [{"type": "accuracy", "args": {}}, {"type": "shot_accuracy", "args": {}}],
        "optimizer": {"type": "SGD", "args": {"lr": 0.1}},
        "trainer": {"type": "ClassifierTrainer", "args": {"epochs": 1, "device": device, "tensorboard": False,
                                                          "save_dir": str(data_dir / "saved")}},
    }


def measure(device: str, width: int = 16, test_per_class: int = 100) -> dict:
    """Seconds of test_all's one pass and of the 11 separate passes, on the same trainer and test set.

    ``test_per_class`` images per class in the generated test split (100: CIFAR-100's 10,000). Returns
    ``{"ours_s", "per_split_s", "images" (scored over all splits), "test_images"}``; both ways must give the
    same accuracies (asserted).
    """
    device = torch.device(device)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_cifar100(root, test_per_class=test_per_class)
        config = ConfigParser(config_for(root, str(device), width))
        trainer = train.build_trainer(config)
        loader = config.build_data_loader(training=False, device=trainer.device)
        trainer.predict(loader)  # warm-up (allocator, kernels)

        sync(device)
        start = time.perf_counter()
        ours = test_all.evaluate_all(trainer, loader)
        sync(device)
        ours_s = time.perf_counter() - start

        splits = loader.test_agnostic_splits()
        sync(device)
        start = time.perf_counter()
        separate = {}
        for name, index in splits.items():
            index = torch.as_tensor(index, dtype=torch.long)
            subset = TensorImageSet(loader.dataset.images[index.to(loader.device)], loader.dataset.targets[index],
                                    loader.augment)
            separate[name] = trainer.evaluate(loader._eval_loader(subset))
        sync(device)
        separate_s = time.perf_counter() - start
        test_images = len(loader.dataset)
        trainer.close()

    assert all(abs(ours["splits"][n]["all"] - separate[n]["accuracy"]) < 1e-9 for n in splits)
    return {"ours_s": ours_s, "per_split_s": separate_s, "images": sum(len(v) for v in splits.values()),
            "test_images": test_images}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--width", type=int, default=16, help="ResNet-32 width (16 is the paper's)")
    parser.add_argument("--test-per-class", type=int, default=100,
                        help="generated test images per class (100: CIFAR-100's 10,000)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    result = measure(args.device, args.width, args.test_per_class)
    images, ours_s, separate_s = result["images"], result["ours_s"], result["per_split_s"]
    print(f"test_all on CIFAR-100 ({result['test_images']:,} test images; 11 splits, {images:,} images in all), "
          f"ResNet-32 width {args.width}, device {device}")
    print(f"machine: {machine(device)}")
    print(f"{'method':<44}{'seconds':>10}{'images scored/s':>18}")
    print(f"{'ours: one pass, splits scored by index':<44}{ours_s:>10.2f}{images / ours_s:>18,.0f}")
    print(f"{'per split: 11 separate evaluation passes':<44}{separate_s:>10.2f}{images / separate_s:>18,.0f}")
    print(f"ratio per-split / ours: {separate_s / ours_s:.2f}x (the same numbers either way)")


if __name__ == "__main__":
    main()
