r"""Build the CUDA C lessons' `.cu` files with `nvcc`; call their launchers from Python.

The three CUDA C lessons (`annotated/kernels/sgemm.cu`, `reduction.cu`, `softmax.cu`)
are plain CUDA C: no PyTorch headers, no pybind11. Each kernel has an `extern "C"` host
launcher that takes raw device pointers, sizes and a `cudaStream_t`, launches the
kernel and returns `cudaGetLastError()` as an `int`. That keeps the files readable (and
compilable with nothing but `nvcc`) by someone who has never seen ATen.

This module is the bridge, the role `torch.utils.cpp_extension` plays in the
C++-extension lesson: `load` compiles a `.cu` file into a shared library with
`nvcc -shared` for the GPU at hand, caches it, and opens it with `ctypes`; a driver then
calls a launcher with `tensor.data_ptr()` for each pointer, Python ints for the sizes
and `torch.cuda.current_stream().cuda_stream` for the stream, so the kernel runs in
order with PyTorch's own work. `ctypes` converts nothing and checks nothing, which is
why every driver checks its tensors (dtype, device, shape, contiguity, alignment)
before it hands a pointer over. `compile_only` runs `nvcc -c` without a GPU, so a CPU
machine with the CUDA toolkit can at least check that a lesson compiles.
"""

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from annotated.data import cache_folder

# Compiled into every library beside the lesson's file: a lesson's launchers return
# the error code, and this turns it into CUDA's own message.
ERROR_STRING_SOURCE = """
#include <cuda_runtime.h>
extern "C" const char *annotated_cuda_error_string(int code) {
  return cudaGetErrorString((cudaError_t)code);
}
"""


def nvcc_path() -> str:
    """`$NVCC`, else `nvcc` on the PATH, else `$CUDA_HOME/bin/nvcc`; raises
    `FileNotFoundError` when none exists."""
    candidates = [
        os.environ.get("NVCC"),
        shutil.which("nvcc"),
        os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc"),
    ]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(
        "nvcc, the CUDA compiler, was not found: install the CUDA toolkit and put its "
        "bin/ folder on the PATH, or set NVCC or CUDA_HOME"
    )


def run_nvcc(arguments: list[str], source: Path) -> None:
    """Run nvcc; on failure raise `RuntimeError` with the file and nvcc's messages."""
    done = subprocess.run(
        [nvcc_path(), *arguments], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"nvcc failed to compile {source} (exit code {done.returncode}):\n"
            f"{done.stderr.strip() or done.stdout.strip()}"
        )


def check_source(source: str | Path) -> Path:
    source = Path(source)
    if source.suffix != ".cu" or not source.is_file():
        raise ValueError(f"source must be an existing .cu file, got {source}")
    return source


def compile_only(source: str | Path, arch: str = "sm_90") -> None:
    """Compile `source` to an object file for `arch` and throw it away: the check
    that a lesson compiles, which needs the CUDA toolkit but no GPU."""
    source = check_source(source)
    if not arch.startswith(("sm_", "compute_")):
        raise ValueError(f"arch must look like 'sm_90', got {arch!r}")
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / f"{source.stem}.o"
        run_nvcc([f"-arch={arch}", "-O3", "-c", str(source), "-o", str(target)], source)


def device_arch() -> str:
    """`sm_<major><minor>` of the current CUDA device, e.g. `sm_90` on an H100/H200."""
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("loading a CUDA C lesson needs a CUDA GPU; none is visible")
    major, minor = torch.cuda.get_device_capability()
    return f"sm_{major}{minor}"


def build(source: str | Path, arch: str) -> Path:
    """`source` compiled for `arch` into `<cache>/cuda/<stem>-<arch>-<hash>.so`, built
    once per version of the file and architecture; returns the library's path."""
    source = check_source(source)
    text = source.read_bytes() + ERROR_STRING_SOURCE.encode()
    digest = hashlib.sha256(text + arch.encode()).hexdigest()[:12]
    library = cache_folder() / "cuda" / f"{source.stem}-{arch}-{digest}.so"
    if not library.is_file():
        library.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=library.parent) as folder:
            helper = Path(folder) / "error_string.cu"
            helper.write_text(ERROR_STRING_SOURCE, encoding="utf-8")
            built = Path(folder) / library.name
            run_nvcc(
                ["-O3", "-shared", "-Xcompiler", "-fPIC", f"-arch={arch}"]
                + [str(source), str(helper), "-o", str(built)],
                source,
            )
            os.replace(built, library)  # whole or not at all
    return library


@functools.cache
def load(source: str | Path) -> ctypes.CDLL:
    """`source` built for the current GPU (see `build`) and opened with ctypes."""
    return ctypes.CDLL(str(build(source, device_arch())))


def launcher(library: ctypes.CDLL, name: str, argtypes: list) -> ctypes._CFuncPtr:
    """The exported function `name` of `library`, declared to take `argtypes` and
    return a CUDA error code."""
    function = getattr(library, name)
    function.argtypes = argtypes
    function.restype = ctypes.c_int
    return function


def check_error(library: ctypes.CDLL, code: int, what: str) -> None:
    """Raise `RuntimeError` with CUDA's message unless `code` is `cudaSuccess` (0)."""
    if code != 0:
        describe = library.annotated_cuda_error_string
        describe.argtypes, describe.restype = [ctypes.c_int], ctypes.c_char_p
        raise RuntimeError(
            f"{what}: CUDA error {code}: {describe(code).decode(errors='replace')}"
        )


def compile_without_gpu(source: str | Path) -> dict[str, float]:
    """A driver's demo on a machine without a GPU: compile the lesson for sm_90 when
    nvcc is there, and say that running its kernels needs a GPU."""
    source = check_source(source)
    try:
        nvcc_path()
    except FileNotFoundError as error:
        print(f"not compiled: {error}")
        return {"compiled": 0.0, "needs a GPU": 1.0}
    compile_only(source, "sm_90")
    print(f"{source.name} compiles for sm_90; running its kernels needs a CUDA GPU")
    return {"compiled": 1.0, "needs a GPU": 1.0}


def copy_bandwidth() -> float:
    """GB/s of a 1 GiB device-to-device copy, bytes read plus bytes written: the
    ceiling a memory-bound kernel is measured against."""
    import torch
    from triton.testing import do_bench

    source = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    target = torch.empty_like(source)
    ms = do_bench(lambda: target.copy_(source), return_mode="median")
    return 2 * source.numel() / ms / 1e6
