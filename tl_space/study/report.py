"""A study's report: the summary table, findings computed from it, the plots, and the study folder's README."""

from __future__ import annotations

import math
import statistics
import typing
from pathlib import Path
from typing import Callable

from matplotlib.ticker import MaxNLocator

from tl_space import atomic
from tl_space.figures import colour, log_x, new_figure, save_png
from tl_space.folder.files import CARD_FILE, EPOCH_PLOT, PARETO_PLOT, SHOTS_PLOT, STUDY_PLOTS, TIME_PLOT
from tl_space.folder.study import ALL_SHOTS, StudyRow, shots_order, write_study
from tl_space.strategies import NAMES, Strategy, strategy_named


def _colour(strategy: str):
    return colour(NAMES.index(strategy) if strategy in NAMES else 9)


def _pretrained(entry: dict) -> bool:
    strategy = strategy_named(entry["strategy"])
    return strategy is not None and strategy.pretrained


def _kept_probe(row: dict) -> bool:
    """Whether a probe-first run's best model, the one it kept, came from its probe stage, not its later stage."""
    strategy = strategy_named(row["strategy"])
    return bool(strategy and strategy.probe_first and strategy.image_stage and row.get("best_stage")
                and row["best_stage"] != strategy.image_stage)


def _strategy_is(entry: dict, predicate: typing.Callable[[Strategy], bool]) -> bool:
    strategy = strategy_named(entry["strategy"])
    return strategy is not None and predicate(strategy)


def describe_shots(shots: int | str, images_per_class: float) -> str:
    if shots == ALL_SHOTS:
        return f"all {images_per_class:,.0f} images per class"
    return f"{shots} image{'s' if shots != 1 else ''} per class"


def _budget_order(minutes: float | None) -> float:
    return -1.0 if minutes is None else minutes


def budget_text(minutes: float | None) -> str:
    return "the epochs budget" if minutes is None else f"{minutes:g} min"


def summarize(rows: list[dict]) -> list[dict]:
    """One entry per (strategy, shots, budget): mean, spread over seeds, and cost, sorted by budget, shots, then
    strategy."""
    groups: dict[tuple[str, int | str, float | None], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["strategy"], row["shots"], row.get("minutes")), []).append(row)
    summary = []
    for (strategy, shots, minutes), members in groups.items():
        accuracies = [row["test_accuracy"] for row in members]
        summary.append({
            "strategy": strategy, "shots": shots, "minutes": minutes, "images_per_class": members[0]["images_per_class"],
            "runs": len(members), "mean_test_accuracy": statistics.fmean(accuracies),
            "std_test_accuracy": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
            "min_test_accuracy": min(accuracies), "max_test_accuracy": max(accuracies),
            "mean_wall_seconds": statistics.fmean(row["wall_seconds"] for row in members),
            "mean_cold_wall_seconds": statistics.fmean(row["cold_wall_seconds"] for row in members),
            "mean_epochs": statistics.fmean(row["epochs"] for row in members),
            "trainable_parameters": members[0]["trainable_parameters"],
            "model": members[0].get("model"), "image_size": members[0].get("image_size"),
            "budget_bound_runs": sum(bool(row.get("budget_bound")) for row in members),
            "probe_kept_runs": sum(_kept_probe(row) for row in members),
        })
    strategy_rank = {name: index for index, name in enumerate(NAMES)}
    return sorted(summary, key=lambda entry: (_budget_order(entry["minutes"]), shots_order(entry["shots"]),
                                              strategy_rank.get(entry["strategy"], 99)))


def _within_spread(first: dict, second: dict) -> bool:
    """Whether two summary entries differ by no more than the larger of their standard deviations over seeds."""
    return abs(first["mean_test_accuracy"] - second["mean_test_accuracy"]) <= max(first["std_test_accuracy"],
                                                                                  second["std_test_accuracy"])


def _points(value: float, sign: str = "") -> str:
    """Percentage points to one decimal, or two where one would read as 0.0."""
    return f"{value:{sign}.2f}" if abs(value) < 0.05 else f"{value:{sign}.1f}"


def _accuracy_text(entry: dict) -> str:
    spread = f" ± {entry['std_test_accuracy']:.1%} over {entry['runs']} seeds" if entry["runs"] > 1 else ""
    return f"{entry['mean_test_accuracy']:.1%}{spread}"


def findings(summary: list[dict]) -> list[str]:
    """Sentences a reader can check against the table. One budget: the winner per shot size, what pretraining is
    worth, cost. Several: those at each budget (each sentence tagged with it), then where scratch overtakes transfer
    and which recipes give the most accuracy for their time."""
    budgets = sorted({entry["minutes"] for entry in summary}, key=_budget_order)
    if len(budgets) <= 1:
        return _findings_at_one_budget(summary)
    sentences = []
    for minutes in budgets:
        sentences += [f"[{budget_text(minutes)}] {sentence}" for sentence in _findings_at_one_budget(
            [entry for entry in summary if entry["minutes"] == minutes])]
    return sentences + _scratch_against_transfer(summary) + _pareto_sentence(summary)


def _findings_at_one_budget(summary: list[dict]) -> list[str]:
    by_shots: dict[int | str, list[dict]] = {}
    for entry in summary:
        by_shots.setdefault(entry["shots"], []).append(entry)
    sentences, winners = [], []
    for shots, entries in by_shots.items():
        ranked = sorted(entries, key=lambda entry: entry["mean_test_accuracy"], reverse=True)
        best = ranked[0]
        winners.append((shots, best))
        where = describe_shots(shots, best["images_per_class"]).capitalize()
        if len(ranked) == 1:
            sentences.append(f"{where}: {best['strategy']} reaches {_accuracy_text(best)}.")
            continue
        runner_up = ranked[1]
        margin = (best["mean_test_accuracy"] - runner_up["mean_test_accuracy"]) * 100
        close = " (within the spread over seeds)" if _within_spread(best, runner_up) else ""
        sentences.append(f"{where}: {best['strategy']} wins with {_accuracy_text(best)}, {_points(margin)} points ahead "
                         f"of {runner_up['strategy']} ({runner_up['mean_test_accuracy']:.1%}){close}.")
    sentences += _pretraining_gain(by_shots)
    sentences += _probe_first_gain(by_shots)
    changes = [(shots, best["strategy"]) for (shots, best), (_, previous) in zip(winners[1:], winners)
               if best["strategy"] != previous["strategy"]]
    for shots, strategy in changes:
        entry = next(e for e in by_shots[shots] if e["strategy"] == strategy)
        sentences.append(f"{strategy} takes the lead from {describe_shots(shots, entry['images_per_class'])} on.")
    sentences += _cost(by_shots[max(by_shots, key=shots_order)])
    bound = [entry for entry in summary if entry.get("budget_bound_runs")]
    if bound:
        sentences.append("Budget-bound, their validation accuracy still rising when the budget ended (more steps "
                         "would likely raise them): " + "; ".join(
                             f"{entry['strategy']} with {describe_shots(entry['shots'], entry['images_per_class'])}"
                             f" ({entry['budget_bound_runs']} of {entry['runs']} runs)" for entry in bound) + ".")
    return sentences


def _pretraining_gain(by_shots: dict) -> list[str]:
    """Points the best pretrained strategy gains over scratch, at the fewest and at the most images."""
    gains = []
    for shots, entries in by_shots.items():
        against = _gain_over_scratch(entries)
        if against:
            gains.append((shots, against[1], against[2]))
    if not gains:
        return []
    (shots, best, gain), (last_shots, last_best, last_gain) = gains[0], gains[-1]
    sentence = (f"Against training from scratch, the best pretrained strategy gains {_points(gain, '+')} points with "
                f"{describe_shots(shots, best['images_per_class'])} ({best['strategy']})")
    if len(gains) > 1:
        sentence += (f" and {_points(last_gain, '+')} points with {describe_shots(last_shots, last_best['images_per_class'])} "
                     f"({last_best['strategy']})")
    return [sentence + "."]


def _gain_over_scratch(entries: list[dict]) -> tuple[dict, dict, float] | None:
    """Of entries run alike (one shot size, one budget): scratch, the best pretrained entry, and the points it gains;
    None without both."""
    scratch = [entry for entry in entries if not _pretrained(entry)]
    pretrained = [entry for entry in entries if _pretrained(entry)]
    if not (scratch and pretrained):
        return None
    best_scratch = max(scratch, key=lambda entry: entry["mean_test_accuracy"])
    best = max(pretrained, key=lambda entry: entry["mean_test_accuracy"])
    return best_scratch, best, (best["mean_test_accuracy"] - best_scratch["mean_test_accuracy"]) * 100


def _transfer_gains(summary: list[dict], shots) -> list[tuple[float, dict, dict, float]]:
    """Per budget with both at this shot size: (minutes, scratch, the best pretrained entry, its points of gain)."""
    gains = []
    for minutes in sorted({entry["minutes"] for entry in summary}, key=_budget_order):
        against = _gain_over_scratch([entry for entry in summary
                                      if entry["minutes"] == minutes and entry["shots"] == shots])
        if against:
            gains.append((minutes, *against))
    return gains


def _scratch_against_transfer(summary: list[dict]) -> list[str]:
    """At each shot size run at several budgets: transfer's lead over scratch per budget, and where (if anywhere)
    scratch overtakes it."""
    sentences = []
    for shots in sorted({entry["shots"] for entry in summary}, key=shots_order):
        gains = _transfer_gains(summary, shots)
        if len(gains) < 2:
            continue
        where = describe_shots(shots, gains[0][1]["images_per_class"])
        sentence = (f"With {where}, the best transfer run against scratch ({gains[0][1].get('model') or 'scratch'}): "
                    + ", ".join(f"{_points(gain, '+')} points at {budget_text(minutes)} ({best['strategy']})"
                                for minutes, _, best, gain in gains) + ". ")
        overtaken = [minutes for minutes, _, _, gain in gains if gain < 0]
        if overtaken:
            sentence += f"Scratch overtakes transfer at {', '.join(budget_text(minutes) for minutes in overtaken)}."
        else:
            minutes, _, _, gap = min(gains, key=lambda item: item[3])
            sentence += (f"Scratch overtakes transfer at no budget measured; the gap is smallest at "
                         f"{budget_text(minutes)} ({_points(gap)} points).")
        sentences.append(sentence)
    return sentences


def pareto_front(entries: list[dict]) -> list[dict]:
    """The entries no other beats in both accuracy and (cold) wall time, cheapest first."""
    front, best = [], -1.0
    for entry in sorted(entries, key=lambda entry: (entry["mean_cold_wall_seconds"], -entry["mean_test_accuracy"])):
        if entry["mean_test_accuracy"] > best:
            front.append(entry)
            best = entry["mean_test_accuracy"]
    return front


def _at_largest_shots(summary: list[dict]) -> list[dict]:
    largest = max((entry["shots"] for entry in summary), key=shots_order)
    return [entry for entry in summary if entry["shots"] == largest]


def recipe_label(entry: dict) -> str:
    return f"{entry['strategy']}, {budget_text(entry['minutes'])}"


def _pareto_sentence(summary: list[dict]) -> list[str]:
    entries = _at_largest_shots(summary)
    front = pareto_front(entries)
    where = describe_shots(entries[0]["shots"], entries[0]["images_per_class"])
    return [f"With {where}, the most accuracy for the wall time (features from a cache charged at what they cost): "
            + " → ".join(f"{recipe_label(entry)} ({entry['mean_cold_wall_seconds'] / 60:.1f} min, "
                         f"{entry['mean_test_accuracy']:.1%})" for entry in front)
            + f"; {len(entries) - len(front)} of {len(entries)} recipes are off that front."]


def _probe_first_gain(by_shots: dict) -> list[str]:
    """What fine-tuning from a trained probe (lp-ft) gains over fine-tuning a fresh head (finetune), at the fewest
    and at the most images: the probe's head keeps the first steps from distorting the pretrained features."""
    gains = []
    for shots, entries in by_shots.items():
        from_probe = next((entry for entry in entries if _strategy_is(entry, lambda s: s.fine_tunes_from_probe)), None)
        fresh = next((entry for entry in entries if _strategy_is(
            entry, lambda s: s.fine_tunes_everything and not s.probe_first)), None)
        if from_probe and fresh:
            gains.append((shots, from_probe, (from_probe["mean_test_accuracy"] - fresh["mean_test_accuracy"]) * 100,
                          _within_spread(from_probe, fresh), fresh["strategy"]))
    if not gains:
        return []

    def gain_text(shots, entry, gain, close, fresh_name) -> str:
        spread = " (within the spread over seeds)" if close else ""
        return f"{_points(gain, '+')} points with {describe_shots(shots, entry['images_per_class'])}{spread}"
    sentence = f"{gains[0][1]['strategy']} against {gains[0][4]}: " + gain_text(*gains[0])
    if len(gains) > 1:
        sentence += ", " + gain_text(*gains[-1])
    sentences = [sentence + "."]
    for shots, entry, gain, _, fresh_name in gains:
        probe = next((e for e in by_shots[shots] if _strategy_is(e, lambda s: s.fits_probe)), None)
        if entry.get("probe_kept_runs") and gain < 0:  # fine-tuning never beat the probe: lp-ft is the probe
            probe_text = f" and scored as {probe['strategy']} did ({probe['mean_test_accuracy']:.1%})" if probe else ""
            sentences.append(
                f"With {describe_shots(shots, entry['images_per_class'])}, {entry['strategy']} kept its probe's model in "
                f"{entry['probe_kept_runs']} of {entry['runs']} runs (no fine-tuning epoch raised validation "
                f"accuracy): it kept the pretrained features unchanged{probe_text}, while {fresh_name}, whose features "
                "moved, did better.")
    return sentences


def _cost(entries: list[dict]) -> list[str]:
    """At the largest shot size: how long the most accurate and the fastest strategy took on a fresh machine (the
    features a cache gave charged at what they cost)."""
    if len(entries) < 2:
        return []
    best = max(entries, key=lambda entry: entry["mean_test_accuracy"])
    fastest = min(entries, key=lambda entry: entry["mean_cold_wall_seconds"])
    where = describe_shots(best["shots"], best["images_per_class"])
    if best is fastest:
        return [f"With {where}, {best['strategy']} is both the most accurate and the fastest "
                f"({best['mean_cold_wall_seconds']:,.0f} s wall time per run)."]
    return [f"With {where}, {fastest['strategy']} takes {fastest['mean_cold_wall_seconds']:,.0f} s for "
            f"{fastest['mean_test_accuracy']:.1%}; {best['strategy']} takes {best['mean_cold_wall_seconds']:,.0f} s "
            f"for {best['mean_test_accuracy']:.1%}."]


def _at_largest_budget(rows: list[dict]) -> list[dict]:
    """Of each (strategy, shots), the rows at its largest budget."""
    largest: dict[tuple, float] = {}
    for row in rows:
        key = (row["strategy"], row["shots"])
        largest[key] = max(largest.get(key, -1.0), _budget_order(row.get("minutes")))
    return [row for row in rows if _budget_order(row.get("minutes")) == largest[row["strategy"], row["shots"]]]


BUDGET_LINES = ("-", "--", ":", "-.")


def plot_accuracy_vs_shots(summary: list[dict], rows: list[dict], path: Path) -> Path:
    """Mean test accuracy (error bars: std over seeds; dots: single runs) vs images per class, log scale: one line per
    strategy and budget."""
    figure = new_figure(7, 4.5)
    axes = figure.subplots()
    budgets = sorted({entry["minutes"] for entry in summary}, key=_budget_order)
    for strategy, minutes in dict.fromkeys((entry["strategy"], entry["minutes"]) for entry in summary):
        entries = [entry for entry in summary if (entry["strategy"], entry["minutes"]) == (strategy, minutes)]
        axes.errorbar([entry["images_per_class"] for entry in entries], [entry["mean_test_accuracy"] for entry in entries],
                      yerr=[entry["std_test_accuracy"] for entry in entries], marker="o", capsize=3,
                      label=strategy if len(budgets) == 1 else f"{strategy}, {budget_text(minutes)}",
                      color=_colour(strategy), linestyle=BUDGET_LINES[budgets.index(minutes) % len(BUDGET_LINES)])
        singles = [row for row in rows if row["strategy"] == strategy and row.get("minutes") == minutes]
        axes.scatter([row["images_per_class"] for row in singles], [row["test_accuracy"] for row in singles], s=10,
                     alpha=0.35, color=_colour(strategy))
    log_x(axes)
    axes.set_xlabel("training images per class (log scale)")
    axes.set_ylabel("test accuracy")
    axes.set_title("When does transfer learning work?")
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=8 if len(budgets) == 1 else 6, ncol=1 if len(budgets) == 1 else 2)
    return save_png(figure, path)


# Points of one recipe with the same accuracy whose wall minutes differ by less than this ratio overlap on the plot's
# log axis: a probe's budget ends with its cached features, so its runs differ only by the seconds reading them took.
SAME_POINT_MINUTES_RATIO = 1.1


def budget_labels(entries: list[dict]) -> list[tuple[str, float, float, str]]:
    """(strategy, wall minutes, accuracy, label) of each point of the Pareto plot, its budgets in the label: one
    label for the runs of a recipe that land on the same point."""
    points: list[tuple[str, float, float, list[float]]] = []
    for entry in (entry for entry in entries if entry["minutes"] is not None):
        strategy, minutes, accuracy = entry["strategy"], entry["mean_cold_wall_seconds"] / 60, entry["mean_test_accuracy"]
        same = next((point for point in points if point[0] == strategy and point[2] == accuracy
                     and max(minutes, point[1]) < SAME_POINT_MINUTES_RATIO * min(minutes, point[1])), None)
        if same:
            same[3].append(entry["minutes"])
        else:
            points.append((strategy, minutes, accuracy, [entry["minutes"]]))
    return [(strategy, minutes, accuracy, ", ".join(f"{budget:g}" for budget in budgets) + " min")
            for strategy, minutes, accuracy, budgets in points]


def plot_pareto(summary: list[dict], path: Path) -> Path:
    """Test accuracy vs wall minutes (log scale) of every recipe at the largest shot size, each point labelled with
    its strategy and budget, and the front of those no other beats in both."""
    entries = _at_largest_shots(summary)
    figure = new_figure(8, 5)
    axes = figure.subplots()
    for strategy in dict.fromkeys(entry["strategy"] for entry in entries):
        own = [entry for entry in entries if entry["strategy"] == strategy]
        axes.errorbar([entry["mean_cold_wall_seconds"] / 60 for entry in own],
                      [entry["mean_test_accuracy"] for entry in own], yerr=[entry["std_test_accuracy"] for entry in own],
                      fmt="o", capsize=3, color=_colour(strategy), label=f"{strategy} ({own[0].get('model') or '?'})")
    for strategy, minutes, accuracy, text in budget_labels(entries):
        axes.annotate(text, (minutes, accuracy), textcoords="offset points", xytext=(5, -10), fontsize=7,
                      color=_colour(strategy))
    front = pareto_front(entries)
    axes.step([entry["mean_cold_wall_seconds"] / 60 for entry in front], [entry["mean_test_accuracy"] for entry in front],
              where="post", color="black", alpha=0.5, linewidth=1, label="front: best accuracy for the time")
    log_x(axes)
    axes.set_xlabel("wall minutes of the whole run, log scale (features from a cache charged at what they cost)")
    axes.set_ylabel("test accuracy")
    axes.set_title(f"Accuracy for the time, {describe_shots(entries[0]['shots'], entries[0]['images_per_class'])}",
                   fontsize=10)
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=8)
    return save_png(figure, path)


def plot_accuracy_vs_epoch(rows: list[dict], path: Path) -> Path:
    """Validation accuracy per epoch: one panel per shot size, one line per strategy (first seed)."""
    shot_sizes = sorted({row["shots"] for row in rows}, key=shots_order)
    columns = min(3, len(shot_sizes))
    lines = math.ceil(len(shot_sizes) / columns)
    figure = new_figure(4.2 * columns, 3.2 * lines)
    grid = figure.subplots(lines, columns, squeeze=False, sharey=True)
    for axes, shots in zip(grid.flat, shot_sizes):
        shown = set()
        for row in sorted(rows, key=lambda row: row["seed"]):
            if row["shots"] != shots or row["strategy"] in shown:
                continue
            shown.add(row["strategy"])
            axes.plot([point["epoch"] for point in row["curve"]], [point["val_accuracy"] for point in row["curve"]],
                      label=row["strategy"], color=_colour(row["strategy"]))
        axes.set_title(describe_shots(shots, next(r["images_per_class"] for r in rows if r["shots"] == shots)),
                       fontsize=9)
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
    for axes in grid[:, 0]:
        axes.set_ylabel("validation accuracy")
    for axes in list(grid.flat)[len(shot_sizes):]:
        axes.axis("off")
    grid.flat[0].legend(fontsize=8)
    return save_png(figure, path)


def plot_accuracy_vs_time(rows: list[dict], path: Path) -> Path:
    """Left: validation accuracy vs training time at the largest shot size. Right: every run, test accuracy vs wall time."""
    largest = max((row["shots"] for row in rows), key=shots_order)
    figure = new_figure(11, 4.2)
    curves, runs = figure.subplots(1, 2)
    shown = set()
    for row in sorted(rows, key=lambda row: row["seed"]):
        if row["shots"] == largest and row["strategy"] not in shown:
            shown.add(row["strategy"])
            curves.plot([point["seconds"] for point in row["curve"]], [point["val_accuracy"] for point in row["curve"]],
                        marker=".", label=row["strategy"], color=_colour(row["strategy"]))
    curves.set_title(f"Validation accuracy while training, {describe_shots(largest, 0) if largest != 'all' else 'all images'}",
                     fontsize=9)
    curves.set_xlabel("training seconds (validation included)")
    curves.set_ylabel("validation accuracy")
    for strategy in dict.fromkeys(row["strategy"] for row in rows):
        own = [row for row in rows if row["strategy"] == strategy]
        runs.scatter([row["cold_wall_seconds"] for row in own], [row["test_accuracy"] for row in own], label=strategy,
                     color=_colour(strategy), s=[12 + 6 * math.log2(1 + row["images_per_class"]) for row in own],
                     alpha=0.7)
    log_x(runs)
    runs.set_title("Every run (marker size: images per class)", fontsize=9)
    runs.set_xlabel("wall seconds of the whole run, log scale (cached features charged)")
    runs.set_ylabel("test accuracy")
    for axes in (curves, runs):
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    return save_png(figure, path)


def summary_table_markdown(summary: list[dict]) -> str:
    lines = ["| budget | strategy | model (px) | images per class | runs | test accuracy | spread (min–max) | epochs | "
             "wall s | trainable parameters |", "|---|---|---|---|---|---|---|---|---|---|"]
    for entry in summary:
        shots = entry["shots"]
        lines.append(f"| {budget_text(entry['minutes'])} | {entry['strategy']} | "
                     f"{entry.get('model') or '?'} ({entry.get('image_size') or '?'}) | "
                     f"{shots} ({entry['images_per_class']:,.0f}) | {entry['runs']} | "
                     f"{entry['mean_test_accuracy']:.2%} | {entry['min_test_accuracy']:.1%}–{entry['max_test_accuracy']:.1%} "
                     f"| {entry['mean_epochs']:.0f} | {entry['mean_wall_seconds']:,.0f} | {entry['trainable_parameters']:,} |")
    return "\n".join(lines)


STUDY_PLOT_WRITERS = {  # each of STUDY_PLOTS (named in folder/files.py), from the summary and the rows
    SHOTS_PLOT: plot_accuracy_vs_shots,
    EPOCH_PLOT: lambda summary, rows, path: plot_accuracy_vs_epoch(_at_largest_budget(rows), path),
    TIME_PLOT: lambda summary, rows, path: plot_accuracy_vs_time(_at_largest_budget(rows), path),
    PARETO_PLOT: lambda summary, rows, path: plot_pareto(summary, path),
}
assert set(STUDY_PLOT_WRITERS) == set(STUDY_PLOTS)


def write_study_files(folder: Path, study: dict, training: dict, planned_runs: int, rows: list[StudyRow],
                      skipped: list[str]) -> None:
    """study.json (with its summary and findings), the plots and README.md, each replaced whole."""
    folder.mkdir(parents=True, exist_ok=True)
    row_values = [row.to_json() for row in rows]
    summary = summarize(row_values)
    record = write_study(folder, study, training, planned_runs, rows, skipped, summary, findings(summary))
    for file, write_plot in STUDY_PLOT_WRITERS.items():
        write_plot(summary, row_values, folder / file)
    atomic.write_text(folder / CARD_FILE, study_readme(record))


def study_overview(study: dict, summary: list[dict], served_run: str,
                   quote: Callable[[object], str] = lambda value: f"`{value}`",
                   plain: Callable[[object], str] = str) -> list[str]:
    """The study's question, runs, budget and findings as Markdown lines: the study card's and the Study tab's.
    quote and plain render values read from study.json (the app escapes them)."""
    training, settings, rows = study["training"], study["study"], study["rows"]
    minutes = sorted({row.get("minutes") for row in rows} - {None})
    budget = (f"{', '.join(f'{value:g}' for value in minutes)} minutes of training" if minutes
              else f"{int(training.get('epochs', 0))} epochs")
    size = training.get("image_size")
    lines = [f"When does transfer learning work? {quote(training.get('model'))} on {quote(training.get('dataset'))}: "
             f"{len(rows)} of {int(study.get('planned_runs', len(rows)))} runs finished, each with the same budget "
             f"({budget}), the same validation and test images, at "
             f"{int(size) if isinstance(size, int) else 'the pretrained'} px. The Classify tab serves {quote(served_run)}.",
             "", "**Findings**", ""]
    lines += [f"- {sentence}" for sentence in findings(summary)]
    if study.get("skipped"):
        lines += ["", "Skipped: " + "; ".join(plain(reason) for reason in study["skipped"][:20]) + "."]
    return lines


def study_readme(record: dict) -> str:
    """The study folder's README (the Hub repo's card): overview, findings, table, plots."""
    lines = ["---", "library_name: timm", "tags: [image-classification, transfer-learning, tl-space, study]", "---", "",
             f"# Study: `{record['training']['model']}` on `{record['training']['dataset']}`", "",
             *study_overview(record, record["summary"], record["best_run"]), "",
             "Each run is a model folder under `runs/`.", "", "## Results", "",
             summary_table_markdown(record["summary"]), ""]
    lines += [f"![{title}]({name})\n" for name, title in STUDY_PLOTS.items()]
    return "\n".join(lines) + "\n"
