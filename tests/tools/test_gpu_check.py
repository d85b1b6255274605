"""The prepared GPU check finds every lesson whose demo takes `--device`, and reports a
demo that fails or returns nothing as such, on a CPU too."""

import textwrap

from tools import gpu_check


def test_every_lesson_with_a_device_flag_is_checked():
    modules = gpu_check.lesson_modules()
    assert "annotated.cnn.lenet" in modules
    assert "annotated.foundations.optimizers" in modules
    # matrix.py is pure Python: it has no --device to check.
    assert "annotated.foundations.matrix" not in modules


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
    result = gpu_check.run_demo("fine_demo", limit_s=60)
    assert result["status"] == "ok"
    assert result["result"] == {"acc": 0.5}
