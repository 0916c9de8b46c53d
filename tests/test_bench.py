"""`make bench`'s own logic: the workload it picks when nothing is said, and the reasons it prints for a miss."""

import pytest

from bench import run


def resolved(argv, generated):
    args = run.parse_args(argv)
    args.generated = generated
    run.apply_defaults(args)
    return args


def test_real_data_defaults_to_a_workload_that_fits_a_quarter_hour():
    args = resolved([], generated=False)
    assert (args.epochs, args.max_train_samples, args.eval_every) == (1.0, 2000, 20)
    gen = resolved([], generated=True)
    assert (gen.epochs, gen.max_train_samples, gen.target_accuracy) == (3.0, 0, 0.9)
    # what the user says wins, including 0 = every training row
    mine = resolved(["--epochs", "2", "--max-train-samples", "0", "--target-accuracy", "0.7"], generated=False)
    assert (mine.epochs, mine.max_train_samples, mine.target_accuracy) == (2.0, 0, 0.7)


def figures(precision="fp32"):
    results = {"seed_trainer": {"train_samples_per_s": 13.5, "precision": precision},
               "tuned_trainer": {"train_samples_per_s": 32.2, "precision": precision},
               "loop": {"train_samples_per_s": 37.9, "tokens_per_s": 2031.0, "precision": precision},
               "floor": {"train_samples_per_s": 32.7, "precision": precision}}
    ratios = {"c_over_a": 37.9 / 13.5, "c_over_b": 37.9 / 32.2, "d_over_b": 32.7 / 32.2}
    targets = {"(c)/(a) >= 8x train samples/s": False, "(c)/(b) >= 1.3x train samples/s": False,
               "(c) peak memory <= (b)": True}
    return results, ratios, targets


def test_misses_on_an_fp32_cpu_are_explained_from_the_run_s_own_figures():
    results, ratios, targets = figures()
    lines = run.miss_reasons(resolved([], False), {"cpu": "AMD EPYC"}, results, ratios, targets)
    assert len(lines) == 2
    assert lines[0].startswith("(c)/(b) = 1.18x") and "no native bf16" in lines[0] and "within 2%" in lines[0]
    assert lines[1].startswith("(c)/(a) = 2.81x") and "average 54 tokens" in lines[1] and "2.4x" in lines[1]


@pytest.mark.parametrize("case", ["met", "bf16", "gpu"])
def test_no_excuses_where_the_targets_are_met_or_the_hardware_is_not_the_reason(case):
    results, ratios, targets = figures("bf16" if case == "bf16" else "fp32")
    if case == "met":
        targets = {name: True for name in targets}
    info = {"gpu": "NVIDIA H100"} if case == "gpu" else {}
    assert run.miss_reasons(resolved([], False), info, results, ratios, targets) == []


def test_a_missed_serving_target_is_explained_by_the_model_s_own_cost():
    from bench import serve

    runs = {"off": {"32": {"requests_per_s": 50.5}}, "on": {"32": {"requests_per_s": 80.5}}}
    results = {"classifier": runs, "classifier_cost": {"ms_per_text_batch_1": 16.2, "ms_per_text_batch_32": 11.0}}
    (line,) = serve.miss_reasons(results, [1, 8, 32])
    assert "16.2 ms per text one at a time" in line and "11.0 ms" in line and "91 texts/s at most, 1.8x" in line
    runs["on"]["32"]["requests_per_s"] = 160.0  # 3.2x: nothing to explain
    assert serve.miss_reasons(results, [1, 8, 32]) == []


def test_time_to_target_is_every_seed_s_and_the_median_of_those_that_reached_it():
    def seed(speed, ttt):
        return {"train_samples_per_s": speed, "peak_rss_mb": 900.0, "time_to_target_s": ttt,
                "evals": [{"accuracy": 0.9}], "precision": "bf16", "test": {"accuracy": 0.85, "macro_f1": 0.84}}

    # the median-speed seed (30.0 samples/s) is the one that did not reach it: the table still says it was reached
    loop = run.median_run([seed(31.0, 29.5), seed(30.0, None), seed(29.0, 33.1)])
    assert loop["reached_target"] == 2 and loop["time_to_target_s"] == pytest.approx((29.5 + 33.1) / 2)
    assert run.time_to_target_text(loop) == "31.3 (2 of 3 seeds: 29.5, not reached, 33.1)"
    assert run.time_to_target_text(run.median_run([seed(30.0, None)])) == "not reached"
