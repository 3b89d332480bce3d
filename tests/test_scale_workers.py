"""Many runs at once: workers=2 local processes and executor=ray give the sequential run's keys and table; sweeps."""

import csv
import json

import pytest

import kdlab
from fixtures_scale import TinyMLP, make_learnable_fashion_mnist
from kdlab.cli import main
from kdlab.errors import KdlabError

EXPERIMENT = """
name: base
out_dir: {out}
dataset: {{name: fashion_mnist, root: {root}, batch_size: 32, val_ratio: 0.2}}
seeds: [0, 1]
teachers: [{{name: cnn_small, label: teacher}}]
students: [{{name: cnn_tiny}}]
methods: [kd, fitnets]
teacher_schedule: {{epochs: 1}}
student_schedule: {{epochs: 1}}
device: cpu
progress: false
cpus_per_worker: 1
"""
ACCURACY = ("test_top1_last_mean", "test_top1_selected_mean")


def _table(exp_dir):
    with open(exp_dir / "report" / "results.csv") as fh:
        return {row["label"]: row for row in csv.DictReader(fh)}


def _keys(exp_dir):
    runs = json.loads((exp_dir / "manifest.json").read_text())["runs"]
    return sorted((r["run_dir"].split("/")[-1], r["key"]) for r in runs)


def _same_table(a, b):
    ta, tb = _table(a), _table(b)
    assert ta.keys() == tb.keys() and len(ta) == 4  # teacher, baseline, kd, fitnets
    for label in ta:
        for column in ACCURACY:
            assert float(ta[label][column]) == pytest.approx(float(tb[label][column]), abs=0.1), (label, column)


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    base = tmp_path_factory.mktemp("scale")
    make_learnable_fashion_mnist(base / "data", n_train=600, n_test=200)
    path = base / "exp.yaml"
    path.write_text(EXPERIMENT.format(out=base / "out", root=base / "data"))
    # threads=1: the workers' share (cpus_per_worker: 1); CPU float sums depend on the thread count
    assert main(["run", str(path), "name=seq", "threads=1"]) == 0
    return base, path


def test_two_workers_give_the_sequential_keys_and_table(sequential, capsys):
    base, path = sequential
    capsys.readouterr()
    assert main(["run", str(path), "name=par", "workers=2"]) == 0
    out, err = capsys.readouterr()
    assert "7 of 7 runs' test metrics from their caches" in err  # the workers evaluated their runs for the report
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["workers"] == 2 and summary["executor"] == "local" and summary["failed"] == []
    # kd of each seed computed the teacher's logits; nothing else could reuse them (fitnets reads features)
    assert summary["teacher_cache"]["computed_batches"] > 0 and summary["teacher_cache"]["mismatches"] == 0
    seq, par = base / "out" / "seq", base / "out" / "par"
    assert [k for _, k in _keys(seq)] == [k for _, k in _keys(par)]
    _same_table(seq, par)
    assert not any((par / "teacher_cache").glob("*/*")), "teacher caches are discarded when their seed is done"
    capsys.readouterr()
    assert main(["run", str(path), "name=par", "workers=2"]) == 0  # everything loads; nothing trains
    assert "training" not in capsys.readouterr().err


def test_ray_executor_gives_the_sequential_table(sequential, capsys):
    import ray  # in the test extra: this path runs on every CI run
    base, path = sequential
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        assert main(["run", str(path), "name=ray", "executor=ray"]) == 0
    finally:
        ray.shutdown()
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["executor"] == "ray" and summary["failed"] == []
    assert [k for _, k in _keys(base / "out" / "seq")] == [k for _, k in _keys(base / "out" / "ray")]
    _same_table(base / "out" / "seq", base / "out" / "ray")


SWEEP = """
name: sweep
out_dir: {out}
dataset: {{name: fashion_mnist, root: {root}, batch_size: 32, val_ratio: 0.2}}
seeds: [0, 1]
teachers: [{{name: cnn_tiny, label: teacher}}]
students: [{{name: cnn_tiny}}]
methods: [kd]
sweep: {{kd.T: [1, 2, 4]}}
teacher_schedule: {{epochs: 1}}
student_schedule: {{epochs: 1}}
device: cpu
progress: false
"""


def test_a_sweep_in_two_workers_through_the_api_gives_its_table_and_figure(sequential):
    base, _ = sequential
    path = base / "sweep.yaml"
    path.write_text(SWEEP.format(out=base / "out", root=base / "data"))
    exp = kdlab.Experiment(str(path), students=[TinyMLP()], workers=2)  # an nn.Module: pickled to the workers
    summary = exp.run()
    assert summary["failed"] == [] and summary["workers"] == 2
    cache = summary["teacher_cache"]  # per seed, one worker ran the three kd[T=...] runs: one teacher pass for all
    assert cache["reused_batches"] == 2 * cache["computed_batches"] > 0 and cache["mismatches"] == 0
    exp.report()
    exp_dir = base / "out" / "sweep"
    runs = json.loads((exp_dir / "manifest.json").read_text())["runs"]
    swept = [(r["method"], r["labels"], r["seed"]) for r in runs if r["labels"]]
    assert sorted(swept, key=str) == sorted([(f"kd[T={t}]", {"kd.T": t}, s) for t in (1, 2, 4) for s in (0, 1)],
                                            key=str)
    with open(exp_dir / "report" / "sweep.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["kd.T"] for r in rows] == ["1", "2", "4"] and all(r["n_seeds"] == "2" for r in rows)
    assert all(float(r["test_top1_selected_mean"]) > 0 and r["test_top1_selected_std"] != "" for r in rows)
    assert (exp_dir / "report" / "sweep.png").stat().st_size > 10_000
    assert "| teacher → TinyMLP | kd | 4 | 2 |" in (exp_dir / "report" / "sweep.md").read_text()
    html = (exp_dir / "report" / "index.html").read_text()
    assert "sweep.png" in html and "Global batch 32 over 1 process(es)" in html
    table = _table(exp_dir)
    assert {"kd[T=1]: teacher → TinyMLP", "kd[T=4]: teacher → TinyMLP"} <= set(table)


def test_python_objects_that_do_not_pickle_are_refused_in_one_line(sequential):
    base, path = sequential
    exp = kdlab.Experiment(str(path), name="lambda", methods=[lambda s, t, y: (s - t).pow(2).mean()], workers=2)
    with pytest.raises(KdlabError, match="need the experiment's Python objects to pickle") as info:
        exp.run()
    assert "\n" not in str(info.value) and "executor=ray" in str(info.value)
