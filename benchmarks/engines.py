"""Inference engines on CPU: eager PyTorch, ``torch.compile`` and ONNX Runtime, on the same slices (issue 15).

The bare forward pass of a trained model over the slices of real scans (read, normalised, sliced and padded
beforehand, as the predictor does; untimed), in the same batches, per engine:

- ``eager_fp32``: PyTorch as ``inference.precision: fp32`` runs it;
- ``eager_fast``: what ``precision: auto`` / ``channels_last: auto`` choose on this CPU (bf16 + channels_last
  where the CPU has native bf16, else float32), the default;
- ``bn_unfolded_fp32`` / ``bn_unfolded_fast``: the same with the checkpoint's BatchNorm layers kept as trained
  (the predictor folds them into the convolutions, ``medseg.models.fusion``; the other engines run the folded
  model), to measure what folding buys;
- ``relu_unfused_fp32`` / ``relu_unfused_fast``: folded, but each convolution and its ReLU run as two kernels
  (the predictor runs them as one, ``medseg.models.fusion.ConvReLU``), to measure what that fusion buys;
- ``compile_fp32`` / ``compile_fast``: the same under ``torch.compile`` (inductor; compile time reported apart,
  every input shape compiled before timing);
- ``onnxruntime_fp32``: the model exported with ``torch.onnx.export`` (dynamic batch, height and width) and run
  by ONNX Runtime's CPU provider with as many threads as torch (only if ``onnx`` and ``onnxruntime`` are
  installed: ``pip install onnx onnxruntime``).

Each engine's masks are compared with eager fp32's (the reference): the share of voxels with the same label
and the largest probability difference. The rule of issue 15: an engine becomes an ``inference.engine`` option
only if it is at least 1.2x as fast as the default (``eager_fast``) with masks equal within a documented
tolerance. Engines are timed interleaved over ``--rounds`` rounds (a drifting machine affects all alike).

::

    python benchmarks/engines.py --checkpoint runs/.../best.pt --scan-dir ../shared/data/Task04_Hippocampus/imagesTr
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import OUT_DIR, command_line, fmt, machine_info, text_table, write_json

log = logging.getLogger("benchmarks.engines")

#: The speed-up over the default an engine must reach to become an option (issue 15).
KEEP_SPEEDUP = 1.2


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="trained model (best.pt)")
    parser.add_argument("--scan-dir", type=Path, required=True, help="folder of scans whose slices are predicted")
    parser.add_argument("--scans", type=int, default=20, help="scans taken from the folder (sorted)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--engines", default=None, help="comma-separated subset (default: all available)")
    parser.add_argument("--tag", default=None, help="out/engines_<tag>.json (default: the scan folder's dataset)")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR, help="where the JSON goes")
    return parser.parse_args(argv)


def load_batches(predictor: Any, scans: Sequence[Path]) -> tuple[list[Any], list[int]]:
    """Padded float32 slice batches of each scan, as the predictor would feed them, and the slices per scan."""
    import torch

    from medseg.data.slicing import pad_to_shape, padded_size, volume_to_slices
    from medseg.io import load_volume

    s = predictor.spec
    batches: list[torch.Tensor] = []
    per_scan: list[int] = []
    for scan in scans:
        image = predictor.network_input(load_volume(scan)).image  # at the plan's spacing, as predicted
        slices = volume_to_slices(image, s.slice_axis, s.context_slices)
        padded, _ = pad_to_shape(slices, padded_size(slices.shape[-2:], s.pad_multiple, s.patch_hw))
        tensor = torch.from_numpy(np.ascontiguousarray(padded, dtype=np.float32))
        per_scan.append(int(tensor.shape[0]))
        batches += list(torch.split(tensor, predictor.batch_size))
    return batches, per_scan


def _eager(model: Any, dtype: Any, channels_last: bool) -> Callable[[Any], Any]:
    import torch

    from medseg.inference.precision import autocast

    fmt_ = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt_)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), autocast(torch.device("cpu"), dtype):
            return model(x.contiguous(memory_format=fmt_)).float()

    return run


def _onnxruntime(model: Any, example: Any, work: Path) -> Callable[[Any], Any]:
    import onnxruntime as ort
    import torch

    path = work / "model.onnx"
    model = model.to(memory_format=torch.contiguous_format).float()
    with torch.no_grad():
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "batch", 2: "h", 3: "w"}, "logits": {0: "batch", 2: "h", 3: "w"}},
            dynamo=False,
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {"x": x.numpy()})[0])

    return run


def build_engines(
    predictor: Any, unfolded: Any, names: Sequence[str] | None, example: Any, work: Path
) -> dict[str, Any]:
    """``{name: (run, build_seconds)}`` for every engine that can run here (``unfolded``: the checkpoint's model
    with its BatchNorm layers, as trained)."""
    import copy

    import torch

    from medseg.inference.precision import resolve_channels_last, resolve_precision
    from medseg.models.fusion import fold_batchnorm

    cpu = torch.device("cpu")
    fast_dtype = resolve_precision("auto", cpu)
    fast_cl = resolve_channels_last("auto", cpu)
    base = predictor.model.eval()
    engines: dict[str, Any] = {}

    def add(name: str, make: Callable[[], Callable[[Any], Any]]) -> None:
        if names is not None and name not in names:
            return
        start = time.perf_counter()
        try:
            engines[name] = (make(), time.perf_counter() - start)
        except Exception as exc:  # an engine that cannot run here is reported, not fatal
            log.warning("%s: not available: %s: %s", name, type(exc).__name__, exc)

    add("eager_fp32", lambda: _eager(copy.deepcopy(base), None, False))
    add("eager_fast", lambda: _eager(copy.deepcopy(base), fast_dtype, fast_cl))
    add("bn_unfolded_fp32", lambda: _eager(copy.deepcopy(unfolded), None, False))
    add("bn_unfolded_fast", lambda: _eager(copy.deepcopy(unfolded), fast_dtype, fast_cl))
    add("relu_unfused_fp32", lambda: _eager(fold_batchnorm(unfolded, fuse_relu=False), None, False))
    add("relu_unfused_fast", lambda: _eager(fold_batchnorm(unfolded, fuse_relu=False), fast_dtype, fast_cl))
    add("compile_fp32", lambda: _eager(torch.compile(copy.deepcopy(base)), None, False))
    add("compile_fast", lambda: _eager(torch.compile(copy.deepcopy(base)), fast_dtype, fast_cl))
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx"):
        add("onnxruntime_fp32", lambda: _onnxruntime(copy.deepcopy(base), example, work))
    elif names is None or "onnxruntime_fp32" in names:
        log.warning("onnxruntime_fp32: not available: pip install onnx onnxruntime")
    return engines


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import torch

    from medseg.inference import Predictor
    from medseg.io import find_scans
    from medseg.models.checkpoint import load_checkpoint, model_from_checkpoint
    from medseg.models.head import logits_to_probs, probs_to_labels

    predictor = Predictor.from_checkpoint(args.checkpoint, device="cpu", precision="fp32", channels_last=False)
    unfolded = model_from_checkpoint(load_checkpoint(args.checkpoint), args.checkpoint)[0].eval()
    scans = find_scans(args.scan_dir)[: args.scans]
    batches, per_scan = load_batches(predictor, scans)
    mode = predictor.spec.mode
    names = args.engines.split(",") if args.engines else None
    shapes = sorted({tuple(b.shape) for b in batches})
    with tempfile.TemporaryDirectory() as tmp:
        engines = build_engines(predictor, unfolded, names, batches[0], Path(tmp))
        compile_seconds: dict[str, float] = {}
        outputs: dict[str, list[torch.Tensor]] = {}
        for name, (run, built) in engines.items():
            start = time.perf_counter()
            outputs[name] = [run(x) for x in batches]  # first pass: compiles every shape, gives the masks
            compile_seconds[name] = built + time.perf_counter() - start
        seconds = {name: 0.0 for name in engines}
        for _ in range(max(1, args.rounds)):
            for name, (run, _) in engines.items():
                start = time.perf_counter()
                for x in batches:
                    run(x)
                seconds[name] += time.perf_counter() - start

    n_slices = sum(per_scan)
    ref = [probs_to_labels(logits_to_probs(y.float(), mode), mode) for y in outputs["eager_fp32"]]
    ref_p = [logits_to_probs(y.float(), mode) for y in outputs["eager_fp32"]]
    rows = []
    for name in engines:
        labels = [probs_to_labels(logits_to_probs(y.float(), mode), mode) for y in outputs[name]]
        probs = [logits_to_probs(y.float(), mode) for y in outputs[name]]
        same = sum(int((a == b).sum()) for a, b in zip(labels, ref, strict=True))
        total = sum(a.numel() for a in ref)
        rows.append(
            {
                "engine": name,
                "seconds_per_round": seconds[name] / max(1, args.rounds),
                "slices_per_s": n_slices * max(1, args.rounds) / seconds[name],
                "first_pass_seconds": compile_seconds[name],
                "voxel_agreement_vs_fp32": same / total,
                "max_prob_diff_vs_fp32": max(float((p - q).abs().max()) for p, q in zip(probs, ref_p, strict=True)),
            }
        )
    by_name = {r["engine"]: r for r in rows}
    default = by_name.get("eager_fast")
    for r in rows:
        r["speedup_vs_eager_fp32"] = r["slices_per_s"] / by_name["eager_fp32"]["slices_per_s"]
        r["speedup_vs_default"] = r["slices_per_s"] / default["slices_per_s"] if default else None
    kept = [r["engine"] for r in rows if (r["speedup_vs_default"] or 0) >= KEEP_SPEEDUP and r["engine"] != "eager_fast"]
    result = {
        "benchmark": "engines",
        "command": command_line(),
        "checkpoint": str(args.checkpoint),
        "scan_dir": str(args.scan_dir),
        "scans": len(scans),
        "slices": n_slices,
        "batch_size": predictor.batch_size,
        "input_shapes": [list(s) for s in shapes],
        "rounds": args.rounds,
        "machine": machine_info(),
        "engines": rows,
        "keep_speedup": KEEP_SPEEDUP,
        "engines_meeting_the_rule": kept,
    }
    print(
        text_table(
            ["engine", "slices/s", "x eager fp32", "x default", "first pass s", "voxels = fp32", "max |dp|"],
            [
                [
                    r["engine"],
                    fmt(r["slices_per_s"], 1),
                    fmt(r["speedup_vs_eager_fp32"], 2),
                    fmt(r["speedup_vs_default"], 2),
                    fmt(r["first_pass_seconds"], 1),
                    f"{100 * r['voxel_agreement_vs_fp32']:.4f}%",
                    fmt(r["max_prob_diff_vs_fp32"], 4),
                ]
                for r in rows
            ],
        )
    )
    print(f"engines >= {KEEP_SPEEDUP}x the default: {', '.join(kept) or 'none'}")
    tag = args.tag or Path(args.scan_dir).resolve().parent.name.lower()
    with contextlib.suppress(Exception):
        torch._dynamo.reset()
    write_json(args.out_dir / f"engines_{tag}.json", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
