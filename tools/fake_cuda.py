"""Fake CUDA: run the lessons' `--device cuda` path on a machine without a GPU.

CI has no GPU, so a demo that builds a CPU tensor beside a GPU one (`torch.arange(T)`
inside a forward, a CPU `torch.Generator` for `torch.multinomial` on GPU
probabilities, `.numpy()` on a GPU tensor) passes every test here and crashes for the
first reader who types `--device cuda`. This pytest plugin finds those crashes on a
CPU:

    pytest -p tools.fake_cuda tests/            # every test that calls a demo's main
    pytest -p tools.fake_cuda --lesson annotated/rl/world_model.py    # one lesson's

Every tensor still lives in CPU memory, but a `TorchFunctionMode` remembers which ones
the program put "on the GPU" (`device="cuda"`, `.to("cuda")`, `.cuda()`,
`Module.to("cuda")`) and which it built on the CPU, and raises the errors PyTorch
raises on a real GPU:

- an operation given a GPU tensor and a CPU tensor (a CPU scalar, 0-d, is allowed
  where PyTorch allows it: elementwise operations, not stacking, embedding or losses;
  a factory such as `torch.arange(n)` reads a tensor argument as a number);
- a generator whose device is not the device of the numbers it draws;
- `.numpy()` or `np.asarray` of a GPU tensor.

Moving a module (`Module.to`, `.cuda()`), pinning memory, `torch.load(map_location=)`
and safetensors' `load_file(device=)` are followed the same way.

A GPU tensor reports `device` cuda:0 and `is_cuda` True, so code that builds tensors
on `x.device` is followed correctly. `--device` defaults to cuda in every demo the
tests run, and the plugin keeps only the tests whose body calls `main(`. The calls
that only exist for a real device (`torch.cuda.synchronize`, the memory counters) do
nothing.

A TorchFunctionMode is per thread, so every thread that `threading.Thread` runs
while the block is open (an engine's background loop, a web server's, a thread pool's)
runs inside one too; a subclass that overrides `run` does not.

What it cannot see: the numbers of GPU kernels (autocast casts as on a CPU;
`torch.compile` returns the function uncompiled, since the compiler cannot trace the
mode), anything that reads a tensor's memory itself (Triton, CUDA C), and work in
other processes (DataLoader workers, Ray actors). A tensor it has not seen being made
(one that autograd's engine wrote, for example) counts as being on either device."""

import argparse
import collections
import contextlib
import inspect
import itertools
import threading
from unittest import mock

import safetensors.torch
import torch
import torch._C._functorch as functorch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakTensorKeyDictionary

CUDA = torch.device("cuda", 0)
CPU = torch.device("cpu")
Tensor = torch.Tensor

# Each tensor's pretend device, "cuda" or "cpu"; a tensor not here is either.
_placed = WeakTensorKeyDictionary()


def placed(tensor: Tensor) -> str | None:
    """Where the program put `tensor`: "cuda", "cpu" or None (not seen). Inside
    `torch.vmap` or `torch.func.grad` a tensor is a wrapper: its device is the wrapped
    tensor's."""
    kind = _placed.get(tensor)
    while kind is None and (
        functorch.is_batchedtensor(tensor) or functorch.is_gradtrackingtensor(tensor)
    ):
        tensor = functorch.get_unwrapped(tensor)
        kind = _placed.get(tensor)
    return kind


def _kind(device) -> str:
    """The device type ("cuda", "cpu", "meta", ...) of anything `device=` accepts
    (an int is a CUDA index)."""
    return "cuda" if isinstance(device, int) else torch.device(device).type


def _named(device):
    """An int device as "cuda:N": parsing an int asks the (absent) driver."""
    is_index = isinstance(device, int) and not isinstance(device, bool)
    return f"cuda:{device}" if is_index else device


# Functions that make a new tensor on `device=` (the CPU without it), reading a tensor
# argument as a number: `torch.arange(lengths.max())` is a CPU tensor on a GPU too.
FACTORIES = {
    torch.arange, torch.empty, torch.eye, torch.full, torch.linspace, torch.logspace,
    torch.ones, torch.rand, torch.randint, torch.randn, torch.randperm, torch.zeros,
    torch.tensor, torch.as_tensor,
}  # fmt: skip
# Operations whose device check has no exception for a CPU scalar (0-d) tensor.
NO_SCALARS = {
    torch.stack, torch.cat, torch.concat, torch.concatenate, torch.hstack,
    torch.vstack, torch.embedding, F.embedding, torch.index_select,
    Tensor.index_select, torch.gather, Tensor.gather, F.cross_entropy, F.nll_loss,
}  # fmt: skip
INDEX_PUT = {torch.index_put, Tensor.index_put, Tensor.index_put_}


class FakeGenerator(torch.Generator):
    """`torch.Generator(device="cuda")` on a CPU: a CPU generator that remembers it
    was asked for the GPU."""

    def __new__(cls, device="cpu"):
        generator = super().__new__(cls)  # on the CPU
        generator.kind = _kind(device)
        return generator

    def __init__(self, device="cpu"):
        super().__init__()

    @property
    def device(self):
        return CUDA if self.kind == "cuda" else CPU

    def __reduce__(self):  # copy.deepcopy and pickle keep the device
        _, _, state = super().__reduce__()
        return type(self), (self.kind,), state


def _mismatch(func, kinds) -> RuntimeError:
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", str(func))
    return RuntimeError(
        "Expected all tensors to be on the same device, but found at least two "
        f"devices, {' and '.join(sorted(kinds))}! (fake CUDA, in {name})"
    )


def _tensors(*trees) -> list[Tensor]:
    """The tensors in `trees`, in any order: a torch function's arguments and results
    hold them in tuples (named ones too), lists and dicts. Walked here rather than by
    `torch.utils._pytree`, which took half of a fake-GPU run's time."""
    found, pending = [], list(trees)
    while pending:
        item = pending.pop()
        if isinstance(item, Tensor):
            found.append(item)
        elif isinstance(item, (tuple, list, collections.deque)):
            pending.extend(item)
        elif isinstance(item, dict):
            pending.extend(item.values())
    return found


def _kinds(tensors: list[Tensor], scalars: bool = True) -> set[str]:
    """The devices of `tensors` that PyTorch would compare: with `scalars`, a CPU
    scalar (0-d) goes with any device."""
    kinds = set()
    for tensor in tensors:
        kind = placed(tensor)
        if scalars and kind == "cpu" and tensor.dim() == 0:
            continue
        if kind is not None:
            kinds.add(kind)
    return kinds


class FakeCudaMode(TorchFunctionMode):
    """Follows every tensor's pretend device and raises where a GPU would."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        first = args[0] if args else None
        if func == Tensor.device.__get__:
            return CUDA if placed(first) == "cuda" else func(*args)
        if func == Tensor.is_cuda.__get__:
            return placed(first) == "cuda"
        if func is Tensor.get_device:
            return 0 if placed(first) == "cuda" else func(*args)
        moves = kwargs.get("force")  # numpy(force=True) copies to the CPU first
        if (
            func in (Tensor.numpy, Tensor.__array__)
            and placed(first) == "cuda"
            and not moves
        ):
            raise TypeError(
                "can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() "
                "to copy the tensor to host memory first. (fake CUDA)"
            )
        if func in (Tensor.to, Tensor.cuda, Tensor.cpu):
            return self._move(func, first, args[1:], kwargs)
        if func == Tensor.grad.__get__:
            grad = func(*args)
            if grad is not None and placed(first) is not None:
                _placed[grad] = placed(first)
            return grad
        if func in (Tensor.__repr__, Tensor.__format__, Tensor.__str__):
            return func(*args, **kwargs)
        if func is torch.broadcast_tensors:  # views, each on its input's device
            result = func(*args, **kwargs)
            for before, after in zip(args, result):
                if placed(before) is not None:
                    _placed[after] = placed(before)
            return result
        if func is Tensor.pin_memory:  # page-locked memory needs a CUDA driver
            pinned = first.clone()
            _placed[pinned] = "cpu"
            return pinned
        if kwargs.get("pin_memory"):
            kwargs["pin_memory"] = False

        # Which device the result is on: `device=` if given, else its inputs'.
        target = None
        if kwargs.get("device") is not None:
            target = _kind(kwargs["device"])
            if target == "cuda":
                kwargs["device"] = "cpu"
        if func in FACTORIES:
            # Tensor arguments are numbers here, except the data of tensor/as_tensor.
            copies = func in (torch.tensor, torch.as_tensor) and isinstance(
                first, Tensor
            )
            checked = [first] if copies else []
        elif func is Tensor.__getitem__:
            checked = [first]  # a GPU tensor may be indexed by CPU indices
            indices = [
                index
                for index in _tensors(args[1:])
                if index.dim() > 0
                or index.is_floating_point()
                or index.dtype == torch.bool
            ]  # a 0-d integer index is read as a number
            if placed(first) == "cpu" and "cuda" in _kinds(indices):
                raise _mismatch(func, {"cpu", "cuda"})
        elif func is Tensor.__setitem__:
            # Slices and integers copy the value in (any device, as `copy_`);
            # tensor indices need the value on the tensor's device.
            advanced = any(tensor.dim() > 0 for tensor in _tensors(args[1]))
            checked = [first, *_tensors(args[2:])] if advanced else [first]
        elif func in INDEX_PUT:  # CPU indices are moved; the values are not
            checked = [first, *_tensors(args[2:3], kwargs.get("values"))]
        elif func in (Tensor.copy_, Tensor.new_tensor):
            checked = [first]
        else:
            checked = _tensors(args, kwargs)
        kinds = _kinds(checked, scalars=func not in NO_SCALARS)
        if len(kinds) > 1:
            raise _mismatch(func, kinds)
        if target is None:
            if kinds:
                target = kinds.pop()
            elif not checked:
                target = "cpu"  # a factory without device= makes a CPU tensor
            elif any(placed(tensor) == "cpu" for tensor in checked):
                target = "cpu"
        if kwargs.get("generator") is not None:
            drawn = getattr(kwargs["generator"], "kind", "cpu")
            if target is not None and drawn != target:
                raise RuntimeError(
                    f"Expected a '{target}' device type for generator but found "
                    f"'{drawn}' (fake CUDA, in {getattr(func, '__name__', func)})"
                )
        result = func(*args, **kwargs)
        if target is not None:
            for tensor in _tensors(result):
                _placed[tensor] = target
        return result

    def _move(self, func, tensor, args, kwargs):
        """`tensor.to(...)`, `.cuda()` and `.cpu()`: a copy when the device changes,
        as on a GPU, so that writing to it leaves the original alone."""
        source = placed(tensor)
        copy = kwargs.pop("copy", False)
        memory_format = kwargs.get("memory_format", torch.preserve_format)
        if func is Tensor.cuda:
            target, dtype = "cuda", None
            non_blocking = kwargs.get("non_blocking", False)
        elif func is Tensor.cpu:
            target, dtype, non_blocking = "cpu", None, False
        elif args and isinstance(args[0], Tensor):
            other = args[0]
            target, dtype = placed(other), other.dtype
            non_blocking = args[1] if len(args) > 1 else False
        else:
            device, dtype, non_blocking, memory_format = _parse_to(*args, **kwargs)
            target = None if device is None else _kind(device)
            if target not in (None, "cuda", "cpu"):  # meta: a real move
                result = func(tensor, *args, copy=copy, **kwargs)
                _placed[result] = target
                return result
        result = tensor.to(
            dtype=dtype or tensor.dtype,
            non_blocking=bool(non_blocking),
            copy=copy,
            memory_format=memory_format or torch.preserve_format,
        )
        if target is not None and target != (source or "cpu") and result is tensor:
            result = tensor.clone()
        kind = target or source
        if kind is not None:
            _placed[result] = kind
        return result


def _parse_to(*args, **kwargs):
    """(device, dtype, non_blocking, memory_format) of `.to(...)`'s arguments."""
    args = [_named(arg) for arg in args]
    kwargs = {key: _named(value) for key, value in kwargs.items()}
    with torch._C.DisableTorchFunction():  # the mode would rewrite device=
        return torch._C._nn._parse_to(*args, **kwargs)


_MODULE_TO = torch.nn.Module.to


def _module_to(self, *args, **kwargs):
    """`Module.to`: moves nothing, marks every parameter, gradient and buffer."""
    if args and isinstance(args[0], Tensor):
        device, dtype, memory_format = placed(args[0]), args[0].dtype, None
    else:
        device, dtype, _, memory_format = _parse_to(*args, **kwargs)
    if device is not None and _kind(device) not in ("cuda", "cpu"):  # meta
        return _MODULE_TO(self, *args, **kwargs)
    options = {"dtype": dtype, "memory_format": memory_format}
    options = {key: value for key, value in options.items() if value is not None}
    if options:
        _MODULE_TO(self, **options)
    if device is not None:
        kind = _kind(device)
        for tensor in itertools.chain(self.parameters(), self.buffers()):
            _placed[tensor] = kind
            if tensor.grad is not None:
                _placed[tensor.grad] = kind
    return self


def _parameter(original):
    """`nn.Parameter(data)` is a new tensor object: it keeps `data`'s device."""

    def new(cls, data=None, requires_grad=True):
        parameter = original(cls, data, requires_grad)
        if data is not None and placed(data) is not None:
            _placed[parameter] = placed(data)
        return parameter

    return staticmethod(new)


class _Autocast(torch.autocast):
    """`torch.autocast("cuda", ...)` casts as the CPU's autocast does."""

    def __init__(self, device_type, *args, **kwargs):
        device_type = "cpu" if device_type == "cuda" else device_type
        super().__init__(device_type, *args, **kwargs)


def _eager(model=None, **options):
    """`torch.compile` returns the function itself: the compiler cannot trace the
    mode's bookkeeping, and what runs is the same operations."""
    return model if model is not None else (lambda function: function)


def _vmap(original):
    """`torch.vmap`: its results are made by functorch, out of the mode's sight; they
    are on the device of the inputs they were mapped over."""

    def vmap(function, *args, **kwargs):
        mapped = original(function, *args, **kwargs)

        def run(*inputs, **options):
            result = mapped(*inputs, **options)
            kinds = _kinds(_tensors(inputs, options), scalars=False)
            for tensor in _tensors(result) if len(kinds) == 1 else []:
                _placed[tensor] = next(iter(kinds))
            return result

        return run

    return vmap


def _on_the_cpu(original):
    """`torch.from_numpy` and `torch.frombuffer` skip the mode: mark their tensors."""

    def make(*args, **kwargs):
        tensor = original(*args, **kwargs)
        _placed[tensor] = "cpu"
        return tensor

    return make


def _load_file(original):
    """safetensors' `load_file(filename, device)`: loads on the CPU, marks the
    tensors as on `device`."""

    def load_file(filename, device="cpu"):
        kind = _kind(device)
        tensors = original(filename, device="cpu" if kind == "cuda" else device)
        for tensor in tensors.values():
            _placed[tensor] = kind
        return tensors

    return load_file


def _load(original):
    """`torch.load(f, map_location="cuda")`: loads on the CPU, marks the tensors."""

    def load(f, map_location=None, *args, **kwargs):
        on_gpu = isinstance(map_location, (str, int, torch.device)) and (
            _kind(map_location) == "cuda"
        )
        result = original(f, "cpu" if on_gpu else map_location, *args, **kwargs)
        for tensor in _tensors(result) if on_gpu else []:
            _placed[tensor] = "cuda"
        return result

    return load


def _in_the_mode(original):
    """`Thread.run` inside a FakeCudaMode of the thread's own."""

    def run(self):
        with FakeCudaMode():
            original(self)

    return run


def _add_argument(original):
    """`--device` defaults to cuda, whatever the lesson's default, and takes it as
    given: the lesson's check (`annotated.data.torch_device`) would find no GPU."""

    def add_argument(self, *names, **kwargs):
        if "--device" in names:
            kwargs["default"] = "cuda"
            kwargs.pop("type", None)
        return original(self, *names, **kwargs)

    return add_argument


@contextlib.contextmanager
def fake_cuda():
    """Inside this block, torch behaves as if a GPU were there (see the module's
    docstring); torch and argparse are restored on leaving it."""
    module = torch.nn.Module
    patches = [
        (torch, "Generator", FakeGenerator),
        (module, "to", _module_to),
        (module, "cuda", lambda self, device=None: _module_to(self, "cuda")),
        (module, "cpu", lambda self: _module_to(self, "cpu")),
        (torch.cuda, "synchronize", lambda device=None: None),
        (torch.cuda, "max_memory_allocated", lambda device=None: 0),
        (torch.cuda, "memory_allocated", lambda device=None: 0),
        (torch.cuda, "reset_peak_memory_stats", lambda device=None: None),
        (torch.cuda, "get_device_name", lambda device=None: "fake CUDA device"),
        (torch.nn.Parameter, "__new__", _parameter(torch.nn.Parameter.__new__)),
        (torch, "autocast", _Autocast),
        (torch, "compile", _eager),
        (torch, "vmap", _vmap(torch.vmap)),
        (torch, "from_numpy", _on_the_cpu(torch.from_numpy)),
        (torch, "frombuffer", _on_the_cpu(torch.frombuffer)),
        (torch, "load", _load(torch.load)),
        (safetensors.torch, "load_file", _load_file(safetensors.torch.load_file)),
        (threading.Thread, "run", _in_the_mode(threading.Thread.run)),
        (
            argparse.ArgumentParser,
            "add_argument",
            _add_argument(argparse.ArgumentParser.add_argument),
        ),
    ]
    with contextlib.ExitStack() as stack:
        for owner, name, value in patches:
            stack.enter_context(mock.patch.object(owner, name, value))
        stack.enter_context(FakeCudaMode())
        yield


# pytest: `pytest -p tools.fake_cuda ...`


def pytest_configure(config):
    config._fake_cuda = fake_cuda()  # for the whole session
    config._fake_cuda.__enter__()


def pytest_unconfigure(config):
    config._fake_cuda.__exit__(None, None, None)


def pytest_collection_modifyitems(config, items):
    """Keep the tests that run a demo: those whose body calls `main(`."""
    kept, dropped = [], []
    for item in items:
        function = getattr(item, "function", None)
        source = inspect.getsource(function) if function is not None else ""
        (kept if "main(" in source else dropped).append(item)
    items[:] = kept
    config.hook.pytest_deselected(items=dropped)
