"""The fake-CUDA plugin raises where a GPU would (a CPU tensor beside a GPU one, a CPU
scalar where an operation takes none, a generator on the other device, `.numpy()` of a
GPU tensor, GPU indices into a CPU tensor, inside `vmap` and other threads too),
accepts what a GPU accepts (a module moved and trained, a checkpoint loaded onto the
GPU, 0-d indices, integer devices, `numpy(force=True)`), restores torch and argparse
afterwards, and keeps only the tests that run a demo."""

import argparse
import copy
import io
import threading
from concurrent.futures import ThreadPoolExecutor

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


def test_tensors_nested_in_arguments_and_results_are_followed():
    """Arguments nest tensors in lists, tuples and keyword dicts, and results come back
    in named tuples (`torch.max`) and lists (`torch.split`): each is seen."""
    with fake_cuda():
        x = torch.ones(2, 3, device="cuda")
        with pytest.raises(RuntimeError, match="cpu and cuda"):
            torch.cat((x, torch.ones(2, 3)))
        with pytest.raises(RuntimeError, match="cpu and cuda"):
            torch.add(x, other=torch.ones(2, 3))
        with pytest.raises(RuntimeError, match="cpu and cuda"):
            torch._foreach_add([x], [torch.ones(2, 3)])
        assert (
            torch.max(x, dim=0).values.is_cuda and torch.max(x, dim=0).indices.is_cuda
        )
        assert all(part.is_cuda for part in torch.split(x, 1))
        assert not any(part.is_cuda for part in torch.split(torch.ones(2), 1))


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


def test_what_pytorch_rejects_only_on_a_gpu_beyond_plain_mixing():
    with fake_cuda():
        lengths = torch.tensor([3, 1], device="cuda")
        # A factory reads a GPU scalar as a number and makes a CPU tensor.
        with pytest.raises(RuntimeError, match="same device"):
            torch.arange(int(lengths.max()))[None] < lengths[:, None]
        assert not torch.arange(lengths.max()).is_cuda
        assert torch.tensor([lengths[0], lengths[1]]).numpy().tolist() == [3, 1]
        # Stacking, embedding and losses take no CPU scalar beside a GPU tensor.
        with pytest.raises(RuntimeError, match="stack"):
            torch.stack([lengths.sum(), torch.tensor(0)])
        with pytest.raises(RuntimeError, match="cross_entropy"):
            F.cross_entropy(torch.zeros(4, device="cuda"), torch.tensor(2))
        # A distribution broadcasts its CPU scale as a view on the CPU.
        normal = torch.distributions.Normal(torch.zeros(3, device="cuda"), 1.0)
        assert normal.rsample().is_cuda
        scale = torch.tensor(1.0)
        with pytest.raises(RuntimeError, match="same device"):
            torch.distributions.Normal(torch.zeros(3, device="cuda"), scale).rsample()
        # Inside vmap, a tensor's device is the batched tensor's.
        weights = torch.zeros(2, 3, device="cuda")
        with pytest.raises(RuntimeError, match="same device"):
            torch.vmap(lambda w: w + torch.arange(3))(weights)
        assert torch.vmap(lambda w: w + torch.arange(3, device=w.device))(
            weights
        ).is_cuda


@pytest.mark.filterwarnings("ignore:To copy construct")  # new_tensor(a tensor)
def test_what_a_gpu_accepts_the_fake_accepts():
    with fake_cuda():
        gpu = torch.arange(5.0, device="cuda")
        assert torch.arange(5)[gpu.argmax()].item() == 4  # a 0-d index is a number
        gpu.index_put_((torch.tensor([0, 1]),), torch.ones(2, device="cuda"))
        assert gpu.new_tensor(torch.ones(2)).is_cuda
        assert gpu.numpy(force=True).tolist() == [1, 1, 2, 3, 4]
        layout = torch.channels_last
        image = torch.zeros(1, 2, 3, 3).to("cuda", memory_format=layout)
        assert image.is_cuda and image.is_contiguous(memory_format=layout)
        assert (
            torch.ones(2).to(0).is_cuda and torch.nn.Linear(2, 2).to(0).weight.is_cuda
        )
        generator = torch.Generator(device="cuda").manual_seed(0)
        assert copy.deepcopy(generator).device.type == "cuda"
        buffer = io.BytesIO()
        torch.save({"w": torch.ones(2)}, buffer)
        buffer.seek(0)
        assert torch.load(buffer, map_location="cuda")["w"].is_cuda


def test_threads_started_inside_the_block_are_checked_too():
    errors = []

    def background_loop(x):
        try:
            forward_with_a_cpu_arange(x)
        except RuntimeError as error:
            errors.append(error)

    with fake_cuda():
        x = torch.zeros(2, 3, device="cuda")
        thread = threading.Thread(target=background_loop, args=(x,))
        thread.start()
        thread.join()
        with ThreadPoolExecutor(1) as pool:
            y = pool.submit(forward_on_the_input_device, x).result()
            with pytest.raises(RuntimeError, match="same device"):
                pool.submit(forward_with_a_cpu_arange, x).result()
    assert len(errors) == 1 and "same device" in str(errors[0])
    assert placed(y) == "cuda"
    assert threading.Thread.run.__module__ == "threading"  # restored
