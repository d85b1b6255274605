"""Downloads that run on their own: a lesson's `.py` and `.ipynb`, with the project
modules they import bundled in.

A lesson imports `annotated.data`, `annotated.figures` and earlier lessons. Downloaded
into an empty folder, those imports would fail, so the download carries their sources in
a dictionary and a small import hook that serves them (a clone of the repository never
needs it). The hook comes right after the module docstring (and any `from __future__`
import), before the lesson's own imports, and it is the first code cell of the notebook.
"""

from __future__ import annotations

import ast

BUNDLE_TEMPLATE = """\
# ---- bundled project modules ---------------------------------------------------\
----------
# This file was downloaded from the site. It imports modules of the project \
({names}), so
# their sources are bundled here and served by an import hook: it runs outside the
# repository with only pip packages installed. In a clone of the repository, \
delete this block.
import importlib.abc
import importlib.util
import sys

_BUNDLED = {{
{entries}
}}


class _BundledModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    \"\"\"Serves the modules in _BUNDLED, and the packages above them, before \
anything else.\"\"\"

    def find_spec(self, name, path=None, target=None):
        packages = {{
            module.rsplit(".", depth)[0]
            for module in _BUNDLED
            for depth in range(1, module.count(".") + 1)
        }}
        if name in _BUNDLED or name in packages:
            return importlib.util.spec_from_loader(
                name, self, is_package=name in packages
            )
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        source = _BUNDLED.get(module.__name__, "")
        exec(compile(source, f"<bundled {{module.__name__}}>", "exec"), module.__dict__)


sys.meta_path.insert(0, _BundledModules())
# ---- end of the bundled modules -------------------------------------------------\
-----------
"""


def bundle(modules: dict[str, str]) -> str:
    """The import hook serving `modules` ({"annotated.data": source}); "" when there are
    none."""
    if not modules:
        return ""
    entries = "\n".join(
        f"    {name!r}: {source!r}," for name, source in sorted(modules.items())
    )
    return BUNDLE_TEMPLATE.format(names=", ".join(sorted(modules)), entries=entries)


def script(source: str, tree: ast.Module, modules: dict[str, str]) -> str:
    """The lesson's source with the bundle inserted before its first import."""
    hook = bundle(modules)
    if not hook:
        return source
    body = list(tree.body)
    first = 0
    if (
        body
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
    ):
        # The module docstring stays first, so the file keeps its front matter.
        first = 1
    while (
        first < len(body)
        and isinstance(body[first], ast.ImportFrom)
        and body[first].module == "__future__"
    ):
        first += 1
    lines = source.splitlines(keepends=True)
    at = body[first].lineno - 1 if first < len(body) else len(lines)
    return "".join(lines[:at]) + hook + "\n\n" + "".join(lines[at:])
