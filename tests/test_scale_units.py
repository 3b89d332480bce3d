"""Scale-out logic without processes: sweeps, scheduling groups and their dependencies, worker slots, batch shards,
the learning-rate rule, the storage check."""

from pathlib import Path

import pytest
import torch

from kdlab.config import DataConfig, OptimConfig
from kdlab.data import load_splits, make_loader
from kdlab.data.shard import rank_slice
from kdlab.engine import distributed
from kdlab.errors import ConfigError
from kdlab.experiments.config import load_experiment
from kdlab.experiments.plan import expand, validate
from kdlab.runs.live import Live
from kdlab.scale.groups import Board, logits_only, make_groups, make_slots
from kdlab.experiments.sweep import method_entries, sweep_points
from kdlab.scale.worker import StorageError, check_storage, write_marker
from fixtures_scale import make_learnable_fashion_mnist

EXP = {"name": "u", "dataset": {"name": "fashion_mnist"}, "seeds": [0, 1], "teachers": [{"name": "cnn_small"}],
       "students": [{"name": "cnn_tiny"}], "methods": ["kd", "fitnets", "dml", {"name": "dkd", "label": "d"}],
       "teacher_schedule": {"epochs": 1}, "student_schedule": {"epochs": 1}, "device": "cpu"}


def _exp(**changes):
    return load_experiment({**EXP, **changes})


# -- sweeps ------------------------------------------------------------------------------------------------------------
def test_a_grid_sweep_expands_into_labelled_entries_with_their_values():
    exp = _exp(methods=["kd", "at"], sweep={"kd.T": [1, 2, 4], "kd.alpha": [0.5, 0.9]})
    entries = method_entries(exp)
    labels = [e.display for e, _ in entries]
    assert labels[:2] == ["kd[T=1,alpha=0.5]", "kd[T=1,alpha=0.9]"] and labels[-1] == "at" and len(labels) == 7
    entry, values = entries[5]
    assert entry.params == {"T": 4, "alpha": 0.9} and values == {"kd.T": 4, "kd.alpha": 0.9}
    plan = expand(exp, "data")
    students = [s for s in plan if s.role == "student" and s.method.startswith("kd[")]
    assert len(students) == 12 and len({s.key for s in students}) == 12
    assert students[0].cfg.method.params["T"] == 1.0
    assert students[0].labels == {"kd.T": 1, "kd.alpha": 0.5}


def test_random_sweeps_are_seeded_and_composites_are_namespaced():
    a = sweep_points({"T": [1, 2, 4, 8], "alpha": [0.1, 0.5, 0.9]}, samples=5, seed=3)
    assert a == sweep_points({"T": [1, 2, 4, 8], "alpha": [0.1, 0.5, 0.9]}, samples=5, seed=3)
    assert len(a) == 5 and len({tuple(p.items()) for p in a}) == 5  # no point twice
    ranged = sweep_points({"lr": {"low": 1e-3, "high": 1e-1, "log": True}}, samples=4, seed=0)
    assert all(1e-3 <= p["lr"] <= 1e-1 for p in ranged)
    exp = _exp(methods=["kd+at"], sweep={"kd+at.kd.T": [2, 8]})
    validate(exp)
    entry, values = method_entries(exp)[1]
    assert entry.display == "kd+at[kd.T=8]" and entry.params == {"kd.T": 8} and values == {"kd+at.kd.T": 8}


@pytest.mark.parametrize("sweep, samples, message", [
    ({"kdd.T": [1]}, 0, "names no method entry"),
    ({"kd.T": 4}, 0, "non-empty list"),
    ({"kd.T": {"low": 1, "high": 8}}, 0, "needs sweep_samples"),
    ({"kd.Temp": [1, 2]}, 0, "Temp"),
])
def test_bad_sweeps_are_one_line_config_errors(sweep, samples, message):
    with pytest.raises(ConfigError, match=message):
        validate(_exp(sweep=sweep, sweep_samples=samples))


# -- scheduling groups ------------------------------------------------------------------------------------------------
def test_logits_only_methods_of_a_seed_share_a_group_and_wait_for_their_teacher():
    exp = _exp(methods=["kd", {"name": "kd", "label": "kd2", "T": 2}, "fitnets", "dml", "dist", "kd+at"])
    assert logits_only("kd", Live()) and logits_only("dist", Live()) and not logits_only("fitnets", Live())
    assert not logits_only("kd+at", Live())
    plan = expand(exp, "data")
    groups = make_groups(plan, exp, Live())
    by_run = {n: g for g in groups for n in g.numbers}
    methods = {(plan[n - 1].method, plan[n - 1].seed): n for n in range(1, len(plan) + 1)}
    shared = by_run[methods[("kd", 0)]]
    assert [plan[n - 1].method for n in shared.numbers] == ["kd", "kd2", "dist"] and shared.needs == {1}
    assert by_run[methods[("kd", 1)]] is not shared  # another seed, another stream
    assert len(by_run[methods[("fitnets", 0)]].numbers) == 1 and by_run[methods[("dml", 0)]].needs == set()
    no_share = make_groups(plan, load_experiment({**EXP, "share_teacher_outputs": False}), Live())
    assert all(len(g.numbers) == 1 for g in no_share)


def test_the_board_releases_students_after_their_teacher_and_fails_them_with_it():
    exp = _exp(methods=["kd"], seeds=[0])
    plan = expand(exp, "data")  # teacher, baseline, kd
    board = Board(plan, make_groups(plan, exp, Live()))
    first, second = board.take_ready(), board.take_ready()
    assert first.numbers == [1] and second.numbers == [2] and board.take_ready() is None  # kd waits for 1
    board.finish(1, "diverged")
    blocked = board.take_blocked()
    assert [(g.numbers, source) for g, source in blocked] == [([3], 1)] and not board.waiting
    board = Board(plan, make_groups(plan, exp, Live()), done=[1])  # a finished teacher on disk
    assert [g.numbers for g in (board.take_ready(), board.take_ready())] == [[2], [3]]
    board.requeue([3], {1})
    assert board.take_ready().numbers == [3] and not board.settled([3])


def test_a_dead_worker_fails_the_run_it_was_in_unless_that_run_had_finished(tmp_path):
    from kdlab.experiments.runner import ExperimentRunner
    from kdlab.scale.parallel import ParallelRunner

    exp = _exp(methods=["kd", "dist"], seeds=[0], out_dir=str(tmp_path))
    plan = expand(exp, "data")  # teacher, baseline, kd, dist: kd and dist are one group (shared teacher outputs)
    driver = ParallelRunner(ExperimentRunner(exp, log=lambda line: None, check=False))
    local = type("Pool", (), {"name": "local"})()

    def died(number):
        board = Board(plan, make_groups(plan, exp, Live()), done=[1, 2])
        group = board.take_ready()
        assert group.numbers == [3, 4]
        driver.failed.clear()
        driver._died(group, number, "its worker died", plan, board, local)
        return board

    board = died(3)  # killed inside kd: kd fails, dist goes to another worker
    assert board.failed == {3: "its worker died while it ran"} and board.take_ready().numbers == [4]
    plan[2].files.result.parent.mkdir(parents=True)
    plan[2].files.result.write_text("{}")  # kd wrote its result, then the worker died before reporting it
    board = died(3)
    assert board.failed == {} and 3 in board.done and board.take_ready().numbers == [4]
    board = died(None)  # died before saying which run it was on: the first run left fails (no endless retry)
    assert board.failed == {4: "its worker died while it ran"} and 3 in board.done


def test_a_teacher_and_a_baseline_with_one_key_are_two_runs():
    exp = _exp(teachers=[{"name": "cnn_tiny"}], methods=["kd"], seeds=[0])  # teacher == baseline seed 0 config
    plan = expand(exp, "data")
    assert plan[0].key == plan[1].key and plan[0].run_dir != plan[1].run_dir
    board = Board(plan, make_groups(plan, exp, Live()))
    board.take_ready(), board.take_ready()
    board.finish(2)  # the baseline finishing must not release the students of the teacher
    assert board.take_ready() is None


# -- worker slots ------------------------------------------------------------------------------------------------------
def test_cpu_workers_share_the_cores():
    slots = make_slots(_exp(workers=2), gpus=[], cores=8)
    assert [(s.devices, s.threads) for s in slots] == [(None, 4), (None, 4)]
    assert make_slots(_exp(workers=3, cpus_per_worker=1), [], 8)[2].threads == 1
    assert make_slots(_exp(workers=4), ["0"], 16)[0].devices is None  # device: cpu pins nothing


def test_gpu_workers_round_robin_pack_and_take_ddp_groups():
    four = make_slots(_exp(device="auto", workers=4, workers_per_device=4), gpus=["0"], cores=16)
    assert [s.devices for s in four] == [("0",)] * 4 and four[0].threads == 4
    rr = make_slots(_exp(device="auto", workers=4, workers_per_device=2), gpus=["0", "1"], cores=16)
    assert [s.devices for s in rr] == [("0",), ("1",), ("0",), ("1",)]
    notes = []
    capped = make_slots(_exp(device="cuda", workers=8), gpus=["0", "1"], cores=16, log=notes.append)
    assert len(capped) == 2 and "capped to 2" in notes[0]
    ddp = make_slots(_exp(device="auto", workers=2, ddp=2), gpus=["2", "3", "5", "7"], cores=16)
    assert [s.devices for s in ddp] == [("2", "3"), ("5", "7")]
    with pytest.raises(ConfigError, match="ddp"):
        make_slots(_exp(device="auto", ddp=2), gpus=["0"], cores=16)


# -- one run over ranks ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("length, world", [(32, 2), (30, 4), (7, 3), (2, 4)])
def test_rank_slices_partition_a_batch_in_order(length, world):
    parts = [rank_slice(10, 10 + length, (r, world)) for r in range(world)]
    assert [i for p in parts for i in range(p.start, p.stop)] == list(range(10, 10 + length))
    assert max(p.stop - p.start for p in parts) - min(p.stop - p.start for p in parts) <= 1


def test_the_ranks_of_a_loader_see_exactly_the_single_process_epoch(tmp_path):
    make_learnable_fashion_mnist(tmp_path / "data", n_train=100, n_test=30)
    cfg = DataConfig(root=str(tmp_path / "data"), batch_size=16, val_ratio=0.2)
    splits = load_splits(cfg)
    for train in (True, False):
        whole = make_loader(splits.train, splits.info, cfg, train=train, device=torch.device("cpu"), seed=3)
        ranks = [make_loader(splits.train, splits.info, cfg, train=train, device=torch.device("cpu"), seed=3)
                 for _ in range(2)]
        distributed.shard(distributed.Dist(0, 2, 0), ranks[0])
        distributed.shard(distributed.Dist(1, 2, 1), ranks[1])
        for loader in (whole, *ranks):
            loader.set_epoch(2)
        assert len(ranks[0]) == len(whole)  # the same number of optimizer steps
        for full, a, b in zip(whole, *ranks):
            assert len(a) == len(b) == len(full) // 2
            assert torch.equal(torch.cat([a.images, b.images]), full.images)
            assert torch.equal(torch.cat([a.index, b.index]), full.index)


def test_the_batch_record_and_the_linear_lr_rule():
    record = distributed.batch_record(distributed.Dist(1, 4, 1), 512, OptimConfig(lr=0.1, lr_scaling="linear"))
    assert record == {"world_size": 4, "global_batch": 512, "per_rank_batch": 128, "lr_scaling": "linear",
                      "lr_effective": pytest.approx(0.2)}
    assert distributed.batch_record(distributed.Dist(), 64, OptimConfig(lr=0.1))["lr_effective"] == 0.1
    with pytest.raises(ConfigError, match="does not split evenly over 4 ranks"):
        distributed.batch_record(distributed.Dist(0, 4, 0), 50, OptimConfig())


def test_a_worker_that_cannot_see_the_experiment_directory_fails_with_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    storage = write_marker(tmp_path / "exp")
    check_storage(storage)  # the driver's own machine sees it
    (tmp_path / "exp" / ".kdlab-storage").unlink()
    with pytest.raises(StorageError, match="does not see the experiment directory") as info:
        check_storage(storage)
    assert "\n" not in str(info.value)
    other = type(storage)(storage.marker, storage.token, str(Path(tmp_path / "absent")))
    with pytest.raises(StorageError, match="storage every node mounts"):
        check_storage(other)
