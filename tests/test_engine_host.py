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
