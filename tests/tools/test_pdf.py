"""Verified by reading the PDF back with pypdf: the miniature project's book, printed
by headless Chromium from mkdocs-print-site's page, has the fixture lesson's prose and
code on its pages, and printing one stage keeps that stage's lessons."""

import shutil

import pytest

from conftest import MKDOCS_YML, build
from tools.literate import pdf

PRINTABLE = (
    MKDOCS_YML
    + """\
  - print-site:
      add_to_navigation: false
      add_cover_page: false
"""
)


@pytest.mark.browser
def test_one_stage_prints_with_the_lessons_prose_and_code(project, tmp_path):
    if shutil.which("chromium") is None:
        pytest.fail("Chromium is not installed: `bash tools/setup.sh test` installs it")
    from pypdf import PdfReader

    (project / "mkdocs.yml").write_text(PRINTABLE)
    done = build(project)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "stage1.pdf"
    kept = pdf.print_book(project / "site", out, stage=1, root=project)
    assert kept == 1  # the stage's one written lesson
    reader = PdfReader(out)
    assert 2 <= len(reader.pages) <= 12
    text = "\n".join(page.extract_text() for page in reader.pages)
    assert "quetzalcoatlus" in text  # the lesson's prose
    assert "torch.relu(self.linear(x))" in text  # and its code
    assert "1 / " in text  # the page-number footer
    with pytest.raises(ValueError, match="stage 2 has no written lessons"):
        pdf.print_book(project / "site", tmp_path / "none.pdf", stage=2, root=project)
