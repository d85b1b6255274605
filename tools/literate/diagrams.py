"""Diagrams drawn from the code: a class diagram read from the AST, and a dataflow
diagram from running the lesson's declared example.

Both become Graphviz `dot` sources, then inline SVG. SVGs are cached under the cache
folder by the hash of their dot source, and a dataflow's dot source by the hash of the
lesson's source, so a warm build runs neither Graphviz nor the example. A diagram that
cannot be made raises `LessonError`; it is never dropped.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
import inspect
import operator
import os
import re
import shutil
import subprocess
import sys
import textwrap
import traceback
from pathlib import Path

from tools.literate import LessonError, cache

# drawn fx nodes: a bigger model is drawn with its top-level blocks as single boxes
_COLLAPSE_ABOVE = 40
_MAX_METHODS = 12

# Diagrams are drawn on a light card in both colour schemes, so fixed colours are fine.
_GRAPH_STYLE = (
    'graph [bgcolor="transparent", fontname="Helvetica", fontsize=12, rankdir=TB,'
    " nodesep=0.3, ranksep=0.4, forcelabels=true];\n"
    'node [fontname="Helvetica", fontsize=11, shape=box, style="rounded,filled",'
    ' fillcolor="#eef2fb", color="#4a5a8a"];\n'
    'edge [fontname="Helvetica", fontsize=10, color="#4a5a8a", fontcolor="#333333"];\n'
)


def _quote(text: str) -> str:
    return (
        '"'
        + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        + '"'
    )


def _html_label(text: str) -> str:
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# ---- class diagram, from the AST -----------------------------------------------------


def class_diagram(tree: ast.Module) -> str:
    """The dot source of a lesson's class diagram.

    Each class shows its bases (hollow arrows), the attributes built in `__init__` or
    declared as dataclass fields, and its public methods. An attribute built from
    another class of the lesson is drawn as a composition edge (diamond), `*` when it
    holds many. A lesson without classes gets its functions and the calls between them
    instead.
    """
    classes = [node for node in tree.body if isinstance(node, ast.ClassDef)]
    if not classes:
        return _call_graph(tree)
    names = {node.name for node in classes}
    lines = ["digraph classes {", _GRAPH_STYLE, 'node [shape=plain, style=""];']
    external: set[str] = set()
    for node in classes:
        attributes, parts = _class_members(node, names)
        methods = [
            f.name
            for f in node.body
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
            and _is_key_method(f.name)
        ]
        if len(methods) > _MAX_METHODS:
            methods = methods[:_MAX_METHODS] + ["…"]
        rows = [f'<tr><td bgcolor="#dfe6f7"><b>{_html_label(node.name)}</b></td></tr>']
        if attributes:
            rows.append(
                '<tr><td align="left" balign="left">'
                + "<br/>".join(_html_label(a) for a in attributes)
                + "</td></tr>"
            )
        if methods:
            rows.append(
                '<tr><td align="left" balign="left">'
                + "<br/>".join(
                    _html_label(m if m == "…" else f"{m}()") for m in methods
                )
                + "</td></tr>"
            )
        table = (
            '<table border="1" cellborder="0" cellspacing="0" cellpadding="4" '
            'color="#4a5a8a" bgcolor="#f6f8fd">' + "".join(rows) + "</table>"
        )
        lines.append(f"{_quote(node.name)} [label=<{table}>];")
        for base in node.bases:
            base_name = ast.unparse(base)
            if base_name not in names:
                external.add(base_name)
            lines.append(
                f"{_quote(base_name)} -> {_quote(node.name)} "
                "[dir=back, arrowtail=empty];"
            )
        for attribute, (target, many) in parts.items():
            label = f"{attribute} *" if many else attribute
            lines.append(
                f"{_quote(node.name)} -> {_quote(target)} "
                f"[arrowtail=diamond, dir=back, label={_quote(label)}];"
            )
    for name in sorted(external):
        lines.append(
            f'{_quote(name)} [shape=box, style="rounded,dashed", fontcolor="#555555"];'
        )
    lines.append("}")
    return "\n".join(lines)


# The dunders that teach: an engine's arithmetic and a container's indexing. Reflected
# (`__radd__`) and in-place (`__iadd__`) twins, `__init__` and the protocol plumbing
# (`__repr__`, `__hash__`) would only crowd them out.
_TEACHING_DUNDERS = {
    f"__{name}__"
    for name in (
        "add sub mul truediv matmul pow neg call getitem setitem len iter"
    ).split()
}


def _is_key_method(name: str) -> bool:
    return not name.startswith("_") or name in _TEACHING_DUNDERS


def _class_members(
    node: ast.ClassDef, class_names: set[str]
) -> tuple[list[str], dict[str, tuple[str, bool]]]:
    """Attributes as `name: Type` rows, and the ones holding lesson classes as {name:
    (class, many)}."""
    attributes: list[str] = []
    parts: dict[str, tuple[str, bool]] = {}
    for statement in node.body:
        if isinstance(statement, ast.AnnAssign) and isinstance(
            statement.target, ast.Name
        ):
            attributes.append(
                f"{statement.target.id}: {ast.unparse(statement.annotation)}"
            )
    init = next(
        (
            f
            for f in node.body
            if isinstance(f, ast.FunctionDef) and f.name == "__init__"
        ),
        None,
    )
    for statement in ast.walk(init) if init else []:
        if not isinstance(statement, (ast.Assign, ast.AnnAssign)):
            continue
        targets = (
            statement.targets
            if isinstance(statement, ast.Assign)
            else [statement.target]
        )
        for target in targets:
            if not (
                isinstance(target, ast.Attribute)
                and isinstance(target.value, ast.Name)
                and target.value.id == "self"
            ):
                continue
            if target.attr.startswith("_") or any(
                a.split(":")[0] == target.attr for a in attributes
            ):
                continue
            built, many = _built_class(statement.value)
            annotation = (
                statement.annotation if isinstance(statement, ast.AnnAssign) else None
            )
            if annotation is not None and built not in class_names:
                # `self.cpts: dict[str, Factor] = {...}`: the annotation names the part
                # the value hides.
                named = [
                    n.id
                    for n in ast.walk(annotation)
                    if isinstance(n, ast.Name) and n.id in class_names
                ]
                built, many = (
                    (named[0], isinstance(annotation, ast.Subscript))
                    if named
                    else (ast.unparse(annotation), False)
                )
            if built in class_names:
                parts[target.attr] = (built, many)
            else:
                attributes.append(f"{target.attr}: {built}" if built else target.attr)
    return attributes, parts


def _built_class(value: ast.AST | None) -> tuple[str | None, bool]:
    """`Neuron(...)` → ("Neuron", False); `[Neuron(...) for ...]`,
    `{k: Neuron(...) for ...}` or `nn.ModuleList([...])` → ("Neuron", True)."""
    if value is None:
        return None, False
    if isinstance(value, (ast.ListComp, ast.GeneratorExp, ast.SetComp)):
        return _built_class(value.elt)[0], True
    if isinstance(value, ast.DictComp):
        return _built_class(value.value)[0], True
    if isinstance(value, ast.Dict) and value.values:
        return _built_class(value.values[0])[0], True
    if isinstance(value, (ast.List, ast.Tuple)) and value.elts:
        return _built_class(value.elts[0])[0], True
    if isinstance(value, ast.Call):
        name = ast.unparse(value.func)
        if (
            name.split(".")[-1]
            in ("ModuleList", "Sequential", "ModuleDict", "list", "tuple")
            and value.args
        ):
            inner, _ = _built_class(value.args[0])
            if inner:
                return inner, True
        if name[:1].isupper() or "." in name and name.split(".")[-1][:1].isupper():
            return name, False
    return None, False


# The demo's plumbing is on every page; the call graph is about the lesson's own
# functions.
_PLUMBING = {"main", "example", "dataflow"}


def _call_graph(tree: ast.Module) -> str:
    """The lesson's public functions and the calls between them (private helpers and the
    demo's plumbing left out)."""
    functions = {
        node.name: node
        for node in tree.body
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and not node.name.startswith("_")
        and node.name not in _PLUMBING
    }
    lines = ["digraph calls {", _GRAPH_STYLE]
    for name, node in functions.items():
        # Names only: argument lists made the boxes, and the drawing, too wide.
        lines.append(f"{_quote(name)} [label={_quote(f'{name}()')}];")
        called = {
            n.func.id
            for n in ast.walk(node)
            if isinstance(n, ast.Call)
            and isinstance(n.func, ast.Name)
            and n.func.id in functions
        }
        for callee in sorted(called - {name}):
            lines.append(f"{_quote(name)} -> {_quote(callee)};")
    lines.append("}")
    return "\n".join(lines)


# ---- dataflow diagram, from running the example --------------------------------------


def dataflow_diagram(path: str | Path, module_name: str) -> str:
    """The dot source of the lesson's dataflow: an fx trace of its example model, or its
    declared graph.

    Imports the lesson fresh, calls `example()` → `(fn, args)`, and either traces `fn`
    with `torch.fx` (when it is an `nn.Module`), or passes `fn(*args)` to the lesson's
    `dataflow(output)`. Any exception becomes a `LessonError` pointing at the lesson
    line that raised.
    """
    path = Path(path)
    with _imported_fresh(path, module_name) as module:
        if not callable(getattr(module, "example", None)):
            raise LessonError(
                path,
                1,
                "no example(): every lesson declares `def example()` returning "
                "(fn, args); see docs/contributing.md",
            )
        # What the example prints (a sampler's progress bar) is not the build's to show.
        with contextlib.redirect_stdout(io.StringIO()):
            with contextlib.redirect_stderr(io.StringIO()):
                return _example_dataflow(module, path)


def _example_dataflow(module, path: Path) -> str:
    """`dataflow_diagram` of an imported lesson that declares `example()`."""
    first_line = module.example.__code__.co_firstlineno
    try:
        declared = module.example()
        if not (isinstance(declared, tuple) and len(declared) == 2):
            items = f" of {len(declared)} items" if isinstance(declared, tuple) else ""
            raise LessonError(
                path,
                first_line,
                "example() must return (fn, args), got "
                f"{type(declared).__name__}{items}",
            )
        fn, args = declared
        if not isinstance(args, tuple):
            raise LessonError(
                path,
                first_line,
                "example() must return (fn, args) with args a tuple, got args of type "
                f"{type(args).__name__}: write (x,) for one argument",
            )
        if _is_torch_module(fn):
            # Run as written first: an error in the model then names the lesson's line,
            # which the traced copy's generated code would hide.
            fn(*args)
            return _fx_dataflow(fn, args)
        if not callable(getattr(module, "dataflow", None)):
            raise TypeError(
                "example()'s fn is not a torch.nn.Module, so the lesson must define "
                "dataflow(output) → (nodes, edges)"
            )
        nodes, edges = module.dataflow(fn(*args))
        return _declared_dataflow(nodes, edges)
    except LessonError:
        raise
    except Exception as error:
        traced = (
            "; the dataflow diagram traces the model with torch.fx, which passes a "
            "Proxy for each tensor: mark a function that checks its argument's type or "
            "branches on a value with @torch.fx.wrap (docs/contributing.md)"
            if "Proxy" in str(error)
            else ""
        )
        raise LessonError(
            path,
            _line_in(path, error),
            f"example() or dataflow() raised {type(error).__name__}: {error}{traced}",
        ) from None


@contextlib.contextmanager
def _imported_fresh(path: Path, module_name: str):
    """The lesson's current source executed as `module_name`, with `sys.modules`
    given back as it was afterwards.

    The fresh copy has to stand in `sys.modules` while it runs (a dataclass looks its
    module up there), but must not stay: the package's attribute still names the copy
    imported before, so a later `from annotated.x import y` and a `monkeypatch` of
    `annotated.x.y` would reach two different modules."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    previous = sys.modules.get(module_name)
    sys.modules[module_name] = module
    try:
        try:
            spec.loader.exec_module(module)
        except Exception as error:
            raise LessonError(
                path,
                _line_in(path, error),
                f"importing the lesson raised {type(error).__name__}: {error}",
            ) from None
        yield module
    finally:
        if previous is not None:
            sys.modules[module_name] = previous
        else:
            sys.modules.pop(module_name, None)


def _line_in(path: Path, error: BaseException) -> int:
    """The deepest traceback line inside the lesson's own file (1 when the error arose
    elsewhere)."""
    resolved = str(path.resolve())
    lines = [
        frame.lineno
        for frame in traceback.extract_tb(error.__traceback__)
        if os.path.realpath(frame.filename) == resolved
    ]
    return lines[-1] if lines else 1


def _is_torch_module(fn) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(fn, torch.nn.Module)


def _fx_dataflow(model, args: tuple) -> str:
    import torch.fx
    from torch.fx.passes.shape_prop import ShapeProp

    class TopLevelTracer(torch.fx.Tracer):
        """Keeps each direct child of the model as one box: the collapsed view of a big
        model."""

        def is_leaf_module(self, module, qualified_name):
            return "." not in qualified_name or super().is_leaf_module(
                module, qualified_name
            )

    # The parameters the example leaves at their defaults are traced as those
    # constants, so that a flag such as `interpolate_pos_encoding=False` may steer
    # Python control flow, which a traced (symbolic) value cannot.
    left = list(inspect.signature(model.forward).parameters.values())[len(args) :]
    defaults = {
        parameter.name: parameter.default
        for parameter in left
        if parameter.default is not inspect.Parameter.empty
    }
    graph_module = torch.fx.symbolic_trace(model, concrete_args=defaults)
    ShapeProp(graph_module).propagate(*args)
    shown = _drawn_nodes(graph_module)
    if len(shown) > _COLLAPSE_ABOVE:
        graph = TopLevelTracer().trace(model, concrete_args=defaults)
        graph_module = torch.fx.GraphModule(model, graph)
        ShapeProp(graph_module).propagate(*args)
        shown = _drawn_nodes(graph_module)
    nodes, edges = [], []
    modules = dict(graph_module.named_modules())
    for node in shown:
        if node.op == "placeholder":
            label = f"input {node.target}"
        elif node.op == "output":
            label = "output"
        elif node.op == "call_module":
            label = f"{node.target}\n{type(modules[node.target]).__name__}"
        elif node.op == "call_function":
            label = getattr(node.target, "__name__", str(node.target))
        elif node.op == "call_method":
            label = f".{node.target}()"
        else:
            label = f"{node.op} {node.target}"
        nodes.append((node.name, label))
        for source in node.all_input_nodes:
            if source not in shown:
                continue
            meta = source.meta.get("tensor_meta")
            if node.target is operator.getitem and isinstance(meta, (tuple, list)):
                meta = node.meta.get("tensor_meta")  # the one item it takes
            edges.append((source.name, node.name, _shape_label(meta)))
    return _declared_dataflow(nodes, edges, name="fx_dataflow")


def _drawn_nodes(graph_module) -> list:
    """The nodes a dataflow diagram draws, after ShapeProp: bookkeeping that carries no
    tensor (`x.shape`, `x.shape[1]`, `x.size(0)`, a check that returns None) is left
    out, since drawn it outnumbers the operations that do the work. ShapeProp records
    `tensor_meta` only for values holding a tensor."""
    return [
        node
        for node in graph_module.graph.nodes
        if node.op in ("placeholder", "output", "get_attr", "call_module")
        or "tensor_meta" in node.meta
    ]


def _shape_label(meta) -> str:
    if meta is None:
        return ""
    if hasattr(meta, "shape"):
        return "[" + ", ".join(str(d) for d in meta.shape) + "]"
    if isinstance(meta, (tuple, list)):
        return " ".join(_shape_label(m) for m in meta)
    return ""


def _declared_dataflow(nodes, edges, name: str = "dataflow") -> str:
    """Dot source from `(nodes, edges)`: nodes `(id, label)`, edges
    `(src, dst, label)`."""
    known = set()
    lines = [f"digraph {name} {{", _GRAPH_STYLE]
    for node_id, label in nodes:
        known.add(str(node_id))
        lines.append(f"{_quote(node_id)} [label={_quote(label)}];")
    for edge in edges:
        if len(edge) != 3:
            raise ValueError(
                f"dataflow edges are (src, dst, label) triples, got {edge!r}"
            )
        source, target, label = edge
        for end in (source, target):
            if str(end) not in known:
                raise ValueError(
                    f"dataflow edge {edge!r} names node {end!r}, which is not in nodes"
                )
        lines.append(f"{_quote(source)} -> {_quote(target)} [label={_quote(label)}];")
    lines.append("}")
    return "\n".join(lines)


# ---- dot → svg, cached ---------------------------------------------------------------


# A diagram wider than this would shrink its text below 9 px in its column.
MAX_WIDTH_PT = 600


def to_svg(dot_source: str, cache_dir: Path, path: str, what: str) -> str:
    """Inline SVG for a dot source, laid out to fit its column; cached by the dot
    source.

    Graphviz draws top to bottom. When that comes out wider than `MAX_WIDTH_PT` (many
    classes on one base, many independent functions), the same graph is drawn left to
    right, then with its leaves staggered by `unflatten`, and the narrowest drawing is
    kept: a diagram is scaled down to its column, so width is what makes text unreadably
    small.

    Graphviz numbers the SVG's ids afresh in every drawing (`graph0`, `node1`), so two
    diagrams on one page would share them: each id gets the kind of diagram and its
    source's hash in front (`class_1f2e3d4c_node1`). (The graph's `id` attribute would
    prefix them too, but clusters inherit it as their own id.)
    """
    key = cache.content_hash("svg, its ids prefixed", dot_source)

    def draw(source: str) -> str:
        result = subprocess.run(
            ["dot", "-Tsvg"], input=source, capture_output=True, text=True
        )
        if result.returncode != 0:
            raise LessonError(
                path,
                1,
                f"Graphviz failed on the {what} diagram: {result.stderr.strip()}",
            )
        svg = result.stdout[result.stdout.index("<svg") :]
        svg = re.sub(r'\sid="', f' id="{what}_{key[:8]}_', svg)
        return re.sub(r"<!--.*?-->\n?", "", svg, flags=re.S)

    def make() -> str:
        if shutil.which("dot") is None:
            raise LessonError(
                path,
                1,
                f"cannot draw the {what} diagram: Graphviz's `dot` is not installed "
                "(bash tools/setup.sh installs it)",
            )
        drawings = [draw(dot_source)]
        if svg_width_pt(drawings[0]) > MAX_WIDTH_PT:
            sideways = dot_source.replace("rankdir=TB", "rankdir=LR", 1)
            drawings.append(draw(sideways))
            if shutil.which("unflatten"):
                staggered = subprocess.run(
                    ["unflatten", "-l", "4", "-f", "-c", "4"],
                    input=dot_source,
                    capture_output=True,
                    text=True,
                )
                if staggered.returncode == 0:
                    drawings.append(draw(staggered.stdout))
        return min(drawings, key=svg_width_pt)

    return cache.cached_text(cache_dir, "svg", key, make)


def svg_width_pt(svg: str) -> float:
    """The drawing's width in points, from the `<svg width="…pt">` Graphviz writes."""
    return float(re.search(r'width="([\d.]+)pt"', svg).group(1))


# ---- CUDA C: kernels and their launches, and the declared memory hierarchy -----------

_CUDA_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
_BOUNDS = r"(?:__launch_bounds__\s*\([^)]*\)\s*)?"
_KERNEL = re.compile(rf"__global__\s+{_BOUNDS}void\s+{_BOUNDS}(\w+)\s*\(([^)]*)\)")
_LAUNCH = re.compile(r"\b(\w+)\s*(<[^<>;]*>)?\s*<<<(.*?)>>>", re.S)
_HOST_FUNCTION = re.compile(
    r"^(?:extern\s+\"C\"\s+)?(?:static\s+)?(?:inline\s+)?[\w:<>]+[\s*&]+(\w+)\s*\(",
    re.M,
)
MEMORY_LEVELS = ("global", "L2", "shared", "registers")


def cuda_kernel_diagram(source: str) -> str:
    """The dot source of a CUDA C lesson's class diagram: each `__global__` kernel with
    its parameters, and each host function that launches it, the edge labelled with the
    launch configuration `<<<grid, block, shared bytes>>>`."""
    code = _CUDA_COMMENT.sub(lambda m: "\n" * m.group(0).count("\n"), source)
    lines = ["digraph kernels {", _GRAPH_STYLE]
    kernels = []
    for match in _KERNEL.finditer(code):
        name = match.group(1)
        params = [" ".join(p.split()) for p in match.group(2).split(",") if p.strip()]
        rows = "".join(
            f'<tr><td align="left">{_html_label(p)}</td></tr>' for p in params
        )
        label = (
            '<<table border="0" cellborder="0" cellspacing="0">'
            f"<tr><td><b>__global__ {_html_label(name)}</b></td></tr>{rows}</table>>"
        )
        lines.append(f"{_quote(name)} [label={label}];")
        kernels.append(name)
    hosts = [(m.start(), m.group(1)) for m in _HOST_FUNCTION.finditer(code)]
    for launch in _LAUNCH.finditer(code):
        kernel = launch.group(1)
        if kernel not in kernels:
            continue
        host = [name for start, name in hosts if start < launch.start()]
        caller = host[-1] if host else "host"
        config = ", ".join(" ".join(p.split()) for p in launch.group(3).split(","))
        template = " ".join((launch.group(2) or "").split())
        lines.append(
            f"{_quote('host:' + caller)} [label={_quote(caller + '()')}, "
            'fillcolor="#f6f1e7"];'
        )
        lines.append(
            f"{_quote('host:' + caller)} -> {_quote(kernel)} "
            f"[label={_quote(template + '<<<' + config + '>>>')}];"
        )
    if not kernels:
        return ""
    lines.append("}")
    return "\n".join(lines)


def memory_diagram(front_matter: dict, path: str | Path, line: int) -> str:
    """The dot source of a CUDA C lesson's dataflow: the memory levels its kernels move
    data through, as the front matter's `memory` list declares them
    (`{kernel, from, to, data}` each; levels global, L2, shared, registers)."""
    moves = front_matter.get("memory")
    if not isinstance(moves, list) or not moves:
        raise LessonError(
            path,
            line,
            "front matter: a CUDA C lesson declares `memory`, a list of "
            "{kernel, from, to, data} moves between global, L2, shared and registers",
        )
    kernels: dict[str, list[dict]] = {}
    for index, move in enumerate(moves):
        where = f"front matter: memory[{index}]"
        if not isinstance(move, dict) or not all(
            move.get(k) for k in ("kernel", "from", "to", "data")
        ):
            raise LessonError(path, line, f"{where} needs kernel, from, to and data")
        for level in (move["from"], move["to"]):
            if level not in MEMORY_LEVELS:
                raise LessonError(
                    path,
                    line,
                    f"{where}: {level!r} is not one of {', '.join(MEMORY_LEVELS)}",
                )
        kernels.setdefault(str(move["kernel"]), []).append(move)
    # One row per kernel, read left to right: the levels it loads through, then the
    # level its results are stored back to, drawn a second time so the row stays a
    # chain instead of folding back on itself.
    lines = ["digraph memory {", _GRAPH_STYLE, "rankdir=LR;"]
    # Graphviz stacks the rows bottom-up: listed last to first, they read in order.
    for number, (kernel, steps) in reversed(list(enumerate(kernels.items()))):
        lines.append(f"subgraph cluster_{number} {{")
        lines.append(
            f'label={_quote(kernel)}; labeljust="l"; style="rounded"; '
            'color="#b8c0d8"; fontsize=11;'
        )
        placed: list[str] = []
        for move in steps:
            source = f"{number}:{move['from']}"
            target = f"{number}:{move['to']}"
            if target in placed and MEMORY_LEVELS.index(
                move["to"]
            ) < MEMORY_LEVELS.index(move["from"]):
                target += ":out"  # a store back to a level the row started from
            for name in (source, target):
                if name not in placed:
                    placed.append(name)
                    level = name.split(":")[1]
                    lines.append(
                        f"{_quote(name)} [label={_quote(level)}, shape=cylinder, "
                        'fillcolor="#f6f1e7"];'
                    )
            label = textwrap.fill(str(move["data"]), 30)
            lines.append(
                f"{_quote(source)} -> {_quote(target)} [label={_quote(label)}];"
            )
        lines.append("}")
    lines.append("}")
    return "\n".join(lines)
