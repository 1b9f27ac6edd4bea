"""The ``mcu-jax`` command.

    mcu-jax demo                                   the whole job on the bundled digits data
    mcu-jax run --config cfg.yaml --run-dir DIR    the same from a config file
    mcu-jax train|retrain|unlearn|mask|curve|sweep|report --run-dir DIR   one stage

Configuration: ``--config FILE`` (YAML, TOML or JSON) and ``--set key.sub=value`` overrides
(repeatable), validated before anything is written. ``--resume`` continues a killed stage from
its last epoch checkpoint; ``--force`` recomputes finished stages.
"""
from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

from mcu_jax import config as config_lib

STAGE_COMMANDS = ("train", "retrain", "unlearn", "mask", "curve", "sweep", "report")


def _common(parser: argparse.ArgumentParser, run_dir_required: bool) -> None:
  parser.add_argument("--config", type=Path, help="YAML/TOML/JSON configuration file")
  parser.add_argument("--set", dest="overrides", action="append", default=[],
                      metavar="KEY=VALUE", help="override a config value, e.g. curve.epochs=5")
  parser.add_argument("--run-dir", type=Path, required=run_dir_required,
                      help="directory of the run's inputs and outputs")
  parser.add_argument("--resume", action="store_true",
                      help="continue interrupted training stages from their last checkpoint")
  parser.add_argument("--force", action="store_true", help="recompute finished stages")
  parser.add_argument("--no-progress", action="store_true", help="no progress bars or logs")
  parser.add_argument("--coordinator", help="multi-host: coordinator address host:port")
  parser.add_argument("--num-processes", type=int, help="multi-host: number of processes")
  parser.add_argument("--process-id", type=int, help="multi-host: this process's id")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="mcu-jax", description=__doc__.split("\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest="command", required=True)
  demo = commands.add_parser("demo", help="the whole pipeline on the bundled digits data")
  _common(demo, run_dir_required=False)
  demo.add_argument("--method", help="base unlearning method (default: rl)")
  run = commands.add_parser("run", help="every stage, in order, from one config")
  _common(run, run_dir_required=True)
  for stage in STAGE_COMMANDS:
    sub = commands.add_parser(stage, help=f"the {stage} stage")
    _common(sub, run_dir_required=True)
    if stage == "unlearn":
      sub.add_argument("--method", help="base unlearning method (overrides unlearn.method)")
  importer = commands.add_parser(
      "import-torch", help="convert a reference PyTorch checkpoint to Flax params")
  importer.add_argument("checkpoint", type=Path, help="a torch state_dict (.pt)")
  importer.add_argument("--model", required=True, help="preresnet110, preresnet164 or vgg16_bn")
  importer.add_argument("--num-classes", type=int, default=10)
  importer.add_argument("--out", type=Path, required=True, help="output directory (orbax)")
  return parser


# The demo forgets one digit class: on digits, random forgetting leaves nothing visible to
# unlearn (the model is as accurate on unseen digits as on D_f), while forgetting a class shows
# the whole spectrum along the curve. `--set forget.kind=random` gives the other scenario.
DEMO_PRESET = {"forget": {"kind": "class", "classes": [3]}}


def _config(args) -> config_lib.RunConfig:
  overrides = list(args.overrides)
  if getattr(args, "method", None):
    overrides.append(f"unlearn.method={args.method}")
  saved = args.run_dir / "config.json" if args.run_dir is not None else None
  if saved is not None and saved.exists():
    base = config_lib.read_file(saved)   # a run directory remembers its configuration
  else:
    base = DEMO_PRESET if args.command == "demo" else None
  return config_lib.load_config(args.config, overrides, base=base)


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  try:
    if args.command == "import-torch":
      from mcu_jax import torch_import
      path = torch_import.convert_file(args.checkpoint, args.model, args.num_classes, args.out)
      print(path)
      return 0
    config = _config(args)
  except (config_lib.ConfigError, ValueError, FileNotFoundError, ImportError) as e:
    print(f"mcu-jax: error: {e}", file=sys.stderr)
    return 2

  from mcu_jax import checkpoint, parallel, pipeline, report
  parallel.initialize(args.coordinator, args.num_processes, args.process_id)
  run_dir = args.run_dir
  if run_dir is None:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path("runs") / f"demo-{stamp}"
  try:
    ctx = pipeline.make_context(config, run_dir, progress=not args.no_progress,
                                resume=args.resume, force=args.force)
    if args.command in ("demo", "run"):
      record = pipeline.run_all(ctx)
    else:
      record = pipeline.STAGE_FUNCTIONS[args.command](ctx)
  except (pipeline.StageError, config_lib.ConfigError, checkpoint.CheckpointError, ValueError,
          FileNotFoundError) as e:
    print(f"mcu-jax: error: {e}", file=sys.stderr)
    return 2
  if args.command in ("demo", "run", "report"):
    print()
    print(record["table"])
    print()
    print(f"report: {Path(run_dir) / 'report.md'}")
  else:
    summary = {k: v for k, v in record.items() if not isinstance(v, (list, dict))}
    print(report.to_jsonable(summary))
  print(f"run directory: {run_dir}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
