"""The study's report: summary, findings, best run, plots and card, from the rows."""

import statistics

import pytest
from PIL import Image

from support.runs import read_study
from tl_space.folder.files import STUDY_PLOTS as PLOTS


@pytest.mark.slow
def test_summary_and_findings_come_from_the_rows(tiny_study):
    record = read_study(tiny_study)
    for entry in record["summary"]:
        accuracies = [row["test_accuracy"] for row in record["rows"]
                      if (row["strategy"], row["shots"]) == (entry["strategy"], entry["shots"])]
        assert entry["runs"] == len(accuracies) == (2 if entry["shots"] == 2 else 1)
        assert entry["mean_test_accuracy"] == pytest.approx(statistics.fmean(accuracies))
        assert entry["std_test_accuracy"] == pytest.approx(statistics.stdev(accuracies) if len(accuracies) > 1 else 0)
    for shots, opening in ((2, "2 images per class: "), ("all", "All ")):
        entries = [entry for entry in record["summary"] if entry["shots"] == shots]
        winner = max(entries, key=lambda entry: entry["mean_test_accuracy"])
        sentence = next(sentence for sentence in record["findings"] if sentence.startswith(opening))
        assert f"{winner['strategy']} wins with {winner['mean_test_accuracy']:.1%}" in sentence
    at_all = [row for row in record["rows"] if row["shots"] == "all"]
    assert record["best_run"] == max(at_all, key=lambda row: row["test_accuracy"])["run"]


@pytest.mark.slow
def test_plots_and_readme_are_written(tiny_study):
    for name in PLOTS:
        with Image.open(tiny_study / name) as plot:
            assert plot.width > 600 and plot.height > 300
    readme = (tiny_study / "README.md").read_text()
    assert all(f"]({name})" in readme for name in PLOTS)
    assert all(sentence in readme for sentence in read_study(tiny_study)["findings"])
    assert not list(tiny_study.glob(".*partial*"))


def test_findings_say_what_a_probe_first_gains_at_the_fewest_and_the_most_images():
    from tl_space.study.report import findings, summarize

    def row(strategy, shots, accuracy, seed=42):
        return {"run": f"runs/{strategy}-{shots}-seed{seed}", "strategy": strategy, "shots": shots, "seed": seed,
                "images_per_class": 1 if shots == 1 else 500, "test_accuracy": accuracy, "wall_seconds": 10.0,
                "cold_wall_seconds": 10.0, "epochs": 3, "trainable_parameters": 100, "curve": []}
    rows = [row("lp-ft", 1, 0.40), row("finetune", 1, 0.30), row("lp-ft", "all", 0.90), row("finetune", "all", 0.89)]
    sentence = next(line for line in findings(summarize(rows)) if line.startswith("lp-ft against finetune"))
    assert sentence == ("lp-ft against finetune: +10.0 points with 1 image per class, +1.0 points with all 500 images "
                        "per class.")
    # two seeds each, 10 points apart within a pair: a 2-point gap is within the spread
    rows = [row("lp-ft", 1, 0.30), row("lp-ft", 1, 0.40, seed=43), row("finetune", 1, 0.32),
            row("finetune", 1, 0.42, seed=43)]
    sentence = next(line for line in findings(summarize(rows)) if line.startswith("lp-ft against finetune"))
    assert sentence == "lp-ft against finetune: -2.0 points with 1 image per class (within the spread over seeds)."


def test_findings_explain_an_lp_ft_that_kept_its_probe_and_lost_to_finetune():
    from tl_space.study.report import findings, summarize

    def row(strategy, accuracy, seed, best_stage):
        return {"run": f"runs/{strategy}-1-seed{seed}", "strategy": strategy, "shots": 1, "seed": seed,
                "images_per_class": 1, "test_accuracy": accuracy, "wall_seconds": 10.0, "cold_wall_seconds": 10.0,
                "epochs": 3, "trainable_parameters": 100, "curve": [], "best_stage": best_stage}
    rows = [row("lp-ft", 0.35, 42, "linear-probe"), row("lp-ft", 0.37, 43, "finetune"),
            row("finetune", 0.40, 42, "finetune"), row("finetune", 0.41, 43, "finetune"),
            row("linear-probe", 0.34, 42, "linear-probe"), row("linear-probe", 0.36, 43, "linear-probe")]
    explained = [line for line in findings(summarize(rows)) if "kept its probe's model" in line]
    assert explained == ["With 1 image per class, lp-ft kept its probe's model in 1 of 2 runs (no fine-tuning epoch "
                         "raised validation accuracy): it kept the pretrained features unchanged and scored as "
                         "linear-probe did (35.0%), while finetune, whose features moved, did better."]
    # lp-ft ahead of finetune: nothing to explain
    rows = [dict(r, test_accuracy=0.5) if r["strategy"] == "lp-ft" else r for r in rows]
    assert not [line for line in findings(summarize(rows)) if "kept its probe's model" in line]


def sweep_row(strategy, minutes, accuracy, wall_minutes, shots="all", seed=42, cold_minutes=None):
    return {"run": f"runs/{strategy}-{shots}-{minutes:g}min-seed{seed}", "strategy": strategy, "shots": shots,
            "seed": seed, "minutes": minutes, "images_per_class": 10 if shots != "all" else 4500,
            "test_accuracy": accuracy, "wall_seconds": wall_minutes * 60,
            "cold_wall_seconds": (cold_minutes or wall_minutes) * 60, "epochs": 3, "trainable_parameters": 100,
            "curve": [], "model": "tl_speedrun_cnn" if strategy == "scratch" else "lite0"}


def test_a_budget_sweep_says_who_wins_at_each_budget_and_where_scratch_overtakes():
    from tl_space.study.report import findings, summarize

    rows = [sweep_row("scratch", 1, 0.60, 1.2), sweep_row("linear-probe", 1, 0.75, 0.2, cold_minutes=3.0),
            sweep_row("lp-ft", 1, 0.70, 1.5),
            sweep_row("scratch", 15, 0.90, 15.5), sweep_row("linear-probe", 15, 0.77, 0.2, cold_minutes=3.0),
            sweep_row("lp-ft", 15, 0.89, 16.0), sweep_row("scratch", 1, 0.20, 1.1, shots=10),
            sweep_row("linear-probe", 1, 0.50, 0.1, shots=10)]
    sentences = findings(summarize(rows))
    assert "[1 min] All 4,500 images per class: linear-probe wins with 75.0%, 5.0 points ahead of lp-ft (70.0%)." \
        in sentences
    assert "[15 min] All 4,500 images per class: scratch wins with 90.0%, 1.0 points ahead of lp-ft (89.0%)." \
        in sentences
    assert ("With all 4,500 images per class, the best transfer run against scratch (tl_speedrun_cnn): +15.0 points "
            "at 1 min (linear-probe), -1.0 points at 15 min (lp-ft). Scratch overtakes transfer at 15 min.") in sentences
    # the probe's cached features charged at their 3 minutes: it is not the cheapest recipe
    assert ("With all 4,500 images per class, the most accuracy for the wall time (features from a cache charged at "
            "what they cost): scratch, 1 min (1.2 min, 60.0%) → lp-ft, 1 min (1.5 min, 70.0%) → linear-probe, 15 min "
            "(3.0 min, 77.0%) → scratch, 15 min (15.5 min, 90.0%); 2 of 6 recipes are off that front.") in sentences
    assert "[1 min] With all 4,500 images per class, scratch takes 72 s for 60.0%; linear-probe takes 180 s for 75.0%." \
        in sentences
    rows = [row for row in rows if not (row["strategy"] == "scratch" and row["minutes"] == 15)]
    rows.append(sweep_row("scratch", 15, 0.85, 15.5))
    assert any(sentence.endswith("Scratch overtakes transfer at no budget measured; the gap is smallest at 15 min "
                                 "(4.0 points).") for sentence in findings(summarize(rows)))


def test_a_probe_at_every_budget_is_one_point_with_one_label_on_the_pareto_plot():
    from tl_space.study.report import budget_labels, summarize

    # A probe's budget ends with its cached features: the same accuracy at every budget, its wall minutes a few
    # seconds apart (the time to read the cache), so one label names all its budgets instead of four on one spot.
    rows = [sweep_row("linear-probe", minutes, 0.78, 0.1, cold_minutes=cold)
            for minutes, cold in ((1, 5.4), (5, 5.5), (15, 5.56), (60, 5.6))]
    rows += [sweep_row("finetune", 1, 0.81, 3.0), sweep_row("finetune", 5, 0.87, 6.9)]
    labels = {(strategy, text) for strategy, _, _, text in budget_labels(summarize(rows))}
    assert labels == {("linear-probe", "1, 5, 15, 60 min"), ("finetune", "1 min"), ("finetune", "5 min")}


def test_a_budget_sweep_writes_its_plots_and_a_table_with_the_budget(tmp_path):
    from tl_space.folder.study import study_row
    from tl_space.study.report import study_readme, summarize, write_study_files

    def metrics(accuracy, seconds):
        return {"history": [{"epoch": 1, "stage": "scratch", "val_accuracy": accuracy, "seconds": seconds}],
                "stopped_by": "time budget", "settings": {"model": "m"}, "preprocessing": {"image_size": 32},
                "data": {"train_images": 90, "class_names": ["a", "b", "c"]},
                "test": {"accuracy": accuracy, "best_epoch": 1},
                "timing": {"total_seconds": seconds + 5, "training_seconds": seconds}, "trainable_parameters": 9}
    rows = [study_row(f"runs/{strategy}-all-{minutes}min-seed42", strategy, "all", 42, float(minutes),
                      metrics(accuracy, minutes * 60))
            for strategy, minutes, accuracy in (("scratch", 1, 0.5), ("scratch", 5, 0.7), ("lp-ft", 1, 0.6),
                                                ("lp-ft", 5, 0.65))]
    write_study_files(tmp_path, {"budget": "minutes", "minutes": "1,5"}, {"model": "m", "dataset": "d"}, 4, rows, [])
    for name in PLOTS:
        with Image.open(tmp_path / name) as plot:
            assert plot.width > 400 and plot.height > 300
    with Image.open(tmp_path / "accuracy_for_the_time.png") as plot:
        assert plot.width > 600
    readme = (tmp_path / "README.md").read_text()
    assert "| 5 min | scratch | m (32) | all (30) | 1 | 70.00% |" in readme
    assert "the same budget (1, 5 minutes of training)" in readme
    assert len(summarize([row.to_json() for row in rows])) == 4
