"""Issue 15 item 1's measurement: does PRL train like SADE, and do its generated heads depend on the preference?

    python benchmarks/prl_heads.py --sade saved/models/experts_cifar10_ir100_sade/RUN \\
        --prl saved/models/experts_cifar10_ir100_hyper/RUN [--prl-mean saved/models/experts_cifar10_ir100_hyper/RUN2] \\
        [--out prl_heads.json]

Each directory is a finished training run (``model_best.pth`` beside it, ``train.log`` under ``saved/log``).
``--prl`` is the config as shipped; ``--prl-mean`` the same config trained with
``--set arch.args.hypernet.aggregate_by_preference=false`` (experts averaged, so the preference acts only through
the generated heads). For every run it prints the last epoch's ``expert_loss`` (SADE's per-expert sum, which
HyperExpertTrainer logs for every scalarisation), the uniform split's accuracy (test_all.py's functions, default
inference) and, for the hypernetwork runs, the uniform split's few-shot accuracy under the preferences (1,0,0)
and (0,0,1) and the head cosine: per expert, the cosine between the flattened (D, C) matrices generated for
(1,0,0) and (0,0,1), the minimum over experts (``raw``, as tests/test_experts.py's ``head_cosine``) and the same
with each class column normalised first (``columns``, what the cosine classifier uses).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def last_expert_loss(model_dir: Path) -> float | None:
    """The last epoch's ``expert_loss`` in the run's train.log (``SAVE/models/NAME/RUN`` -> ``SAVE/log/NAME/RUN``)."""
    log = model_dir.parents[2] / "log" / model_dir.parent.name / model_dir.name / "train.log"
    found = re.findall(r"expert_loss ([0-9.]+)", log.read_text()) if log.exists() else []
    return float(found[-1]) if found else None


def score(model_dir: Path, preference=None, device: str = "cpu") -> tuple[dict, object]:
    import torch
    import torch.nn.functional as F

    from test_all import evaluate_all
    from train import trainer_for_checkpoint
    from utils.cli import configure_inference

    args = SimpleNamespace(resume=str(model_dir / "model_best.pth"), config=None, device=device, overrides=[],
                           plugins=[], preference=",".join(map(str, preference)) if preference else None,
                           weights=None)
    with contextlib.redirect_stdout(io.StringIO()):
        config, trainer, _ = trainer_for_checkpoint(args, "test_all.py")
        configure_inference(trainer, args)
        loader = config.build_data_loader(training=False, device=trainer.device)
        num_classes = loader.num_classes
        ranges = {10: [[0, 3], [3, 7], [7, 10]], 100: [[0, 36], [36, 71], [71, 100]]}[num_classes]
        result = evaluate_all(trainer, loader, None, {"ranges": ranges})
    uniform = result["splits"]["uniform"]
    cosine = None
    hypernet = getattr(trainer.raw_model, "hypernet", None)
    if hypernet is not None:
        with torch.no_grad():
            vertex = torch.eye(trainer.raw_model.num_experts, device=trainer.device)
            w1, w3 = hypernet(vertex[0]), hypernet(vertex[-1])
        cosine = {"raw": float(F.cosine_similarity(w1.flatten(1), w3.flatten(1)).min()),
                  "columns": float(F.cosine_similarity(F.normalize(w1, dim=1).flatten(1),
                                                       F.normalize(w3, dim=1).flatten(1)).min())}
    trainer.close()
    return {"all": uniform["all"], "many": uniform["many"], "medium": uniform["medium"], "few": uniform["few"]}, cosine


def measure(model_dir: Path, hyper: bool, device: str) -> dict:
    uniform, cosine = score(model_dir, device=device)
    row = {"run": str(model_dir), "expert_loss": last_expert_loss(model_dir), "uniform": uniform}
    if hyper:
        row["head_cosine"] = cosine
        row["few_100"] = score(model_dir, (1, 0, 0), device)[0]["few"]
        row["few_001"] = score(model_dir, (0, 0, 1), device)[0]["few"]
    return row


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sade", type=Path, required=True)
    parser.add_argument("--prl", type=Path, required=True)
    parser.add_argument("--prl-mean", type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    rows = {"sade": measure(args.sade, False, args.device), "prl": measure(args.prl, True, args.device)}
    if args.prl_mean is not None:
        rows["prl_mean"] = measure(args.prl_mean, True, args.device)
    sade_loss = rows["sade"]["expert_loss"]
    print("| run | expert_loss (x SADE) | uniform all | many | medium | few | few (1,0,0) | few (0,0,1) | "
          "head cosine raw / columns |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        u, ratio = row["uniform"], row["expert_loss"] / sade_loss if sade_loss else float("nan")
        hyper = (f"{row['few_100']:.1f} | {row['few_001']:.1f} | {row['head_cosine']['raw']:.5f} / "
                 f"{row['head_cosine']['columns']:.5f}") if "head_cosine" in row else "- | - | -"
        print(f"| {name} | {row['expert_loss']:.3f} ({ratio:.2f}x) | {u['all']:.1f} | {u['many']:.1f} | "
              f"{u['medium']:.1f} | {u['few']:.1f} | {hyper} |")
    if args.out is not None:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
