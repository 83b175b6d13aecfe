"""The mixed-precision choice: bfloat16 without a GradScaler on GPUs that compute it natively,
float16 with one on older GPUs, nothing on the CPU (GPU capabilities faked)."""

from __future__ import annotations

import pytest
import torch

from unetr_app.device import mixed_precision

CUDA = torch.device("cuda")


@pytest.fixture
def capability(monkeypatch):
    def fake(major: int, minor: int = 0):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, minor))

    return fake


@pytest.mark.parametrize(("gpu", "major", "minor"), [("A100", 8, 0), ("RTX 3090", 8, 6), ("H100/H200", 9, 0)])
def test_ampere_and_later_train_in_bfloat16_without_a_scaler(capability, gpu, major, minor):
    capability(major, minor)
    policy = mixed_precision(CUDA)
    assert (policy.enabled, policy.dtype, policy.grad_scaler) == (True, torch.bfloat16, False), gpu


@pytest.mark.parametrize(("gpu", "major", "minor"), [("V100", 7, 0), ("T4", 7, 5), ("P100", 6, 0)])
def test_older_gpus_keep_float16_and_the_grad_scaler(capability, gpu, major, minor):
    capability(major, minor)
    policy = mixed_precision(CUDA)
    assert (policy.enabled, policy.dtype, policy.grad_scaler) == (True, torch.float16, True), gpu


def test_cpu_and_amp_off_run_in_float32(capability):
    capability(9)
    for policy in (mixed_precision(torch.device("cpu")), mixed_precision(CUDA, amp=False)):
        assert (policy.enabled, policy.dtype, policy.grad_scaler) == (False, None, False)
        with policy.autocast(torch.device("cpu")):
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
        assert not policy.scaler().is_enabled()
