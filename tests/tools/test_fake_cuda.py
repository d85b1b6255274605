"""The fake-CUDA plugin raises where a GPU would (a CPU tensor beside a GPU one, a
generator on the other device, `.numpy()` of a GPU tensor, GPU indices into a CPU
tensor), lets correct GPU code run (a module moved and trained, a checkpoint loaded
onto the GPU), restores torch and argparse afterwards, and keeps only the tests that
run a demo."""

import argparse

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tools.fake_cuda import fake_cuda, placed


def forward_with_a_cpu_arange(x):
    """A planted defect: positions built on the CPU beside a GPU input."""
    return x + torch.arange(x.shape[-1])  # [B, T]


def forward_on_the_input_device(x):
    return x + torch.arange(x.shape[-1], device=x.device)  # [B, T]


def test_mixed_devices_raise_and_code_on_the_input_device_runs():
    with fake_cuda():
        x = torch.zeros(2, 3, device="cuda")
        assert x.device == torch.device("cuda", 0) and x.is_cuda
        with pytest.raises(RuntimeError, match="same device.*arange|same device"):
            forward_with_a_cpu_arange(x)
        y = forward_on_the_input_device(x)
        assert placed(y) == "cuda" and y.tolist() == [[0, 1, 2], [0, 1, 2]]
        assert (x + torch.tensor(1.0)).is_cuda  # a CPU scalar goes with any device
        with pytest.raises(RuntimeError, match="cpu and cuda"):
            torch.stack([x, torch.zeros(2, 3)])


def test_modules_moved_to_the_gpu_need_gpu_inputs_and_train():
    with fake_cuda():
        model = torch.nn.Linear(3, 2).to("cuda")
        optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
        with pytest.raises(RuntimeError, match="linear"):
            model(torch.randn(4, 3))
        loss = model(torch.randn(4, 3).to("cuda")).square().mean()
        loss.backward()
        optimizer.step()
        assert model.weight.is_cuda and model.weight.grad.is_cuda
        assert not model.cpu().weight.is_cuda


def test_a_generator_must_be_on_the_device_it_draws_for():
    with fake_cuda():
        probs = torch.full((2, 5), 0.2, device="cuda")
        on_cpu = torch.Generator().manual_seed(0)
        with pytest.raises(RuntimeError, match="'cuda' device type for generator"):
            torch.multinomial(probs, 1, generator=on_cpu)
        with pytest.raises(RuntimeError, match="'cuda' device type for generator"):
            torch.randn(3, generator=on_cpu, device="cuda")
        on_gpu = torch.Generator(device="cuda").manual_seed(0)
        assert on_gpu.device.type == "cuda"
        assert torch.multinomial(probs, 1, generator=on_gpu).is_cuda
        with pytest.raises(RuntimeError, match="'cpu' device type for generator"):
            torch.randn(3, generator=on_gpu)


def test_numpy_needs_the_cpu_and_moves_copy():
    with fake_cuda():
        x = torch.ones(3)
        on_gpu = x.to("cuda")
        on_gpu.add_(1)
        assert x.tolist() == [1, 1, 1]  # moving copies, as across real devices
        with pytest.raises(TypeError, match="Tensor.cpu"):
            on_gpu.numpy()
        with pytest.raises(TypeError, match="Tensor.cpu"):
            np.asarray(on_gpu)
        assert on_gpu.cpu().numpy().tolist() == [2, 2, 2]
        assert not on_gpu.cpu().is_cuda and on_gpu.is_cuda


def test_indexing_follows_pytorch_rules():
    with fake_cuda():
        gpu = torch.arange(6.0, device="cuda")
        cpu_index = torch.tensor([0, 2])
        assert gpu[cpu_index].is_cuda  # a GPU tensor takes CPU indices
        with pytest.raises(RuntimeError, match="getitem"):
            torch.arange(6.0)[cpu_index.to("cuda")]
        gpu[1:3] = torch.tensor([7.0, 8.0])  # a slice copies in from any device
        with pytest.raises(RuntimeError, match="setitem"):
            gpu[cpu_index] = torch.tensor([7.0, 8.0])
        with pytest.raises(RuntimeError, match="embedding"):
            F.embedding(torch.tensor([0, 1]), torch.zeros(3, 2, device="cuda"))
        with pytest.raises(RuntimeError, match="same device"):
            gpu + torch.from_numpy(np.zeros(6, dtype=np.float32))


def test_demo_flags_default_to_cuda_and_everything_is_restored():
    generator_type, module_to = torch.Generator, torch.nn.Module.to
    with fake_cuda():
        parser = argparse.ArgumentParser()
        parser.add_argument("--device", default="cpu")
        assert parser.parse_args([]).device == "cuda"
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    assert parser.parse_args([]).device == "cpu"
    assert torch.Generator is generator_type and torch.nn.Module.to is module_to
    assert torch.zeros(2).device.type == "cpu"


def test_module_to_with_keywords_and_checkpoints_loaded_onto_the_gpu(tmp_path):
    import safetensors.torch

    with fake_cuda():
        model = torch.nn.Linear(2, 2).to(device="cuda", dtype=torch.float64)
        assert model.weight.is_cuda and model.weight.dtype == torch.float64
        safetensors.torch.save_file(
            {"w": torch.ones(2).pin_memory()}, tmp_path / "w.safetensors"
        )
        loaded = safetensors.torch.load_file(tmp_path / "w.safetensors", "cuda:0")
        assert loaded["w"].is_cuda


def test_the_plugin_keeps_only_the_tests_that_run_a_demo():
    from types import SimpleNamespace

    from tools import fake_cuda

    def test_runs_the_demo(main=print):
        main(["--steps", "2"])

    def test_checks_a_shape():
        assert torch.zeros(2).shape == (2,)

    items = [
        SimpleNamespace(function=f) for f in (test_runs_the_demo, test_checks_a_shape)
    ]
    dropped = []
    hook = SimpleNamespace(pytest_deselected=lambda items: dropped.extend(items))
    fake_cuda.pytest_collection_modifyitems(SimpleNamespace(hook=hook), items)
    assert [item.function for item in items] == [test_runs_the_demo]
    assert [item.function for item in dropped] == [test_checks_a_shape]
