# tests/ is a package so that two test files with one name import as two modules:
# tests/kernels/test_flash_attention.py is `tests.kernels.test_flash_attention`, while
# tests/transformers/test_flash_attention.py stays a top-level module. Never give
# tests/transformers/ (or a folder named after any installed package) an __init__.py:
# with tests/ on sys.path that package would shadow the real `transformers`.
