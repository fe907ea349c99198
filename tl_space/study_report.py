"""A study's report: the summary table, findings computed from it, three plots, and the study folder's README."""

from __future__ import annotations

import json
import logging
import math
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and Spaces
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from tl_space.hub import STUDY_FILE  # noqa: E402
from tl_space.settings import STRATEGIES  # noqa: E402

PLOTS = {"accuracy_vs_shots.png": "Test accuracy vs training images per class",
         "accuracy_vs_epoch.png": "Validation accuracy per epoch, each strategy, each shot size",
         "accuracy_vs_time.png": "Accuracy vs wall time"}
STUDY_FILES = [STUDY_FILE, "README.md", *PLOTS]
PRETRAINED_STRATEGIES = [name for name in STRATEGIES if name != "scratch"]


def _colour(strategy: str):
    return plt.get_cmap("tab10")(STRATEGIES.index(strategy) if strategy in STRATEGIES else 9)


def _shots_order(shots: int | str) -> float:
    return math.inf if shots == "all" else float(shots)


def describe_shots(shots: int | str, images_per_class: float) -> str:
    if shots == "all":
        return f"all {images_per_class:,.0f} images per class"
    return f"{shots} image{'s' if shots != 1 else ''} per class"


def summarize(rows: list[dict]) -> list[dict]:
    """One entry per (strategy, shots): mean, spread over seeds, and cost, sorted by shots then strategy."""
    groups: dict[tuple[str, int | str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["strategy"], row["shots"]), []).append(row)
    summary = []
    for (strategy, shots), members in groups.items():
        accuracies = [row["test_accuracy"] for row in members]
        summary.append({
            "strategy": strategy, "shots": shots, "images_per_class": members[0]["images_per_class"],
            "runs": len(members), "mean_test_accuracy": statistics.fmean(accuracies),
            "std_test_accuracy": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
            "min_test_accuracy": min(accuracies), "max_test_accuracy": max(accuracies),
            "mean_wall_seconds": statistics.fmean(row["wall_seconds"] for row in members),
            "mean_epochs": statistics.fmean(row["epochs"] for row in members),
            "trainable_parameters": members[0]["trainable_parameters"],
        })
    strategy_rank = {name: index for index, name in enumerate(STRATEGIES)}
    return sorted(summary, key=lambda entry: (_shots_order(entry["shots"]), strategy_rank.get(entry["strategy"], 99)))


def _accuracy_text(entry: dict) -> str:
    spread = f" ± {entry['std_test_accuracy']:.1%} over {entry['runs']} seeds" if entry["runs"] > 1 else ""
    return f"{entry['mean_test_accuracy']:.1%}{spread}"


def findings(summary: list[dict]) -> list[str]:
    """Sentences a reader can check against the table: the winner per shot size, what pretraining is worth, cost."""
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
        close = " (within the spread over seeds)" if margin / 100 <= max(best["std_test_accuracy"],
                                                                         runner_up["std_test_accuracy"]) else ""
        sentences.append(f"{where}: {best['strategy']} wins with {_accuracy_text(best)}, {margin:.1f} points ahead "
                         f"of {runner_up['strategy']} ({runner_up['mean_test_accuracy']:.1%}){close}.")
    sentences += _pretraining_gain(by_shots)
    changes = [(shots, best["strategy"]) for (shots, best), (_, previous) in zip(winners[1:], winners)
               if best["strategy"] != previous["strategy"]]
    for shots, strategy in changes:
        entry = next(e for e in by_shots[shots] if e["strategy"] == strategy)
        sentences.append(f"{strategy} takes the lead from {describe_shots(shots, entry['images_per_class'])} on.")
    sentences += _cost(by_shots[max(by_shots, key=_shots_order)])
    return sentences


def _pretraining_gain(by_shots: dict) -> list[str]:
    """Points the best pretrained strategy gains over scratch, at the fewest and at the most images."""
    gains = []
    for shots, entries in by_shots.items():
        scratch = next((entry for entry in entries if entry["strategy"] == "scratch"), None)
        pretrained = [entry for entry in entries if entry["strategy"] != "scratch"]
        if scratch and pretrained:
            best = max(pretrained, key=lambda entry: entry["mean_test_accuracy"])
            gains.append((shots, best, (best["mean_test_accuracy"] - scratch["mean_test_accuracy"]) * 100))
    if not gains:
        return []
    (shots, best, gain), (last_shots, last_best, last_gain) = gains[0], gains[-1]
    sentence = (f"Against training from scratch, the best pretrained strategy gains {gain:+.1f} points with "
                f"{describe_shots(shots, best['images_per_class'])} ({best['strategy']})")
    if len(gains) > 1:
        sentence += (f" and {last_gain:+.1f} points with {describe_shots(last_shots, last_best['images_per_class'])} "
                     f"({last_best['strategy']})")
    return [sentence + "."]


def _cost(entries: list[dict]) -> list[str]:
    """At the largest shot size: how long the most accurate and the fastest strategy took."""
    if len(entries) < 2:
        return []
    best = max(entries, key=lambda entry: entry["mean_test_accuracy"])
    fastest = min(entries, key=lambda entry: entry["mean_wall_seconds"])
    where = describe_shots(best["shots"], best["images_per_class"])
    if best is fastest:
        return [f"With {where}, {best['strategy']} is both the most accurate and the fastest "
                f"({best['mean_wall_seconds']:,.0f} s wall time per run)."]
    return [f"With {where}, {fastest['strategy']} takes {fastest['mean_wall_seconds']:,.0f} s for "
            f"{fastest['mean_test_accuracy']:.1%}; {best['strategy']} takes {best['mean_wall_seconds']:,.0f} s "
            f"for {best['mean_test_accuracy']:.1%}."]


def plot_accuracy_vs_shots(summary: list[dict], rows: list[dict], path: Path) -> None:
    """Mean test accuracy (error bars: std over seeds; dots: single runs) vs images per class, log scale."""
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for strategy in dict.fromkeys(entry["strategy"] for entry in summary):
        entries = [entry for entry in summary if entry["strategy"] == strategy]
        axes.errorbar([entry["images_per_class"] for entry in entries], [entry["mean_test_accuracy"] for entry in entries],
                      yerr=[entry["std_test_accuracy"] for entry in entries], marker="o", capsize=3, label=strategy,
                      color=_colour(strategy))
        singles = [row for row in rows if row["strategy"] == strategy]
        axes.scatter([row["images_per_class"] for row in singles], [row["test_accuracy"] for row in singles], s=10,
                     alpha=0.35, color=_colour(strategy))
    axes.set_xscale("log")
    axes.set_xlabel("training images per class (log scale)")
    axes.set_ylabel("test accuracy")
    axes.set_title("When does transfer learning work?")
    axes.grid(alpha=0.3, which="both")
    axes.legend()
    _save(figure, path)


def plot_accuracy_vs_epoch(rows: list[dict], path: Path) -> None:
    """Validation accuracy per epoch: one panel per shot size, one line per strategy (first seed)."""
    shot_sizes = sorted({row["shots"] for row in rows}, key=_shots_order)
    columns = min(3, len(shot_sizes))
    lines = math.ceil(len(shot_sizes) / columns)
    figure, grid = plt.subplots(lines, columns, figsize=(4.2 * columns, 3.2 * lines), squeeze=False, sharey=True)
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
    _save(figure, path)


def plot_accuracy_vs_time(rows: list[dict], path: Path) -> None:
    """Left: validation accuracy vs training time at the largest shot size. Right: every run, test accuracy vs wall time."""
    largest = max((row["shots"] for row in rows), key=_shots_order)
    figure, (curves, runs) = plt.subplots(1, 2, figsize=(11, 4.2))
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
        runs.scatter([row["wall_seconds"] for row in own], [row["test_accuracy"] for row in own], label=strategy,
                     color=_colour(strategy), s=[12 + 6 * math.log2(1 + row["images_per_class"]) for row in own],
                     alpha=0.7)
    runs.set_xscale("log")
    runs.set_title("Every run (marker size: images per class)", fontsize=9)
    runs.set_xlabel("wall seconds of the whole run (log scale)")
    runs.set_ylabel("test accuracy")
    for axes in (curves, runs):
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    _save(figure, path)


def _save(figure, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def summary_table_markdown(summary: list[dict]) -> str:
    lines = ["| strategy | images per class | runs | test accuracy | spread (min–max) | epochs | wall s | trainable parameters |",
             "|---|---|---|---|---|---|---|---|"]
    for entry in summary:
        shots = "all" if entry["shots"] == "all" else entry["shots"]
        lines.append(f"| {entry['strategy']} | {shots} ({entry['images_per_class']:,.0f}) | {entry['runs']} | "
                     f"{entry['mean_test_accuracy']:.2%} | {entry['min_test_accuracy']:.1%}–{entry['max_test_accuracy']:.1%} "
                     f"| {entry['mean_epochs']:.0f} | {entry['mean_wall_seconds']:,.0f} | {entry['trainable_parameters']:,} |")
    return "\n".join(lines)


def write_study_files(folder: Path, record: dict) -> None:
    """study.json (with summary and findings added), the three plots and README.md, each replaced whole."""
    folder.mkdir(parents=True, exist_ok=True)
    summary = summarize(record["rows"])
    record = {**record, "summary": summary, "findings": findings(summary), "best_run": best_run(record["rows"])}
    _replace(folder / STUDY_FILE, json.dumps(record, indent=2))
    for name, plot in (("accuracy_vs_shots.png", lambda p: plot_accuracy_vs_shots(summary, record["rows"], p)),
                       ("accuracy_vs_epoch.png", lambda p: plot_accuracy_vs_epoch(record["rows"], p)),
                       ("accuracy_vs_time.png", lambda p: plot_accuracy_vs_time(record["rows"], p))):
        partial = folder / f".{name}.partial.png"
        plot(partial)
        partial.replace(folder / name)
    _replace(folder / "README.md", study_readme(record))


def _replace(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    partial.replace(path)  # a reader (the app, a push) sees the old file or the new one, never half


def best_run(rows: list[dict]) -> str:
    """The run the study serves as its model: the most accurate at the largest shot size."""
    largest = max((row["shots"] for row in rows), key=_shots_order)
    return max((row for row in rows if row["shots"] == largest), key=lambda row: row["test_accuracy"])["run"]


def study_readme(record: dict) -> str:
    """The study folder's README (the Hub repo's card): settings, findings, table, plots."""
    training, study = record["training"], record["study"]
    budget = (f"{training['epochs']} epochs per run" if study["budget"] == "epochs"
              else f"{study['minutes']:g} training minutes per run")
    lines = ["---", "library_name: timm", "tags: [image-classification, transfer-learning, tl-space, study]", "---", "",
             f"# Study: when does transfer learning work? (`{training['model']}` on `{training['dataset']}`)", "",
             f"{len(record['rows'])} of {record['planned_runs']} runs finished; budget: {budget}, "
             f"{training['image_size'] or 'pretrained'} px. Each run is a model folder under `runs/`; the best, "
             f"`{record['best_run']}`, is what the tl-space app serves from this repo.", "", "## Findings", ""]
    lines += [f"- {sentence}" for sentence in record["findings"]]
    lines += ["", "## Results", "", summary_table_markdown(record["summary"]), ""]
    lines += [f"![{title}]({name})\n" for name, title in PLOTS.items()]
    if record["skipped"]:
        lines += ["Skipped: " + "; ".join(record["skipped"]) + "."]
    return "\n".join(lines) + "\n"


ROW_FIELDS = {"run": str, "test_accuracy": (int, float), "images_per_class": (int, float), "wall_seconds": (int, float),
              "epochs": int, "trainable_parameters": int, "curve": list}


def _valid_row(row: object) -> bool:
    """A row the Study tab can show: a known strategy, a shot count, and every field it reads of the right type."""
    return (isinstance(row, dict) and row.get("strategy") in STRATEGIES
            and (row.get("shots") == "all" or (isinstance(row.get("shots"), int) and row["shots"] > 0))
            and all(isinstance(row.get(key), kinds) and not isinstance(row.get(key), bool)
                    for key, kinds in ROW_FIELDS.items()))


def load_study(folder: Path | None) -> dict | None:
    """study.json of a study folder, its rows checked (others dropped with a log line); None when there is none or
    it cannot be shown."""
    path = None if folder is None else Path(folder) / STUDY_FILE
    if path is None or not path.is_file():
        return None
    log = logging.getLogger("tl_space.study")
    try:
        study = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(study, dict) or not isinstance(study.get("training"), dict) or not isinstance(
                study.get("study"), dict) or not isinstance(study.get("rows"), list):
            raise ValueError("it lacks training, study or rows")
    except (OSError, UnicodeDecodeError, ValueError) as error:
        log.warning("not showing the study: %s is unreadable (%s)", STUDY_FILE, error)
        return None
    rows = [row for row in study["rows"] if _valid_row(row)]
    if len(rows) < len(study["rows"]):
        log.warning("skipped %d malformed rows of %s", len(study["rows"]) - len(rows), STUDY_FILE)
    return {**study, "rows": rows}
