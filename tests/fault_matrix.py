"""The fault matrix of the command line: bad input, broken files, signals, races, NaN.

    python3 tests/fault_matrix.py [--out matrix.json] [--only NAME ...] [--trials 20]

Each case sets up a tiny digits run directory (a finished demo with small epochs, made once and
copied), breaks something, runs ``mcu-jax`` as a user would, and sorts the outcome:

* ``ok``: the command succeeded where it should, or failed with one clear line;
* ``unclear``: it failed with a traceback, several error lines or none;
* ``silent``: it exited 0 where it should have failed (a wrong or unnoticed result);
* ``wrong-done``: a record on disk is marked done but does not fit its configuration, its
  inputs or its model files, or holds a non-finite number.

After every case the run directory is audited (``audit``): every record's provenance must match
today's configuration and inputs, every number be finite; a case may add checks of its own
(a rebuilt model's digest, the words of its one line).

Signal trials (``signal_trials``): SIGINT and SIGTERM (``--trials`` of each, 20 by default) at
seeded random times across ``train``, ``curve``, ``sweep`` and ``forget-quality``, from
0.15 s (JAX still importing) to the end of an uninterrupted run of the same command. A trial
is ok when the command exits 130 or 143 with one ``mcu-jax:`` line and no traceback or
"Exception ignored", and the command that line names (``... --resume``) then finishes with
results bit-identical to the uninterrupted run's. Their exit codes, stderr and resume outcome are in
the JSON (``signals``) and in a table per command and signal.

Not collected by pytest (the name does not start with test_); tests/test_cli.py and
tests/test_signals.py hold one test per kind of fault. Prints a table and the totals; exits 1
if any case is not ok.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--no-progress", "--set", "train.epochs=2", "--set", "curve.epochs=1",
        "--set", "unlearn.options={epochs: 1}", "--set", "sweep.points=5",
        "--set", "model_options={width: 4}"]
ENV = dict(os.environ, JAX_PLATFORMS="cpu")


def mcu(*args, timeout=600):
  return subprocess.run([sys.executable, "-m", "mcu_jax.pipeline.cli", *map(str, args)], cwd=ROOT,
                        env=ENV, capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------------------------------------
# Auditing a run directory.


def audit(run_dir: Path) -> list[str]:
  """What is marked done but wrong in ``run_dir`` (empty when every record is sound)."""
  from mcu_jax.pipeline import config as config_lib
  from mcu_jax.pipeline import rundir
  from mcu_jax.pipeline import stages as pipeline
  problems = []
  if not (run_dir / "config.json").exists() or not run_dir.is_dir():
    return problems
  try:
    config = config_lib.load_config(base=config_lib.read_file(run_dir / "config.json"))
  except Exception:   # a broken config.json: every command refuses the directory (its case
    return []         # checks that), so nothing in it can be used as done
  run = rundir.RunDir(run_dir)
  section = lambda keys: rundir.digest(rundir.config_section(config.to_dict(), keys))
  for stage in pipeline.STAGES:
    if not run.has(stage.record):
      continue
    try:
      record = run.read(stage.record)
    except Exception:
      continue       # unreadable: not marked done in a usable way; the commands refuse it
    made = record.get("provenance") or {}
    if made.get("config") != section(stage.keys):
      problems.append(f"{stage.record}: made with another configuration")
    for need in stage.needs:
      if not run.has(need):
        problems.append(f"{stage.record}: its input {need} is gone")
        continue
      try:
        inputs = run.read(need)
      except Exception:
        continue     # an unreadable input: every stage that reads it refuses to go on
      if made.get("inputs", {}).get(need) != rundir.digest(inputs):
        problems.append(f"{stage.record}: its input {need} changed")
    if rundir.nonfinite_paths(record):
      problems.append(f"{stage.record}: holds a non-finite number")
  if run.has("split"):
    split = run.read("split")
    if split.get("provenance", {}).get("config") != section(("dataset", "seed", "forget")):
      problems.append("split: made with another configuration")
  return problems


# ---------------------------------------------------------------------------------------------
# The cases: name -> fn(run_dir, base) -> (expect_success, [results]).


def _fail(*args, **kw):
  return False, [mcu(*args, **kw)]


def _flip(directory: Path) -> None:
  for path in directory.rglob("*"):
    if path.is_file() and path.stat().st_size > 64 and "metadata" not in path.name.lower():
      raw = bytearray(path.read_bytes())
      raw[len(raw) // 2] ^= 0x01
      path.write_bytes(bytes(raw))


def config_cases():
  bad = {
      "unknown key": "curve.epoch=3", "wrong type": "curve.epochs=many",
      "lr inf": "train.lr=.inf", "lr nan": "train.lr=.nan", "lr negative": "train.lr=-1",
      "beta_low negative": "curve.beta_low=-5", "beta_low > beta_high": "curve.beta_low=0.9",
      "k > 1": "mask.k=2", "kr = 1": "mask.kr=1.0", "3 sweep points": "sweep.points=3",
      "unknown model": "model=resnet1000", "unknown method": "unlearn.method=magic",
      "unknown precision": "curve.precision=fp16", "t_search reversed": "sweep.t_search=[0.9, 0.1]",
      "forget ratio 0": "forget.ratio=0", "unknown curve kind": "curve.kind=spline",
      "bad method option": "unlearn.options={beta: 1}", "two bends": "curve.num_bends=2",
      "bad schedule unit": "train.schedule_unit=batch", "bad data set": "dataset=nonsense",
      "no class": "forget={kind: class, classes: []}",
  }
  cases = {f"config: {name}": (lambda o: lambda d, b: _fail("run", "--run-dir", d, *FAST,
                                                            "--set", o))(override)
           for name, override in bad.items()}
  cases["config: 1e-3 parses"] = lambda d, b: (True, [mcu("train", "--run-dir", d, *FAST,
                                                          "--set", "train.lr=1e-3")])
  return cases


def stage_cases():
  def force_split(d, b):
    copy(b, d)
    return False, [mcu("curve", "--run-dir", d, "--force", "--set", "forget.classes=[4]"),
                   mcu("sweep", "--run-dir", d), mcu("report", "--run-dir", d)]

  def force_epochs(d, b):
    copy(b, d)
    return True, [mcu("train", "--run-dir", d, "--force", "--no-progress",
                      "--set", "train.epochs=1"), mcu("run", "--run-dir", d, "--no-progress")]

  def changed_without_force(d, b):
    copy(b, d)
    return _fail("curve", "--run-dir", d, "--set", "curve.lr=0.5")

  def nan_train(d, b):
    return _fail("run", "--run-dir", d, *FAST, "--set", "train.lr=1e6")

  def nan_curve(d, b):
    copy(b, d)
    return _fail("curve", "--run-dir", d, "--force", "--no-progress", "--set", "curve.lr=1e30")

  def nan_unlearn(d, b):
    copy(b, d)
    return _fail("unlearn", "--run-dir", d, "--force", "--no-progress", "--method", "ga",
                 "--set", "unlearn.options={lr: 1.0e+30, epochs: 1}")

  def out_of_order(d, b):
    return _fail("curve", "--run-dir", d, *FAST)

  def report_before_sweep(d, b):
    copy(b, d)
    for name in ("sweep.json", "report.json"):
      (d / name).unlink()
    return _fail("report", "--run-dir", d)

  def rerun_is_noop(d, b):
    copy(b, d)
    return True, [mcu("run", "--run-dir", d, "--no-progress")]

  return {"force: changed split": force_split, "force: changed train epochs then run":
          force_epochs, "changed config without force": changed_without_force,
          "nan: huge train lr": nan_train, "nan: huge curve lr": nan_curve,
          "nan: huge GA lr": nan_unlearn, "stage before its input": out_of_order,
          "report before sweep": report_before_sweep, "finished run again": rerun_is_noop}


def disk_cases():
  def file_as_run_dir(d, b):
    d.write_text("a file")
    return _fail("run", "--run-dir", d, *FAST)

  def under_a_file(d, b):
    d.write_text("a file")
    return _fail("run", "--run-dir", d / "sub", *FAST)

  def broken(name, how):
    def case(d, b):
      copy(b, d)
      how(d / name)
      return _fail("report", "--run-dir", d, "--force")
    return case

  def missing_config(d, b):
    copy(b, d)
    (d / "config.json").unlink()
    return _fail("report", "--run-dir", d)

  def corrupt_newest_checkpoint(d, b):
    killed = run_killed(d)
    steps = sorted((p for p in (d / "original" / "ckpt").iterdir() if p.name.isdigit()),
                   key=lambda p: int(p.name))
    _flip(steps[-1])
    return True, [killed, mcu("train", "--run-dir", d, "--no-progress", "--resume",
                              "--set", "train.epochs=6", "--set", "model_options={width: 4}")]

  garbage = lambda path: path.write_bytes(b"{garbage")
  return {"run dir is a file": file_as_run_dir, "run dir under a file": under_a_file,
          "config.json missing": missing_config,
          "config.json corrupt": broken("config.json", garbage),
          "config.json not UTF-8": broken("config.json", lambda p: p.write_bytes(b"\xff\xfe")),
          "original.json corrupt": broken("original.json", garbage),
          "mask.json corrupt": broken("mask.json", garbage),
          "split.npz corrupt": broken("split.npz", garbage),
          "model byte flip": broken("unlearn/model", _flip),
          "model missing": broken("unlearn/model", shutil.rmtree),
          "curve controls byte flip": broken("curve/controls", _flip),
          "corrupt newest checkpoint, resume": corrupt_newest_checkpoint}


def _model_digest(path: Path) -> str:
  from mcu_jax.runtime import checkpoint
  return checkpoint.tree_digest(checkpoint.load_tree(path))


def _expect_line(result, *parts) -> list[str]:
  """A problem when the last command's one line lacks one of ``parts``."""
  missing = [p for p in parts if p not in result.stderr]
  return [f"its line lacks {missing}: {result.stderr.strip()[-200:]}"] if missing else []


def issue_cases():
  """The last silent seams: a done stage whose model is gone, numbers in YAML, a directory as
  --config, a read-only model directory."""
  def model_gone_run(d, b):
    copy(b, d)
    shutil.rmtree(d / "original" / "model")
    result = mcu("run", "--run-dir", d, "--no-progress")
    problems = []
    if result.returncode == 0:
      record = json.loads((d / "original.json").read_text())
      if not (d / "original" / "model").is_dir():
        problems.append("run exited 0 with original/model still missing")
      elif _model_digest(d / "original" / "model") != record["model_digest"]:
        problems.append("the rebuilt model does not match its record")
      elif record["model_digest"] != json.loads((b / "original.json").read_text())[
          "model_digest"]:
        problems.append("the rebuilt model is not the one it replaces")
    return True, [result], problems

  def model_gone_stage(name, command, rebuilder):
    def case(d, b):
      copy(b, d)
      shutil.rmtree(d / name)
      result = mcu(command, "--run-dir", d, "--no-progress")
      return False, [result], _expect_line(result, f"{d / name} is missing",
                                           f"`mcu-jax {rebuilder} --run-dir {d}` rebuilds it")
    return case

  def numbers_in(suffix, text, key, value):
    def case(d, b):
      d.mkdir()
      config = d / f"c{suffix}"
      config.write_text(text)
      result = mcu("train", "--config", config, "--run-dir", d / "run", "--no-progress",
                   "--set", "train.epochs=1", "--set", "model_options={width: 4}")
      problems = []
      if result.returncode == 0:
        saved = json.loads((d / "run" / "config.json").read_text())
        for part in key.split("."):
          saved = saved[part]
        if saved != value or type(saved) is not float:
          problems.append(f"{key} = {saved!r}, not {value!r}")
      return True, [result], problems
    return case

  def directory_as_config(d, b):
    d.mkdir()
    result = mcu("run", "--config", d, "--run-dir", d / "run", *FAST)
    problems = _expect_line(result, f"config file {d} is a directory")
    if (d / "run").exists():
      problems.append("a run directory was made")
    return False, [result], problems

  def read_only_model(d, b):
    copy(b, d)
    prefix = _no_permission_override()
    model = d / "original" / "model"
    for path in [model, *model.rglob("*")]:
      path.chmod(path.stat().st_mode & ~0o222)
    try:
      result = subprocess.run([*prefix, sys.executable, "-m", "mcu_jax.pipeline.cli", "train",
                               "--run-dir", str(d), "--force", "--no-progress"], cwd=ROOT,
                              env=ENV, capture_output=True, text=True, timeout=600)
    finally:
      for path in [model, *model.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o200)
    return False, [result], _expect_line(result, "stage 'train'", f"Permission denied: {model}/")

  yaml_numbers = ("train:\n  lr: 1e-3\ncurve:\n  lr: 1E-2\n  momentum: .5\n"
                  "  beta_high: 5.\n")
  return {"done stage, model gone: run rebuilds it": model_gone_run,
          "done stage, model gone: report names it": model_gone_stage(
              "original/model", "report", "train"),
          "done stage, controls gone: sweep names them": model_gone_stage(
              "curve/controls", "sweep", "curve"),
          "config file: YAML 1e-3": numbers_in(".yaml", yaml_numbers, "train.lr", 1e-3),
          "config file: YAML 1E-2": numbers_in(".yaml", yaml_numbers, "curve.lr", 1e-2),
          "config file: YAML .5": numbers_in(".yaml", yaml_numbers, "curve.momentum", 0.5),
          "config file: YAML 5.": numbers_in(".yaml", yaml_numbers, "curve.beta_high", 5.0),
          "config file: TOML 1e-3": numbers_in(".toml", "[train]\nlr = 1e-3\n", "train.lr",
                                               1e-3),
          "config file: JSON 1E-3": numbers_in(".json", '{"train": {"lr": 1E-3}}', "train.lr",
                                               1e-3),
          "--config is a directory": directory_as_config,
          "read-only model directory": read_only_model}


def _no_permission_override() -> list[str]:
  """A command prefix under which file permissions bind: root ignores them unless it drops
  CAP_DAC_OVERRIDE."""
  if os.geteuid() != 0:
    return []
  return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


def run_killed(d: Path, sig=signal.SIGKILL, attempts: int = 3,
               twice: bool = False) -> subprocess.CompletedProcess:
  """Starts 6 training epochs and sends ``sig`` (``twice``: two of it, 50 ms apart) once two
  epoch checkpoints exist (tried again from scratch when the training finished before the
  signal could reach it)."""
  args = [sys.executable, "-m", "mcu_jax.pipeline.cli", "train", "--run-dir", str(d),
          "--no-progress", "--set", "train.epochs=6", "--set", "model_options={width: 4}"]
  proc = subprocess.Popen(args, cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    ckpt = d / "original" / "ckpt"
    if ckpt.exists() and len([p for p in ckpt.iterdir() if p.name.isdigit()]) >= 2:
      break
    time.sleep(0.05)
  if proc.poll() is not None:    # finished before the signal: no fault was injected
    shutil.rmtree(d, ignore_errors=True)
    if attempts > 1:
      return run_killed(d, sig, attempts - 1, twice)
    raise RuntimeError(f"training in {d} finished before it could be signalled")
  proc.send_signal(sig)
  if twice:
    time.sleep(0.05)
    if proc.poll() is None:
      proc.send_signal(sig)
  out, err = proc.communicate(timeout=120)
  return subprocess.CompletedProcess(args, proc.returncode, out, err)


def signal_cases():
  def sigint(d, b):
    return False, [run_killed(d, signal.SIGINT)]

  def sigkill_resume(d, b):
    run_killed(d)
    refused = mcu("train", "--run-dir", d, "--no-progress", "--set", "train.epochs=6",
                  "--set", "model_options={width: 4}")
    if refused.returncode == 0:      # a partial checkpoint must not be silently restarted
      return False, [refused]
    return True, [mcu("train", "--run-dir", d, "--no-progress", "--resume",
                      "--set", "train.epochs=6", "--set", "model_options={width: 4}")]

  def two_writers(d, b):
    copy(b, d)
    holder = subprocess.Popen([sys.executable, "-c", "import time; "
                               "from mcu_jax.pipeline.rundir import "
                               f"RunDir; r = RunDir({str(d)!r}); r.acquire(); print('held', "
                               "flush=True); time.sleep(120)"], cwd=ROOT, env=ENV,
                              stdout=subprocess.PIPE, text=True)
    holder.stdout.readline()
    try:
      second = mcu("unlearn", "--run-dir", d, "--force", "--method", "ga", "--no-progress")
    finally:
      holder.kill()
      holder.wait()
    return False, [second]

  def sigterm(d, b):
    return False, [run_killed(d, signal.SIGTERM)]

  def sigint_twice(d, b):
    return False, [run_killed(d, signal.SIGINT, twice=True)]

  return {"SIGINT during training": sigint, "SIGTERM during training": sigterm,
          "SIGINT twice during training": sigint_twice, "SIGKILL then resume": sigkill_resume,
          "two writers": two_writers}


def import_cases():
  def case(*args, make_file=False):
    def run(d, b):
      d.mkdir()
      (d / "a-file").write_text("x")
      (d / "exists").mkdir()
      return _fail("import-torch", *[a.format(d=d) for a in args])
    return run
  return {"import-torch: missing file": case("{d}/missing.pt", "--model", "preresnet110",
                                             "--out", "{d}/out"),
          "import-torch: out under a file": case("{d}/missing.pt", "--model", "preresnet110",
                                                 "--out", "{d}/a-file/sub"),
          "import-torch: out exists": case("{d}/a-file", "--model", "preresnet110", "--out",
                                           "{d}/exists"),
          "import-torch: unknown model": case("{d}/a-file", "--model", "nope", "--out",
                                              "{d}/out")}


def copy(base: Path, d: Path) -> None:
  shutil.copytree(base, d, ignore=shutil.ignore_patterns(".lock"))


# ---------------------------------------------------------------------------------------------


def _noisy(stderr: str) -> bool:
  return "Traceback" in stderr or "Exception ignored" in stderr


def classify(expect_success: bool, results, run_dir: Path, problems=()) -> tuple[str, str]:
  last = results[-1]
  problems = [*problems, *(audit(run_dir) if run_dir.is_dir() else [])]
  if problems:
    return "wrong-done", "; ".join(problems)
  errors = [line for line in last.stderr.splitlines() if line.startswith("mcu-jax: error:")]
  stops = [line for line in last.stderr.splitlines() if line.startswith("mcu-jax: interrupted")]
  if last.returncode == 0:
    return ("ok", "succeeded") if expect_success else ("silent", "exited 0")
  if expect_success:
    return "unclear", f"exit {last.returncode}: {(errors or last.stderr.splitlines()[-1:])}"
  if last.returncode in (130, 143):
    if _noisy(last.stderr) or len(stops) != 1 or errors:
      return "unclear", f"exit {last.returncode}: {last.stderr.strip()[-160:]}"
    return "ok", stops[0][:160]
  if _noisy(last.stderr) or len(errors) != 1:
    tail = last.stderr.strip().splitlines()[-1:] if last.stderr.strip() else ["(no output)"]
    return "unclear", f"exit {last.returncode}: {tail[0][:160]}"
  return "ok", errors[0][:160]


# ---------------------------------------------------------------------------------------------
# Signals at random times, then --resume, against an uninterrupted run.


def _same(record: dict, keys) -> dict:
  return {k: record.get(k) for k in keys}


# command -> (its arguments, the record it writes, what must be bit-identical, whether the
# trial runs on a copy of the finished base run rather than an empty directory)
SIGNAL_COMMANDS = {
    "train": (["train", "--set", "train.epochs=6", "--set", "model_options={width: 4}"],
              "original", lambda r: _same(r, ("model_digest", "train_acc", "test_acc")) | {
                  "loss": [h["train_loss"] for h in r["history"]]}, False),
    "curve": (["curve", "--force", "--set", "curve.epochs=4"], "curve",
              lambda r: _same(r, ("controls_digest",)) | {
                  "loss": [h["train_loss"] for h in r["history"]]}, True),
    "sweep": (["sweep", "--force"], "sweep",
              lambda r: _same(r, ("sweep", "chosen_t", "gap", "region")), True),
    "forget-quality": (["forget-quality", "--models", "4"], "forget_quality",
                       lambda r: _same(r, ("scores", "models", "methods")), True),
}


def _prepare(work: Path, base: Path, name: str, copied: bool) -> Path:
  d = work / name
  shutil.rmtree(d, ignore_errors=True)
  if copied:
    copy(base, d)
  return d


def _resume_args(args: list[str], said: list[str], d: Path) -> list[str]:
  """What the user does next: the command the line names (``mcu-jax ... --resume``), the same
  command again when nothing had started, else the command without ``--force``."""
  quoted = re.search(r"`mcu-jax ([^`]*)`", said[0]) if len(said) == 1 else None
  if quoted:
    return quoted.group(1).split()
  if said and "before any stage ran" in said[0]:
    return [*args, "--run-dir", str(d)]
  return [*(a for a in args if a != "--force"), "--run-dir", str(d), "--resume"]


def signal_trials(work: Path, base: Path, trials: int, seed: int = 0) -> list[dict]:
  """``trials`` SIGINTs and as many SIGTERMs, spread over the commands in turn, each at a
  seeded random time within an uninterrupted run of its command (from 0.15 s: the ~50 ms
  before the interpreter runs the command's first line are Python's own); each then
  resumed."""
  reference, seconds = {}, {}
  for command, (args, record, same, copied) in SIGNAL_COMMANDS.items():
    d = _prepare(work, base, f"reference-{command}", copied)
    start = time.perf_counter()
    done = mcu(*args, "--run-dir", d, "--no-progress")
    seconds[command] = time.perf_counter() - start
    if done.returncode != 0:
      raise SystemExit(f"uninterrupted {command} failed: {done.stderr[-2000:]}")
    reference[command] = same(json.loads((d / f"{record}.json").read_text()))
    shutil.rmtree(d, ignore_errors=True)
  rng = random.Random(seed)
  rows, commands = [], list(SIGNAL_COMMANDS)
  for i in range(2 * trials):
    sig = (signal.SIGINT, signal.SIGTERM)[i % 2]
    command = commands[(i // 2) % len(commands)]
    args, record, same, copied = SIGNAL_COMMANDS[command]
    d = _prepare(work, base, f"trial{i}", copied)
    at, redraws = rng.uniform(0.15, 0.95 * seconds[command]), 0
    while True:
      proc = subprocess.Popen([sys.executable, "-m", "mcu_jax.pipeline.cli", *args,
                               "--run-dir", str(d), "--no-progress"], cwd=ROOT, env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      try:
        proc.wait(timeout=at)
      except subprocess.TimeoutExpired:
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=300)
        break
      proc.communicate()      # it finished first (a slower machine now): earlier, from scratch
      d = _prepare(work, base, f"trial{i}", copied)
      at, redraws = rng.uniform(0.15, at), redraws + 1
    lines = [line for line in err.splitlines() if line.strip()]
    said = [line for line in lines if line.startswith("mcu-jax:")]
    resumed = mcu(*_resume_args(args, said, d), "--no-progress")
    identical = None
    if resumed.returncode == 0:
      identical = same(json.loads((d / f"{record}.json").read_text())) == reference[command]
    one_line = len(said) == 1 and not _noisy(err)
    problems = audit(d)
    if proc.returncode == 0:
      outcome = "silent"
    elif problems or identical is False:
      outcome = "wrong-done"
    elif proc.returncode == 128 + sig and one_line and identical:
      outcome = "ok"
    else:
      outcome = "unclear"
    rows.append({"signal": signal.Signals(sig).name, "command": command, "at_s": round(at, 2),
                 "redraws": redraws, "exit": proc.returncode, "one_line": one_line,
                 "stderr": err.strip()[-600:], "other_stderr_lines": len(lines) - len(said),
                 "resume_exit": resumed.returncode, "bit_identical": identical,
                 "audit": problems, "outcome": outcome})
    print(f"{outcome:10s} {rows[-1]['signal']} at {at:6.2f} s: {command}: exit "
          f"{proc.returncode}, resume {resumed.returncode}, identical {identical}: "
          f"{(said or lines or ['(no output)'])[-1][:110]}", flush=True)
    shutil.rmtree(d, ignore_errors=True)
  return rows


def signal_table(rows: list[dict]) -> str:
  """Per command and signal: trials, exit codes, one line, resumed bit-identically."""
  out = ["| command | signal | trials | exit codes | one line | resume bit-identical |",
         "|---|---|---|---|---|---|"]
  for command in SIGNAL_COMMANDS:
    for name in ("SIGINT", "SIGTERM"):
      group = [r for r in rows if r["command"] == command and r["signal"] == name]
      if not group:
        continue
      codes = ", ".join(f"{c} x{n}" for c, n in sorted(
          {r["exit"]: sum(x["exit"] == r["exit"] for x in group) for r in group}.items()))
      out.append(f"| {command} | {name} | {len(group)} | {codes} | "
                 f"{sum(r['one_line'] for r in group)}/{len(group)} | "
                 f"{sum(bool(r['bit_identical']) for r in group)}/{len(group)} |")
  return "\n".join(out)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", type=Path)
  parser.add_argument("--only", nargs="*", default=None, help="substrings of case names")
  parser.add_argument("--trials", type=int, default=20,
                      help="random-time SIGINTs, and as many SIGTERMs (0: none)")
  parser.add_argument("--seed", type=int, default=0, help="of the signal times")
  args = parser.parse_args(argv)
  cases = {**config_cases(), **stage_cases(), **disk_cases(), **signal_cases(),
           **import_cases(), **issue_cases()}
  if args.only:
    cases = {k: v for k, v in cases.items() if any(s in k for s in args.only)}
  work = Path(tempfile.mkdtemp(prefix="fault-matrix-"))
  base = work / "base"
  made = mcu("demo", "--run-dir", base, *FAST)
  if made.returncode != 0:
    raise SystemExit(f"could not make the base run: {made.stderr[-2000:]}")
  rows = []
  for i, (name, case) in enumerate(cases.items()):
    run_dir = work / f"case{i}"
    start = time.perf_counter()
    expect, results, *problems = case(run_dir, base)
    outcome, detail = classify(expect, results, run_dir, *problems)
    rows.append({"case": name, "outcome": outcome, "detail": detail,
                 "seconds": round(time.perf_counter() - start, 1)})
    print(f"{outcome:10s} {name}: {detail}", flush=True)
  trials = signal_trials(work, base, args.trials, args.seed) if args.trials else []
  rows += [{"case": f"{t['signal']} at {t['at_s']} s: {t['command']}", "outcome": t["outcome"],
            "detail": f"exit {t['exit']}, resume {t['resume_exit']}, identical "
                      f"{t['bit_identical']}"} for t in trials]
  totals = {k: sum(r["outcome"] == k for r in rows) for k in
            ("ok", "unclear", "silent", "wrong-done")}
  if trials:
    print("\n" + signal_table(trials))
  print(f"\n{len(rows)} cases: " + ", ".join(f"{v} {k}" for k, v in totals.items()))
  if args.out:
    args.out.write_text(json.dumps({"rows": rows, "totals": totals, "signals": trials,
                                    "signal_table": signal_table(trials) if trials else ""},
                                   indent=2) + "\n")
  shutil.rmtree(work, ignore_errors=True)
  return 0 if totals["ok"] == len(rows) else 1


if __name__ == "__main__":
  sys.exit(main())
