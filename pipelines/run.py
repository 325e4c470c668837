"""``python -m pipelines.run CONFIG``: run medseg's stages from a config file (also the ``medseg`` command).

This module only parses the command line and reports errors; the stages are composed in :mod:`medseg.runner`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from medseg import __version__
from medseg.errors import MedsegError, RunFailedError
from medseg.launch import launched_distributed

log = logging.getLogger("pipelines.run")

#: Exit statuses (documented in --help and in README.md, "Errors and exit statuses").
EXIT_OK, EXIT_FAILED_CASES, EXIT_USAGE, EXIT_RUN_FAILED, EXIT_INTERNAL = 0, 1, 2, 3, 4
#: Interrupted by Ctrl-C (SIGINT): 128 + 2, as shells report it.
EXIT_INTERRUPTED = 130

DESCRIPTION = """\
Run medseg's stages from a YAML config: train a 2D UNet on the cases of data.root, predict masks for the
validation cases (or for a folder of scans), and evaluate them against the ground truth.
"""

EPILOG = """\
stages (in this order; the config's 'stages' list, or --stage):
  summary   no training: the network's layer table for the configured patch and input channels, its parameter
            count, an analytic memory estimate for training.batch_size and the measured peak memory of one
            training step on training.device; printed and written to OUTPUT/summary.txt
  plan      no training: reads and checks every case of data.root as the train stage would (images, labels,
            channels, grids), fits the normalisation and decides the plan; writes OUTPUT/plan.json and logs it.
            Bad cases stop it with their reason (or, with data.skip_bad_cases, are listed). Left out when train
            runs too (training plans first)
  train     trains on data.root; writes OUTPUT/checkpoints/{best,last}.pt and OUTPUT/train/{metrics.csv,curves.png}
  predict   loads inference.checkpoint (default OUTPUT/checkpoints/best.pt) and writes one mask per scan,
            OUTPUT/predictions/<case_id>.nii.gz, plus OUTPUT/predictions/predictions.csv. Scans: inference.input
            (--input), a folder searched recursively for NIfTI/NRRD/MHA files and DICOM series folders; when
            it is not set, the validation cases of data.root (the same split the train stage used).
  evaluate  scores OUTPUT/predictions against evaluation.ground_truth (default: the labels in data.root) and
            writes OUTPUT/evaluation/{metrics.csv,summary.json} and PNG overlays of the best and worst cases.
  Every run also writes OUTPUT/config.resolved.yaml (the config as run) and appends to OUTPUT/medseg.log.
  OUTPUT is output.dir (--output).

paths:
  Relative paths inside the config file are relative to the config file's folder; paths given on the command
  line (--input, --output, --checkpoint, --set data.root=...) are relative to the current directory.

exit status:
  0  every stage finished and every scan was predicted
  1  some scans could not be predicted (each is listed in predictions.csv and the log; the rest were written)
  2  configuration or input error (unknown key, wrong type, missing folder, labels that do not match the
     images, unreadable checkpoint, ...): a message names the key or file to fix; no traceback
  3  the run itself failed (its output disk is full or read-only): it stopped at the first such write with
     one message naming the folder and the reason; finished masks and checkpoints are kept
  4  unexpected internal error (a bug): the traceback is printed and kept in OUTPUT/medseg.log; please report it
  130  interrupted (Ctrl-C); finished outputs are complete

examples:
  python -m pipelines.run configs/quickstart.yaml
  python -m pipelines.run configs/hippocampus.yaml --set data.root=/data/Task04_Hippocampus --set training.epochs=20
  python -m pipelines.run configs/hippocampus.yaml --stage predict --checkpoint runs/hippocampus/checkpoints/best.pt \\
      --input /data/new_scans --output runs/new_scans
"""


def _stage_list(text: str) -> list[str]:
    stages = [s.strip() for s in text.split(",") if s.strip()]
    from typing import get_args

    from medseg.config import Stage

    known = get_args(Stage)
    bad = [s for s in stages if s not in known]
    if bad or not stages:
        raise argparse.ArgumentTypeError(f"invalid stage {text!r}; choose from {', '.join(known)}")
    return stages


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (``--help`` documents stages, paths and exit statuses)."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.run",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", type=Path, metavar="CONFIG", help="YAML config file, e.g. configs/quickstart.yaml")
    parser.add_argument(
        "--stage",
        dest="stages",
        action="append",
        type=_stage_list,
        metavar="STAGE",
        help="stage(s) to run instead of the config's 'stages': summary, plan, train, predict or evaluate; repeat "
        "the option or separate with commas (--stage train,predict)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a config value, e.g. --set training.epochs=5 --set model.base_features=16; "
        "values are YAML (5, 1e-3, true, null, [1, 2]) (repeatable)",
    )
    parser.add_argument(
        "--input", type=Path, metavar="FOLDER", help="predict: folder of scans (or one scan) = inference.input"
    )
    parser.add_argument(
        "--output", type=Path, metavar="FOLDER", help="folder for everything the run writes = output.dir"
    )
    parser.add_argument(
        "--checkpoint", type=Path, metavar="FILE", help="predict: model checkpoint (.pt) = inference.checkpoint"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="also show debug messages on the console")
    parser.add_argument("--version", action="version", version=f"medseg {__version__}")
    return parser


def _rank_tag() -> str:
    # Under torchrun every rank prints its own errors: say which one (torchrun's summary names it too).
    return f"rank {os.environ.get('RANK', '?')}: " if os.environ.get("WORLD_SIZE", "1") not in ("", "1") else ""


def _error(message: str) -> None:
    # One paragraph on stderr, prefixed like argparse's own usage errors; never a traceback.
    print(f"medseg: error: {_rank_tag()}{message}", file=sys.stderr)


def _overrides(args: argparse.Namespace) -> list[str]:
    extra = []
    for flag, key in (("input", "inference.input"), ("output", "output.dir"), ("checkpoint", "inference.checkpoint")):
        value = getattr(args, flag)
        if value is not None:
            # Command-line paths are relative to the working directory, not to the config file.
            extra.append(f"{key}={value.expanduser().resolve()}")
    return [*args.overrides, *extra]


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status (see ``--help``).

    Under ``torchrun`` (``WORLD_SIZE > 1``) every rank runs this: the process group is initialised here
    (``training.distributed_backend``) and destroyed on the way out; only rank 0 writes ``config.resolved.yaml``
    and ``medseg.log``; a rank's error message starts with ``rank N:``.
    """
    args = build_parser().parse_args(argv)
    if not launched_distributed():
        # No process group to tear down, and torch is not imported before the config is checked.
        return int(_run(args) or 0)

    # torchrun's failure summary then shows this rank's traceback next to its rank number.
    from torch.distributed.elastic.multiprocessing.errors import record

    from medseg.training.distributed import shutdown_distributed

    try:
        return int(record(_run)(args) or 0)
    finally:
        shutdown_distributed()


def _run(args: argparse.Namespace) -> int:
    from medseg.config import load_config
    from medseg.runner import RunLayout, check_setup, order_stages, prepare_output, run_logging, run_stages

    try:
        cfg = load_config(args.config, _overrides(args))
        stages = order_stages([s for group in args.stages for s in group] if args.stages else cfg.stages)
        check_setup(cfg, stages)
        # Imported once the config and folders check out: these helpers import torch (about 2 s).
        from medseg.training.distributed import barrier, get_rank, init_distributed, is_distributed

        init_distributed(cfg.training.distributed_backend)  # a no-op outside torchrun
        rank = get_rank()
        # Rank 0 creates the folder and writes config.resolved.yaml; the other ranks only need the paths.
        layout = prepare_output(cfg, stages, source=args.config.resolve()) if rank == 0 else RunLayout(cfg.output.dir)
        barrier()  # the output folder exists before any rank writes into it
    except MedsegError as err:
        _error(str(err))
        return EXIT_USAGE
    except OSError as err:  # e.g. output.dir on a read-only disk
        _error(f"cannot prepare the output folder: {err}")
        return EXIT_USAGE

    log_file = layout.log_file if rank == 0 else None  # one log for the job, written by rank 0
    with run_logging(log_file, verbose=args.verbose, rank=rank if is_distributed() else None):
        log.info("medseg %s: %s, stages %s, output in '%s'", __version__, args.config, ", ".join(stages), layout.root)
        try:
            result = run_stages(cfg, stages)
        except RunFailedError as err:
            log.debug("Traceback of the error below", exc_info=True)
            log.error("%s", err, extra={"file_only": True})
            _error(str(err))  # the log file may be on the disk that failed: the console has the whole message
            return EXIT_RUN_FAILED
        except MedsegError as err:
            log.debug("Traceback of the error below", exc_info=True)  # for the log file, not the console
            log.error("%s", err, extra={"file_only": True})  # the console gets the plain message below
            _error(f"{err} (log: {layout.log_file})")
            return EXIT_USAGE
        except KeyboardInterrupt:
            log.error("Interrupted; finished outputs are complete (they are written atomically)")
            return EXIT_INTERRUPTED
        except Exception as err:
            log.exception("Unexpected error; please report it with '%s'", layout.log_file, extra={"file_only": True})
            if _rank_tag():
                _error(f"{type(err).__name__}: {err}")  # names the rank; torchrun then stops the other ranks
                raise  # torchrun's failure summary shows this rank's traceback
            # A bug, not bad input: the traceback once on the console, and its own exit status (Python's default
            # 1 would read as "some scans failed").
            traceback.print_exc()
            _error(f"unexpected {type(err).__name__}: {err}; please report it with '{layout.log_file}'")
            return EXIT_INTERNAL
        if result.failed_predictions:
            log.warning(
                "%d scan(s) could not be predicted; see '%s' and the log",
                result.failed_predictions,
                layout.predictions_csv,
            )
            return EXIT_FAILED_CASES
        if result.failed_evaluations:
            log.warning(
                "%d case(s) could not be evaluated; each is a row with its error in '%s'",
                result.failed_evaluations,
                layout.evaluation / "metrics.csv",
            )
            return EXIT_FAILED_CASES
        log.info("Done: outputs in '%s'", layout.root)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
