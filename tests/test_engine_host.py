"""The CPU allocator tuning (kdlab/engine/host.py): what it decides, and that it removes the per-step page faults."""

import subprocess
import sys
import textwrap

import pytest

from kdlab.engine import host

GLIBC = host._mallopt() is not None
decide = host.tune_cpu_allocator.__wrapped__  # without the once-per-process cache


def _clean_env(monkeypatch):
    for name in (*host.USER_CHOICE, host.OPT_OUT):
        monkeypatch.delenv(name, raising=False)


def test_opt_out_and_user_choices_are_respected(monkeypatch):
    _clean_env(monkeypatch)
    monkeypatch.setenv(host.OPT_OUT, "1")
    assert decide().startswith("system allocator")
    _clean_env(monkeypatch)
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    assert decide() == "allocator left as configured (LD_PRELOAD)"
    _clean_env(monkeypatch)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "0")
    assert "MALLOC_TRIM_THRESHOLD_" in decide()


@pytest.mark.skipif(not GLIBC, reason="needs glibc's mallopt")
def test_tunes_glibc(monkeypatch):
    _clean_env(monkeypatch)
    monkeypatch.setenv(host.OPT_OUT, "0")  # "0" is not an opt-out
    assert decide() == "glibc malloc: mmap threshold 32 MiB, trim threshold 1024 MiB"


FAULTS = textwrap.dedent("""
    import resource, sys
    import torch
    import torch.nn.functional as F
    from kdlab.engine.host import tune_cpu_allocator
    from kdlab.models import create_model
    if sys.argv[1] == "tuned":
        tune_cpu_allocator()
    torch.manual_seed(0)
    student = create_model("resnet8", num_classes=10, in_channels=1)
    teacher = create_model("resnet20", num_classes=10, in_channels=1).eval()
    images = torch.randn(64, 1, 32, 32)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    def step():  # an online KD step: the student's saved activations plus the teacher's temporaries, all freed
        logits = student(images)
        with torch.no_grad():
            teacher_logits = teacher(images)
        loss = F.kl_div(logits.float().log_softmax(1), teacher_logits.float().log_softmax(1),
                        reduction="batchmean", log_target=True)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for _ in range(3):
        step()
    per_step = []
    for _ in range(7):  # the median step: a step that still grows the heap to its peak is not the steady state
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        step()
        per_step.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(sorted(per_step)[3])
""")


@pytest.mark.skipif(not GLIBC or not sys.platform.startswith("linux"), reason="glibc on Linux")
def test_tuning_removes_per_step_page_faults(monkeypatch):
    _clean_env(monkeypatch)
    faults = {mode: int(subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True,
                                       check=True).stdout)
              for mode in ("system", "tuned")}
    # system: glibc trims the freed peak after every step and faults it in again in the next (measured ~10,700)
    assert faults["system"] > 3_000
    assert faults["tuned"] < faults["system"] / 20


def test_thread_policy_gives_back_the_callers_thread_count(monkeypatch):
    import torch

    monkeypatch.delenv(host.THREADS_ENV, raising=False)
    before = torch.get_num_threads()
    policy = host.ThreadPolicy(threads=before + 1)
    assert policy.apply() == before + 1 and torch.get_num_threads() == before + 1
    assert policy.apply() == before + 1  # later epochs: the caller's count is the one seen first
    policy.restore()
    assert torch.get_num_threads() == before


# -- the thread policy: pinned by default, load-adaptive only on request ----------------------------------------------
def test_unset_threads_are_fixed_from_the_machine_whatever_the_load(monkeypatch):
    import torch

    monkeypatch.delenv(host.THREADS_ENV, raising=False)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        policy = host.ThreadPolicy()
        torch.set_num_threads(2)  # changes made after the run started do not move it
        assert [policy.choose() for _ in range(3)] == [1, 1, 1] and policy.setting == 1
        assert policy.load is None  # the load is never sampled
        monkeypatch.setenv(host.THREADS_ENV, "3")  # a worker's share (or a test suite's pin) wins over torch's count
        assert host.ThreadPolicy().choose() == 3 and host.ThreadPolicy(2).choose() == 2
    finally:
        torch.set_num_threads(before)


def test_auto_threads_follow_the_load_and_ignore_the_env_pin(monkeypatch):
    monkeypatch.setenv(host.THREADS_ENV, "3")
    policy = host.ThreadPolicy("auto")
    assert policy.setting == "auto" and policy.adaptive
    assert 1 <= policy.choose() <= host.available_cores() and policy.load is not None  # decided from the load


def test_thread_settings_are_checked_and_parsed():
    from kdlab.config import TrainConfig, from_dict
    from kdlab.errors import ConfigError

    for bad in (0, -2, "many"):
        with pytest.raises(ConfigError, match="threads"):
            host.ThreadPolicy(bad)
    assert from_dict(TrainConfig, {"threads": "auto"}).threads == "auto"
    assert from_dict(TrainConfig, {"threads": "4"}).threads == 4 and from_dict(TrainConfig, {}).threads is None
    with pytest.raises(ConfigError, match="threads"):
        from_dict(TrainConfig, {"threads": "some"})


def test_resume_takes_the_recorded_setting_unless_one_is_given(monkeypatch):
    monkeypatch.setenv(host.THREADS_ENV, "2")
    unset = host.ThreadPolicy()
    unset.resume(1)
    assert unset.choose() == 1 and unset.setting == 1
    unset = host.ThreadPolicy()
    unset.resume("auto")
    assert unset.adaptive
    given = host.ThreadPolicy(3)
    given.resume(1)
    assert given.choose() == 3
    auto = host.ThreadPolicy("auto")
    auto.resume(1)
    assert auto.adaptive


def test_a_resumed_run_keeps_the_thread_count_it_started_with(tmp_path, monkeypatch):
    import json

    import torch

    import kdlab
    from fixtures_data import make_fashion_mnist
    from kdlab.engine.trainer import Trainer

    make_fashion_mnist(tmp_path / "data", n_train=64, n_test=16)
    kwargs = {"data": {"name": "fashion_mnist", "root": str(tmp_path / "data"), "batch_size": 32}, "epochs": 2,
              "device": "cpu", "progress": False, "out_dir": str(tmp_path / "runs"), "name": "r"}
    monkeypatch.delenv(host.THREADS_ENV, raising=False)
    before = torch.get_num_threads()
    original = Trainer._checkpoint

    def stop_after_first(self, epochs_done):
        original(self, epochs_done)
        raise KeyboardInterrupt

    try:
        torch.set_num_threads(1)  # the machine's count when the run starts
        with monkeypatch.context() as patch:
            patch.setattr(Trainer, "_checkpoint", stop_after_first)
            with pytest.raises(KeyboardInterrupt):
                kdlab.train("cnn_tiny", **kwargs)
        torch.set_num_threads(2)  # resumed in a process that would now choose 2
        run = kdlab.train("cnn_tiny", **kwargs)
    finally:
        torch.set_num_threads(before)
    assert [row["threads"] for row in run.history] == [1, 1]
    assert run.metrics["threads"] == 1
    assert json.loads((run.run_dir / "meta.json").read_text())["threads"] == 1
