"""Export a gaprune checkpoint (baseline or pruned) to ONNX (opset >= 17) and TorchScript, check
both against the PyTorch model on real test images (max abs logit difference <= --tolerance,
onnxruntime for ONNX) and print their latency. ONNX needs the [export] extra.

python scripts/export.py outputs/search/<run>/finetune/pruned-knee-167.pt
python scripts/export.py checkpoints/resnet20-cifar10.pt --out exported --formats torchscript --clock cpu
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gaprune.utils.job import exit_on_user_error  # noqa: E402


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a gaprune checkpoint (.pt): baseline, pruned-*.pt or weight-masked")
    parser.add_argument("--out", default=None, help="output folder (default: <checkpoint dir>/export)")
    parser.add_argument("--formats", default="onnx,torchscript", help="comma list of onnx, torchscript")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--samples", type=int, default=256, help="real test images for the check")
    parser.add_argument("--data-dir", default="data", help="where CIFAR-10 / MNIST are prepared (dataset.params.data_dir)")
    parser.add_argument("--random-inputs", action="store_true", help="check on Gaussian inputs (no dataset needed)")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    for flag, kind in (("--batch", int), ("--throughput-batch", int), ("--repeats", int), ("--clock", str)):
        parser.add_argument(flag, type=kind, default=None, help="latency timing (default: as finetune.latency in conf/finetune/default.yaml)")
    parser.add_argument("--no-latency", action="store_true")
    return parser.parse_args(argv)


def check_inputs(meta: dict, args: argparse.Namespace):
    import torch

    from gaprune.data.datasets import load_dataset
    from gaprune.data.loaders import make_loader
    from gaprune.engine.checkpoint import example_input

    if args.random_inputs:
        shape = example_input(meta).shape[1:]
        return torch.randn((args.samples, *shape), generator=torch.Generator().manual_seed(0))
    data = meta["data"]
    bundle = load_dataset(data["name"], data_dir=args.data_dir)
    x, _ = next(iter(make_loader(bundle, "test", args.samples)))
    return x


FIX = "give a checkpoint gaprune wrote (a baseline from train.py, pruned-*.pt / masked_model.pt from a run dir)"


def checkpoint_file(value: str) -> Path:
    """The checkpoint argument: one line when it is missing or a directory (before anything is loaded)."""
    from gaprune.utils.errors import GapruneError

    path = Path(value)
    if path.is_dir():
        raise GapruneError(f"checkpoint '{path}' is a directory, not a checkpoint file; {FIX}")
    if not path.exists():
        raise GapruneError(f"checkpoint '{path}' is missing (no such file); {FIX}")
    return path


@exit_on_user_error(elsewhere="--out")
def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    from gaprune.engine.export import export_checkpoint
    from gaprune.deploy.latency import LatencySettings
    from gaprune.engine.checkpoint import read_checkpoint

    meta = read_checkpoint(checkpoint_file(args.checkpoint), hint=FIX)["meta"]
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / "export"
    timing = {"batch": args.batch, "throughput_batch": args.throughput_batch, "repeats": args.repeats, "clock": args.clock}
    latency = None if args.no_latency else LatencySettings(**{k: v for k, v in timing.items() if v is not None})
    report = export_checkpoint(args.checkpoint, out, check_inputs(meta, args),
                               formats=[f.strip() for f in args.formats.split(",") if f.strip()],
                               opset=args.opset, tolerance=args.tolerance, latency=latency)
    print("\n".join(report.lines()))


if __name__ == "__main__":
    main()
