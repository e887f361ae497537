"""All of the framework's performance figures, each measured side by side with a reference in one run.

    python benchmarks/run.py [--device cpu|cuda] [--quick] [--out results.json] [--threads N]

Prints the machine (CPU model / GPU, torch version, threads), one markdown table and the scaling tables.
Ratios are ours / reference speed (higher is better) unless the row says otherwise. Every figure is a
median after warm-up (``torch.cuda.synchronize`` around every timed block on CUDA); ours and the reference
run in the same process, interleaved where both are training loops and for the ladder preparation (5a), so
machine load hits both alike.
``--quick`` (a few minutes on 2 CPU cores) uses fewer steps and smaller sizes; the sizes used are printed
and saved with ``--out``.

Rows:

1. Training images/s of the 3-expert ResNet-32 hypernetwork model (``MultiExpertResNet32`` with the
   ``arch``/``loss``/``optimizer`` of configs/experts/cifar100_ir100_hyper.json, batch 128, CIFAR-100-LT
   IR 100 written as random pixels in torchvision's file format). Ours: the real ``HyperExpertTrainer``
   built from that config, one iteration of its ``_train_epoch`` body per step (``CIFAR100LT`` batch from
   the device-resident uint8 tensor with batched crop + flip, ``training_loss``, ``backward_step``).
   Reference: LDAM/SADE style, a Dataset over the uint8 HWC array returning ``transform(PIL image)``
   (RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize) through
   ``DataLoader(num_workers=2, shuffle=True)``, ``.to(device)``, the same model (same initial weights),
   Dirichlet preference, loss and SGD, written as a plain loop. Both use the trainer's autocast setting
   (bf16 on CUDA, none on CPU); ours also its default channels-last layout, the reference PyTorch's default
   layout as the released code has it. The difference is the input pipeline, the layout and the loop.
2. The hypernetwork's cost: step time of row 1's trainer over the same trainer and model without
   ``hypernet`` (SADE's experts with per-expert cosine heads); a time ratio, target <= 1.10.
3. Achieved training FLOP/s: FLOPs of one row-1 step (forward + backward, ``FlopCounterMode``) divided by
   row 1's median step time, over the FLOP/s of a large dense ``torch.matmul`` timed here (float32 on CPU,
   bf16 on CUDA): the utilisation.
4. test_all.py's one pass scoring the 11 test-agnostic splits against 11 separate evaluation passes
   (``benchmarks/test_all_speed.py``'s measurement; fewer generated test images with ``--quick``).
5. NMR: ladder preparation (``prepare_ladder`` on ``simulate_ladders(SimulationSettings(length=16384,
   levels=4), n, seed)``) against benchmarks/nmr_reference.py, the same work written plainly per ladder in
   NumPy/SciPy (agreement of the fused targets is checked and printed); denoising spectra/s of ``UNet1D()``
   (eval, no_grad, float32) through ``UNet1D.denoise`` (one call, chunked to 65,536 points per forward on CPU,
   as the trainer's test does) against one forward per spectrum; peak memory per ladder / spectrum
   (CUDA: ``torch.cuda.max_memory_allocated`` above what was allocated before the call, over the batch;
   CPU: ``resource.getrusage`` ru_maxrss growth in a fresh process that only loads the input and runs the
   work once, over the batch).
6. Scaling: rows 1, 2 and 5 at several batch sizes, and row 5 at several spectrum lengths.

``--only prep [--batches 1,4,16] [--lengths 2048,16384]`` measures row 5a alone, at every batch size and length.

The whole run flushes subnormal floats to zero, as the framework's entry points do (``utils.cli.flush_denormals``),
so the reference's plain loop gets it too: without it, backward passes on x86 stall for seconds in about half of
the steps (subnormal gradients), ours and the reference's alike.

Reproduce a figure with the same command on the same machine; numbers, not assertions.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import nmr_reference  # noqa: E402
from benchmarks.cifar_pipeline import ReferenceCIFAR100LT, write_cifar100  # noqa: E402
from benchmarks.test_all_speed import measure as measure_test_all  # noqa: E402
from utils.cli import flush_denormals  # noqa: E402
from utils.schedule import rescale_epochs  # noqa: E402

HYPER_CONFIG = ROOT / "configs" / "experts" / "cifar100_ir100_hyper.json"
NMR_LENGTH = 16384
NMR_LEVELS = 4


# --- sizes --------------------------------------------------------------------------------------------
@dataclass
class Sizes:
    """How much of everything is measured (``sizes_for`` picks them from --quick and the device)."""

    batch: int                       # rows 1-3
    batch_sizes: tuple[int, ...]     # row 6, training (must contain ``batch``)
    warmup: int                      # untimed steps per variant and batch size
    rounds: int                      # timed blocks per variant (the median is reported)
    block: int                       # steps per timed block
    matmul_n: int                    # row 3: n of the n x n x n matmul
    test_per_class: int              # row 4: generated test images per class (100: the real 10,000)
    prep_batch: int                  # row 5: ladders per prepare_ladder call
    prep_batches: tuple[int, ...]    # row 6 (must contain ``prep_batch``)
    denoise_batch: int               # row 5: spectra per UNet1D call
    denoise_batches: tuple[int, ...]
    lengths: tuple[int, ...]         # row 6, NMR lengths (must contain NMR_LENGTH)
    nmr_repeats: int
    reference_ladders: int           # the NumPy loop's rate is measured on at most this many ladders


def sizes_for(quick: bool, device: torch.device) -> Sizes:
    if device.type == "cuda":
        if quick:
            return Sizes(128, (128, 512), 10, 3, 10, 8192, 100, 128, (32, 128), 64, (16, 64), (4096, 16384), 5, 16)
        return Sizes(128, (64, 128, 256), 20, 5, 20, 8192, 100, 256, (32, 256, 1024), 64, (16, 64, 256),
                     (4096, 16384, 65536), 10, 32)
    if quick:
        return Sizes(128, (32, 128), 1, 5, 1, 1024, 10, 8, (2, 8), 2, (1, 2), (4096, 16384), 3, 8)
    return Sizes(128, (64, 128, 256), 3, 5, 2, 2048, 100, 16, (4, 16, 64), 4, (1, 4, 16), (4096, 16384, 65536),
                 5, 16)


# --- timing helpers -----------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_step_times(steps: dict[str, Callable[[], None]], device: torch.device,
                           sizes: Sizes) -> dict[str, list[float]]:
    """Seconds per step of each callable, one value per round: ``warmup`` untimed steps each, then ``rounds``
    rounds in which every callable runs a block of ``block`` steps (the order rotating between rounds)."""
    for step in steps.values():
        for _ in range(sizes.warmup):
            step()
    names = list(steps)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(sizes.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            sync(device)
            start = time.perf_counter()
            for _ in range(sizes.block):
                steps[name]()
            sync(device)
            times[name].append((time.perf_counter() - start) / sizes.block)
    return times


def interleaved_times(calls: dict[str, Callable[[], object]], device: torch.device, warmup: int,
                      rounds: int) -> dict[str, list[float]]:
    """Seconds of one call of each callable per round: ``warmup`` untimed calls each, then ``rounds`` rounds in
    which every callable runs once (the order rotating between rounds)."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            sync(device)
            start = time.perf_counter()
            calls[name]()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over rounds of the ratio of two variants timed in the same round (robust to load drifting)."""
    return statistics.median(a / b for a, b in zip(numerator, denominator))


def choose_threads(requested: int | None) -> str:
    """Set torch's intra-op threads and say how they were chosen.

    ``requested`` wins. Otherwise torch's default (one per core) is kept unless the 1-minute load average shows
    other processes already running on the cores: then torch gets the cores left (at least 1). Intra-op
    threads that share busy cores wait for each other at every parallel region; on a 2-core machine with
    another job keeping both busy, 2 threads made row 1 about 3x and the batched NMR preparation about 10x
    slower than 1 thread did (the single-threaded NumPy reference hardly changed): that measures the other job.
    """
    if requested:
        torch.set_num_threads(requested)
        return "--threads"
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    free = max(1, cores - round(load))
    if free < torch.get_num_threads():
        torch.set_num_threads(free)
        return f"auto: load average {load:.1f} on {cores} cores before the run; --threads N to override"
    return f"torch default; load average {load:.1f} on {cores} cores before the run"


def machine(device: torch.device) -> str:
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    text = (f"CPU: {cpu}, {os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads; "
            f"torch {torch.__version__}, numpy {np.__version__}")
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        text += f"; GPU: {props.name} ({props.total_memory / 2 ** 30:.0f} GiB), CUDA {torch.version.cuda}"
    return text


# --- rows 1-3: training -------------------------------------------------------------------------------
def training_config(data_dir: Path, device: torch.device, batch_size: int, hypernet: bool) -> dict:
    """configs/experts/cifar100_ir100_hyper.json pointed at ``data_dir``, without validation, logging or
    checkpoints; ``hypernet=False`` drops the hypernetwork (SADE's per-expert heads)."""
    config = json.loads(HYPER_CONFIG.read_text())
    config["data_loader"]["args"].update(data_dir=str(data_dir), batch_size=batch_size, validation="none")
    rescale_epochs(config, 1)  # one epoch, its schedule shortened with it (milestones 160/180 would never be reached)
    config["trainer"]["args"].update(device=str(device), tensorboard=False, monitor="off",
                                     save_dir=str(data_dir / "saved"), progress_bar=False)
    if not hypernet:
        del config["arch"]["args"]["hypernet"]
    return config


def build_trainer(config: dict):
    import train
    from parse_config import ConfigParser

    return train.build_trainer(ConfigParser(config, source=str(HYPER_CONFIG)))


def endless(loader) -> Iterator:
    """Batches of ``loader`` epoch after epoch (``set_epoch`` when it has one)."""
    epoch = 0
    while True:
        epoch += 1
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        yield from loader


class TrainerStep:
    """One iteration of ``ClassifierTrainer._train_epoch``'s body (without its every-``log_step`` loss print)."""

    def __init__(self, trainer):
        self.trainer, self.batches, self.index = trainer, endless(trainer.data_loader), 0
        trainer.raw_model.train()

    def __call__(self) -> None:
        trainer = self.trainer
        images, labels, index = trainer.to_device(*next(self.batches))
        loss = trainer.training_loss(images, labels, index)
        trainer.backward_step(loss, self.index)
        self.index += 1


class ReferenceStep:
    """The reference-style loop: PIL transforms in DataLoader workers, then a plain PyTorch training step of
    the same model (a copy of ``trainer``'s initial weights), loss, preference draw and optimizer."""

    def __init__(self, trainer, data_dir: Path, batch_size: int, workers: int):
        from torch.utils.data import DataLoader
        from torchvision import transforms

        from data_loader.cifar import CIFAR_MEAN, CIFAR_STD
        from model.expert_loss import DiverseExpertLoss
        from model.experts import MultiExpertResNet32

        config, device = trainer.config, trainer.device
        transform = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                        transforms.ToTensor(), transforms.Normalize(CIFAR_MEAN, CIFAR_STD)])
        dataset = ReferenceCIFAR100LT(data_dir, config["data_loader"]["args"]["imb_factor"], transform)
        # persistent workers: no worker restart at epoch ends inside the timed blocks (kinder to the reference)
        self.loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                 pin_memory=device.type == "cuda", persistent_workers=workers > 0)
        self.batches = endless(self.loader)
        self.model = MultiExpertResNet32(**config["arch"]["args"]).to(device)
        self.model.load_state_dict(trainer.raw_model.state_dict())
        self.model.train()
        self.criterion = DiverseExpertLoss(trainer.cls_num_list, **config["loss"]["args"]).to(device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), **config["optimizer"]["args"])
        alpha = config["trainer"]["args"].get("dirichlet_alpha", 1.2)
        self.dirichlet = torch.distributions.Dirichlet(torch.full((self.model.num_experts,), float(alpha)))
        self.device, self.autocast = device, trainer.autocast

    def __call__(self) -> None:
        images, labels, _ = next(self.batches)
        images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
        preference = self.dirichlet.sample().to(self.device)
        with self.autocast():
            logits = self.model(images, preference=preference, return_experts=True)
        loss = self.criterion(logits, labels, preference)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()


def step_flops(trainer) -> int:
    """FLOPs of one training step of ``trainer`` (training_loss forward + backward), by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    images, labels, index = trainer.to_device(*next(iter(trainer.data_loader)))
    with FlopCounterMode(display=False) as counter:
        trainer.training_loss(images, labels, index).backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def matmul_flops(device: torch.device, n: int) -> tuple[float, str]:
    """FLOP/s of an n x n x n ``torch.matmul`` (float32 on CPU, bf16 on CUDA) and a description."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    calls = 10 if device.type == "cuda" else 1

    def run():
        for _ in range(calls):
            torch.matmul(a, b)

    seconds = median_time(run, device, warmup=2, repeats=5) / calls
    return 2 * n ** 3 / seconds, f"{n}x{n} {str(dtype).replace('torch.', '')} matmul"


def bench_training(device: torch.device, sizes: Sizes, workers: int) -> dict:
    """Rows 1-3 and the training part of row 6."""
    by_batch = []
    flops = None
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_cifar100(root)
        for batch_size in sizes.batch_sizes:
            hyper = build_trainer(training_config(root, device, batch_size, hypernet=True))
            plain = build_trainer(training_config(root, device, batch_size, hypernet=False))
            reference = ReferenceStep(hyper, root, batch_size, workers)
            if batch_size == sizes.batch:
                flops = step_flops(hyper)
            rounds = interleaved_step_times({"ours": TrainerStep(hyper), "reference": reference,
                                             "plain": TrainerStep(plain)}, device, sizes)
            by_batch.append({"batch": batch_size, "amp": str(hyper.amp_dtype), "rounds": rounds,
                             **{f"{name}_s": statistics.median(times) for name, times in rounds.items()},
                             "ratio": paired_ratio(rounds["reference"], rounds["ours"]),
                             "hypernet_ratio": paired_ratio(rounds["ours"], rounds["plain"])})
            del reference  # ends its DataLoader workers
            hyper.close()
            plain.close()
    peak, peak_what = matmul_flops(device, sizes.matmul_n)
    return {"by_batch": by_batch, "step_flops": flops, "peak_flops": peak, "peak_what": peak_what}


# --- row 5: NMR -----------------------------------------------------------------------------------------
def simulated(batch: int, length: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    from data_loader.nmr.simulate import SimulationSettings, simulate_ladders

    return simulate_ladders(SimulationSettings(length=length, levels=NMR_LEVELS), batch, seed,
                            device=device)["spectra"]


def bench_prep(device: torch.device, batch: int, length: int, sizes: Sizes) -> dict:
    """prepare_ladder on ``batch`` ladders against the NumPy/SciPy loop (on at most reference_ladders), timed in
    alternating rounds (one call of each per round, the order rotating) so that load from other processes hits
    both alike; the ratio is the median of the per-round ratios of ladders/s."""
    from data_loader.nmr.fusion import prepare_ladder

    spectra = simulated(batch, length, device)
    host = spectra[:sizes.reference_ladders].cpu().numpy()
    steps = {"ours": lambda: prepare_ladder(spectra), "reference": lambda: nmr_reference.prepare_all(host)}
    times = interleaved_times(steps, device, 1, sizes.nmr_repeats)
    ours_s, ref_s = statistics.median(times["ours"]), statistics.median(times["reference"])
    ours = prepare_ladder(spectra[:len(host)]).target.cpu().double().numpy()
    ref = np.stack([r["target"] for r in nmr_reference.prepare_all(host)])
    difference = float(np.abs(ours - ref).max() / np.abs(ref).max())
    ratio = statistics.median((r / len(host)) / (o / batch) for o, r in zip(times["ours"], times["reference"]))
    return {"batch": batch, "length": length, "ours_per_s": batch / ours_s, "reference_per_s": len(host) / ref_s,
            "ratio": ratio, "reference_ladders": len(host), "target_max_rel_difference": difference}


def bench_denoise(device: torch.device, batch: int, length: int, sizes: Sizes) -> dict:
    """UNet1D().denoise on ``batch`` level-0 spectra (one call, chunked as the trainer's test does) against one
    forward per spectrum (eval, no_grad)."""
    from model.unet1d import UNet1D

    model = UNet1D().to(device).eval()
    spectra = simulated(batch, length, device)[:, 0].contiguous()
    with torch.no_grad():
        ours_s = median_time(lambda: model.denoise(spectra), device, 1, sizes.nmr_repeats)
        single_s = median_time(lambda: [model(s[None]) for s in spectra], device, 1, sizes.nmr_repeats)
    return {"batch": batch, "length": length, "ours_per_s": batch / ours_s, "reference_per_s": batch / single_s}


def memory_workload(kind: str, spectra: torch.Tensor) -> Callable[[], object]:
    """The work whose peak memory is measured, ready to run: ``prep`` (ours), ``reference`` (the NumPy loop) or
    ``denoise`` (level 0 of each ladder). The input is converted and the model built here, and the work has run
    once on a small simulated ladder (so the code pages it touches the first time are resident): none counts."""
    _workload(kind, simulated(1, 2048, spectra.device, seed=1))()
    return _workload(kind, spectra)


def _workload(kind: str, spectra: torch.Tensor) -> Callable[[], object]:
    if kind == "prep":
        from data_loader.nmr.fusion import prepare_ladder

        return lambda: prepare_ladder(spectra)
    if kind == "reference":
        host = spectra.cpu().numpy()
        return lambda: nmr_reference.prepare_all(host)
    from model.unet1d import UNet1D

    model, level0 = UNet1D().to(spectra.device).eval(), spectra[:, 0].contiguous()

    def denoise():
        return model.denoise(level0)

    return denoise


def peak_rss_bytes(reset: bool = False) -> int:
    """The process's peak resident set size (Linux: VmHWM, which ``reset`` first lowers to the current RSS by
    writing 5 to /proc/self/clear_refs; elsewhere ru_maxrss, which cannot be reset)."""
    status = Path("/proc/self/status")
    if status.exists():
        if reset:
            Path("/proc/self/clear_refs").write_text("5")
        return 1024 * int(re.search(r"VmHWM:\s+(\d+)", status.read_text()).group(1))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def memory_probe(kind: str, path: str) -> None:
    """Child process of ``host_peak_bytes``: load the input, build the work, then print how far one run of it
    raises the peak RSS above the RSS before it."""
    work = memory_workload(kind, torch.from_numpy(np.load(path)))
    gc.collect()
    before = peak_rss_bytes(reset=True)
    work()
    print(json.dumps({"bytes": peak_rss_bytes() - before}))


def host_peak_bytes(kind: str, spectra: torch.Tensor, threads: int) -> int:
    """Peak host memory growth of one run of ``kind`` on ``spectra``, measured in a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spectra.npy"
        np.save(path, spectra.cpu().numpy())
        out = subprocess.run([sys.executable, __file__, "--memory-probe", kind, str(path), "--threads", str(threads)],
                             capture_output=True, text=True, check=True, cwd=ROOT)
    return int(json.loads(out.stdout.strip().splitlines()[-1])["bytes"])


def cuda_peak_bytes(kind: str, spectra: torch.Tensor) -> int:
    """Peak CUDA memory allocated by one run of ``kind`` above what was allocated before it."""
    work = memory_workload(kind, spectra)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    work()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def bench_nmr_memory(device: torch.device, sizes: Sizes) -> dict:
    """Row 5's peak memory per ladder (preparation, ours and reference) and per spectrum (denoising)."""
    threads = torch.get_num_threads()
    prep = simulated(sizes.prep_batch, NMR_LENGTH, device)
    denoise = simulated(sizes.denoise_batch, NMR_LENGTH, device)
    if device.type == "cuda":
        ours_prep, ours_denoise = cuda_peak_bytes("prep", prep), cuda_peak_bytes("denoise", denoise)
        method = "CUDA max_memory_allocated above the memory allocated before the call, / batch"
    else:
        ours_prep, ours_denoise = host_peak_bytes("prep", prep, threads), host_peak_bytes("denoise", denoise, threads)
        method = ("peak-RSS growth (VmHWM reset just before the call, = ru_maxrss) in a fresh process that "
                  "loaded the input first, / batch")
    reference = host_peak_bytes("reference", prep[:sizes.reference_ladders], threads)
    return {"prep_per_ladder": ours_prep / sizes.prep_batch, "reference_per_ladder": reference,
            "reference_ladders": min(sizes.reference_ladders, sizes.prep_batch),
            "denoise_per_spectrum": ours_denoise / sizes.denoise_batch, "method": method}


def bench_nmr(device: torch.device, sizes: Sizes) -> dict:
    """Row 5 and the NMR part of row 6."""
    prep = [bench_prep(device, b, NMR_LENGTH, sizes) for b in sizes.prep_batches]
    prep += [bench_prep(device, sizes.prep_batch, n, sizes) for n in sizes.lengths if n != NMR_LENGTH]
    denoise = [bench_denoise(device, b, NMR_LENGTH, sizes) for b in sizes.denoise_batches]
    denoise += [bench_denoise(device, sizes.denoise_batch, n, sizes) for n in sizes.lengths if n != NMR_LENGTH]
    return {"prep": prep, "denoise": denoise, "memory": guarded("NMR memory", bench_nmr_memory, device, sizes)}


# --- the report -------------------------------------------------------------------------------------------
def guarded(what: str, fn: Callable, *args) -> dict:
    """``fn(*args)``, or ``{"skipped": reason}`` (traceback on stderr) when it fails, so one row cannot sink
    the others."""
    try:
        return fn(*args)
    except Exception as err:  # noqa: BLE001 (reported in the table)
        traceback.print_exc()
        return {"skipped": f"{what}: {type(err).__name__}: {err}"}


def fmt(value: float, unit: str = "") -> str:
    if value >= 100:
        text = f"{value:,.0f}"
    elif value >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".strip()


def size(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(nbytes) < 1024 or unit == "GiB":
            return f"{nbytes:.3g} {unit}" if unit != "B" else f"{nbytes:.0f} B"
        nbytes /= 1024
    return ""


def pick(rows: list[dict], **where) -> dict:
    return next(r for r in rows if all(r[k] == v for k, v in where.items()))


def training_rows(result: dict, sizes: Sizes, workers: int) -> list[tuple[str, ...]]:
    if "skipped" in result:
        return [("1-3. training", "-", "-", "-", "skipped: " + result["skipped"])]
    row = pick(result["by_batch"], batch=sizes.batch)
    b, ours_s, ref_s, plain_s = row["batch"], row["ours_s"], row["reference_s"], row["plain_s"]
    timing = (f"medians of {sizes.rounds} interleaved rounds of {sizes.block} step(s) per variant after "
              f"{sizes.warmup} warm-up; ratios: median of the per-round ratios")
    rows = [(f"1. Training, 3-expert ResNet-32 + hypernet, batch {b} (images/s)",
             fmt(b / ours_s), fmt(b / ref_s), f"{row['ratio']:.2f}x",
             f"ours: HyperExpertTrainer step on device-resident uint8 CIFAR + batched crop/flip; reference: PIL "
             f"transforms + DataLoader({workers} workers), same model/weights/loss/SGD; autocast {row['amp']}; "
             f"{timing}"),
            (f"2. Hypernetwork cost, batch {b} (ms/step)", fmt(1000 * ours_s, "ms"), fmt(1000 * plain_s, "ms"),
             f"{row['hypernet_ratio']:.3f} (time ratio, lower is better; target <= 1.10: "
             f"{'met' if row['hypernet_ratio'] <= 1.10 else 'NOT met'})",
             "ours: with hypernet; reference: the same trainer and MultiExpertResNet32 without hypernet")]
    if result["step_flops"]:
        achieved = result["step_flops"] / ours_s
        rows.append(("3. Achieved training FLOP/s (row 1 step)", fmt(achieved / 1e9, "GFLOP/s"),
                     fmt(result["peak_flops"] / 1e9, "GFLOP/s"), f"{100 * achieved / result['peak_flops']:.1f}% "
                     "utilisation", f"{result['step_flops'] / 1e9:.1f} GFLOP per step (FlopCounterMode, fwd+bwd) / "
                     f"median step time; reference: {result['peak_what']}"))
    return rows


def test_all_row(result: dict, sizes: Sizes) -> tuple[str, ...]:
    if "skipped" in result:
        return ("4. test_all", "-", "-", "-", "skipped: " + result["skipped"])
    return (f"4. test_all, 11 splits of {result['test_images']:,} test images ({result['images']:,} scored)",
            fmt(result["ours_s"], "s"), fmt(result["per_split_s"], "s"),
            f"{result['per_split_s'] / result['ours_s']:.2f}x",
            "ours: one pass, splits scored by index; reference: one evaluation pass per split (SADE); "
            "ResNet-32 width 16, untrained; same accuracies asserted")


def nmr_rows(result: dict, sizes: Sizes) -> list[tuple[str, ...]]:
    if "skipped" in result:
        return [("5. NMR", "-", "-", "-", "skipped: " + result["skipped"])]
    prep = pick(result["prep"], batch=sizes.prep_batch, length=NMR_LENGTH)
    den = pick(result["denoise"], batch=sizes.denoise_batch, length=NMR_LENGTH)
    rows = [(f"5a. NMR ladder preparation, {NMR_LEVELS} x {NMR_LENGTH:,} points, batch {prep['batch']} (ladders/s)",
             fmt(prep["ours_per_s"]), fmt(prep["reference_per_s"]),
             f"{prep['ratio']:.2f}x",
             f"ours: prepare_ladder, batched; reference: NumPy/SciPy loop per ladder (benchmarks/nmr_reference.py, "
             f"{prep['reference_ladders']} ladders; alternating rounds, ratio: median of the per-round ratios); "
             f"fused targets agree to {prep['target_max_rel_difference']:.1e} "
             "(max abs difference / max)"),
            (f"5b. NMR denoising, UNet1D, L = {NMR_LENGTH:,}, batch {den['batch']} (spectra/s)",
             fmt(den["ours_per_s"]), fmt(den["reference_per_s"]), f"{den['ours_per_s'] / den['reference_per_s']:.2f}x",
             "UNet1D.denoise, eval, no_grad, float32, default channels (64-128-256-256); reference: one forward "
             "per spectrum")]
    mem = result["memory"]
    if "skipped" in mem:
        rows.append(("5c. NMR peak memory", "-", "-", "-", "skipped: " + mem["skipped"]))
    else:
        rows.append(("5c. NMR peak memory per ladder (preparation)", size(mem["prep_per_ladder"]),
                     size(mem["reference_per_ladder"]),
                     f"{mem['reference_per_ladder'] / max(mem['prep_per_ladder'], 1):.2f}x (reference / ours)",
                     f"ours: {mem['method']} (batch {sizes.prep_batch}); reference: the loop's peak-RSS growth "
                     f"(same probe), one ladder in flight at a time"))
        rows.append(("5d. NMR peak memory per spectrum (denoising)", size(mem["denoise_per_spectrum"]), "-", "-",
                     f"{mem['method']} (batch {sizes.denoise_batch})"))
    return rows


def markdown(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def prep_table(prep: list[dict]) -> str:
    rows = [(r["batch"], f"{r['length']:,}", fmt(r["ours_per_s"]), fmt(r["reference_per_s"]), f"{r['ratio']:.2f}x",
             f"{r['target_max_rel_difference']:.1e}") for r in prep]
    return "Scaling, NMR ladder preparation (ladders/s):\n\n" + markdown(
        ("batch", "L", "ours", "reference (NumPy loop)", "ratio", "target agreement"), rows)


def scaling_tables(training: dict, nmr: dict) -> str:
    parts = []
    if "skipped" not in training:
        rows = [(r["batch"], fmt(r["batch"] / r["ours_s"]), fmt(r["batch"] / r["reference_s"]),
                 f"{r['ratio']:.2f}x", fmt(r["batch"] / r["plain_s"]), f"{r['hypernet_ratio']:.3f}")
                for r in training["by_batch"]]
        parts.append("Scaling, training (images/s):\n\n" + markdown(
            ("batch", "ours (hypernet)", "reference", "ratio", "ours without hypernet", "hypernet step-time ratio"),
            rows))
    if "skipped" not in nmr:
        parts.append(prep_table(nmr["prep"]))
        rows = [(r["batch"], f"{r['length']:,}", fmt(r["ours_per_s"]), fmt(r["reference_per_s"]),
                 f"{r['ours_per_s'] / r['reference_per_s']:.2f}x") for r in nmr["denoise"]]
        parts.append("Scaling, NMR denoising (spectra/s):\n\n" + markdown(
            ("batch", "L", "ours (batched)", "one spectrum per call", "ratio"), rows))
    return "\n\n".join(parts)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,4,16, got {text!r}") from None
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def prep_only(device: torch.device, sizes: Sizes, batches: list[int], lengths: list[int], out: str | None,
              threads_note: str, quick: bool, started: float) -> None:
    """``--only prep``: row 5a at every batch size and length, printed as the scaling table."""
    nmr = {"prep": [bench_prep(device, b, n, sizes) for n in lengths for b in batches]}
    elapsed = time.perf_counter() - started
    print(f"\nMachine: {machine(device)} ({threads_note}); device {device}; "
          f"{'--quick' if quick else 'full'} mode, {elapsed:.0f} s; {sizes.nmr_repeats} rounds, reference on at most "
          f"{sizes.reference_ladders} ladders\n")
    print(prep_table(nmr["prep"]))
    if out:
        Path(out).write_text(json.dumps({"machine": machine(device), "threads": threads_note, "device": str(device),
                                         "quick": quick, "seconds": elapsed, "sizes": asdict(sizes), "nmr": nmr},
                                        indent=2))
        print(f"\nWrote {out}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="fewer steps and smaller sizes (a few minutes on CPU)")
    parser.add_argument("--out", help="also write every measurement to this JSON file")
    parser.add_argument("--threads", type=int,
                        help="torch intra-op threads (default: torch's choice, fewer when other processes already "
                             "keep the cores busy, see choose_threads)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the reference (default 2)")
    parser.add_argument("--only", choices=["prep"],
                        help="prep: only the NMR ladder preparation (row 5a), at every --batches x --lengths")
    parser.add_argument("--batches", type=_int_list, help="with --only prep: batch sizes, e.g. 1,4,16")
    parser.add_argument("--lengths", type=_int_list, help="with --only prep: spectrum lengths, e.g. 2048,16384")
    parser.add_argument("--memory-probe", nargs=2, metavar=("KIND", "NPY"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if (args.batches or args.lengths) and not args.only:
        parser.error("--batches and --lengths go with --only prep")
    flush_denormals()  # as train.py does, for both variants: the process's threads start after this
    if args.memory_probe:
        torch.set_num_threads(args.threads or torch.get_num_threads())
        memory_probe(*args.memory_probe)
        return
    threads_note = choose_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available here")
    device = torch.device(args.device)
    sizes = sizes_for(args.quick, device)
    started = time.perf_counter()
    if args.only == "prep":
        prep_only(device, sizes, args.batches or list(sizes.prep_batches), args.lengths or [NMR_LENGTH], args.out,
                  threads_note, args.quick, started)
        return

    training = guarded("training", bench_training, device, sizes, args.workers)
    test_all = guarded("test_all", measure_test_all, str(device), 16, sizes.test_per_class)
    nmr = guarded("NMR", bench_nmr, device, sizes)
    elapsed = time.perf_counter() - started

    rows = training_rows(training, sizes, args.workers) + [test_all_row(test_all, sizes)] + nmr_rows(nmr, sizes)
    print(f"\nMachine: {machine(device)} ({threads_note}); device {device}; "
          f"{'--quick' if args.quick else 'full'} mode, {elapsed:.0f} s\n")
    print(markdown(("what", "ours", "reference", "ratio", "notes"), rows))
    print("\n" + scaling_tables(training, nmr))
    if args.out:
        report = {"machine": machine(device), "threads": threads_note, "device": str(device), "quick": args.quick,
                  "seconds": elapsed, "sizes": asdict(sizes), "training": training, "test_all": test_all, "nmr": nmr,
                  "table": [dict(zip(("what", "ours", "reference", "ratio", "notes"), r)) for r in rows]}
        Path(args.out).write_text(json.dumps(report, indent=2))
        print(f"\nWrote {args.out}")


if __name__ == "__main__":
    main()
