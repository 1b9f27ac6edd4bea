"""The ``mcu-jax`` command.

    mcu-jax demo                                   the whole job on the bundled digits data
    mcu-jax run --config cfg.yaml --run-dir DIR    the same from a config file
    mcu-jax train|retrain|unlearn|mask|curve|sweep|report --run-dir DIR   one stage
    mcu-jax relearn|forget-quality --run-dir DIR   optional stages, on request

Configuration: ``--config FILE`` (YAML, TOML or JSON) and ``--set key.sub=value`` overrides
(repeatable), validated before anything is written. ``--resume`` continues a killed stage from
its last epoch checkpoint; ``--force`` recomputes finished stages. Failures are one line on
stderr and a non-zero exit (2 for bad input or state, 1 for the system, 130 for Ctrl-C, 143 for
SIGTERM); ``--debug`` shows the traceback.

The command (``run``) records SIGINT and SIGTERM from its first line on
(``mcu_jax.runtime.signals``) and imports JAX and the rest after that: a signal at any moment
stops the run at the next loop boundary, with one line naming the stage and the checkpoint it
kept; a second one exits at once.
"""
from __future__ import annotations

import argparse
import atexit
import datetime
import os
import sys
from pathlib import Path

from mcu_jax.runtime import signals


def stage_commands() -> tuple[str, ...]:
  from mcu_jax.pipeline import stages as pipeline
  return tuple(stage.name for stage in pipeline.STAGES)


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
  parser.add_argument("--debug", action="store_true", help="full tracebacks on errors")
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
  for stage in stage_commands():
    sub = commands.add_parser(stage, help=f"the {stage} stage")
    _common(sub, run_dir_required=True)
    if stage == "unlearn":
      sub.add_argument("--method", help="base unlearning method (overrides unlearn.method)")
    if stage == "relearn":
      sub.add_argument("--steps", type=int, help="relearning steps K (relearn.steps, default "
                       "100; a multiple of relearn.intervals)")
      sub.add_argument("--source", choices=("retain", "forget"),
                       help="relearn on D_r or on relearn.forget_examples examples of D_f "
                       "(relearn.source, default retain)")
    if stage == "forget-quality":
      sub.add_argument("--models", type=int, help="models per population "
                       "(forget_quality.models, default 16)")
      sub.add_argument("--methods", help="comma-separated base methods (forget_quality.methods; "
                       "default: the run's method)")
  importer = commands.add_parser(
      "import-torch", help="convert a reference PyTorch checkpoint to Flax params")
  importer.add_argument("checkpoint", type=Path, help="a torch state_dict (.pt)")
  importer.add_argument("--model", required=True, help="preresnet110, preresnet164 or vgg16_bn")
  importer.add_argument("--num-classes", type=int, default=10)
  importer.add_argument("--bend", type=int, default=None,
                        help="import bend i of a reference CurveNet checkpoint")
  importer.add_argument("--out", type=Path, required=True, help="output directory (orbax)")
  importer.add_argument("--force", action="store_true", help="overwrite an existing --out")
  importer.add_argument("--debug", action="store_true", help="full tracebacks on errors")
  return parser


# The demo forgets one digit class: on digits, random forgetting leaves nothing visible to
# unlearn (the model is as accurate on unseen digits as on D_f), while forgetting a class shows
# the whole spectrum along the curve. `--set forget.kind=random` gives the other scenario.
DEMO_PRESET = {"forget": {"kind": "class", "classes": [3]}}


def _config(args):
  from mcu_jax.pipeline import config as config_lib
  overrides = list(args.overrides)
  if getattr(args, "method", None):
    overrides.append(f"unlearn.method={args.method}")
  if getattr(args, "models", None) is not None:
    overrides.append(f"forget_quality.models={args.models}")
  if getattr(args, "steps", None) is not None:
    overrides.append(f"relearn.steps={args.steps}")
  if getattr(args, "source", None):
    overrides.append(f"relearn.source={args.source}")
  if getattr(args, "methods", None):
    overrides.append(f"forget_quality.methods=[{args.methods}]")
  saved = args.run_dir / "config.json" if args.run_dir is not None else None
  if saved is not None and saved.exists():
    base = config_lib.read_file(saved)   # a run directory remembers its configuration
  else:
    base = DEMO_PRESET if args.command == "demo" else None
  return config_lib.load_config(args.config, overrides, base=base)


def _demo_dir() -> Path:
  """A new directory runs/demo-<time>-<n>, never one another demo is using."""
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  Path("runs").mkdir(exist_ok=True)
  for n in range(1000):
    candidate = Path("runs") / f"demo-{stamp}-{os.getpid()}-{n}"
    try:
      candidate.mkdir()
      return candidate
    except FileExistsError:
      continue
  from mcu_jax.errors import MCUError
  raise MCUError("cannot find a free runs/demo-* directory name")


def _run(args) -> int:
  signals.check("start-up")
  if args.command == "import-torch":
    from mcu_jax.pipeline import torch_import
    out = torch_import.convert_file(args.checkpoint, args.model, args.num_classes, args.out,
                                    bend=args.bend, force=args.force)
    signals.check("the end of import-torch")
    print(out)
    return 0
  config = _config(args)
  from mcu_jax import io
  from mcu_jax.pipeline import stages as pipeline
  from mcu_jax.runtime import parallel
  parallel.initialize(args.coordinator, args.num_processes, args.process_id)
  if args.run_dir is None:
    args.run_dir = _demo_dir()
  run_dir = args.run_dir
  ctx = pipeline.make_context(config, run_dir, progress=not args.no_progress,
                              resume=args.resume, force=args.force)
  if args.command in ("demo", "run"):
    record = pipeline.run_all(ctx)
  else:
    record = pipeline.run_stage(ctx, args.command)
  signals.check("the end")        # a signal after the last boundary still ends in 130/143
  if args.command in ("demo", "run", "report"):
    print()
    print(record["table"])
    print()
    print(f"report: {Path(run_dir) / 'report.md'}")
  elif "table" in record:
    print(record["table"])
  else:
    summary = {k: v for k, v in record.items() if not isinstance(v, (list, dict))}
    print(io.to_jsonable(summary))
  print(f"run directory: {run_dir}")
  return 0


def _interrupted(args, e: signals.Interrupted) -> str:
  """The one line of an interrupted command: the stage, what it kept, how to continue."""
  what = f"mcu-jax: interrupted by {signals.name(e.signum)}"
  if args.command == "import-torch":
    if e.where == "the end of import-torch":
      return f"{what} after import-torch had finished: {args.out} is complete"
    return f"{what} during import-torch ({e.where}): nothing was written to {args.out}"
  if e.stage is None:
    if e.where == "the end":
      return f"{what} after its last stage had finished: every result is kept"
    return f"{what} before any stage ran ({e.where}): nothing was marked done"
  from mcu_jax.pipeline import stages as pipeline
  run_dir = args.run_dir
  kept = pipeline.STAGE_OF[e.stage].kept(run_dir)
  again = f"mcu-jax {args.command} --run-dir {run_dir} --resume"
  return (f"{what} in stage '{e.stage}' ({e.where}): nothing of it was marked done; "
          f"{kept}; `{again}` continues")


def _stage(error: BaseException, named: bool = True) -> str:
  """The prefix "stage 'train': " of an error a stage raised (``pipeline.run_stage`` sets
  ``.stage``), where ``named``."""
  stage = getattr(error, "stage", None)
  return f"stage '{stage}': " if stage and named else ""


def _one_line(error: BaseException) -> str:
  """The first line of an error's message (TensorStore and orbax add pages of detail)."""
  text = str(error).strip().splitlines()
  return text[0] if text else type(error).__name__


def main(argv=None) -> int:
  """The command's exit status for ``argv``: 0, or one line on stderr and 1, 2, 130 or 143.
  The signal handlers are ``run``'s: in-process callers keep their own."""
  args = build_parser().parse_args(argv)     # imports the pipeline, JAX with it
  from mcu_jax.errors import MCUError
  try:
    return _run(args)
  except signals.Interrupted as e:
    if args.debug:
      raise
    signals.exiting()          # a second signal now would only add a line
    print(_interrupted(args, e), file=sys.stderr)
    return e.exit_code
  except KeyboardInterrupt:
    print("mcu-jax: interrupted; finished stages are kept, and --resume continues a training "
          "stage from its last epoch", file=sys.stderr)
    return 130
  except MCUError as e:
    if args.debug:
      raise
    print(f"mcu-jax: error: {_stage(e, isinstance(e.__cause__, OSError))}{_one_line(e)}",
          file=sys.stderr)
    return 2
  except OSError as e:
    if args.debug:
      raise
    path = f": {e.filename}" if getattr(e, "filename", None) else ""
    print(f"mcu-jax: error: {_stage(e)}{e.strerror or _one_line(e)}{path}: check the path, its "
          "permissions and the free space", file=sys.stderr)
    return 1


def _quiet_unraisable(unraisable) -> None:
  """Drops the one harmless "ignored" exception, passes on the rest: when a restore fails,
  orbax closes its event loop while TensorStore still has reads in flight, and their results,
  discarded anyway, meet the closed loop (``RuntimeError: Event loop is closed``, a traceback
  after the one-line error in 1 of 6 byte-flipped models)."""
  error = unraisable.exc_value
  if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
    return
  sys.__unraisablehook__(unraisable)


def run() -> None:
  """The ``mcu-jax`` command: ``main``'s exit status for the process, which leaves without
  interpreter teardown. After a failure or an interrupt XLA's and orbax's threads may still
  be running the work that failed, and tearing the interpreter down under them crashed it
  (SIGSEGV after Ctrl-C in 4 of 7 tries) or printed asyncio tracebacks after the one-line
  error. After a success the exit functions run (jax.distributed's shutdown, logging's flush),
  but the teardown does not: it puts SIGINT back to Python's default, and a Ctrl-C in it ended
  a finished run with -2 and no word (1 of 20 random-time interrupts). Everything written is
  atomic; an uncommitted checkpoint is ignored on resume.

  SIGINT and SIGTERM are recorded from here on, before JAX is imported
  (``mcu_jax.runtime.signals``): the run stops at its next loop boundary with one line, and a
  second signal exits at once.
  """
  signals.install("mcu-jax: interrupted again: stopped at once; finished stages and the last "
                  "checkpoints are kept")
  sys.unraisablehook = _quiet_unraisable
  code = main()
  sys.stdout.flush()
  if code == 0:
    atexit._run_exitfuncs()
    signum = signals.requested()   # the first signal's, kept once set
    if signum is not None:   # after main's last check: the work is all done
      signals.exiting()
      code = signals.exit_code(signum)
      print(f"mcu-jax: interrupted by {signals.name(signum)} after the command "
            "had finished: every result is kept", file=sys.stderr)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)


if __name__ == "__main__":
  run()
