"""benchmarks/cost_quality.py: CPU minutes from metrics.json, /usr/bin/time -v logs or wall time, recipes
from folder names, the means, the figure and the one-line errors, on fake run folders."""

import json
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import cost_quality

TIME_V = """[2026-12-07 14:56:21,122][anogan][INFO] - val/auroc = 0.7768  (run folder: /x)
\tCommand being timed: "nice -n 10 bash running/job.sh.1"
\tUser time (seconds): {user}
\tSystem time (seconds): {system}
\tPercent of CPU this job got: 58%
\tElapsed (wall clock) time (h:mm:ss or m:ss): 10:13.44
\tExit status: {status}
"""


def fake_run(root, name, val, test, cls=None, **times):
    run = root / name
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"val": {"auroc": val}, "test": {"auroc": test}, **times}))
    if cls is not None:
        (run / "config_resolved.yaml").write_text(f"seed: 7\ndata:\n  normal_class: {cls}\n")
    return run


@pytest.fixture
def runs(tmp_path):
    """Three runs, one per source of CPU minutes: metrics.json's cpu_time_s (2 min), two time -v logs
    (a killed attempt and its resumption: 120 + 60 s = 3 min) and wall time only (5 min)."""
    logs = tmp_path / "logs"
    logs.mkdir()
    wall = {"wall_time_s": {"gan": 50.0, "scoring": 40.0, "total": 100.0}}
    a1 = fake_run(tmp_path, "rec_a_c1_s0", 0.80, 0.70, cls=3, cpu_time_s={"gan": 70.0, "scoring": 45.0, "total": 120.0}, **wall)
    a2 = fake_run(tmp_path, "rec_a_c2_s0", 0.60, 0.50, **wall)
    (logs / "rec_a_c2_s0.log").write_text(TIME_V.format(user=100.25, system=19.75, status=137))
    (logs / "q01_rec_a_c2_s0.log").write_text(TIME_V.format(user=50.0, system=10.0, status=0))
    b = fake_run(tmp_path, "rec_b_s1", 0.90, 0.95, wall_time_s={"total": 300.0})
    return [a1, a2, b], logs


def run_main(capsys, argv):
    code = cost_quality.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cpu_minutes_recipes_and_means(runs, capsys):
    folders, logs = runs
    code, out, _ = run_main(capsys, [*folders, "--time-logs", logs, "--json"])
    assert code == 0
    result = json.loads(out)
    by_name = {r["run"]: r for r in result["runs"]}
    assert (by_name["rec_a_c1_s0"]["cpu_minutes"], by_name["rec_a_c1_s0"]["cpu_source"]) == (2.0, "metrics")
    assert (by_name["rec_a_c2_s0"]["cpu_minutes"], by_name["rec_a_c2_s0"]["cpu_source"]) == (3.0, "time -v")
    assert len(by_name["rec_a_c2_s0"]["logs"]) == 2
    assert (by_name["rec_b_s1"]["cpu_minutes"], by_name["rec_b_s1"]["cpu_source"]) == (5.0, "wall")
    # class and seed: config_resolved.yaml first, else the folder name's suffix
    assert (by_name["rec_a_c1_s0"]["class"], by_name["rec_a_c1_s0"]["seed"]) == ("3", 7)
    assert (by_name["rec_a_c2_s0"]["class"], by_name["rec_a_c2_s0"]["seed"]) == ("2", 0)
    assert (by_name["rec_b_s1"]["class"], by_name["rec_b_s1"]["seed"]) == (None, 1)

    a, b = result["recipes"]["rec_a"], result["recipes"]["rec_b"]
    assert set(result["recipes"]) == {"rec_a", "rec_b"} and a["runs"] == 2 and a["classes"] == ["2", "3"]
    assert a["val_auroc"]["mean"] == pytest.approx(0.70) and a["val_auroc"]["std"] == pytest.approx(0.1414, abs=1e-4)
    assert a["test_auroc"]["mean"] == pytest.approx(0.60)
    assert (a["cpu_minutes"]["mean"], a["cpu_minutes"]["min"], a["cpu_minutes"]["max"]) == (2.5, 2.0, 3.0)
    assert a["cpu_sources"] == {"metrics": 1, "time -v": 1} and b["val_auroc"]["std"] is None

    code, out, _ = run_main(capsys, [*folders, "--time-logs", logs])  # the Markdown tables
    assert code == 0
    assert "| rec_a | 2 | 2,3 | 0.700 ± 0.141 | 0.600 ± 0.141 | 2.5 (2.0-3.0) | metrics, time -v |" in out
    assert "| rec_b | 1 |  | 0.900 | 0.950 | 5.0 (5.0-5.0) | wall |" in out
    assert "| rec_a_c2_s0 | rec_a | 2 | 0 | 0.600 | 0.500 | 3.0 | time -v (2 logs) |" in out


def test_without_logs_the_wall_time_is_used_and_labels_group(runs, capsys):
    folders, _ = runs
    code, out, _ = run_main(capsys, [*folders, "--label", "all=rec_*", "--json"])
    result = json.loads(out)
    assert code == 0 and list(result["recipes"]) == ["all"] and result["recipes"]["all"]["runs"] == 3
    assert [r["cpu_source"] for r in result["runs"]] == ["metrics", "wall", "wall"]
    assert result["recipes"]["all"]["cpu_minutes"]["mean"] == pytest.approx((2 + 100 / 60 + 5) / 3)


def test_recipe_rule():
    assert cost_quality.recipe_of("a15_c2_s0", []) == "a15"
    assert cost_quality.recipe_of("fp32_s1", []) == "fp32"
    assert cost_quality.recipe_of("b_geo15", []) == "b_geo15"
    assert cost_quality.recipe_of("f13_c0_s0", [("f", "f1?_c*_s0")]) == "f"


def test_figure_is_a_png(runs, tmp_path, capsys):
    folders, logs = runs
    figure = tmp_path / "figs" / "cq.png"
    figure.parent.mkdir()
    code, _, _ = run_main(capsys, [*folders, "--time-logs", logs, "--figure", figure])
    assert code == 0 and figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in figure.parent.iterdir()] == ["cq.png"]  # no temporary file left behind


def test_bad_input_is_one_line_and_exit_code_2(runs, tmp_path, capsys):
    folders, logs = runs
    unfinished = tmp_path / "unfinished_s0"
    unfinished.mkdir()
    code, out, err = run_main(capsys, [*folders, unfinished])
    assert code == 2 and out == "" and err.count("\n") == 1
    assert f"{unfinished}: no metrics.json" in err

    (logs / "rec_a_c2_s0.log").write_text("Killed\n")  # not /usr/bin/time -v output
    code, _, err = run_main(capsys, [*folders, "--time-logs", logs])
    assert code == 2 and "rec_a_c2_s0.log: no 'User time (seconds)'" in err and err.count("\n") == 1

    code, _, err = run_main(capsys, [*folders, "--label", "nolabel"])
    assert code == 2 and "--label 'nolabel': write NAME=GLOB" in err
