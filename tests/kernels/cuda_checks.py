"""What the CUDA C lessons' tests share: whether nvcc and a GPU are here, and the C
signature of each launcher a lesson exports, to check against the ctypes its Python
driver passes."""

import ctypes
import re

import pytest
import torch

from annotated.kernels.cuda import nvcc_path

try:
    nvcc_path()
    HAS_NVCC = True
except FileNotFoundError:
    HAS_NVCC = False

NVCC = pytest.mark.skipif(not HAS_NVCC, reason="nvcc (the CUDA toolkit) not on PATH")
# The kernels are built with nvcc for the GPU at hand, so running them needs both.
CUDA = pytest.mark.skipif(
    not (torch.cuda.is_available() and HAS_NVCC), reason="needs a CUDA GPU and nvcc"
)
C_TYPES = {"int": ctypes.c_int}  # everything else a launcher takes is a pointer


def launcher_signatures(source) -> dict[str, list]:
    """Each `extern "C" int name(...)` in `source` with its parameters' ctypes."""
    found = {}
    text = source.read_text(encoding="utf-8")
    for name, parameters in re.findall(r'extern "C" int (\w+)\(([^)]*)\)', text):
        found[name] = [
            C_TYPES.get(" ".join(p.split()[:-1]), ctypes.c_void_p)
            for p in parameters.split(",")
        ]
    return found
