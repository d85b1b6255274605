"""A stand-in GPU for the kernel lessons' `gpu_report`: run under `fake_cuda()` with
fixed times, so that its arithmetic is checked without a device."""

import pytest
import torch


@pytest.fixture
def fixed_times(monkeypatch):
    """`fixed_times([2.0, 5.0])`: `torch.cuda.is_available()` says yes (`fake_cuda`
    leaves it False) and `triton.testing.do_bench` runs each function once and returns
    the next of the given milliseconds. With `skip_first=True` the first function is
    not run: a report's 1 GiB copy or 8192² product would take minutes on a CPU."""
    import triton

    def use(times, skip_first=False):
        calls = iter(enumerate(times))

        def bench(function, **options):
            index, ms = next(calls)
            if index > 0 or not skip_first:
                function()
            return ms

        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(triton.testing, "do_bench", bench)

    return use
