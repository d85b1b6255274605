"""Verified against faiss.IndexFlatIP and a brute-force numpy argsort (the same ids up
to ties, scores to 1e-6 in float32, 1e-12 in float64), Recall@k against a loop written
out by hand, and the chance levels against an enumeration of every ranking.

The faiss indexes are written to disk and read back; the demo runs on a tiny untrained
CLIP, where only its bookkeeping (not its recall) can be checked.
"""

import itertools

import faiss
import hnswlib
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import annotated.vision.retrieval as retrieval
from annotated.vision.clip import CLIP, Config, WordTokenizer
from annotated.vision.retrieval import (
    ExactIndex,
    FaissIndex,
    build_gallery,
    chance_recall,
    dataflow,
    evaluate,
    example,
    main,
    overlap,
    random_unit,
    recall_at_k,
    strict_ceiling,
)

torch.set_num_threads(1)
faiss.omp_set_num_threads(1)


def tiny_clip(device: str = "cpu"):
    """A small untrained CLIP with a fixed seed, in place of the cached trained one."""
    torch.manual_seed(0)
    tokenizer = WordTokenizer()
    config = Config(
        vocab_size=len(tokenizer.vocab),
        eos_token_id=tokenizer.eot,
        text_hidden_size=16,
        text_intermediate_size=32,
        text_layers=1,
        vision_hidden_size=16,
        vision_intermediate_size=32,
        vision_layers=1,
        projection_dim=8,
    )
    return CLIP(config).eval().to(device), tokenizer


def assert_same_top_k(scores, ids, ref_scores, ref_ids, similarity, atol):
    """Scores equal to `atol`; ids equal wherever the score is not tied, and every id
    scoring what is reported for it."""
    np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=atol)
    recomputed = np.take_along_axis(similarity, np.asarray(ids), axis=1)
    np.testing.assert_allclose(recomputed, scores, rtol=0, atol=atol)
    assert all(len(set(row)) == len(row) for row in np.asarray(ids).tolist())
    sorted_all = -np.sort(-similarity, axis=1)  # [Q, N]
    k = ids.shape[1]
    for row in range(len(ids)):
        gaps = np.abs(sorted_all[row, : k + 1, None] - sorted_all[row, None, : k + 1])
        untied = [c for c in range(k) if (gaps[c] < 10 * atol).sum() == 1]
        assert np.array_equal(np.asarray(ids)[row, untied], ref_ids[row, untied])


@given(
    size=st.integers(1, 300),
    queries=st.integers(0, 40),
    dimension=st.integers(1, 16),
    k_fraction=st.floats(0, 1),
    query_block=st.integers(1, 17),
    gallery_block=st.integers(1, 70),
    seed=st.integers(0, 2**16),
)
def test_exact_search_equals_numpy_argsort_in_float64(
    size, queries, dimension, k_fraction, query_block, gallery_block, seed
):
    gallery = random_unit(size, dimension, seed).double()
    query = random_unit(queries, dimension, seed + 1).double()
    k = 1 + int(k_fraction * (size - 1))
    index = ExactIndex(gallery, query_block=query_block, gallery_block=gallery_block)
    scores, ids = index.search(query, k)
    assert scores.shape == ids.shape == (queries, k) and ids.dtype == torch.long
    similarity = (query @ gallery.T).numpy()  # [Q, N]
    order = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    reference = np.take_along_axis(similarity, order, axis=1)
    assert_same_top_k(scores.numpy(), ids, reference, order, similarity, 1e-12)


@pytest.mark.parametrize("size, k", [(3000, 10), (257, 257), (50, 1)])
def test_exact_search_equals_faiss_index_flat_ip_in_float32(size, k):
    gallery = random_unit(size, 32, size)
    queries = random_unit(200, 32, size + 1)
    scores, ids = ExactIndex(gallery, 64, 1000).search(queries, k)
    theirs = faiss.IndexFlatIP(32)
    theirs.add(gallery.numpy())
    ref_scores, ref_ids = theirs.search(queries.numpy(), k)
    similarity = (queries.double() @ gallery.double().T).numpy()
    assert_same_top_k(scores.numpy(), ids, ref_scores, ref_ids, similarity, 1e-6)
    wrapped_scores, wrapped_ids = FaissIndex.flat(gallery).search(queries, k)
    assert torch.equal(wrapped_ids, torch.from_numpy(ref_ids))


def test_ties_give_equal_scores_and_ids_from_the_tied_set():
    base = random_unit(20, 8, 3)
    gallery = torch.cat([base, base, base])  # vector i is also ids i + 20 and i + 40
    queries = random_unit(30, 8, 4)
    best_two = ExactIndex(base).search(queries, 2)[1]  # [30, 2]
    expected = best_two.repeat_interleave(3, dim=1)  # [30, 6]: a a a b b b
    ours = ExactIndex(gallery, 7, 9).search(queries, 6)
    theirs = FaissIndex.flat(gallery).search(queries, 6)
    torch.testing.assert_close(ours[0], theirs[0], rtol=0, atol=1e-6)
    for scores, ids in (ours, theirs):
        assert torch.equal(ids % 20, expected)
        assert all(len(set(row)) == 6 for row in ids.tolist())  # three copies each


def test_one_item_gallery_and_no_queries():
    vector = random_unit(1, 5, 0)
    queries = random_unit(4, 5, 1)
    scores, ids = ExactIndex(vector).search(queries, 1)
    assert ids.flatten().tolist() == [0, 0, 0, 0]
    torch.testing.assert_close(scores.flatten(), queries @ vector[0])
    empty_scores, empty_ids = ExactIndex(vector).search(torch.empty(0, 5), 1)
    assert empty_scores.shape == empty_ids.shape == (0, 1)
    assert FaissIndex.flat(vector).search(queries, 1)[1].flatten().tolist() == [0] * 4


def test_numpy_arrays_are_accepted_and_float16_searches_on_its_own_dtype():
    gallery = random_unit(100, 16, 0)
    queries = random_unit(10, 16, 1)
    from_numpy = ExactIndex(gallery.numpy()).search(queries.numpy(), 5)
    assert torch.equal(from_numpy[1], ExactIndex(gallery).search(queries, 5)[1])
    half = ExactIndex(gallery.half()).search(queries, 5)
    assert half[0].dtype == torch.float16
    torch.testing.assert_close(
        half[0].float(), ExactIndex(gallery).search(queries, 5)[0], atol=3e-3, rtol=0
    )


def test_k_beyond_the_gallery_is_an_error_where_raw_faiss_pads_with_minus_one():
    gallery = random_unit(3, 4, 0)
    queries = random_unit(2, 4, 1)
    raw = faiss.IndexFlatIP(4)
    raw.add(gallery.numpy())
    _, raw_ids = raw.search(queries.numpy(), 5)
    assert (raw_ids[:, 3:] == -1).all()  # what the check protects against
    for index in (ExactIndex(gallery), FaissIndex.flat(gallery)):
        with pytest.raises(ValueError, match=r"k must be an int in 1\.\.3"):
            index.search(queries, 5)
        with pytest.raises(ValueError, match="k must be an int"):
            index.search(queries, 0)
        with pytest.raises(ValueError, match="k must be an int"):
            index.search(queries, True)


def test_bad_inputs_raise_naming_the_argument():
    gallery = random_unit(10, 4, 0)
    with pytest.raises(ValueError, match=r"gallery must be unit vectors.*rows \[0\]"):
        ExactIndex(torch.cat([2 * gallery[:1], gallery[1:]]))
    with pytest.raises(ValueError, match="queries must be unit vectors"):
        ExactIndex(gallery).search(torch.full((1, 4), float("nan")), 1)
    with pytest.raises(ValueError, match="queries must be unit vectors"):
        FaissIndex.flat(gallery).search(torch.ones(1, 4), 1)
    with pytest.raises(ValueError, match=r"queries must be \[n, 4\], got \(2, 3\)"):
        ExactIndex(gallery).search(random_unit(2, 3, 1), 1)
    with pytest.raises(ValueError, match=r"gallery must be \[n, d\], got \(4,\)"):
        ExactIndex(gallery[0])
    with pytest.raises(TypeError, match="gallery must hold floating-point"):
        ExactIndex(torch.ones(3, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="gallery must be a tensor or array"):
        ExactIndex([[1.0, 0.0]])
    with pytest.raises(ValueError, match="at least one vector"):
        ExactIndex(torch.empty(0, 4))
    with pytest.raises(ValueError, match="query_block and gallery_block must be >= 1"):
        ExactIndex(gallery, query_block=0)
    with pytest.raises(ValueError, match="nprobe <= lists <= gallery size"):
        FaissIndex.inverted_file(gallery, lists=20)
    with pytest.raises(ValueError, match="no index file"):
        FaissIndex.load("/nonexistent/images.faiss")
    with pytest.raises(ValueError, match=r"k must be in 1\.\.3"):
        recall_at_k(
            torch.zeros(2, 3, dtype=torch.long), torch.zeros(2), torch.zeros(1), 4
        )
    with pytest.raises(ValueError, match="3 query labels for 2 ranked rows"):
        recall_at_k(
            torch.zeros(2, 3, dtype=torch.long), torch.zeros(3), torch.zeros(1), 2
        )


def test_faiss_indexes_give_the_same_answers_after_write_and_read(tmp_path):
    gallery = random_unit(600, 16, 5)
    queries = random_unit(50, 16, 6)
    flat = FaissIndex.flat(gallery)
    ivf = FaissIndex.inverted_file(gallery, lists=12, nprobe=3)
    for name, index in (("flat", flat), ("ivf", ivf)):
        loaded = FaissIndex.load(index.save(tmp_path / f"{name}.faiss"))
        for got, want in zip(loaded.search(queries, 7), index.search(queries, 7)):
            assert torch.equal(got, want)
    assert FaissIndex.load(tmp_path / "ivf.faiss").index.nprobe == 3


def test_inverted_file_is_exact_with_every_list_open_and_approximate_with_one():
    gallery = random_unit(2000, 16, 7)
    queries = random_unit(100, 16, 8)
    exact = ExactIndex(gallery).search(queries, 10)[1]
    ivf = FaissIndex.inverted_file(gallery, lists=16, nprobe=16)
    assert overlap(ivf.search(queries, 10)[1], exact) == 1.0
    ivf.index.nprobe = 1
    assert 0.2 < overlap(ivf.search(queries, 10)[1], exact) < 0.95


def recall_by_loop(ids, query_labels, gallery_labels, k):
    hits = 0
    for row, label in zip(ids.tolist(), query_labels.tolist()):
        for j in row[:k]:
            if j >= 0 and gallery_labels[j] == label:
                hits += 1
                break
    return hits / len(ids)


@given(
    seed=st.integers(0, 2**16),
    queries=st.integers(1, 30),
    size=st.integers(1, 40),
    labels=st.integers(1, 6),
)
def test_recall_at_k_equals_a_loop_written_out(seed, queries, size, labels):
    generator = torch.Generator().manual_seed(seed)
    columns = min(size, 8)
    ids = torch.stack(
        [torch.randperm(size, generator=generator)[:columns] for _ in range(queries)]
    )
    ids[torch.rand(ids.shape, generator=generator) < 0.1] = -1  # faiss's "not found"
    query_labels = torch.randint(labels, (queries,), generator=generator)
    gallery_labels = torch.randint(labels, (size,), generator=generator)
    for k in range(1, columns + 1):
        assert recall_at_k(ids, query_labels, gallery_labels, k) == pytest.approx(
            recall_by_loop(ids, query_labels, gallery_labels.tolist(), k), abs=1e-15
        )


def test_minus_one_is_a_miss_even_where_the_last_label_matches():
    gallery_labels = torch.tensor([0, 1, 2])
    ids = torch.tensor([[-1, 0]])
    assert recall_at_k(ids, torch.tensor([2]), gallery_labels, 2) == 0.0
    assert recall_at_k(ids, torch.tensor([0]), gallery_labels, 1) == 0.0
    assert recall_at_k(ids, torch.tensor([0]), gallery_labels, 2) == 1.0


@pytest.mark.parametrize(
    "size, relevant, k", [(6, 2, 2), (7, 1, 3), (6, 3, 1), (5, 5, 2)]
)
def test_chance_recall_equals_enumeration_of_every_ranking(size, relevant, k):
    rankings = list(itertools.permutations(range(size)))
    hits = sum(any(j < relevant for j in ranking[:k]) for ranking in rankings)
    assert chance_recall(k, torch.tensor([relevant]), size) == pytest.approx(
        hits / len(rankings), abs=1e-15
    )
    assert chance_recall(k, torch.tensor([1, 1]), size) == pytest.approx(k / size)


def test_a_perfect_model_reaches_one_relaxed_and_exactly_the_strict_ceiling():
    # every picture embedded exactly where its caption is: all ties, all right
    labels = torch.tensor([0, 0, 0, 1, 2, 2, 3, 3, 3, 3, 3])
    texts = random_unit(4, 12, 9)
    gallery = retrieval.Gallery(
        images=torch.zeros(11, 3, 32, 32),
        captions=[f"caption {i}" for i in labels.tolist()],
        objects=torch.tensor([1] * 5 + [2] * 6),
        texts=[f"caption {i}" for i in range(4)],
        labels=labels,
        image_embeddings=texts[labels],
        text_embeddings=texts,
    )
    result = evaluate(
        gallery, ExactIndex(gallery.image_embeddings), ExactIndex(texts), ks=(1, 2, 4)
    )
    for k in (1, 2, 4):
        assert result[f"image_to_text_R@{k}"] == 1.0
        assert result[f"text_to_image_R@{k}"] == 1.0
        ceiling = sum(min(1, k / n) for n in [3, 3, 3, 1, 2, 2, 5, 5, 5, 5, 5]) / 11
        assert result[f"strict_ceiling_R@{k}"] == pytest.approx(ceiling)
        assert result[f"strict_text_to_image_R@{k}"] == pytest.approx(ceiling)
    assert strict_ceiling(1, torch.arange(5)) == 1.0  # no shared captions, no cap
    assert result["chance_image_to_text_R@1"] == pytest.approx(1 / 4)
    assert result["text_to_image_R@1_2_object"] == 1.0


def test_recall_by_object_count_and_chance_on_a_model_right_only_for_one_object():
    # Four pictures, each with its own caption: the one-object pictures sit on their
    # captions, the two two-object pictures on each other's. Every one-object query
    # is answered, no two-object query is, and chance at k = 1 is 1 in 4 every way.
    captions = torch.eye(4)
    gallery = retrieval.Gallery(
        images=torch.zeros(4, 3, 32, 32),
        captions=[f"caption {i}" for i in range(4)],
        objects=torch.tensor([1, 1, 2, 2]),
        texts=[f"caption {i}" for i in range(4)],
        labels=torch.arange(4),
        image_embeddings=captions[[0, 1, 3, 2]],
        text_embeddings=captions,
    )
    result = evaluate(
        gallery, ExactIndex(gallery.image_embeddings), ExactIndex(captions), ks=(1,)
    )
    for way in ("image_to_text", "text_to_image"):
        assert result[f"{way}_R@1"] == 0.5
        assert result[f"{way}_R@1_1_object"] == 1.0
        assert result[f"{way}_R@1_2_object"] == 0.0
    assert result["strict_text_to_image_R@1"] == 0.5
    for chance in ("image_to_text", "text_to_image", "strict"):
        assert result[f"chance_{chance}_R@1"] == pytest.approx(1 / 4)


def test_gallery_holds_distinct_captions_with_identical_embeddings_for_copies():
    model, tokenizer = tiny_clip()
    gallery = build_gallery(model, tokenizer, one=40, two=12, seed=3, batch=16)
    assert len(gallery.images) == len(gallery.captions) == 52
    assert len(set(gallery.texts)) == len(gallery.texts) <= 30 + 12
    assert [gallery.texts[i] for i in gallery.labels.tolist()] == gallery.captions
    assert gallery.objects.tolist() == [1] * 40 + [2] * 12
    norms = torch.cat([gallery.image_embeddings, gallery.text_embeddings]).norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    # a repeated caption, encoded twice, lands on exactly the same point
    repeated = gallery.captions[gallery.labels.bincount().argmax()]
    ids = tokenizer.encode([repeated, repeated], model.config.max_position_embeddings)
    twice = model.encode_text(ids)
    assert torch.equal(twice[0], twice[1])
    with pytest.raises(ValueError, match="one and two must be >= 1"):
        build_gallery(model, tokenizer, one=0, two=5, seed=0)


def test_example_and_dataflow():
    fn, args = example()
    scores, ids = fn(*args)
    assert ids.shape == (500, 10)
    nodes, edges = dataflow((scores, ids))
    names = {node for node, _ in nodes}
    assert all(a in names and b in names for a, b, _ in edges)


def test_demo_refuses_more_lists_than_pictures_before_loading_clip(monkeypatch, capsys):
    def no_clip(device):
        raise AssertionError("the flags are checked before the model is loaded")

    monkeypatch.setattr(retrieval, "small_clip", no_clip)
    with pytest.raises(SystemExit):
        main(["--one", "3", "--two", "3", "--lists", "7"])
    assert "--lists must be at most --one plus --two" in capsys.readouterr().err


def test_demo_on_a_tiny_clip_agrees_with_faiss_and_reports_recall(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(retrieval, "small_clip", tiny_clip)
    result = main(
        ["--one", "60", "--two", "90", "--lists", "4", "--out", str(tmp_path)]
    )
    assert result["faiss_same_top10"] == 1.0
    assert result["faiss_max_score_gap"] < 1e-6
    for direction in ("image_to_text", "text_to_image", "strict_text_to_image"):
        values = [result[f"{direction}_R@{k}"] for k in (1, 5, 10)]
        assert 0 <= values[0] <= values[1] <= values[2] <= 1
    for k in (1, 5, 10):
        assert result[f"strict_text_to_image_R@{k}"] <= result[f"strict_ceiling_R@{k}"]
    assert 0 < result["ivf_recall_nprobe_1"] <= 1
    for name in (
        "text_to_image.png",
        "image_to_text.png",
        "recall.png",
        "images.faiss",
        "texts.faiss",
        "images_ivf.faiss",
        "texts.json",
    ):
        assert (tmp_path / name).is_file()
    assert FaissIndex.load(tmp_path / "images.faiss").index.ntotal == 150


GROUP = "top-10 of 500 queries in 3,000 unit vectors of width 32"


@pytest.mark.benchmark(group=GROUP)
def test_bench_search_ours(benchmark):
    benchmark.extra_info["label"] = "ours (torch, blocks of 256 × 1,024)"
    fn, args = example()
    benchmark(fn, *args)


@pytest.mark.benchmark(group=GROUP)
def test_bench_search_faiss_flat(benchmark):
    benchmark.extra_info["label"] = "faiss.IndexFlatIP"
    benchmark.extra_info["baseline"] = True
    fn, (queries, k) = example()
    index = faiss.IndexFlatIP(32)
    index.add(fn.__self__.vectors.numpy())
    benchmark(index.search, queries.numpy(), k)


@pytest.mark.benchmark(group=GROUP)
def test_bench_search_hnswlib(benchmark):
    benchmark.extra_info["label"] = "hnswlib, approximate (M 16, ef 50)"
    fn, (queries, k) = example()
    gallery = fn.__self__.vectors.numpy()
    index = hnswlib.Index(space="ip", dim=32)
    index.init_index(
        max_elements=len(gallery), M=16, ef_construction=100, random_seed=0
    )
    index.add_items(gallery)
    index.set_ef(50)
    index.set_num_threads(1)
    ids, _ = index.knn_query(queries.numpy(), k)
    exact = fn(queries, k)[1]
    assert overlap(torch.from_numpy(ids.astype(np.int64)), exact) > 0.9
    benchmark(index.knn_query, queries.numpy(), k)
