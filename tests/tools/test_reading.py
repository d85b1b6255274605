"""Source-reading pages: each class diagram shows exactly the classes the module's file
defines (checked against the module itself), and each dataflow box is a real submodule
of the example model, with the shapes that really flow between them."""

import importlib
import inspect
import re

import pytest

from tools.literate import reading

NAMES = list(reading.READINGS)


@pytest.mark.parametrize("name", NAMES)
def test_class_diagram_holds_every_class_the_module_defines(name):
    module_name = reading.READINGS[name].module
    module = importlib.import_module(module_name)
    dot = reading.class_dot(module_name)
    drawn = set(re.findall(r'^"(\w+)" \[label=<', dot, re.M))
    defined = {
        value.__name__
        for value in vars(module).values()
        if inspect.isclass(value) and value.__module__ == module_name
    }
    assert drawn == defined == set(reading.module_classes(module_name))


@pytest.mark.parametrize("name", NAMES)
def test_dataflow_boxes_are_submodules_with_their_types(name):
    model, args = reading.READINGS[name].example()
    dot = reading.dataflow_dot(model, args)
    modules = dict(model.named_modules())
    boxes = re.findall(r'^"([^"]+)" \[label="([^"]*)"\];', dot, re.M)
    assert ("output", "output") in boxes
    inputs = [box for box, _ in boxes if box.startswith("input ")]
    parameters = inspect.signature(model.forward).parameters
    assert inputs and all(box.removeprefix("input ") in parameters for box in inputs)
    submodules = [(box, label) for box, label in boxes if box in modules]
    assert len(submodules) >= 3
    for box, label in submodules:
        assert label == f"{box}\\n{type(modules[box]).__name__}"
    # The first input's shape labels the edge leaving it.
    first = inputs[0]
    shape = "[" + ", ".join(map(str, args[0].shape)) + "]"
    assert re.search(
        rf'^"{re.escape(first)}" -> "[^"]+" \[label="{re.escape(shape)}"\]', dot, re.M
    )


def test_gpt2_dataflow_follows_the_block_order():
    dot = reading.dataflow_dot(*reading.READINGS["gpt2"].example())
    boxes = re.findall(r'^"([^"]+)" \[label=', dot, re.M)
    stages = [
        "h.0.ln_1",
        "h.0.attn",
        "h.0.ln_2",
        "h.0.mlp",
        "h.1.ln_1",
        "ln_f",
        "lm_head",
    ]
    firsts = [
        next(
            i
            for i, box in enumerate(boxes)
            if box.split("transformer.")[-1].startswith(s)
        )
        for s in stages
    ]
    assert firsts == sorted(firsts)
    # The fused projection makes queries, keys and values at once: 3 × 32 wide.
    assert re.search(
        r'"transformer.h.0.attn[.\w]*" -> "[^"]+" \[label="\[1, 8, 96\]"\]', dot
    )


def test_render_replaces_the_placeholder_and_names_an_unknown_reading(tmp_path):
    text = reading.render(
        "# GPT-2\n\n<!-- reading: gpt2 -->\n", tmp_path, "reading/gpt2.md"
    )
    assert "<!-- reading" not in text and text.count("<svg") == 2
    assert "\n\n\n" not in text.split("<svg", 1)[1]  # one HTML block per figure
    with pytest.raises(ValueError, match="no reading 'bert'"):
        reading.render("<!-- reading: bert -->", tmp_path, "reading/bert.md")
