"""Verified against rank_bm25.BM25Okapi (scores to 1e-9), the literate engine's own
section ids (every heading of the corpus), exact search and faiss.IndexFlatIP (same
ids), sentence-transformers' all-MiniLM-L6-v2 (embeddings to 1e-5), and hnswlib's recall
at the same settings (within 0.05).

The HNSW graph must reach recall@10 >= 0.95 against exact search on random unit vectors
while computing at least 3x fewer distances; the retriever must give the same rankings
over a faiss index written to disk and read back as over its default; and hybrid
retrieval must find the answering section of the questions about four lessons within
its top five at least 80 % of the time with the real encoder.
"""

import hashlib
import math
import re
from pathlib import Path

import faiss
import hnswlib
import numpy as np
import pytest
import rank_bm25
import torch
from hypothesis import given
from hypothesis import strategies as st

import annotated.llm.pretraining as pretraining_module
import annotated.serving.rag as rag_module
from annotated.llm.bpe import train as train_tokenizer
from annotated.llm.gpt2 import GPT2, GPT2Config
from annotated.serving.rag import (
    BM25,
    HNSW,
    QUESTIONS,
    Chunk,
    Embedder,
    ExactIndex,
    FaissIndex,
    Retriever,
    answer,
    bm25_tokens,
    continue_answer,
    corpus_embeddings,
    evaluate,
    example,
    dataflow,
    find_chunk,
    lesson_chunks,
    load_corpus,
    main,
    random_unit_vectors,
    recall_at_k,
    reciprocal_rank_fusion,
    sentences,
    slug,
)
from tools.literate.parse import _slug as engine_slug
from tools.literate.parse import parse

LESSONS = [
    "transformers/kv_cache",
    "llm/gpt2",
    "generative/gan_stability",
    "foundations/optimizers",
]


@pytest.fixture(scope="module")
def corpus():
    return load_corpus()


@pytest.fixture(scope="module")
def embedder():
    return Embedder("cpu")


class HashEmbedder:
    """A stand-in encoder for plumbing tests: hashed bag of words, unit length."""

    dimension = 64

    def __call__(self, texts):
        vectors = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            for token in bm25_tokens(text):
                digest = hashlib.md5(token.encode()).digest()
                vectors[row, digest[0] % self.dimension] += 1.0
        vectors[:, 0] += 1e-3  # no all-zero rows
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def small_retriever():
    chunks = load_corpus(LESSONS)
    hashed = HashEmbedder()
    vectors = hashed([p for chunk in chunks for p in chunk.passages()])
    return Retriever(chunks, hashed, vectors), vectors


class CountingEmbedder(HashEmbedder):
    """The hashed encoder with `Embedder`'s signature, counting the texts embedded."""

    def __init__(self, device="cpu"):
        self.embedded = 0

    def __call__(self, texts, progress=False):
        self.embedded += len(texts)
        return super().__call__(texts)


@pytest.fixture
def hashed_demo(tmp_path, monkeypatch):
    """The demo with the hashed encoder, and an empty cache folder of its own (the
    cache is keyed by the passages, not the encoder)."""
    monkeypatch.setenv("ANNOTATED_DL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(rag_module, "Embedder", CountingEmbedder)
    return tmp_path


# ---- the corpus and its links --------------------------------------------------------


def test_every_heading_links_to_the_section_id_the_engine_gives_it(corpus):
    by_module: dict[str, list[Chunk]] = {}
    for chunk in corpus:
        by_module.setdefault(chunk.module, []).append(chunk)
    assert len(by_module) >= 40
    root = Path(__file__).resolve().parents[2] / "annotated"
    checked = 0
    for module, chunks in by_module.items():
        path = root / f"{module}.py"
        lesson = parse(path.read_text(), path)
        for chunk in chunks:
            if not chunk.heading:
                assert chunk.anchor == "" and chunk.first_line == 1
                continue
            holding = [
                s
                for s in lesson.sections
                if any(line.number == chunk.first_line for line in s.prose_lines)
            ]
            assert holding and holding[0].id == chunk.anchor, (module, chunk.heading)
            checked += 1
    assert checked >= 400


def test_chunks_tile_each_lesson_and_keep_only_its_prose(corpus):
    root = Path(__file__).resolve().parents[2] / "annotated"
    kv = [c for c in corpus if c.module == "transformers/kv_cache"]
    lines = (root / "transformers/kv_cache.py").read_text().splitlines()
    assert kv[0].first_line == 1 and kv[-1].last_line == len(lines)
    for before, after in zip(kv, kv[1:]):
        assert after.first_line == before.last_line + 1
    assert "title:" not in kv[0].prose  # front matter dropped
    assert "import torch" not in "".join(c.prose for c in kv)  # code dropped
    cache = kv[[c.heading for c in kv].index("The cache, preallocated")]
    assert cache.link == "transformers/kv_cache.md#cache-bytes"
    assert kv[0].link == "transformers/kv_cache.md"


def test_a_heading_above_a_documented_def_and_repeated_ids():
    source = '''"""Intro."""

import os

# ## First part
#
# Words here.


def helper():
    """Doc."""


# ## Helper again


def helper2():
    return 1


# ## Exercises
#
# 1. One.
'''
    chunks = lesson_chunks(source, "area/topic", "Topic")
    assert [c.heading for c in chunks] == [
        "",
        "First part",
        "Helper again",
        "Exercises",
    ]
    assert [c.anchor for c in chunks] == ["", "helper", "helper-again", "exercises"]
    ids = {s.id for s in parse(source, "topic.py").sections}
    assert {"helper", "helper-again", "exercises"} <= ids


@given(st.text(max_size=80))
def test_slug_is_the_engines(text):
    assert slug(text) == engine_slug(text)
    assert slug(text, 12) == engine_slug(text, 12)


def test_every_question_has_its_section_in_the_corpus(corpus):
    assert len(QUESTIONS) >= 30
    targets = {find_chunk(corpus, q.module, q.heading) for q in QUESTIONS}
    assert len(targets) == len(QUESTIONS)


# ---- BM25 ----------------------------------------------------------------------------


def test_bm25_equals_rank_bm25_on_the_corpus(corpus):
    documents = [bm25_tokens(chunk.text) for chunk in corpus]
    ours, theirs = BM25(documents), rank_bm25.BM25Okapi(documents)
    for question in QUESTIONS[:10]:
        tokens = bm25_tokens(question.text)
        np.testing.assert_allclose(
            ours.scores(tokens), theirs.get_scores(tokens), rtol=0, atol=1e-9
        )
    # a term in most documents (its idf floored), a repeated term, an unknown one
    tokens = ["layer", "layer", "zzzunknown", "tensor"]
    np.testing.assert_allclose(
        ours.scores(tokens), theirs.get_scores(tokens), rtol=0, atol=1e-9
    )


@given(
    st.lists(
        st.lists(st.sampled_from("abcdefg"), min_size=1, max_size=12),
        min_size=1,
        max_size=12,
    ),
    st.lists(st.sampled_from("abcdefgh"), max_size=6),
)
def test_bm25_equals_rank_bm25_on_random_corpora(documents, query):
    np.testing.assert_allclose(
        BM25(documents).scores(query),
        rank_bm25.BM25Okapi(documents).get_scores(query),
        rtol=0,
        atol=1e-9,
    )


def test_bm25_prefers_rare_terms_and_short_documents():
    documents = [
        ["cat", "dog"],
        ["cat", "dog", "dog", "dog", "eel", "fox"],
        ["cat"],
        ["eel"],
        ["fox"],
    ]
    scores = BM25(documents).scores(["dog"])
    assert scores[2] == 0 and scores[0] > 0 and scores[1] > 0
    assert scores[0] < scores[1]  # saturation: three dogs beat one, but not 3x
    assert scores[1] < 3 * scores[0]


# ---- fusion and exact search ---------------------------------------------------------


def test_reciprocal_rank_fusion_by_hand():
    fused = dict(reciprocal_rank_fusion([[1, 2, 3], [3, 1]], k=60))
    assert fused[1] == pytest.approx(1 / 61 + 1 / 62)
    assert fused[3] == pytest.approx(1 / 63 + 1 / 61)
    assert fused[2] == pytest.approx(1 / 62)
    order = [item for item, _ in reciprocal_rank_fusion([[1, 2, 3], [3, 1]])]
    assert order == [1, 3, 2]


def test_exact_index_equals_numpy_sort_and_faiss_flat():
    vectors = random_unit_vectors(500, 24, seed=3)
    queries = random_unit_vectors(20, 24, seed=4)
    similarities, ids = ExactIndex(vectors).search(queries, 7)
    expected = np.argsort(-(queries @ vectors.T), axis=1)[:, :7]
    np.testing.assert_array_equal(ids, expected)
    theirs_sim, theirs_ids = FaissIndex.exact(vectors).search(queries, 7)
    np.testing.assert_array_equal(ids, theirs_ids)
    np.testing.assert_allclose(similarities, theirs_sim, rtol=0, atol=1e-5)
    _, every = ExactIndex(vectors).search(queries, 500)  # k = N
    assert sorted(every[0].tolist()) == list(range(500))


# ---- HNSW ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph():
    vectors = random_unit_vectors(1000, 16, seed=0)
    queries = random_unit_vectors(100, 16, seed=1)
    truth = ExactIndex(vectors).search(queries, 10)[1]
    return HNSW(vectors, M=8, ef_construction=64), vectors, queries, truth


def test_hnsw_recall_against_exact_with_fewer_distances(graph):
    index, vectors, queries, truth = graph
    before = index.distances_computed
    similarities, ids = index.search(queries, 10, ef_search=40)
    per_query = (index.distances_computed - before) / len(queries)
    assert recall_at_k(ids, truth) >= 0.95
    assert len(vectors) / per_query >= 3.0
    np.testing.assert_allclose(
        similarities, np.einsum("qd,qkd->qk", queries, vectors[ids]), atol=1e-6
    )
    assert np.all(np.diff(similarities, axis=1) <= 1e-6)  # best first
    # the graph's shape: bounded degrees, and layers thinning by about 1/M
    degrees = [len(node[0]) for node in index.links]
    assert max(degrees) <= 16 and min(degrees) >= 1
    upper = sum(len(node) > 1 for node in index.links)
    assert 60 <= upper <= 200  # about 1000/8 = 125 reach layer 1


def test_hnsw_recall_grows_with_ef_and_is_exact_on_tiny_sets(graph):
    index, _, queries, truth = graph
    low = recall_at_k(index.search(queries, 10, ef_search=10)[1], truth)
    high = recall_at_k(index.search(queries, 10, ef_search=200)[1], truth)
    assert low < high and high >= 0.99
    tiny = random_unit_vectors(5, 8, seed=2)
    _, ids = HNSW(tiny, M=2).search(tiny, 5)
    np.testing.assert_array_equal(ids, ExactIndex(tiny).search(tiny, 5)[1])
    single = HNSW(tiny[:1])
    assert single.search(tiny[1:3], 1)[1].tolist() == [[0], [0]]


def test_hnsw_search_descends_greedily_from_the_top_layer(graph, monkeypatch):
    # Algorithm 5 of the paper: one nearest neighbour kept on each layer from the top
    # down to layer 1, each layer starting where the last one ended, then `ef` on
    # layer 0.
    index, _, queries, _ = graph
    assert index.top >= 2
    calls, search_layer = [], index.search_layer

    def recording(query, entries, ef, layer):
        found = search_layer(query, entries, ef, layer)
        calls.append((layer, ef, [node for _, node in entries], found))
        return found

    monkeypatch.setattr(index, "search_layer", recording)
    index.search(queries[:1], 10, ef_search=40)
    layers = [(layer, ef) for layer, ef, _, _ in calls]
    assert layers == [(layer, 1) for layer in range(index.top, 0, -1)] + [(0, 40)]
    assert calls[0][2] == [index.entry]
    for (_, _, _, found), (_, _, entries, _) in zip(calls, calls[1:]):
        assert [node for _, node in found] == entries


def test_hnsw_without_the_heuristic_still_finds_neighbours(graph):
    _, vectors, queries, truth = graph
    plain = HNSW(vectors[:400], M=8, ef_construction=64, heuristic=False)
    truth = ExactIndex(vectors[:400]).search(queries, 10)[1]
    assert recall_at_k(plain.search(queries, 10, ef_search=64)[1], truth) >= 0.9


def test_hnsw_matches_hnswlib_recall_at_the_same_settings(graph):
    index, vectors, queries, truth = graph
    theirs = hnswlib.Index(space="ip", dim=16)
    theirs.init_index(max_elements=len(vectors), M=8, ef_construction=64, random_seed=0)
    theirs.add_items(vectors)
    theirs.set_ef(20)
    found, _ = theirs.knn_query(queries, k=10)
    ours = recall_at_k(index.search(queries, 10, ef_search=20)[1], truth)
    assert abs(ours - recall_at_k(found.astype(np.int64), truth)) <= 0.05


# ---- the retriever, the store swap, the encoder --------------------------------------


def test_the_faiss_store_read_back_from_disk_ranks_like_the_default(
    small_retriever, tmp_path
):
    retriever, vectors = small_retriever
    path = FaissIndex.exact(vectors).save(tmp_path / "store.faiss")
    stored = Retriever(
        retriever.chunks, retriever.embedder, vectors, index=FaissIndex.load(path)
    )
    graph = Retriever(
        retriever.chunks, retriever.embedder, vectors, index=HNSW(vectors, M=16)
    )
    for question in QUESTIONS[:8]:
        for method in Retriever.methods:
            ours = retriever.rank(question.text, method)
            assert stored.rank(question.text, method)[:10] == ours[:10]
        assert (
            graph.rank(question.text, "dense")[:3]
            == retriever.rank(question.text, "dense")[:3]
        )


def test_dense_ranking_keeps_each_chunks_best_passage(small_retriever):
    retriever, vectors = small_retriever
    ranking = retriever.rank("grouped-query attention", "dense")
    assert len(ranking) == len(set(ranking)) == min(50, len(retriever.chunks))
    query = retriever.embedder(["grouped-query attention"])[0]
    best = {}
    for passage, owner in enumerate(retriever.owners.tolist()):
        best[owner] = max(best.get(owner, -2.0), float(vectors[passage] @ query))
    expected = sorted(best, key=lambda owner: -best[owner])
    assert ranking[:10] == expected[:10]


def test_embedder_equals_sentence_transformers(embedder):
    from sentence_transformers import SentenceTransformer

    from annotated.transformers.transformer import minilm_folder

    texts = ["How does the KV cache work?", "A longer text " * 40, "x"]
    reference = SentenceTransformer(str(minilm_folder()), device="cpu")
    theirs = reference.encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(embedder(texts), theirs, rtol=0, atol=1e-5)


def test_hybrid_retrieval_on_the_questions_about_four_lessons(embedder):
    chunks = load_corpus(LESSONS)
    retriever = Retriever(chunks, embedder, corpus_embeddings(chunks, embedder))
    questions = [q for q in QUESTIONS if q.module in LESSONS]
    assert len(questions) >= 6
    results = evaluate(retriever, questions)
    assert results["hybrid"]["recall@5"] >= 0.8  # measured: 1.0 (6 questions)
    assert results["hybrid"]["lesson@5"] == 1.0
    for method in Retriever.methods:
        scores = results[method]
        assert scores["recall@1"] <= scores["recall@5"] <= scores["recall@10"]
        assert scores["recall@1"] <= scores["mrr"] <= 1


def test_corpus_embeddings_embed_only_the_lessons_missing_from_the_cache(hashed_demo):
    chunks = load_corpus(LESSONS[:2])
    passages = [p for chunk in chunks for p in chunk.passages()]
    per_lesson = {
        len([p for c in chunks if c.module == m for p in c.passages()])
        for m in LESSONS[:2]
    }
    embedder = CountingEmbedder()
    vectors = corpus_embeddings(chunks, embedder)
    assert embedder.embedded == len(passages)
    np.testing.assert_allclose(vectors, HashEmbedder()(passages), atol=1e-6)
    files = sorted((hashed_demo / "cache").glob("rag-minilm-*.npy"))
    assert len(files) == 2
    np.testing.assert_array_equal(corpus_embeddings(chunks, embedder), vectors)
    assert embedder.embedded == len(passages)  # all read back from the cache
    files[0].unlink()  # one lesson edited: only its passages are embedded again
    np.testing.assert_array_equal(corpus_embeddings(chunks, embedder), vectors)
    assert embedder.embedded - len(passages) in per_lesson


# ---- generation ----------------------------------------------------------------------


def test_extractive_answer_cites_a_source_after_every_sentence(small_retriever):
    retriever, _ = small_retriever
    text, sources = answer("how does the KV cache work?", retriever)
    assert len(sources) == 3
    lines = text.splitlines()
    assert len(lines) == 3
    for line in lines:
        cited = re.fullmatch(r"(.+) \[[^\]]+\]\(([^)]+)\)", line)
        sentence, link = " ".join(cited.group(1).split()), cited.group(2)
        source = next(chunk for chunk in sources if chunk.link == link)
        assert sentence in " ".join(source.prose.split())


def test_an_answer_without_a_fitting_sentence_says_so():
    chunk = Chunk("x/y", "Y", "", "", 1, 3, "Too short.\n\n| a table | row |")
    hashed = HashEmbedder()
    retriever = Retriever([chunk], hashed, hashed(chunk.passages()))
    text, sources = answer("what is in the table?", retriever)
    assert text == "No sentence of the top sections fits." and sources == [chunk]


def test_sentences_skip_headings_tables_and_display_math():
    prose = (
        "## A heading\n\nFirst sentence is long enough to keep here. Second one "
        "is also long enough to be kept.\n\n| a | b |\n\n$$x = 1$$\n\nShort."
    )
    assert sentences(prose) == [
        "First sentence is long enough to keep here.",
        "Second one is also long enough to be kept.",
    ]


def test_a_tiny_gpt_continues_the_answer_reproducibly():
    tokenizer = train_tokenizer("the cache holds keys and values " * 20, 20)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=tokenizer.vocabulary_size,
        n_positions=16,
        n_embd=16,
        n_layer=1,
        n_head=2,
    )
    model = GPT2(config).eval()
    text = "The cache holds keys and values [kv](transformers/kv_cache.md) " * 5
    first = continue_answer(text, model, tokenizer, tokens=6, seed=1)
    assert first == continue_answer(text, model, tokenizer, tokens=6, seed=1)
    assert isinstance(first, str) and len(tokenizer.encode_ordinary(first)) >= 1


# ---- bad input, example, demo --------------------------------------------------------


@pytest.mark.parametrize(
    "flags, message",
    [
        (["   "], "the question is empty"),
        (["--generate", "-1"], "--generate: expected a whole number >= 0"),
        (
            ["--random-vectors", "10"],
            "--random-vectors: expected a whole number >= 100",
        ),
        # A question typed after --lessons is taken for a lesson.
        (["--lessons", "llm/gpt2", "what is a KV cache?"], "put a question before"),
    ],
)
def test_demo_refuses_bad_flags_in_one_line(flags, message, capsys):
    with pytest.raises(SystemExit):
        main(flags)
    assert message in capsys.readouterr().err


def test_bad_input_is_refused(small_retriever):
    retriever, vectors = small_retriever
    index = ExactIndex(vectors)
    with pytest.raises(ValueError, match="queries must be"):
        index.search(np.zeros((2, 3)), 1)
    with pytest.raises(ValueError, match="k must be an int"):
        index.search(vectors[:1], 0)
    with pytest.raises(ValueError, match="k must be an int"):
        HNSW(vectors[:10]).search(vectors[:1], 11)
    with pytest.raises(ValueError, match="method must be one of"):
        retriever.rank("x", "sparse")
    with pytest.raises(ValueError, match="question must be"):
        retriever.search("  ")
    with pytest.raises(ValueError, match="passages but"):
        Retriever(retriever.chunks, retriever.embedder, vectors[:-1])
    with pytest.raises(TypeError, match="token lists"):
        BM25(["a document as a string"])
    with pytest.raises(ValueError, match="not lessons"):
        load_corpus(["nowhere/nothing"])
    with pytest.raises(ValueError, match="no index file"):
        FaissIndex.load("/nonexistent/store.faiss")
    with pytest.raises(ValueError, match="vectors must be"):
        HNSW(np.zeros(4))
    with pytest.raises(ValueError, match="M must be >= 2"):
        HNSW(vectors[:10], M=1)
    with pytest.raises(ValueError, match="no section"):
        find_chunk(retriever.chunks, "llm/gpt2", "No such heading")


def test_embedder_refuses_a_bare_string(embedder):
    with pytest.raises(TypeError, match="list of str"):
        embedder("a string, not a list")


def test_example_and_its_dataflow():
    fn, args = example()
    similarities, ids = fn(*args)
    assert ids.shape == (8, 10) and similarities.shape == (8, 10)
    nodes, edges = dataflow((similarities, ids))
    assert len(edges) >= 3 and {n for n, _ in nodes} >= {s for s, _, _ in edges}


def test_demo_on_two_lessons(tmp_path):
    metrics = main(
        ["--lessons", *LESSONS[:2], "--random-vectors", "300", "--out", str(tmp_path)]
    )
    assert metrics["hybrid recall@5"] >= 0.5
    assert metrics["faiss same top-5"] == 1.0
    assert (tmp_path / "retrieval.png").is_file() and (tmp_path / "hnsw.png").is_file()
    assert (tmp_path / "corpus.faiss").is_file()
    assert not math.isnan(metrics["hnsw random speedup at recall 0.95"])


def test_demo_answers_one_question_and_lets_the_gpt_continue(
    hashed_demo, monkeypatch, capsys
):
    model, tokenizer, calls = object(), object(), []
    monkeypatch.setattr(
        pretraining_module, "small_gpt", lambda device: (model, tokenizer, [], [])
    )

    def continuing(text, *args):
        calls.append(args)
        return " and more"

    monkeypatch.setattr(rag_module, "continue_answer", continuing)
    question = "how does the KV cache work?"
    flags = [question, "--generate", "3", "--seed", "5", "--lessons", LESSONS[0]]
    metrics = main([*flags, "--out", str(hashed_demo)])
    assert metrics == {"sections": float(len(load_corpus(LESSONS[:1])))}
    assert calls == [(model, tokenizer, 3, 5)]
    out = capsys.readouterr().out
    assert f"Q: {question}" in out and "small GPT continues: ' and more'" in out
    assert not (hashed_demo / "retrieval.png").exists()  # no evaluation, no figures


def test_demo_evaluates_only_when_asked_for_the_evaluation(hashed_demo):
    metrics = main(["--evaluate", "--lessons", *LESSONS[:2], "--out", str(hashed_demo)])
    assert set(metrics) == {
        f"{method} {name}"
        for method in Retriever.methods
        for name in ("recall@1", "recall@5", "recall@10", "mrr", "lesson@5")
    }
    assert not (hashed_demo / "retrieval.png").exists()


def test_demo_refuses_lessons_that_no_question_is_about(hashed_demo, capsys):
    with pytest.raises(SystemExit):
        main(["--evaluate", "--lessons", "serving/chains"])
    assert "none of the questions is about these lessons" in capsys.readouterr().err


# ---- benchmarks ----------------------------------------------------------------------


@pytest.mark.benchmark(group="BM25 scores of one question over the whole site")
def test_bench_bm25_ours(benchmark, corpus):
    ours = BM25([bm25_tokens(chunk.text) for chunk in corpus])
    tokens = bm25_tokens(QUESTIONS[0].text)
    benchmark.extra_info["label"] = "ours (inverted index)"
    benchmark(ours.scores, tokens)


@pytest.mark.benchmark(group="BM25 scores of one question over the whole site")
def test_bench_bm25_rank_bm25(benchmark, corpus):
    theirs = rank_bm25.BM25Okapi([bm25_tokens(chunk.text) for chunk in corpus])
    tokens = bm25_tokens(QUESTIONS[0].text)
    benchmark.extra_info["label"] = "rank_bm25.BM25Okapi"
    benchmark.extra_info["baseline"] = True
    benchmark(theirs.get_scores, tokens)


HNSW_GROUP = "top-10 of 100 queries, 1000 unit vectors in 16-d, M=8, ef=40"


@pytest.mark.benchmark(group=HNSW_GROUP)
def test_bench_hnsw_ours(benchmark, graph):
    index, _, queries, truth = graph
    benchmark.extra_info["label"] = "ours (Python)"
    ids = benchmark(index.search, queries, 10, 40)[1]
    assert recall_at_k(ids, truth) >= 0.95


@pytest.mark.benchmark(group=HNSW_GROUP)
def test_bench_hnsw_hnswlib(benchmark, graph):
    _, vectors, queries, truth = graph
    theirs = hnswlib.Index(space="ip", dim=16)
    theirs.init_index(max_elements=len(vectors), M=8, ef_construction=64, random_seed=0)
    theirs.add_items(vectors)
    theirs.set_ef(40)
    theirs.set_num_threads(1)
    benchmark.extra_info["label"] = "hnswlib"
    benchmark.extra_info["baseline"] = True
    ids = benchmark(theirs.knn_query, queries, 10)[0]
    assert recall_at_k(ids.astype(np.int64), truth) >= 0.95


@pytest.mark.benchmark(group=HNSW_GROUP)
def test_bench_hnsw_faiss(benchmark, graph):
    _, vectors, queries, truth = graph
    theirs = faiss.IndexHNSWFlat(16, 8, faiss.METRIC_INNER_PRODUCT)
    theirs.hnsw.efConstruction = 64
    theirs.add(vectors)
    theirs.hnsw.efSearch = 40
    benchmark.extra_info["label"] = "faiss.IndexHNSWFlat"
    ids = benchmark(theirs.search, queries, 10)[1]
    assert recall_at_k(ids, truth) >= 0.95


EXACT_GROUP = "exact top-10 of 100 queries, 1000 unit vectors in 16-d"


@pytest.mark.benchmark(group=EXACT_GROUP)
def test_bench_exact_ours(benchmark, graph):
    _, vectors, queries, truth = graph
    benchmark.extra_info["label"] = "ours (matrix product)"
    ids = benchmark(ExactIndex(vectors).search, queries, 10)[1]
    np.testing.assert_array_equal(ids, truth)


@pytest.mark.benchmark(group=EXACT_GROUP)
def test_bench_exact_faiss(benchmark, graph):
    _, vectors, queries, truth = graph
    benchmark.extra_info["label"] = "faiss.IndexFlatIP"
    benchmark.extra_info["baseline"] = True
    ids = benchmark(FaissIndex.exact(vectors).search, queries, 10)[1]
    np.testing.assert_array_equal(ids, truth)
