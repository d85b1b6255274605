"""A package, so that pytest names these modules `sequence.test_*`: the sequence and the
transformers areas both have an attention lesson, and two top-level modules called
`test_attention` cannot be imported side by side."""
