"""Source-reading pages: an installed library's module, drawn by the engine.

The plan's first method asks a learner to read one key module a week and draw its core
class diagram and dataflow diagram. A reading page (`docs/reading/<name>.md`) holds the
reading notes and the placeholder `<!-- reading: <name> -->`; the build replaces it with
the two diagrams of the module that `READINGS[<name>]` names:

- the **class diagram** is drawn from the module's own source, found with `inspect`, by
  the same code that draws a lesson's (`diagrams.class_diagram`): every class the file
  defines, its bases, what `__init__` builds, its public methods;
- the **dataflow** is traced from the reading's declared example with `torch.export`,
  and drawn one box per submodule: the exported graph holds every aten operation, and
  each knows the submodule that ran it (`nn_module_stack`), so the operations are
  grouped by module at the deepest nesting that still fits the page (at most
  `MAX_BOXES` boxes), with the shapes of the tensors that flow between them.

The examples are small models built from a config, so drawing needs no download.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tools.literate import cache, diagrams

PLACEHOLDER = re.compile(r"<!-- reading: ([a-z0-9_]+) -->")
MAX_BOXES = 26


def _gpt2():
    import torch
    import transformers

    config = transformers.GPT2Config(
        vocab_size=64,
        n_positions=16,
        n_embd=32,
        n_layer=2,
        n_head=4,
        use_cache=False,
        bos_token_id=63,
        eos_token_id=63,
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    return model, (torch.randint(0, 64, (1, 8)),)


def _vit():
    import torch
    import transformers

    config = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
    )
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(config).eval()
    return model, (torch.rand(1, 3, 32, 32),)


def _torch_transformer():
    import torch

    torch.manual_seed(0)
    model = torch.nn.Transformer(
        d_model=32,
        nhead=4,
        num_encoder_layers=2,
        num_decoder_layers=2,
        dim_feedforward=64,
        dropout=0.0,
        batch_first=True,
    ).eval()
    return model, (torch.rand(1, 8, 32), torch.rand(1, 6, 32))


@dataclass(frozen=True)
class Reading:
    module: str  # the module read: its file is the class diagram's source
    example: Callable  # () → (model, args): the dataflow's trace
    rebuilt_by: tuple[str, ...]  # the lessons that rebuild it from scratch


READINGS = {
    "gpt2": Reading(
        "transformers.models.gpt2.modeling_gpt2", _gpt2, ("llm/gpt2", "llm/pretraining")
    ),
    "vit": Reading("transformers.models.vit.modeling_vit", _vit, ("vision/vit",)),
    "torch_transformer": Reading(
        "torch.nn.modules.transformer",
        _torch_transformer,
        ("transformers/transformer", "transformers/attention"),
    ),
}


def module_classes(module_name: str) -> list[str]:
    """The classes the module's file defines at its top level, in source order."""
    tree = ast.parse(inspect.getsource(importlib.import_module(module_name)))
    return [node.name for node in tree.body if isinstance(node, ast.ClassDef)]


def class_dot(module_name: str) -> str:
    """The class diagram's dot source, drawn from the module's source file."""
    source = inspect.getsource(importlib.import_module(module_name))
    return diagrams.class_diagram(ast.parse(source))


# Operations that only change a tensor's view or read a shape: drawn as boxes they
# would crowd out the modules, so their inputs flow straight to their users.
_PASS_THROUGH = re.compile(
    r"^(view|_unsafe_view|reshape|expand|permute|transpose|t|contiguous|clone|"
    r"unsqueeze|squeeze|flatten|slice|select|getitem|alias|_assert.*|sym_size.*|"
    r"detach|lift_fresh_copy|to|_to_copy|dropout|scalar_tensor)$"
)


def dataflow_dot(model, args: tuple) -> str:
    """One box per submodule (or top-level operation) of an exported `model(*args)`,
    edges labelled with the shapes flowing between them."""
    import torch

    exported = torch.export.export(model, args)
    user_inputs = {
        spec.arg.name
        for spec in exported.graph_signature.input_specs
        if spec.kind == torch.export.graph_signature.InputKind.USER_INPUT
    }
    nodes = list(exported.graph.nodes)

    def path_of(node) -> str:
        stack = node.meta.get("nn_module_stack") or {}
        return list(stack.values())[-1][0] if stack else ""

    def op_name(node) -> str:
        return getattr(node.target, "__name__", str(node.target)).split(".")[0]

    modules = dict(model.named_modules())
    quiet = (torch.nn.Dropout, torch.nn.Identity)  # no-ops in eval: not worth a box
    for depth in range(8, 0, -1):

        def group(node, depth=depth) -> str | None:
            if node.op == "placeholder":
                return f"input {node.name}" if node.name in user_inputs else None
            if node.op == "output":
                return "output"
            path = ".".join(path_of(node).split(".")[:depth])
            if path:
                return None if isinstance(modules.get(path), quiet) else path
            return None if _PASS_THROUGH.match(op_name(node)) else node.name

        represent: dict = {}  # node → its box, or the boxes it passes through
        for node in nodes:
            box = group(node)
            if box is None and node.op != "placeholder":
                sources = [represent.get(i) for i in node.all_input_nodes]
                represent[node] = next((s for s in sources if s), None)
            else:
                represent[node] = box
        boxes = list(dict.fromkeys(b for b in represent.values() if b))
        if len(boxes) <= MAX_BOXES or depth == 1:
            break
    labels = []
    for box in boxes:
        if box in modules:
            labels.append((box, f"{box}\n{type(modules[box]).__name__}"))
        else:
            labels.append((box, box))
    edges = {}
    for node in nodes:
        target = represent.get(node)
        for source_node in node.all_input_nodes:
            source = represent.get(source_node)
            if source and target and source != target:
                value = source_node.meta.get("val")
                shape = getattr(value, "shape", None)
                label = "" if shape is None else "[" + ", ".join(map(str, shape)) + "]"
                edges.setdefault((source, target), label)
    edge_list = [(s, t, label) for (s, t), label in edges.items()]
    return diagrams._declared_dataflow(labels, edge_list, name="export_dataflow")


def render(markdown: str, cache_dir: Path, page_src: str) -> str:
    """Replace each `<!-- reading: name -->` with the module's two diagrams."""

    def diagrams_of(match: re.Match) -> str:
        name = match.group(1)
        if name not in READINGS:
            raise ValueError(
                f"{page_src}: no reading {name!r}; known: {', '.join(sorted(READINGS))}"
            )
        reading = READINGS[name]
        module = importlib.import_module(reading.module)
        version = getattr(
            importlib.import_module(reading.module.split(".")[0]), "__version__", ""
        )
        source = inspect.getsource(module)
        key = cache.content_hash("reading", name, version, source)
        flow = cache.cached_text(
            cache_dir, "reading", key, lambda: dataflow_dot(*reading.example())
        )
        figures = [
            (
                f"Classes of <code>{reading.module}</code>, read from its source",
                diagrams.to_svg(
                    class_dot(reading.module), cache_dir, page_src, "class"
                ),
            ),
            (
                "Dataflow of the declared example, exported with torch.export and "
                "grouped by submodule",
                diagrams.to_svg(flow, cache_dir, page_src, "dataflow"),
            ),
        ]
        parts = []
        for caption, svg in figures:
            svg = "\n".join(line for line in svg.splitlines() if line.strip())
            parts.append(
                f'<figure class="lit-diagram lit-reading">{svg}'
                f"<figcaption>{caption}</figcaption></figure>"
            )
        return "\n\n".join(parts)

    return PLACEHOLDER.sub(diagrams_of, markdown)
