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
                "epochs": 3, "trainable_parameters": 100, "curve": []}
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
                "images_per_class": 1, "test_accuracy": accuracy, "wall_seconds": 10.0, "epochs": 3,
                "trainable_parameters": 100, "curve": [], "best_stage": best_stage}
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
