"""Verified against the code they draw: the class diagram against the fixture's AST
facts, the fx dataflow's edge shapes against running the same model in torch, and
failures against the lesson line that raised."""

import ast
import importlib.util
import re
import sys
import subprocess
import textwrap
from pathlib import Path

import pytest

from tools.literate import LessonError
from tools.literate import diagrams

FIXTURES = Path(__file__).parent / "fixtures"


def write(tmp_path, source, name="lesson.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(source).lstrip("\n"))
    return path


def load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_class_diagram_shows_bases_composition_and_methods():
    dot = diagrams.class_diagram(ast.parse((FIXTURES / "tiny_model.py").read_text()))
    assert '"nn.Module" -> "TinyModel" [dir=back, arrowtail=empty]' in dot
    assert '"TinyModel" -> "Block" [arrowtail=diamond, dir=back, label="block"]' in dot
    assert "embed: nn.Linear" in dot and "forward()" in dot


def test_class_diagram_marks_lists_of_parts():
    dot = diagrams.class_diagram(
        ast.parse(
            textwrap.dedent("""
        class Neuron:
            def __init__(self):
                self.w = 1.0

        class Layer:
            def __init__(self, n):
                self.neurons = [Neuron() for _ in range(n)]
    """),
            "x.py",
        )
    )
    assert 'label="neurons *"' in dot


def test_class_diagram_reads_parts_from_dicts_and_annotations():
    dot = diagrams.class_diagram(
        ast.parse(
            textwrap.dedent("""
        class Factor:
            pass

        class Network:
            def __init__(self, names):
                self.cpts: dict[str, Factor] = {name: make(name) for name in names}
                self.by_name = {name: Factor() for name in names}
                self.cards: dict[str, int] = {}
    """),
            "x.py",
        )
    )
    assert (
        'label="cpts *"' in dot
        and 'label="by_name *"' in dot
        and "cards: dict[str, int]" in dot
    )


def test_module_without_classes_gets_its_call_graph():
    dot = diagrams.class_diagram(
        ast.parse("def a(x):\n    return b(x)\n\ndef b(y):\n    return y\n")
    )
    assert dot.startswith("digraph calls") and '"a" -> "b"' in dot


def test_the_fresh_import_leaves_the_process_modules_as_they_were(
    monkeypatch, tmp_path
):
    # The build imports a lesson's current source to run its example; a test process
    # that imported the lesson before (and patched it) keeps the copy it had, and one
    # that had not still has none afterwards, even when the import fails.
    imported = load(FIXTURES / "tiny_model.py", "fixture_tiny_model")
    monkeypatch.setitem(sys.modules, "fixture_tiny_model", imported)
    diagrams.dataflow_diagram(FIXTURES / "tiny_model.py", "fixture_tiny_model")
    assert sys.modules["fixture_tiny_model"] is imported
    monkeypatch.delitem(sys.modules, "fixture_tiny_model")
    diagrams.dataflow_diagram(FIXTURES / "tiny_model.py", "fixture_tiny_model")
    assert "fixture_tiny_model" not in sys.modules
    broken = write(tmp_path, "raise RuntimeError('half-written')\n")
    with pytest.raises(LessonError, match="half-written"):
        diagrams.dataflow_diagram(broken, "fixture_broken")
    assert "fixture_broken" not in sys.modules


def test_fx_dataflow_carries_the_shapes_torch_computes():
    dot = diagrams.dataflow_diagram(FIXTURES / "tiny_model.py", "fixture_tiny_model")
    lesson = load(FIXTURES / "tiny_model.py", "fixture_tiny_model")

    model, (x,) = lesson.example()
    hidden = model.embed(x)
    out = model(x)
    for shape in (x.shape, hidden.shape, out.shape):
        assert f'label="[{", ".join(map(str, shape))}]"' in dot
    for node in ("embed", "block_linear", "relu", "add", "head", "output"):
        assert f'"{node}"' in dot


def test_a_flag_left_at_its_default_is_traced_as_that_constant(tmp_path):
    """A keyword the example does not pass (`double=False`) may steer control flow:
    fx traces it as its default, where a symbolic value would raise TraceError."""
    path = write(
        tmp_path,
        """
        import torch
        from torch import nn

        class Flagged(nn.Module):
            def __init__(self):
                super().__init__()
                self.linear = nn.Linear(4, 3)

            def forward(self, x, double=False):
                y = self.linear(x)
                if double:
                    y = y * 2
                return y

        def example():
            return Flagged(), (torch.ones(2, 4),)
    """,
    )
    dot = diagrams.dataflow_diagram(path, "fixture_flagged")
    assert '"linear"' in dot and 'label="[2, 3]"' in dot and '"mul"' not in dot


def test_shape_bookkeeping_stays_out_of_the_dataflow(tmp_path):
    """`x.shape[1]`, `x.size(0)` and a check returning None carry no tensor: the
    diagram shows the operations on tensors (`arange`, `add`) without them."""
    path = write(
        tmp_path,
        """
        import torch
        from torch import nn

        def check(x):
            pass

        class Positions(nn.Module):
            def __init__(self):
                super().__init__()
                self.linear = nn.Linear(4, 4)

            def forward(self, x):
                check(x)
                steps = torch.arange(x.shape[1]).expand(x.size(0), -1)
                return self.linear(x) + steps

        def example():
            return Positions(), (torch.ones(2, 4),)
    """,
    )
    dot = diagrams.dataflow_diagram(path, "fixture_positions")
    for hidden in ("getattr", "getitem", '"size"', "check"):
        assert hidden not in dot
    for shown in ('"arange"', '"expand"', '"linear"', '"add"', 'label="[2, 4]"'):
        assert shown in dot


def test_only_drawn_nodes_count_towards_collapsing(tmp_path):
    """Forty `x.shape[1]` lookups are not drawn, so they do not make a three-layer model
    collapse to its top-level block."""
    path = write(
        tmp_path,
        """
        import torch
        from torch import nn

        class Padded(nn.Module):
            def __init__(self):
                super().__init__()
                self.stem = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))

            def forward(self, x):
                for _ in range(40):
                    width = x.shape[1]
                return self.stem(x)[:, :width]

        def example():
            return Padded(), (torch.ones(2, 4),)
    """,
    )
    dot = diagrams.dataflow_diagram(path, "fixture_padded")
    assert "stem_0" in dot and "stem_2" in dot and "getattr" not in dot


def test_an_item_taken_from_a_tuple_is_labelled_with_its_own_shape(tmp_path):
    """`q, k = x.split(...)`: the edge into each item carries that item's shape, not
    the whole tuple's."""
    path = write(
        tmp_path,
        """
        import torch
        from torch import nn

        class Halves(nn.Module):
            def forward(self, x):
                a, b = x.split([1, 3], dim=-1)
                return a * b.sum(-1, keepdim=True)

        def example():
            return Halves(), (torch.ones(2, 4),)
    """,
    )
    dot = diagrams.dataflow_diagram(path, "fixture_halves")
    assert 'label="[2, 1]"' in dot and 'label="[2, 3]"' in dot
    assert "[2, 1] [2, 3]" not in dot


def test_big_models_collapse_to_their_top_level_blocks(tmp_path):
    path = write(
        tmp_path,
        """
        import torch
        from torch import nn

        class Deep(nn.Module):
            def __init__(self):
                super().__init__()
                self.stem = nn.Sequential(*[nn.Sequential(nn.Linear(4, 4), nn.ReLU()) \
for _ in range(30)])
                self.head = nn.Linear(4, 1)

            def forward(self, x):
                return self.head(self.stem(x))

        def example():
            return Deep(), (torch.ones(2, 4),)
    """,
    )
    dot = diagrams.dataflow_diagram(path, "fixture_deep")
    assert '"stem"' in dot and '"head"' in dot and "stem_0_0" not in dot


def test_declared_dataflow_is_drawn_and_checked(tmp_path):
    path = write(
        tmp_path,
        """
        def example():
            return (lambda a, b: a * b), (2, 3)

        def dataflow(product):
            return [("a", "a"), ("b", "b"), ("p", f"a·b = {product}")], \
[("a", "p", ""), ("b", "p", "")]
    """,
    )
    dot = diagrams.dataflow_diagram(path, "fixture_declared")
    assert 'label="a·b = 6"' in dot and '"a" -> "p"' in dot


def test_what_the_example_prints_stays_out_of_the_build_log(tmp_path, capfd):
    path = write(
        tmp_path,
        """
        import sys
        from tqdm import tqdm

        def sample(steps):
            for _ in tqdm(range(steps), desc="sampling"):
                print("step")
            print("warned", file=sys.stderr)
            return steps

        def example():
            return sample, (3,)

        def dataflow(out):
            return [("s", f"{out} steps")], []
    """,
    )
    assert 'label="3 steps"' in diagrams.dataflow_diagram(path, "fixture_prints")
    printed = capfd.readouterr()
    assert printed.out == "" and printed.err == ""


def test_declared_edge_to_an_unknown_node_fails(tmp_path):
    path = write(
        tmp_path,
        """
        def example():
            return (lambda: 1), ()

        def dataflow(out):
            return [("a", "a")], [("a", "ghost", "")]
    """,
    )
    with pytest.raises(LessonError, match="ghost"):
        diagrams.dataflow_diagram(path, "fixture_ghost")


def test_a_declared_edge_that_is_not_a_triple_fails(tmp_path):
    path = write(
        tmp_path,
        """
        def example():
            return (lambda: 1), ()

        def dataflow(out):
            return [("a", "a"), ("b", "b")], [("a", "b")]
    """,
    )
    with pytest.raises(
        LessonError, match=r"\(src, dst, label\) triples, got \('a', 'b'\)"
    ):
        diagrams.dataflow_diagram(path, "fixture_pair")


BAD_MEMORY = {
    "a move without data": (
        [{"kernel": "add", "from": "global", "to": "registers"}],
        r"k\.cu:2: front matter: memory\[0\] needs kernel, from, to and data",
    ),
    "a move that is not a mapping": (
        [{"kernel": "add", "from": "global", "to": "registers", "data": "x"}, "x"],
        r"k\.cu:2: front matter: memory\[1\] needs kernel, from, to and data",
    ),
    "an unknown level": (
        [{"kernel": "add", "from": "global", "to": "texture", "data": "x"}],
        r"memory\[0\]: 'texture' is not one of global, L2, shared, registers",
    ),
}


@pytest.mark.parametrize("case", BAD_MEMORY, ids=list(BAD_MEMORY))
def test_a_bad_memory_declaration_names_the_front_matter_line(case):
    moves, message = BAD_MEMORY[case]
    with pytest.raises(LessonError, match=message):
        diagrams.memory_diagram({"memory": moves}, "k.cu", 2)


def test_example_that_raises_names_the_lesson_line(tmp_path):
    path = write(
        tmp_path,
        """
        def build():
            raise RuntimeError("no weights")

        def example():
            return build(), ()
    """,
    )
    with pytest.raises(
        LessonError,
        match=(
            r"lesson\.py:2: example\(\) or dataflow\(\) raised "
            r"RuntimeError: no weights"
        ),
    ):
        diagrams.dataflow_diagram(path, "fixture_raises")


def test_a_model_that_fails_in_forward_names_the_lesson_line_not_fx(tmp_path, capfd):
    path = write(
        tmp_path,
        """
        import torch

        class Model(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.weight = torch.nn.Parameter(torch.ones(64, 10))

            def forward(self, x):
                return x @ self.weight

        def example():
            return Model(), (torch.ones(4, 63),)
    """,
    )
    with pytest.raises(LessonError) as caught:
        diagrams.dataflow_diagram(path, "fixture_forward_raises")
    assert str(caught.value).startswith(f"{path}:9: example() or dataflow() raised")
    assert "mat1 and mat2 shapes cannot be multiplied" in str(caught.value)
    assert "ShapeProp" not in str(caught.value) and "fx" not in capfd.readouterr().err


def test_a_type_check_on_a_traced_value_says_how_to_keep_it(tmp_path):
    path = write(
        tmp_path,
        """
        import torch

        def softmax(z):
            if not isinstance(z, torch.Tensor):
                raise TypeError(f"softmax: z must be a tensor, got {type(z).__name__}")
            return z.softmax(-1)

        class Model(torch.nn.Module):
            def forward(self, x):
                return softmax(x)

        def example():
            return Model(), (torch.ones(2, 3),)
    """,
    )
    with pytest.raises(LessonError, match=r":5: .*got Proxy; .*@torch\.fx\.wrap"):
        diagrams.dataflow_diagram(path, "fixture_proxy")


@pytest.mark.parametrize(
    "returned, message",
    [
        ("run, 3", "with args a tuple, got args of type int: write (x,)"),
        ("run", "must return (fn, args), got function"),
        ("run, (), 1", "must return (fn, args), got tuple of 3 items"),
    ],
)
def test_an_example_returning_the_wrong_shape_says_what_it_returned(
    tmp_path, returned, message
):
    path = write(
        tmp_path,
        f"def run(x=0):\n    return x\n\ndef example():\n    return {returned}\n",
    )
    with pytest.raises(LessonError) as caught:
        diagrams.dataflow_diagram(path, "fixture_shape")
    assert message in str(caught.value)
    assert str(caught.value).startswith(f"{path}:4: ")


def test_lesson_without_example_fails(tmp_path):
    path = write(tmp_path, "x = 1\n")
    with pytest.raises(LessonError, match="no example"):
        diagrams.dataflow_diagram(path, "fixture_no_example")


def test_svg_is_cached_by_dot_source(tmp_path, monkeypatch):
    dot = 'digraph g { "a" -> "b"; }'
    first = diagrams.to_svg(dot, tmp_path, "x.py", "test")
    assert first.startswith("<svg") and "</svg>" in first

    def no_graphviz(*args, **kwargs):
        raise AssertionError("dot ran although the SVG was cached")

    monkeypatch.setattr(subprocess, "run", no_graphviz)
    assert diagrams.to_svg(dot, tmp_path, "x.py", "test") == first
    assert not list(tmp_path.rglob("*.part"))


def test_two_drawings_share_no_id_and_keep_their_links(tmp_path):
    # Graphviz calls the first node of every drawing `node1`; a page shows two or more.
    svgs = [
        diagrams.to_svg(dot, tmp_path, "x.py", "dataflow")
        for dot in (
            'digraph g { subgraph cluster_0 { "a" } "a" -> "b" [URL="#L3"]; }',
            'digraph g { subgraph cluster_0 { "c" } "c" -> "d"; }',
        )
    ]
    ids = [re.findall(r'\sid="([^"]+)"', svg) for svg in svgs]
    for found in ids:
        assert len(found) == len(set(found)) >= 5  # graph, cluster, two nodes, edge
        assert all(re.fullmatch(r"dataflow_[0-9a-f]{8}_\w+", id) for id in found)
    assert not set(ids[0]) & set(ids[1])
    assert 'href="#L3"' in svgs[0]  # a link to a code line is left as it was


def test_wide_graphs_are_redrawn_narrow_enough_to_read(tmp_path):
    source = "def helper(x):\n    return x\n\n" + "".join(
        f"def step_{i}(x):\n    return helper(x)\n\n" for i in range(15)
    )
    dot = diagrams.class_diagram(ast.parse(source))
    top_down = subprocess.run(
        ["dot", "-Tsvg"], input=dot, capture_output=True, text=True
    ).stdout
    svg = diagrams.to_svg(dot, tmp_path, "x.py", "class")
    assert diagrams.svg_width_pt(top_down) > diagrams.MAX_WIDTH_PT
    assert diagrams.svg_width_pt(svg) <= diagrams.MAX_WIDTH_PT


def test_class_diagram_shows_the_methods_that_teach():
    source = textwrap.dedent("""
        class Value:
            def __init__(self, data):
                self.data = data
            def __add__(self, other): ...
            def __radd__(self, other): ...
            def __iadd__(self, other): ...
            def __repr__(self): ...
            def _helper(self): ...
            def backward(self): ...
        """)
    dot = diagrams.class_diagram(ast.parse(source))
    assert "__add__()" in dot and "backward()" in dot
    for hidden in ("__radd__", "__iadd__", "__repr__", "__init__()", "_helper"):
        assert hidden not in dot, hidden


def test_private_helpers_and_demo_plumbing_stay_out_of_the_call_graph():
    source = "def main():\n    return run()\n\ndef run():\n    return _inner()\n\n"
    source += "def _inner():\n    return 1\n\ndef example():\n    return run, ()\n"
    dot = diagrams.class_diagram(ast.parse(source))
    assert '"run"' in dot and "_inner" not in dot and '"main"' not in dot
