r"""
---
title: The pieces as LangChain components
summary: >-
  The retriever, the sentence encoder and our GPT of the previous chapters wrapped as
  real langchain-core components and composed with LCEL into a retrieval chain that
  invokes, batches, streams and runs asynchronously.
time: 10 s
references:
  - key: lewis2020retrieval
    authors: [Patrick Lewis, Ethan Perez, Aleksandra Piktus, Fabio Petroni, Vladimir
      Karpukhin, Naman Goyal, Heinrich Küttler, Mike Lewis, Wen-tau Yih, Tim
      Rocktäschel, Sebastian Riedel, Douwe Kiela]
    title: Retrieval-Augmented Generation for Knowledge-Intensive NLP Tasks
    year: 2020
    venue: NeurIPS
    arxiv: "2005.11401"
  - key: chase2022langchain
    authors: [Harrison Chase]
    title: LangChain
    year: 2022
    venue: GitHub repository
    url: https://github.com/langchain-ai/langchain
worksheet:
  - region: GPTLLM._stream
    hint: >-
      Encode the prompt and keep its last n_positions tokens; for max_new_tokens
      steps divide the last logits by the temperature, keep the top k, draw one token
      with the seeded generator and append it; decode its bytes incrementally, cut
      the text at the first stop string (and return), and yield through report what
      is new, holding back a tail that could still become a stop string.
    tests:
      - test_llm_is_our_sampling_loop_and_streams_what_it_invokes
      - test_llm_fires_a_callback_per_piece_and_honours_stop
      - test_a_stop_sequence_across_two_pieces_is_cut_whole_from_the_stream
  - region: build_chain
    hint: >-
      A dict whose "context" is the retriever piped into format_documents and whose
      "question" is a RunnablePassthrough, piped into PROMPT, the LLM and a
      StrOutputParser.
    tests: [test_chain_composes_and_agrees_across_invoke_stream_batch_async]
---

[The previous chapter](rag.md) built a retriever, an encoder and an answer step as
plain Python. Applications rarely call such pieces by hand: they compose them in a
framework that gives every piece the same interface, so that a retriever can be swapped
for another, a model for a hosted one, and every call traced. LangChain
[@chase2022langchain] is the most used of these, and its core package,
`langchain-core`, defines the interfaces: a `Runnable` has `invoke`, `batch`,
`stream`, and their `async` twins `ainvoke`, `abatch`, `astream`, and fires
callbacks as it runs.

This chapter writes three components against those interfaces:

- `SiteRetriever`, a `BaseRetriever` over the hybrid index of [rag](rag.md);
- `MiniLMEmbeddings`, an `Embeddings` over all-MiniLM-L6-v2, which LangChain's own
  `InMemoryVectorStore` can use;
- `GPTLLM`, an `LLM` over the GPT of [the GPT-2 chapter](../llm/gpt2.md) that streams
  its tokens one at a time;

and composes them with LCEL, the pipe syntax, into retrieval-augmented generation
[@lewis2020retrieval]: retriever, then the documents formatted into a prompt, then the
model, then a string parser. Everything a subclass does not write (batching, async,
callbacks, configuration) the framework supplies, and the test checks that it
does. The model at the end is the 0.9M-parameter small GPT trained on Python's
documentation, with a context of 64 tokens: the chain runs correctly and its answers
are fluent nonsense, which is the point of using a large model in that slot.
"""

import argparse
import codecs
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from langchain_core.callbacks import BaseCallbackHandler, CallbackManagerForLLMRun
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.language_models.llms import LLM
from langchain_core.output_parsers import StrOutputParser
from langchain_core.outputs import GenerationChunk
from langchain_core.prompts import PromptTemplate
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import Runnable, RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore
from pydantic import ConfigDict

from annotated.data import integer, torch_device
from annotated.figures import figure, save
from annotated.llm.gpt2 import GPT2, top_k_filter
from annotated.serving.rag import (
    Embedder,
    Retriever,
    corpus_embeddings,
    load_corpus,
)

# ## The retriever
#
# A `BaseRetriever` subclass writes one method, `_get_relevant_documents(query, *,
# run_manager)`, and returns LangChain `Document`s: the text in `page_content`, the
# rest in `metadata`. Ours hands the question to the hybrid ranking of
# [rag](rag.md#retriever), which orders the sections by reciprocal-rank fusion,
# $\mathrm{RRF}(d) = \sum_m 1 / (k + r_m(d))$ with $r_m(d)$ the rank of section $d$
# under method $m$ (dense or BM25) and $k = 60$, and puts each section's link in the
# metadata, so the chain can cite it. `BaseRetriever` is a pydantic model: the
# fields are declared on the class, and `arbitrary_types_allowed` lets one of them
# hold our own `Retriever`.


class SiteRetriever(BaseRetriever):
    """The sections of this site that answer a question, as `Document`s."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    index: Retriever
    k: int = 4
    method: str = "hybrid"

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        return [
            Document(
                page_content=chunk.prose,
                metadata={
                    "lesson": chunk.lesson,
                    "heading": chunk.heading,
                    "link": chunk.link,
                },
            )
            for chunk in self.index.search(query, self.k, self.method)
        ]


# ## The embeddings
#
# `Embeddings` is a plain abstract class with two methods: `embed_documents` for the
# texts going into a store and `embed_query` for the question (some models embed the
# two differently; MiniLM does not). They return lists of floats, not arrays: the
# interface is meant for any store, including ones across a network. The async
# versions come for free, run in a thread. `known` holds vectors already computed
# (the corpus's, from the cache), so a store filled with the corpus does not embed it
# again: the idea of LangChain's `CacheBackedEmbeddings`.


class MiniLMEmbeddings(Embeddings):
    """all-MiniLM-L6-v2 through the encoder of the rag chapter."""

    def __init__(self, embedder: Embedder, known: dict[str, list[float]] | None = None):
        self.embedder = embedder
        self.known = dict(known or {})

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        if isinstance(texts, str):
            raise TypeError("embed_documents: texts must be a list of str, got a str")
        texts = list(texts)
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(
                    "embed_documents: texts must be a list of str, got an item of "
                    f"type {type(text).__name__}"
                )
        new = [text for text in dict.fromkeys(texts) if text not in self.known]
        if new:
            self.known.update(zip(new, self.embedder(new).tolist()))
        return [self.known[text] for text in texts]

    def embed_query(self, text: str) -> list[float]:
        if not isinstance(text, str):
            raise TypeError(f"embed_query: text must be a str, got {type(text)}")
        return self.embedder([text])[0].tolist()


# ## The model
#
# An `LLM` subclass writes `_call(prompt, stop)` returning the completion, and may
# write `_stream` yielding it in pieces; it names itself in `_llm_type`. Ours writes
# `_stream`, the sampling loop of [the GPT-2 chapter](../llm/gpt2.md#generate) one
# token at a time, and `_call` joins what `_stream` yields, so `invoke` and `stream`
# give the same text for the same seed.
#
# Two details make the stream honest. A byte-level BPE token can end in the middle of
# a UTF-8 character, so the bytes go through an incremental decoder that holds back
# an incomplete character until its last byte arrives. And each piece is reported to
# `run_manager.on_llm_new_token` as it is made: that callback is how a user interface
# shows tokens as they come.
#
# `stop` sequences end the completion at the first one found, even one that spans two
# tokens: a tail that could still grow into a stop sequence is held back until it
# cannot, as [the serving engine](engine.md) does. The prompt's tail is what the model
# reads: it sees `n_positions` tokens (64 for the small GPT).


class GPTLLM(LLM):
    """A GPT of annotated.llm.gpt2 with its BPE tokenizer, sampling with top-k."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    model: GPT2
    tokenizer: Any
    max_new_tokens: int = 32
    temperature: float = 0.8
    top_k: int = 40
    seed: int = 0

    @property
    def _llm_type(self) -> str:
        return "annotated-gpt2"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_k": self.top_k,
        }

    @torch.no_grad()
    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        if self.temperature <= 0 or self.max_new_tokens < 0:
            raise ValueError("GPTLLM: temperature must be > 0, max_new_tokens >= 0")
        device = next(self.model.parameters()).device
        context = self.model.config.n_positions
        idx = torch.tensor([self.tokenizer.encode_ordinary(prompt)[-context:]])
        idx = idx.to(device)  # [1, P]
        generator = torch.Generator(device=device).manual_seed(self.seed)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text, sent = "", 0  # what is decoded, and how much of it was yielded
        for _ in range(self.max_new_tokens):
            logits = self.model(idx[:, -context:])[:, -1] / self.temperature  # [1, V]
            probs = torch.softmax(top_k_filter(logits, self.top_k), dim=-1)
            token = torch.multinomial(probs, 1, generator=generator)  # [1, 1]
            idx = torch.cat([idx, token], dim=1)
            text += decoder.decode(self.tokenizer.decode_bytes([token.item()]))
            found = [text.find(s) for s in stop or [] if s in text]
            if found:
                # Up to the stop sequence; an empty completion is one empty piece.
                if min(found) > sent or sent == 0:
                    yield self.report(text[sent : min(found)], run_manager)
                return
            held = [
                k for s in stop or [] for k in range(1, len(s)) if text.endswith(s[:k])
            ]
            end = len(text) - max(held, default=0)
            if end > sent:
                yield self.report(text[sent:end], run_manager)
                sent = end
        if len(text) > sent:  # the budget ran out with a tail held back
            yield self.report(text[sent:], run_manager)

    def report(
        self, piece: str, run_manager: CallbackManagerForLLMRun | None
    ) -> GenerationChunk:
        chunk = GenerationChunk(text=piece)
        if run_manager:
            run_manager.on_llm_new_token(piece, chunk=chunk)
        return chunk

    def _call(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> str:
        return "".join(c.text for c in self._stream(prompt, stop, run_manager))


# ## The chain
#
# LCEL composes runnables with `|`. A dict in a pipe is a `RunnableParallel`: each of
# its values receives the chain's input, so the question goes both to the retriever
# (whose documents `format_documents` turns into one string) and, untouched by
# `RunnablePassthrough`, into the prompt's `{question}`. The prompt template fills
# its slots, the model completes, and `StrOutputParser` passes the text on.
#
# $$\text{question} \to \{\text{context}, \text{question}\} \to \text{prompt}
#   \to \text{LLM} \to \text{answer}$$


def format_documents(documents: list[Document]) -> str:
    """The documents as one context string, each behind its source."""
    return "\n\n".join(
        f"[{d.metadata['lesson']}, {d.metadata['heading'] or 'introduction'}] "
        f"{' '.join(d.page_content.split()[:60])}"
        for d in documents
    )


PROMPT = PromptTemplate.from_template(
    "Context:\n{context}\n\nQuestion: {question}\nAnswer:"
)


def build_chain(retriever: BaseRetriever, llm: LLM) -> Runnable:
    """retriever | format | prompt | llm | parser, the question passed alongside."""
    return (
        {"context": retriever | format_documents, "question": RunnablePassthrough()}
        | PROMPT
        | llm
        | StrOutputParser()
    )


# ## Watching a run: callbacks
#
# Every runnable reports its start and end to the callback handlers passed in its
# config, with a run id and its parent's, so a tracer can rebuild the tree of a call.
# This handler records when each component started and ended, and when each token
# arrived: the demo draws it.


class Timeline(BaseCallbackHandler):
    """Start and end times of each run, and the arrival time of each token."""

    def __init__(self):
        self.starts: dict[Any, tuple[str, float]] = {}
        self.spans: list[tuple[str, float, float]] = []  # (kind, start, end)
        self.tokens: list[float] = []

    def start(self, kind: str, run_id) -> None:
        self.starts[run_id] = (kind, time.perf_counter())

    def end(self, run_id) -> None:
        kind, began = self.starts.pop(run_id)
        self.spans.append((kind, began, time.perf_counter()))

    def on_retriever_start(self, serialized, query, *, run_id, **kwargs):
        self.start("retriever", run_id)

    def on_retriever_end(self, documents, *, run_id, **kwargs):
        self.end(run_id)

    def on_llm_start(self, serialized, prompts, *, run_id, **kwargs):
        self.start("llm", run_id)

    def on_llm_new_token(self, token, *, run_id, **kwargs):
        self.tokens.append(time.perf_counter())

    def on_llm_end(self, response, *, run_id, **kwargs):
        self.end(run_id)

    def on_chain_start(self, serialized, inputs, *, run_id, **kwargs):
        self.start("chain", run_id)

    def on_chain_end(self, outputs, *, run_id, **kwargs):
        self.end(run_id)


# ## The example
#
# The declared example is the chain's last three steps (prompt, model, parser) with a
# tiny random GPT: a context and a question in, eight tokens out. (The retrieval
# steps need the encoder, which takes longer than an example may.)


def example():
    """A 1-layer random GPT, as a LangChain LLM, completing a prompt."""
    from annotated.llm.bpe import train

    tokenizer = train("the cache holds keys and values " * 20, 20)
    torch.manual_seed(0)
    from annotated.llm.gpt2 import GPT2Config

    config = GPT2Config(
        vocab_size=tokenizer.vocabulary_size,
        n_positions=16,
        n_embd=16,
        n_layer=1,
        n_head=2,
    )
    llm = GPTLLM(model=GPT2(config).eval(), tokenizer=tokenizer, max_new_tokens=8)
    return (PROMPT | llm | StrOutputParser()).invoke, (
        {"context": "The cache holds keys.", "question": "What does it hold?"},
    )


def dataflow(output):
    """The chain's stages; the example runs the last three."""
    nodes = [
        ("question", "question: str"),
        ("retriever", "SiteRetriever\n(BaseRetriever)"),
        ("format", "format_documents"),
        ("prompt", "PromptTemplate"),
        ("llm", "GPTLLM (LLM)"),
        ("parser", "StrOutputParser"),
        ("answer", f"answer: str\n({len(output)} characters)"),
    ]
    edges = [
        ("question", "retriever", "str"),
        ("retriever", "format", "list[Document]"),
        ("format", "prompt", "context: str"),
        ("question", "prompt", "question: str"),
        ("prompt", "llm", "StringPromptValue"),
        ("llm", "parser", "str"),
        ("parser", "answer", "str"),
    ]
    return nodes, edges


# ## The demo
#
# The demo builds the retriever over the whole site (the encoder's vectors come from
# the cache the rag chapter filled), loads the small GPT, and runs the chain four
# ways: `invoke`, `stream` (printing tokens as they come), `batch` over two
# questions, and `ainvoke`. It checks that LangChain's own `InMemoryVectorStore`,
# given our `MiniLMEmbeddings`, ranks the sections as our dense retriever does, and
# draws the timeline of one streamed run from the callbacks.


def plot(timeline: Timeline, out: Path) -> Path:
    fig, ax = figure()
    origin = min(start for _, start, _ in timeline.spans)
    kinds = ["chain", "retriever", "llm"]
    spans = sorted(timeline.spans, key=lambda span: span[1] - span[2])  # longest first
    for row, kind in enumerate(kinds):
        for name, start, end in spans:
            if name == kind:
                ax.barh(
                    row,
                    end - start,
                    left=start - origin,
                    height=0.5,
                    color=f"C{row}",
                    edgecolor="white",  # the chain's steps show on its bar
                )
    ax.plot(
        [t - origin for t in timeline.tokens],
        [2] * len(timeline.tokens),
        "k|",
        markersize=14,
        label="tokens",
    )
    ax.set_yticks(range(len(kinds)), kinds)
    ax.set_xlabel("seconds since the chain started")
    ax.legend(loc="center right")  # beside the retriever, which ends first
    return save(
        fig,
        out / "timeline.png",
        caption="One streamed run of the chain as its callbacks saw it: the chain and "
        "its steps (each a run), the retriever inside it, then the GPT, with a tick "
        "for each token streamed.",
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the retrieval chain with the small GPT four ways and draw its timeline."""
    import asyncio

    from annotated.llm.pretraining import small_gpt

    parser = argparse.ArgumentParser(
        description="The rag pieces as LangChain components, composed with LCEL.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "question", nargs="?", default="how does the KV cache work?", help="question"
    )
    parser.add_argument(
        "--tokens", type=integer(at_least=1), default=24, help="tokens to generate"
    )
    parser.add_argument(
        "--seed", type=integer(at_least=0), default=0, help="sampling seed"
    )
    parser.add_argument(
        "--lessons", nargs="+", help="only these lessons (e.g. llm/gpt2), not all"
    )
    parser.add_argument(
        "--device",
        type=torch_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device for the encoder and the GPT",
    )
    parser.add_argument("--out", default="out/chains", help="folder for the figure")
    args = parser.parse_args(argv)
    chunks = load_corpus(args.lessons)
    embedder = Embedder(args.device)
    vectors = corpus_embeddings(chunks, embedder)
    retriever = SiteRetriever(index=Retriever(chunks, embedder, vectors), k=3)
    model, tokenizer, _, _ = small_gpt(args.device)
    llm = GPTLLM(
        model=model, tokenizer=tokenizer, max_new_tokens=args.tokens, seed=args.seed
    )
    chain = build_chain(retriever, llm)

    sources = retriever.invoke(args.question)
    print(f"Q: {args.question}")
    for document in sources:
        print(f"  source: {document.metadata['link']}")
    answer = chain.invoke(args.question)
    print(f"invoke: {answer!r}")
    timeline = Timeline()
    print("stream: ", end="")
    streamed = ""
    for piece in chain.stream(args.question, config={"callbacks": [timeline]}):
        print(piece, end="", flush=True)
        streamed += piece
    print()
    batch = chain.batch([args.question, "what is beam search?"])
    asynchronous = asyncio.run(chain.ainvoke(args.question))
    same = float(streamed == answer == batch[0] == asynchronous)
    print(f"invoke, stream, batch and ainvoke agree: {bool(same)}")

    # LangChain's own vector store with our embeddings, against our dense ranking.
    passages = [passage for chunk in chunks for passage in chunk.passages()]
    known = dict(zip(passages, vectors.tolist()))
    store = InMemoryVectorStore(MiniLMEmbeddings(embedder, known))
    store.add_texts(
        passages, metadatas=[{"link": c.link} for c in chunks for _ in c.passages()]
    )
    found = store.similarity_search(args.question, k=30)
    theirs = list(dict.fromkeys(d.metadata["link"] for d in found))[:3]
    ours = [c.link for c in retriever.index.search(args.question, 3, "dense")]
    print(f"InMemoryVectorStore with MiniLMEmbeddings: {theirs}")
    print(f"the same as our dense ranking: {theirs == ours}")
    first_token = timeline.tokens[0] - min(s for _, s, _ in timeline.spans)
    print(f"first token after {first_token:.2f} s, {len(timeline.tokens)} tokens")
    plot(timeline, Path(args.out))
    return {
        "agree": same,
        "store agrees": float(theirs == ours),
        "first token s": first_token,
        "tokens": len(timeline.tokens),
    }


if __name__ == "__main__":
    main()


# ## Exercises
#
# 1. Swap the retriever for `store.as_retriever()` of the `InMemoryVectorStore` above:
#    which line of `build_chain` changes, and what do you lose (hint: BM25)?
# 2. Return the sources with the answer: replace the last two steps with a
#    `RunnableParallel` that yields `{"answer": ..., "sources": [links]}`.
# 3. Write `GPTLLM` as a `BaseChatModel` instead, with a chat template of your own.
#    Which methods change, and what does LangChain give a chat model that an `LLM`
#    lacks?
