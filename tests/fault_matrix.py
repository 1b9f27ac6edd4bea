"""The fault matrix of the command line: bad input, broken files, signals, races, NaN.

    python3 tests/fault_matrix.py [--out matrix.json] [--only NAME ...]

Each case sets up a tiny digits run directory (a finished demo with small epochs, made once and
copied), breaks something, runs ``mcu-jax`` as a user would, and sorts the outcome:

* ``ok``: the command succeeded where it should, or failed with one clear line;
* ``unclear``: it failed with a traceback, several error lines or none;
* ``silent``: it exited 0 where it should have failed (a wrong or unnoticed result);
* ``wrong-done``: a record on disk is marked done but does not fit its configuration, its
  inputs or its model files, or holds a non-finite number.

After every case the run directory is audited (``audit``): every record's provenance must match
today's configuration and inputs, every saved model its digest, every number be finite. Not
collected by pytest (the name does not start with test_); tests/test_cli.py holds one test per
kind of fault. Prints a table and the totals; exits 1 if any case is not ok.
"""
from __future__ import annotations

import argparse
import json
import os
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
  return subprocess.run([sys.executable, "-m", "mcu_jax.cli", *map(str, args)], cwd=ROOT,
                        env=ENV, capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------------------------------------
# Auditing a run directory.


def audit(run_dir: Path) -> list[str]:
  """What is marked done but wrong in ``run_dir`` (empty when every record is sound)."""
  from mcu_jax import config as config_lib
  from mcu_jax import pipeline, rundir
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


def run_killed(d: Path, sig=signal.SIGKILL, attempts: int = 3) -> subprocess.CompletedProcess:
  """Starts 6 training epochs and sends ``sig`` once two epoch checkpoints exist (tried again
  from scratch when the training finished before the signal could reach it)."""
  args = [sys.executable, "-m", "mcu_jax.cli", "train", "--run-dir", str(d), "--no-progress",
          "--set", "train.epochs=6", "--set", "model_options={width: 4}"]
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
      return run_killed(d, sig, attempts - 1)
    raise RuntimeError(f"training in {d} finished before it could be signalled")
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
    holder = subprocess.Popen([sys.executable, "-c", "import time; from mcu_jax.rundir import "
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

  return {"SIGINT during training": sigint, "SIGKILL then resume": sigkill_resume,
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


def classify(expect_success: bool, results, run_dir: Path) -> tuple[str, str]:
  last = results[-1]
  problems = audit(run_dir) if run_dir.is_dir() else []
  if problems:
    return "wrong-done", "; ".join(problems)
  errors = [line for line in last.stderr.splitlines() if line.startswith("mcu-jax: error:")]
  if last.returncode == 0:
    return ("ok", "succeeded") if expect_success else ("silent", "exited 0")
  if expect_success:
    return "unclear", f"exit {last.returncode}: {(errors or last.stderr.splitlines()[-1:])}"
  if "Traceback" in last.stderr or (len(errors) != 1 and last.returncode != 130):
    tail = last.stderr.strip().splitlines()[-1:] if last.stderr.strip() else ["(no output)"]
    return "unclear", f"exit {last.returncode}: {tail[0][:160]}"
  return "ok", (errors[0] if errors else "interrupted")[:160]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", type=Path)
  parser.add_argument("--only", nargs="*", default=None, help="substrings of case names")
  args = parser.parse_args(argv)
  cases = {**config_cases(), **stage_cases(), **disk_cases(), **signal_cases(),
           **import_cases()}
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
    expect, results = case(run_dir, base)
    outcome, detail = classify(expect, results, run_dir)
    rows.append({"case": name, "outcome": outcome, "detail": detail,
                 "seconds": round(time.perf_counter() - start, 1)})
    print(f"{outcome:10s} {name}: {detail}", flush=True)
  totals = {k: sum(r["outcome"] == k for r in rows) for k in
            ("ok", "unclear", "silent", "wrong-done")}
  print(f"\n{len(rows)} cases: " + ", ".join(f"{v} {k}" for k, v in totals.items()))
  if args.out:
    args.out.write_text(json.dumps({"rows": rows, "totals": totals}, indent=2) + "\n")
  shutil.rmtree(work, ignore_errors=True)
  return 0 if totals["ok"] == len(rows) else 1


if __name__ == "__main__":
  sys.exit(main())
