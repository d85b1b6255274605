"""langchain-core's Runnable interface, exercised on the retriever, the LLM and the
chain (invoke, batch, stream, ainvoke, astream: identical outputs for one seed), the
callbacks each fires, and against the lesson's own pieces: the retriever's documents
are the rag retriever's sections, the LLM's text is our GPT's sampling loop token for
token, and MiniLMEmbeddings equal the rag encoder (1e-6) and rank like
InMemoryVectorStore."""

import asyncio
import hashlib

import numpy as np
import pytest
import torch
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.vectorstores import InMemoryVectorStore

from annotated.llm.bpe import train as train_tokenizer
from annotated.llm.gpt2 import GPT2, GPT2Config, top_k_filter
from annotated.serving.chains import (
    PROMPT,
    GPTLLM,
    MiniLMEmbeddings,
    SiteRetriever,
    Timeline,
    build_chain,
    dataflow,
    example,
    format_documents,
)
from annotated.serving.rag import Embedder, Retriever, bm25_tokens, load_corpus

LESSONS = ["transformers/kv_cache", "llm/gpt2", "sequence/seq2seq"]


class HashEmbedder:
    """A stand-in encoder: hashed bag of words, unit length."""

    def __call__(self, texts):
        vectors = np.full((len(texts), 64), 1e-3, dtype=np.float32)
        for row, text in enumerate(texts):
            for token in bm25_tokens(text):
                vectors[row, hashlib.md5(token.encode()).digest()[0] % 64] += 1.0
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def index():
    chunks = load_corpus(LESSONS)
    hashed = HashEmbedder()
    return Retriever(chunks, hashed, hashed([p for c in chunks for p in c.passages()]))


@pytest.fixture(scope="module")
def tiny_llm():
    tokenizer = train_tokenizer("the cache holds keys and values é " * 30, 30)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=tokenizer.vocabulary_size,
        n_positions=32,
        n_embd=16,
        n_layer=1,
        n_head=2,
    )
    return GPTLLM(model=GPT2(config).eval(), tokenizer=tokenizer, max_new_tokens=12)


class Recorder(BaseCallbackHandler):
    def __init__(self):
        self.events = []

    def on_retriever_start(self, serialized, query, **kwargs):
        self.events.append("retriever_start")

    def on_retriever_end(self, documents, **kwargs):
        self.events.append("retriever_end")

    def on_llm_start(self, serialized, prompts, **kwargs):
        self.events.append("llm_start")

    def on_llm_new_token(self, token, **kwargs):
        self.events.append("token")

    def on_llm_end(self, response, **kwargs):
        self.events.append("llm_end")

    def on_chain_start(self, serialized, inputs, **kwargs):
        self.events.append("chain_start")


def test_retriever_returns_the_rag_sections_through_every_entry_point(index):
    retriever = SiteRetriever(index=index, k=3)
    question = "how does the KV cache work?"
    documents = retriever.invoke(question)
    expected = [c.link for c in index.search(question, 3)]
    assert [d.metadata["link"] for d in documents] == expected
    assert all(isinstance(d, Document) and d.page_content for d in documents)
    assert retriever.batch([question, question])[1] == documents
    assert asyncio.run(retriever.ainvoke(question)) == documents
    assert list(retriever.stream(question)) == [documents]

    async def collect():
        return [chunk async for chunk in retriever.astream(question)]

    assert asyncio.run(collect()) == [documents]
    bm25 = SiteRetriever(index=index, k=2, method="bm25").invoke(question)
    assert [d.metadata["link"] for d in bm25] == [
        c.link for c in index.search(question, 2, "bm25")
    ]
    recorder = Recorder()
    retriever.invoke(question, config={"callbacks": [recorder]})
    assert recorder.events == ["retriever_start", "retriever_end"]


def by_hand(llm, prompt: str) -> str:
    """What `llm` should answer: the sampling loop of the GPT-2 chapter, written out,
    reading the last 32 positions."""
    tokenizer, model = llm.tokenizer, llm.model
    idx = torch.tensor([tokenizer.encode_ordinary(prompt)])
    start = idx.shape[1]
    generator = torch.Generator().manual_seed(llm.seed)
    with torch.no_grad():
        for _ in range(llm.max_new_tokens):
            logits = model(idx[:, -32:])[:, -1] / llm.temperature
            probs = torch.softmax(top_k_filter(logits, llm.top_k), dim=-1)
            idx = torch.cat([idx, torch.multinomial(probs, 1, generator=generator)], 1)
    return tokenizer.decode_bytes(idx[0, start:].tolist()).decode("utf-8", "replace")


def test_llm_is_our_sampling_loop_and_streams_what_it_invokes(tiny_llm):
    prompt = "the cache holds"
    text = tiny_llm.invoke(prompt)
    pieces = list(tiny_llm.stream(prompt))
    assert "".join(pieces) == text and len(pieces) >= 2 and all(pieces)
    assert tiny_llm.batch([prompt, prompt]) == [text, text]
    assert asyncio.run(tiny_llm.ainvoke(prompt)) == text

    async def collect():
        return [piece async for piece in tiny_llm.astream(prompt)]

    assert "".join(asyncio.run(collect())) == text
    assert by_hand(tiny_llm, prompt) == text


def test_llm_fires_a_callback_per_piece_and_honours_stop(tiny_llm):
    recorder = Recorder()
    pieces = list(tiny_llm.stream("the cache", config={"callbacks": [recorder]}))
    assert recorder.events[0] == "llm_start" and recorder.events[-1] == "llm_end"
    assert recorder.events.count("token") == len(pieces)
    text = tiny_llm.invoke("the cache")
    stop = text[3:5]
    cut = tiny_llm.invoke("the cache", stop=[stop])
    assert cut == text[: text.find(stop)] and stop not in cut
    long_prompt = "keys and values " * 50  # longer than the 32 positions
    assert isinstance(tiny_llm.invoke(long_prompt), str)


def test_a_stop_sequence_across_two_pieces_is_cut_whole_from_the_stream(tiny_llm):
    """A stop sequence that begins in one streamed piece and ends in the next: nothing
    of it reaches the stream (its first part was yielded before it was found)."""
    pieces = list(tiny_llm.stream("the cache"))
    text = "".join(pieces)
    ends = [len("".join(pieces[: i + 1])) for i in range(len(pieces) - 1)]
    # Two characters around the end of a piece (not the first character: something
    # comes before the stop), found nowhere earlier in the text.
    end = next(
        e for e in ends if 1 < e < len(text) and text.find(text[e - 1 : e + 1]) == e - 1
    )
    stop = text[end - 1 : end + 1]
    expected = text[: end - 1]
    cut = list(tiny_llm.stream("the cache", stop=[stop]))
    assert "".join(cut) == expected
    assert all(cut)  # while a possible stop is held back, no empty piece is sent
    assert tiny_llm.invoke("the cache", stop=[stop]) == expected


def test_a_stop_sequence_that_starts_a_piece_adds_no_empty_piece(tiny_llm):
    """Everything before the stop sequence was yielded already: the stream ends with
    the pieces before it, and no empty one (one character stops hold nothing back)."""
    pieces = list(tiny_llm.stream("the cache"))
    text = "".join(pieces)
    # A piece whose first character appears nowhere earlier.
    i = next(
        i
        for i in range(1, len(pieces))
        if pieces[i] and text.find(pieces[i][0]) == len("".join(pieces[:i]))
    )
    assert list(tiny_llm.stream("the cache", stop=[pieces[i][0]])) == pieces[:i]


def test_llm_reads_the_last_positions_of_a_prompt_longer_than_its_context(tiny_llm):
    # A prompt of more than 32 tokens: the model sees its last 32, as the hand loop
    # does when it windows the whole prompt.
    prompt = "the cache holds keys " * 20 + "and values é"
    assert len(tiny_llm.tokenizer.encode_ordinary(prompt)) > 40
    assert tiny_llm.invoke(prompt) == by_hand(tiny_llm, prompt)


def test_llm_rejects_bad_settings(tiny_llm):
    with pytest.raises(ValueError, match="temperature must be > 0"):
        tiny_llm.model_copy(update={"temperature": 0.0}).invoke("the")


def test_a_tail_held_back_when_the_budget_runs_out_is_still_sent(tiny_llm):
    """The text ends with the start of a stop sequence that never completes: the held
    tail is yielded once the token budget is spent."""
    text = tiny_llm.invoke("the cache")
    pieces = list(tiny_llm.stream("the cache", stop=[text[-1] + "\x00"]))
    assert "".join(pieces) == text and pieces[-1].endswith(text[-1])


def test_chain_composes_and_agrees_across_invoke_stream_batch_async(index, tiny_llm):
    chain = build_chain(SiteRetriever(index=index, k=2), tiny_llm)
    question = "what is beam search?"
    answer = chain.invoke(question)
    assert isinstance(answer, str) and answer
    assert "".join(chain.stream(question)) == answer
    assert chain.batch([question, question]) == [answer, answer]
    assert asyncio.run(chain.ainvoke(question)) == answer

    async def collect():
        return [piece async for piece in chain.astream(question)]

    assert "".join(asyncio.run(collect())) == answer
    # by hand: the same steps, without LCEL
    documents = SiteRetriever(index=index, k=2).invoke(question)
    prompt = PROMPT.format(context=format_documents(documents), question=question)
    assert tiny_llm.invoke(prompt) == answer
    recorder, timeline = Recorder(), Timeline()
    chain.invoke(question, config={"callbacks": [recorder, timeline]})
    events = recorder.events
    assert events[0] == "chain_start"
    assert events.index("retriever_end") < events.index("llm_start")
    assert {kind for kind, _, _ in timeline.spans} == {"chain", "retriever", "llm"}
    assert len(timeline.tokens) == events.count("token") >= 1


def test_minilm_embeddings_equal_the_encoder_and_rank_like_the_store():
    embedder = Embedder("cpu")
    embeddings = MiniLMEmbeddings(embedder)
    texts = ["keys and values are cached", "beam search keeps hypotheses", "a cat"]
    vectors = np.array(embeddings.embed_documents(texts))
    np.testing.assert_allclose(vectors, embedder(texts), rtol=0, atol=1e-6)
    query = embeddings.embed_query("what does the cache store?")
    assert asyncio.run(embeddings.aembed_query("what does the cache store?")) == query
    store = InMemoryVectorStore(embeddings)
    store.add_texts(texts)
    found = store.similarity_search("what does the cache store?", k=3)
    expected = np.argsort(-(vectors @ np.array(query)))
    assert [d.page_content for d in found] == [texts[i] for i in expected]
    cached = MiniLMEmbeddings(embedder, known={"a cat": [1.0, 0.0]})
    assert cached.embed_documents(["a cat", texts[0]])[0] == [1.0, 0.0]
    assert cached.embed_documents([texts[0]])[0] == embeddings.embed_query(texts[0])
    with pytest.raises(TypeError, match="must be a str"):
        embeddings.embed_query(["not", "a", "str"])


def test_minilm_embeddings_reject_a_str_or_non_str_items():
    embeddings = MiniLMEmbeddings(HashEmbedder())
    with pytest.raises(TypeError, match="texts must be a list of str, got a str"):
        embeddings.embed_documents("keys and values")
    with pytest.raises(TypeError, match="got an item of type int"):
        embeddings.embed_documents(["keys", 3])
    assert len(embeddings.embed_documents(t for t in ["keys", "values"])) == 2


def test_minilm_embeddings_give_one_vector_per_text_repeats_included():
    calls = []

    class Counting(HashEmbedder):
        def __call__(self, texts):
            calls.append(list(texts))
            return super().__call__(texts)

    embeddings = MiniLMEmbeddings(Counting())
    texts = ["keys", "values", "keys", "the cache", "values"]
    vectors = np.array(embeddings.embed_documents(texts))
    np.testing.assert_array_equal(vectors, HashEmbedder()(texts))
    assert calls == [["keys", "values", "the cache"]]  # each distinct text once


def test_example_and_its_dataflow():
    fn, args = example()
    output = fn(*args)
    assert isinstance(output, str)
    nodes, edges = dataflow(output)
    assert {n for n, _ in nodes} >= {e for edge in edges for e in edge[:2]}


def test_demo_answers_four_ways_and_draws_its_timeline(tmp_path, monkeypatch, tiny_llm):
    # The demo's own encoder over one lesson; a copy of the tiny GPT stands in for the
    # pretrained one (on the demo's --device), so the run takes seconds.
    import copy

    from annotated.llm import pretraining
    from annotated.serving.chains import main

    model, tokenizer = copy.deepcopy(tiny_llm.model), tiny_llm.tokenizer
    monkeypatch.setattr(
        pretraining, "small_gpt", lambda device: (model.to(device), tokenizer, [], [])
    )
    flags = ["--lessons", "llm/gpt2", "--tokens", "5", "--out", str(tmp_path)]
    result = main(flags)
    assert result["agree"] == 1.0  # invoke, stream, batch and ainvoke
    assert result["store agrees"] == 1.0  # InMemoryVectorStore ranks as ours
    assert 1 <= result["tokens"] <= 5 and result["first token s"] > 0
    assert (tmp_path / "timeline.png").is_file()
