"""The prepared GPU check: one command that runs, on a machine with a CUDA GPU, what the
CPU-only CI cannot, and writes the numbers as JSON.

    bash tools/gpu_check.sh            # results under $OUT, or gpu-results/ without it

It measures the device's ceilings first (device-to-device copy bandwidth and a bf16
matrix product), then runs

- the tests that need a GPU (those that skip without CUDA), with Triton compiling for
  real (`TRITON_INTERPRET=0`);
- every kernel lesson's `gpu_report()`: sizes, times, achieved GB/s or TFLOP/s as a
  fraction of the measured ceilings, and the ratio against the torch op;
- every lesson's demo with `--device cuda` and its default flags, each in its own
  process with a time limit, several at once, recording what `main` returned.

It uses the packages the machine already has: nothing is installed. Back on the
development machine, `python -m tools.literate.gpu_results gpu-results/gpu_check.json`
stores each kernel lesson's report under docs/gpu/, where its page shows it."""

import argparse
import concurrent.futures
import datetime
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tools.literate.files import results_sha256

ROOT = Path(__file__).resolve().parents[1]

# A demo's `main` runs in a child process; this prints what it returned as the last
# line of its output, so a crash and a wrong metric are told apart.
CHILD = """
import json, sys, importlib
module = importlib.import_module(sys.argv[1])
result = module.main(sys.argv[2:])
print("RESULT " + json.dumps(result, default=float))
"""


def lesson_modules() -> list[str]:
    """Every lesson module whose demo takes `--device`, in file order."""
    found = []
    for path in sorted(ROOT.glob("annotated/*/*.py")):
        if path.name == "__init__.py":
            continue
        if '"--device"' in path.read_text(encoding="utf-8"):
            found.append(".".join(path.relative_to(ROOT).with_suffix("").parts))
    return found


def ceilings() -> dict:
    """The device's name and two measured ceilings: bytes per second of a
    device-to-device copy (read + write counted) and bf16 matrix-product FLOP/s."""
    import torch

    props = torch.cuda.get_device_properties(0)
    copy_src = torch.empty(2**30, dtype=torch.uint8, device="cuda")  # 1 GiB
    copy_dst = torch.empty_like(copy_src)
    size = 8192
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)

    def timed(fn, repeats=10):
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        start = torch.cuda.Event(enable_timing=True)
        stop = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            fn()
        stop.record()
        torch.cuda.synchronize()
        return start.elapsed_time(stop) / 1000 / repeats

    copy_s = timed(lambda: copy_dst.copy_(copy_src))
    matmul_s = timed(lambda: a @ b)
    return {
        "device": props.name,
        "memory_gib": round(props.total_memory / 2**30, 1),
        "multiprocessors": props.multi_processor_count,
        "torch": torch.__version__,
        "copy_bytes_per_s": 2 * copy_src.numel() / copy_s,
        "bf16_matmul_flops": 2 * size**3 / matmul_s,
    }


def gpu_test_files() -> list[str]:
    """Every test file that skips without CUDA: it asks `torch.cuda.is_available()`
    itself, or through the `CUDA` mark of tests/kernels/cuda_checks.py."""
    needs_gpu = re.compile(
        r"cuda\.is_available\(\)|from tests\.kernels\.cuda_checks import"
    )
    return sorted(
        str(path.relative_to(ROOT))
        for path in ROOT.glob("tests/**/test_*.py")
        if "tools" not in path.parts
        and needs_gpu.search(path.read_text(encoding="utf-8"))
    )


def gpu_tests(out: Path) -> dict:
    """The tests that need a GPU, run with only their GPU tests selected by name
    (`cuda` or `gpu`)."""
    files = gpu_test_files()
    if not files:
        return {"files": [], "summary": "no GPU tests"}
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-k", "cuda or gpu", *files]
    command += ["-p", "no:cacheprovider", f"--junitxml={out / 'gpu_tests.xml'}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    (out / "gpu_tests.log").write_text(done.stdout + done.stderr, encoding="utf-8")
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    return {"files": files, "returncode": done.returncode, "summary": summary}


def kernel_modules() -> dict[str, Path]:
    """{module: the lesson file it reports for}: every Triton lesson in
    annotated/kernels/, and every CUDA C lesson's driver in annotated/kernels/cuda/."""
    found = {}
    for path in sorted(ROOT.glob("annotated/kernels/*.py")):
        if path.name != "__init__.py":
            found[f"annotated.kernels.{path.stem}"] = path
    for path in sorted(ROOT.glob("annotated/kernels/cuda/*.py")):
        if path.name != "__init__.py":
            found[f"annotated.kernels.cuda.{path.stem}"] = path.parents[1] / (
                path.stem + ".cu"
            )
    return found


def kernel_reports() -> dict:
    """Each kernel lesson's `gpu_report()`, with the default sizes it declares."""
    reports = {}
    for name in kernel_modules():
        module = importlib.import_module(name)
        if not hasattr(module, "gpu_report"):
            continue
        try:
            reports[name] = module.gpu_report()
        except Exception as error:  # one kernel's failure must not hide the others
            reports[name] = {"error": f"{type(error).__name__}: {error}"}
    return reports


def sources() -> dict[str, str]:
    """{lesson file: sha256} of the kernel lessons, so a stored report can tell the
    page whether it was measured on the current source."""
    return {
        path.relative_to(ROOT).as_posix(): results_sha256(
            path.read_text("utf-8"), path.suffix
        )
        for path in kernel_modules().values()
        if path.exists()
    }


def run_demo(module: str, limit_s: float) -> dict:
    """One lesson's demo with `--device cuda`, in a child process."""
    # The figures are thrown away with their folder: only the numbers come back.
    with tempfile.TemporaryDirectory(prefix=module.replace(".", "_")) as figures:
        command = [sys.executable, "-c", CHILD, module, "--device", "cuda"]
        command += ["--out", figures]
        start = time.perf_counter()
        try:
            done = subprocess.run(
                command, cwd=ROOT, capture_output=True, text=True, timeout=limit_s
            )
        except subprocess.TimeoutExpired:
            return {"status": "timeout", "seconds": limit_s}
    seconds = round(time.perf_counter() - start, 1)
    results = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not results:
        tail = (done.stdout + done.stderr).strip().splitlines()[-6:]
        return {"status": "failed", "seconds": seconds, "tail": tail}
    return {"status": "ok", "seconds": seconds, "result": json.loads(results[-1][7:])}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu-results"))
    parser.add_argument("--demo-limit", type=float, default=150, help="seconds each")
    parser.add_argument("--parallel", type=int, default=4, help="demos at once")
    parser.add_argument("--skip-demos", action="store_true", help="tests and kernels")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    report = {
        "date": datetime.date.today().isoformat(),
        "sources": sources(),
        "ceilings": ceilings(),
    }
    print(json.dumps(report["ceilings"]), flush=True)
    report["gpu_tests"] = gpu_tests(out)
    print("gpu tests:", report["gpu_tests"].get("summary"), flush=True)
    report["kernels"] = kernel_reports()
    print(json.dumps(report["kernels"], indent=1), flush=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1), encoding="utf-8")

    if not args.skip_demos:
        modules = lesson_modules()
        report["demos"] = {}
        with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
            futures = {
                pool.submit(run_demo, module, args.demo_limit): module
                for module in modules
            }
            for future in concurrent.futures.as_completed(futures):
                module = futures[future]
                report["demos"][module] = future.result()
                print(module, json.dumps(report["demos"][module]), flush=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
