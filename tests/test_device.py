"""The mixed-precision choice: bfloat16 without a GradScaler on GPUs and CPUs that compute it
natively (a CPU when asked), float16 with one on older GPUs, float32 elsewhere (capabilities faked)."""

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


@pytest.mark.parametrize("instructions", ["avx512_bf16", "amx"])
def test_cpus_with_bfloat16_instructions_train_in_bfloat16_only_when_asked(monkeypatch, instructions):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: instructions == "avx512_bf16")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: instructions == "amx")
    policy = mixed_precision(torch.device("cpu"), cpu_amp=True)
    assert (policy.enabled, policy.dtype, policy.grad_scaler) == (True, torch.bfloat16, False)
    assert not mixed_precision(torch.device("cpu")).enabled, "float32 by default: bfloat16 cost Dice on cpu-demo"
    assert not mixed_precision(torch.device("cpu"), amp=False, cpu_amp=True).enabled


def test_other_cpus_and_amp_off_run_in_float32(capability, monkeypatch):
    capability(9)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    for policy in (mixed_precision(torch.device("cpu"), cpu_amp=True), mixed_precision(CUDA, amp=False)):
        assert (policy.enabled, policy.dtype, policy.grad_scaler) == (False, None, False)
        with policy.autocast(torch.device("cpu")):
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
        assert not policy.scaler().is_enabled()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_training_step_on_this_gpu_runs_in_the_chosen_precision():
    from monai.networks.nets import UNETR

    policy = mixed_precision(CUDA)
    model = UNETR(1, 2, (32, 32, 32), feature_size=8, hidden_size=64, mlp_dim=128, num_heads=2).to(CUDA)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = policy.scaler()
    x, y = torch.rand(2, 1, 32, 32, 32, device=CUDA), torch.randint(0, 2, (2, 32, 32, 32), device=CUDA)
    before = [p.detach().clone() for p in model.parameters()]
    with policy.autocast(CUDA):
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
    assert logits.dtype == policy.dtype
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    assert torch.isfinite(loss) and any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert scaler.is_enabled() == (policy.dtype == torch.float16)
