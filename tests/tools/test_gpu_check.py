"""The prepared GPU check finds every lesson whose demo takes `--device`, and reports a
demo that fails or returns nothing as such, on a CPU too."""

import json
import textwrap

from tools import gpu_check


def test_every_lesson_with_a_device_flag_is_checked():
    modules = gpu_check.lesson_modules()
    assert "annotated.cnn.lenet" in modules
    assert "annotated.foundations.optimizers" in modules
    # matrix.py is pure Python: it has no --device to check.
    assert "annotated.foundations.matrix" not in modules


def test_every_test_file_that_skips_without_cuda_is_run():
    files = gpu_check.gpu_test_files()
    # One asks torch.cuda.is_available() itself, the CUDA C ones through cuda_checks.
    assert "tests/kernels/test_softmax.py" in files
    for lesson in ("softmax", "reduction", "sgemm"):
        assert f"tests/kernels/test_{lesson}_cu.py" in files
    assert not any(file.startswith("tests/tools/") for file in files)


def test_a_demo_that_raises_is_reported_with_its_last_lines(tmp_path, monkeypatch):
    (tmp_path / "broken_demo.py").write_text(
        textwrap.dedent(
            """
            def main(argv):
                raise RuntimeError("no kernel image for this device")
            """
        )
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    result = gpu_check.run_demo("broken_demo", limit_s=60)
    assert result["status"] == "failed"
    assert "no kernel image" in result["tail"][-1]


def test_a_demo_that_returns_its_metrics_is_ok(tmp_path, monkeypatch):
    (tmp_path / "fine_demo.py").write_text("def main(argv):\n    return {'acc': 0.5}\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    # The demo's figures go to a temporary folder, removed when it ends.
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "temporary"))
    (tmp_path / "temporary").mkdir()
    result = gpu_check.run_demo("fine_demo", limit_s=60)
    assert result["status"] == "ok"
    assert result["result"] == {"acc": 0.5}
    assert not any((tmp_path / "temporary").iterdir())


def test_every_kernel_lesson_reports_for_its_own_source():
    modules = gpu_check.kernel_modules()
    assert modules["annotated.kernels.fused_lstm"].name == "fused_lstm.py"
    # A CUDA C lesson reports through its driver, for the .cu file.
    for module, path in modules.items():
        if ".cuda." in module:
            assert path.suffix == ".cu" and path.exists(), module
    assert set(gpu_check.sources()) == {
        path.relative_to(gpu_check.ROOT).as_posix() for path in modules.values()
    }


def test_stored_results_reach_the_page_with_fractions_as_percentages(tmp_path, capsys):
    from tools.literate import gpu_results, render
    from tools.literate.files import LessonFile

    root = tmp_path / "project"
    (root / "annotated/kernels").mkdir(parents=True)
    lesson = root / "annotated/kernels/copy.py"
    lesson.write_text("x = 1\n")
    copy_lesson = LessonFile(root, "annotated/kernels/copy.py")
    check = {
        "date": "2026-12-04",
        "ceilings": {"device": "NVIDIA H200", "torch": "2.11"},
        "sources": {"annotated/kernels/copy.py": copy_lesson.source_sha256()},
        "kernels": {
            "annotated.kernels.copy": {
                "size": 1024,
                "ours GB/s": 4000.5,
                "ours of copy": 0.95,
            },
            "annotated.kernels.gone": {"size": 1},
        },
    }
    # Stored as a user stores them: the command, given the file gpu_check.sh wrote.
    (tmp_path / "gpu_check.json").write_text(json.dumps(check))
    assert (
        gpu_results.main([str(tmp_path / "gpu_check.json"), "--root", str(root)]) == 0
    )
    said = capsys.readouterr().out
    written = [root / "docs/gpu/kernels/copy.json"]
    assert said.splitlines() == [
        "skipped annotated.kernels.gone: no lesson runs as this module here",
        f"wrote {written[0]}",
    ]
    record = gpu_results.parse_gpu_record(
        written[0].read_text(), copy_lesson.source_sha256()
    )
    assert record.fresh and record.device == "NVIDIA H200"
    table = render._gpu_table(record)
    assert "95.0%" in table and "4000" in table and "1,024" in table
    assert "lit-pending" not in table
    lesson.write_text("x = 2\n")  # edited since: the numbers are for an older version
    stale = gpu_results.parse_gpu_record(
        written[0].read_text(), copy_lesson.source_sha256()
    )
    assert "older version" in render._gpu_table(stale)
    pending = render._gpu_table(None)
    assert "not measured on a GPU yet" in pending
    # The command names the file gpu_check.sh writes when $OUT is not set.
    assert "gpu_results gpu-results/gpu_check.json" in pending
