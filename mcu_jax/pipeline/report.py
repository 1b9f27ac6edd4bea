"""Records of a run: JSON, markdown tables and PNG plots, all written atomically.

Every writer goes through ``mcu_jax.io.atomic_write``, so a reader never sees a half-written
file. Plots use matplotlib's Agg canvas directly (no pyplot, no global backend switch).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from mcu_jax.errors import InvalidArgument
from mcu_jax.io import atomic_write

DEFAULT_METRICS = ("UA", "RA", "TA", "MIA")


# ---------------------------------------------------------------------------------------------
# Tables.


def _cell(value: Any, floatfmt: str) -> str:
  if value is None:
    return ""
  if isinstance(value, (bool, np.bool_)):
    return str(bool(value))
  if isinstance(value, (float, np.floating)):
    return "" if math.isnan(float(value)) else format(float(value), floatfmt)
  return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Any] | None = None,
                   floatfmt: str = ".2f") -> str:
  """A GitHub markdown table of ``rows``.

  ``columns`` lists the keys to show, in order; an entry may be a ``(key, header)`` pair.
  Default: every key in order of first appearance. Floats use ``floatfmt``; missing values
  are blank. Numeric columns are right-aligned.
  """
  if columns is None:
    columns = []
    for row in rows:
      columns.extend(k for k in row if k not in columns)
  if not columns:
    raise InvalidArgument("a table needs at least one column")
  keys = [c[0] if isinstance(c, (tuple, list)) else c for c in columns]
  headers = [str(c[1]) if isinstance(c, (tuple, list)) else str(c) for c in columns]
  body = [[_cell(row.get(k), floatfmt) for k in keys] for row in rows]

  def numeric(k):
    values = [row.get(k) for row in rows if row.get(k) is not None]
    return bool(values) and all(isinstance(v, (int, float, np.number)) and
                                not isinstance(v, (bool, np.bool_)) for v in values)

  align = ["---:" if numeric(k) else ":---" for k in keys]
  lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
  lines += ["| " + " | ".join(cells) + " |" for cells in body]
  return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Plots.


def _figure(size=(7.0, 4.5)):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=size, dpi=120)
  FigureCanvasAgg(fig)
  return fig


def _save_png(fig, path) -> str:
  fig.tight_layout()
  return atomic_write(path, lambda f: fig.savefig(f, format="png", bbox_inches="tight"), mode="wb")


_SET_STYLE = {
    "retain": ("tab:blue", "o", "retain (D_r)"),
    "forget": ("tab:red", "s", "forget (D_f)"),
    "test": ("tab:green", "^", "test"),
    "test_forget": ("tab:purple", "v", "test, forgotten class"),
    "test_retain": ("tab:olive", "D", "test, other classes"),
}


def _targets_dict(targets) -> dict[str, float]:
  if targets is None:
    return {}
  if isinstance(targets, Mapping):
    return {str(k): float(v) for k, v in targets.items() if v is not None}
  retain, forget = targets
  return {"retain": float(retain), "forget": float(forget)}


def plot_sweep(result, targets=None, region: Iterable[tuple[float, float]] | None = None,
               chosen_t: float | None = None, path="sweep.png", title: str | None = None,
               sets: Sequence[str] | None = None) -> str:
  """Accuracy vs t along the curve, one line per evaluated set.

  Args:
    result: a ``SweepResult`` (or anything with ``ts`` and an ``accuracy`` dict).
    targets: ``(retain_target, forget_target)`` or ``{set name: target}``: dotted horizontal
      lines in the colour of their set.
    region: the effective region, a list of (t_lo, t_hi): shaded.
    chosen_t: the chosen t: a dashed vertical line.
    path: the PNG to write.
    sets: which sets to draw (default: all in ``result.accuracy``).
  """
  ts = np.asarray(result.ts, dtype=np.float64)
  accuracy = result.accuracy
  names = list(sets) if sets is not None else list(accuracy)
  fig = _figure()
  ax = fig.add_subplot(1, 1, 1)
  palette = iter(["tab:orange", "tab:brown", "tab:pink", "tab:gray", "tab:cyan"])
  colors = {}
  for name in names:
    color, marker, label = _SET_STYLE.get(name, (None, "o", name))
    color = color or next(palette, None)
    line, = ax.plot(ts, np.asarray(accuracy[name]), marker=marker, markersize=4, color=color,
                    label=f"{label} accuracy")
    colors[name] = line.get_color()
  for name, value in _targets_dict(targets).items():
    color = colors.get(name, "black")
    ax.axhline(value, linestyle=":", linewidth=1.5, color=color,
               label=f"{_SET_STYLE.get(name, (None, None, name))[2]} target ({value:.1f}%)")
  first = True
  for lo, hi in (region or []):
    ax.axvspan(lo, hi, color="gold", alpha=0.25, linewidth=0,
               label="effective region" if first else None)
    first = False
  if chosen_t is not None:
    ax.axvline(chosen_t, linestyle="--", color="black", linewidth=1.2,
               label=f"chosen t = {chosen_t:.3f}")
  ax.set_xlim(min(0.0, ts.min()), max(1.0, ts.max()))
  ax.set_xlabel("t  (0 = original model, 1 = pre-unlearned model)")
  ax.set_ylabel("accuracy (%)")
  ax.set_title(title or "Accuracy along the unlearning curve")
  ax.grid(True, alpha=0.3)
  ax.legend(loc="best", fontsize=8)
  return _save_png(fig, path)


def plot_methods(rows: Sequence[Mapping[str, Any]], path="methods.png",
                 metrics: Sequence[str] = DEFAULT_METRICS, name_key: str = "method",
                 title: str | None = None) -> str:
  """Grouped bar chart: one group per metric (UA, RA, TA, MIA), one bar per method (row)."""
  if not rows:
    raise InvalidArgument("plot_methods needs at least one row")
  metrics = list(metrics)
  fig = _figure((max(6.0, 1.2 + 0.5 * len(rows) * len(metrics) * 0.6), 4.5))
  ax = fig.add_subplot(1, 1, 1)
  x = np.arange(len(metrics), dtype=np.float64)
  width = 0.8 / len(rows)
  for i, row in enumerate(rows):
    values = [float(row[m]) if row.get(m) is not None else np.nan for m in metrics]
    bars = ax.bar(x - 0.4 + width * (i + 0.5), values, width,
                  label=str(row.get(name_key, f"method {i}")))
    if len(rows) * len(metrics) <= 40:
      ax.bar_label(bars, fmt="%.1f", fontsize=6, padding=1)
  ax.set_xticks(x)
  ax.set_xticklabels(metrics)
  ax.set_ylabel("percent")
  ax.set_ylim(0, 105)
  ax.set_title(title or "Unlearning metrics by method")
  ax.grid(True, axis="y", alpha=0.3)
  ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=min(len(rows), 5), fontsize=8)
  return _save_png(fig, path)


# ---------------------------------------------------------------------------------------------
# The run's report.


def run_markdown(*, title: str, kind: str, forget_size: int, retain_size: int, method: str,
                 sweep_record: Mapping, t_search: Sequence[float], recalibrated_on: str | None,
                 table: str) -> str:
  """The markdown of a run's report: the setting, the chosen t, how to read the table, the
  table and the two plots (``sweep.png``, ``methods.png`` beside it). ``recalibrated_on``:
  the set BatchNorm statistics are recomputed on, None for a model without them."""
  t, targets = sweep_record["chosen_t"], sweep_record["targets"]
  bound = sweep_record.get("at_bound")
  region = ", ".join(f"[{a:.2f}, {b:.2f}]" for a, b in sweep_record["region"]) or "empty"
  return "\n".join([
      f"# MCU run: {title}",
      "",
      f"Forgetting: {kind}, |D_f| = {forget_size}, |D_r| = {retain_size}. Base method: "
      f"{method}. Chosen t = {t:.3f}"
      + (f" (on the {bound} bound of t_search {list(t_search)})" if bound else "")
      + f" (gap {sweep_record['gap']:.2f} to the {targets['kind']} targets: retain "
      f"{targets['retain']:.2f}, forget {targets['forget']:.2f}); effective region: {region}.",
      "",
      "UA, RA, TA, MIA in percent; loss_auc is the loss-threshold attack's ROC-AUC on D_f vs "
      "test; AvgGap is against Retrain over UA, RA, TA, MIA; RTE in seconds, compilation "
      "excluded (MCU's RTE adds the mask and the curve epochs to the base method's; the "
      f"{len(sweep_record['sweep']['ts'])}-point sweep that chose t took a further "
      f"{sweep_record['seconds']:.1f} s, compilation included). "
      + (f"Every row's BatchNorm statistics are recomputed on {recalibrated_on}."
         if recalibrated_on else "The model has no BatchNorm statistics: none are recomputed."),
      "",
      table,
      "",
      "![accuracy along the curve](sweep.png)",
      "",
      "![methods](methods.png)",
      "",
  ])


# ---------------------------------------------------------------------------------------------
# Forgetting quality over populations.


def plot_epsilons(scores: Mapping, methods: Sequence[str], path="forget_quality.png") -> str:
  """Per method, the empirical distribution (ECDF) of the per-example epsilon of the base
  population, the MCU population and the retrain-vs-retrain floor (lower is better)."""
  fig = _figure((5.0 * len(methods), 4.0))
  for j, method in enumerate(methods):
    ax = fig.add_subplot(1, len(methods), j + 1)
    for name, color, label in (("floor", "tab:gray", "retrain vs retrain (floor)"),
                               (method, "tab:red", method),
                               (f"{method}+mcu", "tab:blue", f"{method} + MCU")):
      if name not in scores:
        continue
      eps = np.sort(np.asarray(scores[name]["epsilons"], np.float64))
      ax.step(np.minimum(eps, 8.0), np.arange(1, eps.size + 1) / eps.size, where="post",
              color=color, label=f"{label} (F = {scores[name]['F']:.3f})")
    ax.set_xlim(0.0, 8.0)
    ax.set_xlabel("per-example epsilon (capped values at 8)")
    ax.set_ylabel("share of forget examples")
    ax.set_title(f"{method}: closer to retraining is further left")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
  return _save_png(fig, path)


# ---------------------------------------------------------------------------------------------
# The relearn attack.


def plot_relearn(curves: Mapping[str, Mapping], path="relearn.png",
                 title: str | None = None) -> str:
  """Forget accuracy vs relearning steps, one line per model: ``curves`` is {model name:
  {"steps": [...], "forget_acc": [...] (percent)}} (``RelearnResult.to_dict``)."""
  if not curves:
    raise InvalidArgument("plot_relearn needs at least one curve")
  fig = _figure()
  ax = fig.add_subplot(1, 1, 1)
  for name, curve in curves.items():
    ax.plot(np.asarray(curve["steps"]), np.asarray(curve["forget_acc"], np.float64),
            marker="o", markersize=4, label=f"{name} (rebound {curve['rebound']:+.1f})")
  ax.set_xlabel("relearning steps")
  ax.set_ylabel("forget accuracy (%)")
  ax.set_ylim(-2, 102)
  ax.set_title(title or "Relearn attack")
  ax.grid(True, alpha=0.3)
  ax.legend(loc="best", fontsize=8)
  return _save_png(fig, path)


def relearn_markdown(relearned: Mapping, table: str) -> str:
  """The report's relearn section: the attack's settings, ``table`` (forget accuracy at every
  reading per model) and the plot ``relearn/relearn.png``."""
  config = relearned["config"]
  on = ("D_r" if config["source"] == "retain" else
        f"{config['forget_examples']} examples of D_f (forget accuracy on the others)")
  return "\n".join([
      "## Relearn attack", "",
      f"Every model above (BatchNorm recomputed as in the table) fine-tuned {config['steps']} "
      f"steps on {on}: SGD lr {config['lr']:g}, momentum {config['momentum']:g}, weight decay "
      f"{config['weight_decay']:g}, batch {config['batch_size']}, seed {relearned['seed']}, "
      "the same batches for every model. FA@s: forget accuracy (percent) after s steps; "
      "rebound: FA after the last step minus before (the table's \"relearn rebound\"); the "
      "retrained model's curve is the reference. RA@K, TA@K: retain and test accuracy at the "
      "end.", "", table, "", "![relearn attack](relearn/relearn.png)", ""])


__all__ = ["markdown_table", "plot_sweep", "plot_methods", "run_markdown", "plot_epsilons",
           "plot_relearn", "relearn_markdown"]
