"""Throughput of the CIFAR-100-LT training input pipeline: this framework's versus the reference style.

    python benchmarks/cifar_pipeline.py [--device cpu|cuda] [--batches N] [--augment crop,flip]

Generates CIFAR-100 files (torchvision's format, random pixels, 100 x 500 train and 100 x 100 test) in
a temporary directory, builds the IR-100 long-tailed training set (10,847 images) both ways from the same
files, and times N batches of 128 of each, side by side:

* ours: ``CIFAR100LT``: the split as one uint8 tensor on the device, augmented there in batches;
* reference: what LDAM/MiSLAS/SADE do: torchvision-CIFAR100-style reading (pickle -> HWC uint8 array), a
  Dataset returning ``transform(PIL.Image.fromarray(img))`` with RandomCrop(32, padding=4),
  RandomHorizontalFlip, ToTensor, Normalize, through ``DataLoader(num_workers=2, pin_memory=<cuda>)``,
  then ``.to(device)``.

Both are timed from the second batch on (worker start-up and the first batch are excluded) to the last
batch being on the device (``torch.cuda.synchronize`` on CUDA). Prints a table and the ratio ours /
reference. Numbers, not assertions: run it on the machine you care about.
"""
from __future__ import annotations

import argparse
import pickle
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from data_loader.cifar import CIFAR100LT, CIFAR_MEAN, CIFAR_STD  # noqa: E402
from data_loader.long_tail import long_tailed_counts, subsample_per_class  # noqa: E402

REFERENCE_OPS = {"crop": lambda: transforms.RandomCrop(32, padding=4),
                 "flip": transforms.RandomHorizontalFlip,
                 "rotate": lambda: transforms.RandomRotation(15)}


def write_cifar100(root: Path, seed: int = 0, train_per_class: int = 500, test_per_class: int = 100) -> None:
    """CIFAR-100 files with torchvision's names and keys: random uint8 pixels, balanced shuffled labels
    (``train_per_class`` / ``test_per_class`` images per class; CIFAR-100's own sizes by default)."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for name, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = np.repeat(np.arange(100), per_class)
        rng.shuffle(labels)
        data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        with open(folder / name, "wb") as file:
            # str keys: what the original (Python 2) files give when read with encoding="latin1", as torchvision does
            pickle.dump({"data": data, "fine_labels": labels.tolist()}, file, protocol=4)


class ReferenceCIFAR100LT(Dataset):
    """torchvision's CIFAR100 reading + IMBALANCECIFAR100's subsampling; PIL transform per image."""

    def __init__(self, root: Path, imb_factor: float, transform):
        with open(root / "cifar-100-python" / "train", "rb") as file:
            entry = pickle.load(file, encoding="latin1")  # as torchvision.datasets.CIFAR100 does
        data = entry["data"].reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))  # HWC, as torchvision keeps it
        targets = np.asarray(entry["fine_labels"])
        keep = subsample_per_class(targets, long_tailed_counts(500, 100, imb_factor), seed=0)
        self.data, self.targets, self.transform = data[keep], targets[keep].tolist(), transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return self.transform(Image.fromarray(self.data[index])), self.targets[index], index


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_batches(loader, device: torch.device, batches: int, move: bool) -> tuple[float, int]:
    """Seconds and images for ``batches`` batches after a first, untimed one (epochs restart as needed)."""
    def stream():
        while True:
            yield from loader

    it = stream()
    images, labels, _ = next(it)
    if move:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
    sync(device)
    seen = 0
    started = time.perf_counter()
    for _ in range(batches):
        images, labels, _ = next(it)
        if move:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        seen += len(labels)
    float(images.sum())  # the last batch must really exist on the device
    sync(device)
    return time.perf_counter() - started, seen


def machine(device: torch.device) -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"CPU: {cpu} ({torch.get_num_threads()} torch threads)"
    if device.type == "cuda":
        text += f"; GPU: {torch.cuda.get_device_name(device)}"
    return text


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", type=int, default=60, help="timed batches of each pipeline (default 60)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the reference (default 2)")
    parser.add_argument("--augment", default="crop,flip", help="comma-separated ops of: crop, flip, rotate")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available here")
    ops = [op for op in args.augment.split(",") if op]
    unknown = [op for op in ops if op not in REFERENCE_OPS]
    if unknown:
        parser.error(f"--augment: {unknown} not benchmarked; choose from {', '.join(REFERENCE_OPS)}")
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_cifar100(root)
        torch.manual_seed(0)
        started = time.perf_counter()
        ours = CIFAR100LT(data_dir=str(root), imb_factor=0.01, batch_size=args.batch_size, augment=ops,
                          device=device)
        ours_setup = time.perf_counter() - started
        ours_s, ours_n = time_batches(ours, device, args.batches, move=False)

        transform = transforms.Compose([REFERENCE_OPS[op]() for op in ops]
                                       + [transforms.ToTensor(), transforms.Normalize(CIFAR_MEAN, CIFAR_STD)])
        started = time.perf_counter()
        dataset = ReferenceCIFAR100LT(root, 0.01, transform)
        reference = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                               pin_memory=device.type == "cuda")
        ref_setup = time.perf_counter() - started
        ref_s, ref_n = time_batches(reference, device, args.batches, move=True)

    ours_rate, ref_rate = ours_n / ours_s, ref_n / ref_s
    print(f"CIFAR-100-LT IR100 training pipeline, {args.batches} batches of {args.batch_size}, "
          f"augment {'+'.join(ops) or 'none'}, device {device}")
    print(machine(device) + f"; torch {torch.__version__}")
    rows = [("ours: CIFAR100LT (uint8 tensor on device, batched aug)", ours_rate, ours_s, ours_setup),
            (f"reference: PIL + transforms, DataLoader(workers={args.workers})", ref_rate, ref_s, ref_setup)]
    print(f"{'pipeline':<58}{'images/s':>11}{'ms/batch':>10}{'setup s':>9}")
    for name, rate, seconds, setup in rows:
        print(f"{name:<58}{rate:>11,.0f}{1000 * seconds / args.batches:>10.2f}{setup:>9.2f}")
    print(f"ratio ours / reference: {ours_rate / ref_rate:.1f}x")


if __name__ == "__main__":
    main()
