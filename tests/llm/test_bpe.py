"""Verified against tiktoken (an Encoding built from our ranks, pattern and special
tokens): token ids exactly equal on random Unicode text and on the validation corpus.

The incremental trainer is checked merge for merge (pairs and counts) against the
recounting one, on the corpus and on random texts; the textbook example "aaabdaaabac"
gives Wikipedia's three merges (aa→Z, ab→Y, ZY→X) and "XdXac"; decode(encode(x)) == x
for arbitrary text; a saved tokenizer (tiktoken's `.tiktoken` format, read back by
tiktoken's own loader) reloads to identical encodings; special tokens are never merged
and are encoded only when allowed; bad input raises.
"""

import itertools
import re
from collections import Counter

import pytest
import tiktoken
import tiktoken.load
from hypothesis import given
from hypothesis import strategies as st

from annotated.data import python_docs
from annotated.llm.bpe import (
    GPT2_PATTERN,
    Merge,
    Tokenizer,
    bpe_merges,
    count_words,
    example,
    main,
    merge_chunk,
    naive_bpe_merges,
    ranks_from_merges,
    train,
)

EOT = "<|endoftext|>"
TRAIN_TEXT, VALIDATION_TEXT = python_docs()


def reference(tokenizer: Tokenizer) -> tiktoken.Encoding:
    """tiktoken's encoder, built from our tokenizer's ranks, pattern and specials."""
    return tiktoken.Encoding(
        name="ours",
        pat_str=tokenizer.pattern,
        mergeable_ranks=tokenizer.ranks,
        special_tokens=tokenizer.special_tokens,
    )


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return train(TRAIN_TEXT[:120_000], 600)


@pytest.fixture(scope="module")
def tiktoken_encoding(tokenizer) -> tiktoken.Encoding:
    return reference(tokenizer)


# ---------------------------------------------------------------- the textbook example


def test_textbook_example_gives_wikipedias_three_merges():
    """Wikipedia's byte-pair example: aa→Z (4 times), then ab→Y (2) over the tie with
    Za (2), because our rule prefers the pair of smaller ids (a, b) = (97, 98) over
    (Z, a) = (256, 97); then ZY→X, and the text reads XdXac."""
    text = "aaabdaaabac"
    expected = [Merge(b"a", b"a", 4), Merge(b"a", b"b", 2), Merge(b"aa", b"ab", 2)]
    words = count_words(text)
    assert words == Counter({b"aaabdaaabac": 1})  # one chunk: a run of letters
    assert list(itertools.islice(bpe_merges(words), 3)) == expected
    assert list(itertools.islice(naive_bpe_merges(words), 3)) == expected
    tokenizer = train(text, 3)
    z, y, x = 256, 257, 258
    assert tokenizer.ranks[b"aa"] == z and tokenizer.ranks[b"ab"] == y
    assert tokenizer.ranks[b"aaab"] == x
    ids = tokenizer.encode(text)
    assert ids == [x, ord("d"), x, ord("a"), ord("c")]  # "XdXac"
    assert ids == reference(tokenizer).encode(text)
    assert tokenizer.decode(ids) == text


def test_training_runs_out_of_pairs():
    """Every word merged into one token: the generators stop, `train` returns fewer."""
    words = count_words("aaabdaaabac")
    merges = list(bpe_merges(words))
    assert merges == list(naive_bpe_merges(words))
    assert merges[-1].left + merges[-1].right == b"aaabdaaabac"
    tokenizer = train("aaabdaaabac", 100)
    assert len(tokenizer.ranks) == 256 + len(merges)
    assert tokenizer.encode("aaabdaaabac") == [255 + len(merges)]


# ---------------------------------------------------------------- training


def test_incremental_counts_equal_a_full_recount_on_the_corpus():
    words = count_words(TRAIN_TEXT[:60_000])
    incremental = list(itertools.islice(bpe_merges(words), 300))
    naive = list(itertools.islice(naive_bpe_merges(words), 300))
    assert len(incremental) == 300
    assert incremental == naive
    counts = [merge.count for merge in incremental]
    assert counts == sorted(counts, reverse=True)  # no pair grows past the winner


@given(st.text(alphabet="ab c'\n", max_size=300))
def test_incremental_counts_equal_a_full_recount_on_random_text(text):
    """Few letters, so ties and overlapping pairs ("aaa") are the rule, not the
    exception."""
    words = count_words(text)
    assert list(bpe_merges(words)) == list(naive_bpe_merges(words))


def test_words_are_weighted_by_their_frequency():
    """(z, z) is in two distinct words but occurs 4 times; (a, b) is in three words
    that occur once each: weighting by frequency makes (z, z) win."""
    words = count_words("zz zz zz zz ab cab dab")
    assert words == Counter({b"zz": 1, b" zz": 3, b" ab": 1, b" cab": 1, b" dab": 1})
    assert next(bpe_merges(words)) == Merge(b"z", b"z", 4)
    assert next(naive_bpe_merges(words)) == Merge(b"z", b"z", 4)


def test_special_tokens_are_never_merged():
    text = (EOT + "x") * 50
    assert count_words(text) == Counter({b"x": 50})
    merged = train(text, 20, special_tokens=()).ranks
    assert b"<|" in merged  # without the special token, its text is merged
    tokenizer = train(text, 20)
    assert set(tokenizer.ranks) == {bytes([byte]) for byte in range(256)}
    assert tokenizer.special_tokens == {EOT: 256}


# ---------------------------------------------------------------- encoding vs tiktoken


def test_encoding_matches_tiktoken_on_the_validation_corpus(
    tokenizer, tiktoken_encoding
):
    ids = tokenizer.encode(VALIDATION_TEXT)
    assert ids == tiktoken_encoding.encode(VALIDATION_TEXT)
    assert tokenizer.decode(ids) == VALIDATION_TEXT
    assert len(VALIDATION_TEXT.encode()) / len(ids) > 2.5  # 600 merges compress


def test_pre_split_matches_gpt2_on_contractions_spaces_and_digits():
    chunks = Tokenizer(ranks_from_merges([])).pre_split.findall(
        "He's  here:\n  x=42 ,\t'll"
    )
    assert chunks == [
        "He",
        "'s",
        " ",
        " here",
        ":",
        "\n ",
        " x",
        "=",
        "42",
        " ,",
        "\t",
        "'ll",
    ]


@given(st.text(max_size=3000))
def test_encoding_matches_tiktoken_on_arbitrary_unicode(
    tokenizer, tiktoken_encoding, text
):
    assert tokenizer.encode_ordinary(text) == tiktoken_encoding.encode_ordinary(text)


PIECES = [" ", "  ", "\n", "\t", " the", " def", "in", "'s", "'ll", "42", "é", "🙂"]
PIECES += ["(", ")", ".", ",", "x", "ing", " return", "\u00a0", "\u3000", "a", "--"]
WORDY = st.lists(st.sampled_from(PIECES), max_size=300).map("".join)


@given(WORDY)
def test_encoding_matches_tiktoken_on_wordy_text(tokenizer, tiktoken_encoding, text):
    """Text built from the corpus's frequent pieces, so that long merges happen."""
    assert tokenizer.encode_ordinary(text) == tiktoken_encoding.encode_ordinary(text)


@given(st.text(max_size=2000))
def test_decode_inverts_encode(tokenizer, text):
    ids = tokenizer.encode_ordinary(text)
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode_bytes(ids) == text.encode("utf-8")


@given(st.lists(st.integers(0, 856), max_size=200))
def test_decode_of_any_ids_matches_tiktoken(tokenizer, tiktoken_encoding, ids):
    """Ids that cut characters in half decode to U+FFFD, as tiktoken's do."""
    assert tokenizer.decode_bytes(ids) == tiktoken_encoding.decode_bytes(ids)
    assert tokenizer.decode(ids) == tiktoken_encoding.decode(ids)


def test_long_inputs_match_tiktoken(tokenizer, tiktoken_encoding):
    """Long chunks (a 10,000-letter word, 10,000 spaces): no recursion, same ids."""
    for text in ["a" * 10_000, " " * 10_000 + "x", "ab" * 5_000]:
        assert tokenizer.encode_ordinary(text) == tiktoken_encoding.encode_ordinary(
            text
        )


def test_merge_chunk_takes_lowest_rank_leftmost_first():
    ranks = ranks_from_merges(
        [Merge(b"b", b"c", 1), Merge(b"a", b"b", 1), Merge(b"a", b"bc", 1)]
    )
    assert merge_chunk(b"abc", ranks) == [258]  # a chunk that is a token: at once
    # bc (256) first, then ab (257) over a+bc (258), then a+bc:
    assert merge_chunk(b"abcab", ranks) == [258, 257]
    assert merge_chunk(b"abab", ranks) == [257, 257]
    assert merge_chunk(b"bcbc", ranks) == [256, 256]


# ---------------------------------------------------------------- special tokens


def test_special_tokens_encode_only_when_allowed(tokenizer, tiktoken_encoding):
    text = f"first page{EOT}second page{EOT}"
    allowed = tokenizer.encode(text, allowed_special={EOT})
    assert allowed.count(tokenizer.special_tokens[EOT]) == 2
    assert allowed == tiktoken_encoding.encode(text, allowed_special={EOT})
    assert tokenizer.encode(text, allowed_special="all") == allowed
    plain = tokenizer.encode(text, disallowed_special=())
    assert tokenizer.special_tokens[EOT] not in plain
    assert plain == tiktoken_encoding.encode(text, disallowed_special=())
    assert tokenizer.decode(allowed) == tokenizer.decode(plain) == text
    with pytest.raises(
        ValueError, match=re.escape(f"special token '{EOT}' at index 10")
    ):
        tokenizer.encode(text)
    with pytest.raises(ValueError, match="not special tokens"):
        tokenizer.encode(text, allowed_special={"<|fim|>"})
    # A lone string other than "all" would be read as a set of its characters.
    with pytest.raises(TypeError, match='allowed_special must be "all" or a coll'):
        tokenizer.encode(text, allowed_special=EOT)


# ---------------------------------------------------------------- saved and reloaded


def test_saved_tokenizer_reloads_to_identical_encodings(
    tokenizer, tmp_path, monkeypatch
):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # read the file, cache nothing
    folder = tokenizer.save(tmp_path / "tokenizer")
    assert tiktoken.load.load_tiktoken_bpe(str(folder / "ranks.tiktoken")) == (
        tokenizer.ranks
    )
    loaded = Tokenizer.load(folder)
    assert loaded.ranks == tokenizer.ranks
    assert loaded.special_tokens == tokenizer.special_tokens
    assert loaded.pattern == GPT2_PATTERN
    text = VALIDATION_TEXT[:5_000] + EOT
    assert loaded.encode(text, allowed_special="all") == tokenizer.encode(
        text, allowed_special="all"
    )


# ---------------------------------------------------------------- bad input


def test_bad_input_raises(tokenizer, tmp_path):
    with pytest.raises(TypeError, match="text must be a str, got bytes"):
        tokenizer.encode(b"bytes")
    with pytest.raises(ValueError, match="lone surrogate '\\\\ud800' at index 1"):
        tokenizer.encode("a\ud800")
    with pytest.raises(TypeError, match="text must be a str"):
        count_words(["a list"])
    with pytest.raises(TypeError, match="special_tokens must be a collection"):
        count_words("text", special_tokens=EOT)
    with pytest.raises(ValueError, match="non-empty strings"):
        count_words("text", special_tokens=[""])
    with pytest.raises(ValueError, match="num_merges must be an int >= 0"):
        train("text", -1)
    with pytest.raises(ValueError, match="all 256 single bytes.*missing 256"):
        Tokenizer({b"ab": 0})
    with pytest.raises(TypeError, match="ranks must be a dict mapping bytes"):
        Tokenizer({"a": 0})
    ranks = ranks_from_merges([])
    with pytest.raises(ValueError, match="ids must be distinct and outside the ranks"):
        Tokenizer(ranks, {EOT: 255})
    with pytest.raises(ValueError, match="every token a different rank"):
        Tokenizer({**ranks, b"ab": 3})
    with pytest.raises(ValueError, match="ids must be token ids below 857"):
        tokenizer.decode([1, 857])
    with pytest.raises(FileNotFoundError, match="ranks.tiktoken is missing"):
        Tokenizer.load(tmp_path)


# ---------------------------------------------------------------- example and demo


def test_example_encodes_the_special_token():
    fn, args = example()
    ids = fn(*args)
    assert 556 in ids  # <|endoftext|>, after 256 bytes and 300 merges
    assert fn.func.__self__.decode(ids) == args[0]


def test_demo_trains_compresses_and_agrees_with_the_naive_trainer(tmp_path):
    metrics = main(
        [
            "--merges", "300",
            "--bench-merges", "40",
            "--bench-chars", "20000",
            "--out", str(tmp_path),
        ]
    )  # fmt: skip
    assert metrics["vocabulary_size"] == 256 + 300 + 1
    assert 2.0 < metrics["bytes_per_token"] < 3.5
    assert metrics["identical_merges"] == 1.0
    assert metrics["round_trip"] == 1.0
    assert (tmp_path / "training.png").is_file() and (tmp_path / "split.png").is_file()


def test_demo_reports_the_merges_a_short_benchmark_text_allows(tmp_path, capsys):
    flags = ["--merges", "20", "--top", "2", "--out", str(tmp_path)]
    main([*flags, "--bench-chars", "10", "--bench-merges", "50"])
    printed = capsys.readouterr().out
    assert "7 merges (of 50 asked) on 10 characters" in printed, printed
    assert printed.count("  b'") == 2  # --top 2
    with pytest.raises(SystemExit):
        main([*flags, "--bench-chars", "1"])
    assert "--bench-chars 1: too little text" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--top", "-3", "--out", str(tmp_path / "no")])
    assert "argument --top: expected a whole number >= 0" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()


# ---------------------------------------------------------------- benchmarks

BENCH_TEXT = TRAIN_TEXT[:30_000]


@pytest.mark.benchmark(group="train 64 merges on 30,000 characters")
def test_bench_train_incremental(benchmark):
    benchmark.extra_info["label"] = "bpe_merges (incremental counts)"
    merges = benchmark(
        lambda: list(itertools.islice(bpe_merges(count_words(BENCH_TEXT)), 64))
    )
    assert len(merges) == 64


@pytest.mark.benchmark(group="train 64 merges on 30,000 characters")
def test_bench_train_naive(benchmark):
    benchmark.extra_info["label"] = "naive_bpe_merges (full recount)"
    benchmark.extra_info["baseline"] = True
    merges = benchmark(
        lambda: list(itertools.islice(naive_bpe_merges(count_words(BENCH_TEXT)), 64))
    )
    assert len(merges) == 64


@pytest.mark.benchmark(group="encode the validation text (38 kB), cold cache")
def test_bench_encode_ours(benchmark, tokenizer):
    benchmark.extra_info["label"] = "our Tokenizer.encode_ordinary"

    def encode():
        tokenizer.cache.clear()
        return tokenizer.encode_ordinary(VALIDATION_TEXT)

    benchmark(encode)


@pytest.mark.benchmark(group="encode the validation text (38 kB), cold cache")
def test_bench_encode_tiktoken(benchmark, tiktoken_encoding):
    benchmark.extra_info["label"] = "tiktoken encode_ordinary (Rust)"
    benchmark.extra_info["baseline"] = True
    benchmark(tiktoken_encoding.encode_ordinary, VALIDATION_TEXT)
