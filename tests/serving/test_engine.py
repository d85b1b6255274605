"""Verified against sequential greedy generation (annotated.llm.gpt2.generate, float64):
the engine's outputs equal it token for token for concurrent requests, under
preemption and with prefixes read from the cache, and over real HTTP on the loopback
interface through the official `openai` client.

Also checked: 32 concurrent clients each get their own continuation; streaming
(server-sent events) gives the same text as a plain response, and ends with the same
usage when the client asks for it (`stream_options`); seeded sampling does not
depend on the batch; stop strings are cut and never streamed; bad requests get a 4xx
with a reason while the server keeps serving; a client that disconnects mid-stream
frees its blocks; a step that raises ends the requests in flight with a 500 (an error
event in a stream) and the server then answers 503, /health included; static batching
and Hugging Face's generate give the same outputs; and the demo, both its comparison
and `--serve`.
"""

import contextlib
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import torch
import uvicorn

import annotated.serving.engine as engine_module
from annotated.llm.bpe import train
from annotated.llm.gpt2 import GPT2, GPT2Config, generate
from annotated.serving.engine import (
    AsyncEngine,
    Engine,
    Event,
    PrefixCachingAllocator,
    SamplingParams,
    build_app,
    chat_prompt,
    example,
    hf_model,
    hf_static_batching,
    main,
    sample,
    static_batching,
    workload,
)

TEXT = (
    "The engine keeps a queue of requests. Each step it admits new requests, "
    "decodes one token for every running sequence, and frees the blocks of the "
    "sequences that finished. A request that does not fit waits for its turn. "
)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer():
    return train(TEXT * 4, 60)


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=tokenizer.vocabulary_size,
        n_positions=256,
        n_embd=16,
        n_layer=2,
        n_head=2,
        dropout=0.0,
    )
    return GPT2(config).double().eval()


def reference(model, prompt, max_tokens, stop_token=None):
    """Sequential greedy generation, cut at `stop_token`."""
    tokens = generate(model, torch.tensor([prompt]), max_tokens, temperature=0)
    tokens = tokens[0, len(prompt) :].tolist()
    return tokens[: tokens.index(stop_token)] if stop_token in tokens else tokens


def prompts_of(tokenizer, n):
    words = TEXT.split()
    return [
        tokenizer.encode_ordinary(" ".join(words[i % 30 : i % 30 + 1 + (7 * i) % 13]))
        for i in range(n)
    ]


def test_concurrent_requests_equal_sequential_generation(model, tokenizer):
    prompts = prompts_of(tokenizer, 10)
    limits = [3, 17, 1, 9, 30, 5, 12, 2, 25, 8]
    params = [SamplingParams(max_tokens=m, temperature=0) for m in limits]
    engine = Engine(model, tokenizer, num_blocks=64, block_size=4, max_batch=4)
    outputs = engine.generate(prompts, params)
    for prompt, limit, output in zip(prompts, limits, outputs):
        assert output == reference(model, prompt, limit)
    assert max(engine.batch_sizes) == 4  # the batch was full ...
    assert engine.stats["steps"] < sum(limits) / 2  # ... and shared between requests
    assert engine.allocator.num_free == 64 and not engine.cache.tables
    # Each request finished once, for a reason, and every token was counted once.
    reasons = {k: v for k, v in engine.stats.items() if k.startswith("finished_")}
    assert sum(reasons.values()) == len(prompts)
    assert engine.stats["generated"] == sum(map(len, outputs))


def test_preemption_under_a_tiny_pool_equals_sequential_generation(model, tokenizer):
    prompts = prompts_of(tokenizer, 6)
    params = SamplingParams(max_tokens=20, temperature=0)
    engine = Engine(model, tokenizer, num_blocks=12, block_size=4, max_batch=6)
    outputs = engine.generate(prompts, params)
    assert engine.stats["preemptions"] > 0
    for prompt, output in zip(prompts, outputs):
        assert output == reference(model, prompt, 20)
    assert engine.allocator.num_free == 12
    assert engine.allocator.refcounts == [0] * 12


def test_prefix_cache_reads_shared_blocks_and_keeps_outputs(model, tokenizer):
    shared = tokenizer.encode_ordinary(TEXT)[:21]  # 5 full blocks of 4, and one more
    prompts = [shared + tokenizer.encode_ordinary(w) for w in (" a", " queue", " b")]
    params = SamplingParams(max_tokens=6, temperature=0)
    engine = Engine(model, tokenizer, num_blocks=40, block_size=4)
    first = engine.generate(prompts[:1], params)
    rest = engine.generate(prompts[1:], params)
    for prompt, output in zip(prompts, first + rest):
        assert output == reference(model, prompt, 6)
    # The first request found nothing; each later one found the 5 full shared blocks.
    assert engine.stats["cached_tokens"] == 2 * 20
    assert engine.stats["prompt_tokens"] == sum(map(len, prompts))
    assert engine.allocator.num_free == 40  # cached blocks are free, and remembered
    assert len(engine.allocator.block_of) >= 5
    # Without prefix caching the same requests compute everything.
    plain = Engine(model, tokenizer, 40, 4, prefix_caching=False)
    assert plain.generate(prompts, params) == first + rest
    assert plain.stats["cached_tokens"] == 0


def test_prefix_cache_keys_a_block_by_everything_before_it(model, tokenizer):
    # B starts with the tokens of A's second block: same ids, other position and
    # prefix, so other keys and values. It must find nothing in the cache.
    tokens = tokenizer.encode_ordinary(TEXT)
    first, second = tokens[:4], tokens[4:8]
    prompts = [first + second + tokens[8:10], second + tokens[20:23]]
    params = SamplingParams(max_tokens=5, temperature=0)
    engine = Engine(model, tokenizer, num_blocks=40, block_size=4)
    outputs = engine.generate(prompts[:1], params) + engine.generate(
        prompts[1:], params
    )
    assert engine.stats["cached_tokens"] == 0
    for prompt, output in zip(prompts, outputs):
        assert output == reference(model, prompt, 5)


def test_a_request_that_needs_every_free_block_is_admitted(model, tokenizer):
    """15 prompt tokens in blocks of 4 take all 4 blocks of the pool: they fit, so
    the first step admits the request (and with one token to make, finishes it)."""
    prompt = tokenizer.encode_ordinary(TEXT)[:15]
    engine = Engine(model, tokenizer, num_blocks=4, block_size=4, max_batch=2)
    request = engine.make_request(prompt, SamplingParams(max_tokens=1, temperature=0))
    engine.add(request)
    assert engine.admission_cost(request) == engine.allocator.num_free == 4
    engine.step()
    assert engine.stats["steps"] == 1 and not engine.has_work()
    assert request.output == reference(model, prompt, 1)


def test_a_preempted_request_goes_first_in_line(model, tokenizer):
    engine = Engine(model, tokenizer, num_blocks=12, block_size=4, max_batch=6)
    preempt, heads = engine.preempt, []

    def recording(request):
        preempt(request)
        heads.append(engine.waiting[0] is request)

    engine.preempt = recording
    engine.generate(prompts_of(tokenizer, 6), SamplingParams(max_tokens=20))
    assert heads and all(heads)


def test_aborting_a_waiting_request_ends_it_before_it_takes_a_block(model, tokenizer):
    engine = Engine(model, tokenizer, num_blocks=8, block_size=4)
    events = []
    request = engine.make_request([1, 2, 3], SamplingParams(), events.append)
    engine.add(request)
    engine.abort(request.id)
    assert request.finish_reason == "abort" and not engine.has_work()
    assert events == [Event(request.id, None, "", "abort")]
    assert engine.stats["finished_abort"] == 1 and engine.allocator.num_free == 8
    engine.step()  # nothing to run: no forward pass
    assert engine.stats["steps"] == 0 and engine.batch_sizes == []


def test_prefix_cache_evicts_the_least_recently_freed_block():
    allocator = PrefixCachingAllocator(3, 2)
    blocks = [allocator.allocate() for _ in range(3)]
    for block, digest in zip(blocks, (b"a", b"b", b"c")):
        allocator.register(block, digest)
    for block in (blocks[1], blocks[0], blocks[2]):
        allocator.free(block)
    assert allocator.lookup(b"a") == blocks[0] and allocator.num_free == 2
    assert allocator.allocate() == blocks[1]  # freed first, so evicted first
    assert allocator.cached(b"b") is None and allocator.cached(b"c") == blocks[2]
    allocator.free(blocks[0])
    with pytest.raises(ValueError, match="double free"):
        allocator.free(blocks[0])


def test_seeded_sampling_does_not_depend_on_the_batch(model, tokenizer):
    prompts = prompts_of(tokenizer, 5)
    params = SamplingParams(max_tokens=12, temperature=0.9, top_p=0.8, seed=7)
    alone = Engine(model, tokenizer, 64, 4).generate(prompts[2:3], params)
    together = Engine(model, tokenizer, 64, 4, max_batch=2).generate(prompts, params)
    assert together[2] == alone[0]
    other_seed = SamplingParams(max_tokens=12, temperature=0.9, seed=8)
    assert Engine(model, tokenizer, 64, 4).generate(prompts[2:3], other_seed) != alone


def test_sample_draws_from_the_tempered_nucleus():
    # Probabilities 0.5, 0.3, 0.15, 0.05: temperature 0.5 squares them (then
    # renormalises); top_p 0.7 keeps the two whose preceding mass is under 0.7, in
    # the ratio 5 : 3. 6,000 seeded draws, so 0.025 is about four standard errors.
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    squared = probs**2 / (probs**2).sum()
    nucleus = torch.tensor([0.625, 0.375, 0.0, 0.0], dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    for params, want in (
        (SamplingParams(temperature=1.0), probs),
        (SamplingParams(temperature=0.5), squared),
        (SamplingParams(temperature=1.0, top_p=0.7), nucleus),
    ):
        draws = [sample(probs.log(), params, generator) for _ in range(6000)]
        counts = torch.bincount(torch.tensor(draws), minlength=4).double()
        torch.testing.assert_close(counts / 6000, want, rtol=0, atol=0.025)
        assert (counts[want == 0] == 0).all()


def test_stop_strings_are_cut_and_never_streamed(model, tokenizer):
    prompt = prompts_of(tokenizer, 3)[2]
    tokens = reference(model, prompt, 30)
    text = tokenizer.decode(tokens)
    stop = text[9:12]  # a piece of the greedy answer
    engine = Engine(model, tokenizer, 64, 4)
    events = []
    request = engine.make_request(
        prompt,
        SamplingParams(max_tokens=30, temperature=0, stop=(stop,)),
        events.append,
    )
    engine.add(request)
    while engine.has_work():
        engine.step()
    assert request.finish_reason == "stop"
    assert request.text == text[: text.index(stop)]
    assert "".join(e.text for e in events) == request.text
    assert [e.finish_reason for e in events][-1] == "stop"
    assert len(request.output) < 30


def test_static_batching_and_hf_generate_give_the_same_outputs(model, tokenizer):
    prompts = prompts_of(tokenizer, 7)
    limits = [4, 11, 2, 7, 9, 1, 5]
    expected = [reference(model, p, m) for p, m in zip(prompts, limits)]
    outputs, useful = static_batching(model, prompts, limits, 3, block_size=4)
    assert outputs == expected
    assert useful[:4] == [3, 3, 2, 2] and len(useful) == 11 + 9 + 5
    assert hf_static_batching(hf_model(model), prompts, limits, 3) == expected


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--serve", "--port", "99999"], "--port: expected a whole number from 1 to"),
        (["--threads", "0"], "--threads: expected a whole number >= 1"),
    ],
)
def test_demo_refuses_bad_flags_before_loading_the_model(flags, message, capsys):
    with pytest.raises(SystemExit):
        main(flags)
    assert message in capsys.readouterr().err


def test_bad_requests_raise_clear_errors(model, tokenizer):
    engine = Engine(model, tokenizer, num_blocks=8, block_size=4)
    with pytest.raises(ValueError, match="max_tokens must be >= 1"):
        SamplingParams(max_tokens=-1)
    with pytest.raises(TypeError, match="max_tokens must be an int"):
        SamplingParams(max_tokens=2.5)
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        SamplingParams(temperature=-1)
    # a plain string would be read as a tuple of one-character stop strings
    with pytest.raises(TypeError, match=r"stop must be a tuple of strings"):
        SamplingParams(stop="the end")
    with pytest.raises(TypeError, match="stop_token_ids must be a tuple of ints"):
        SamplingParams(stop_token_ids=50256)
    with pytest.raises(TypeError, match="stop_token_ids must be a tuple of ints"):
        SamplingParams(stop_token_ids=("50256",))
    with pytest.raises(ValueError, match="context is 256"):
        engine.make_request([1] * 250, SamplingParams(max_tokens=10))
    with pytest.raises(ValueError, match="more than the pool's 8 blocks"):
        engine.make_request([1] * 30, SamplingParams(max_tokens=10))
    with pytest.raises(ValueError, match="non-empty list of token ids"):
        engine.make_request([], SamplingParams())
    with pytest.raises(TypeError, match="params must be SamplingParams"):
        engine.make_request([1, 2], {"max_tokens": 2})
    with pytest.raises(ValueError, match="max_batch"):
        Engine(model, tokenizer, max_batch=0)
    # a shorter list of params would silently drop the prompts past its end
    with pytest.raises(ValueError, match="got 1 for 2 prompts"):
        engine.generate([[1, 2], [3, 4]], [SamplingParams(max_tokens=2)])


def test_example_preempts_and_finishes():
    fn, args = example()
    outputs = fn(*args)
    assert [len(o) for o in outputs] == [10] * 4
    assert fn.__self__.stats["preemptions"] >= 1


# ------------------------------------------------------------ over real HTTP


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running(app, port=None):
    """`app` on uvicorn, in a thread, on a loopback port, until the block ends."""
    port = port or free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


@pytest.fixture(scope="module")
def server(model, tokenizer):
    """The app on uvicorn, in a thread, on a free loopback port."""
    engine = AsyncEngine(Engine(model, tokenizer, num_blocks=96, block_size=4))
    with running(build_app(engine, "tiny-gpt")) as url:
        yield url, engine.engine


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server[0]}/v1", api_key="x", max_retries=0)


def expected_text(model, tokenizer, prompt_text, max_tokens):
    eot = tokenizer.special_tokens["<|endoftext|>"]
    prompt = tokenizer.encode_ordinary(prompt_text)
    return tokenizer.decode(reference(model, prompt, max_tokens, eot))


def test_openai_client_lists_the_model(client):
    assert [m.id for m in client.models.list()] == ["tiny-gpt"]


def test_openai_client_completions(client, model, tokenizer):
    completion = client.completions.create(
        model="tiny-gpt", prompt="The engine keeps", max_tokens=12, temperature=0
    )
    choice = completion.choices[0]
    assert choice.text == expected_text(model, tokenizer, "The engine keeps", 12)
    assert choice.finish_reason == "length" and choice.index == 0
    assert completion.usage.completion_tokens == 12
    assert completion.usage.prompt_tokens == len(
        tokenizer.encode_ordinary("The engine keeps")
    )


def test_openai_client_chat_completions(client, model, tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    answer = client.chat.completions.create(
        model="tiny-gpt", messages=messages, max_tokens=10, temperature=0
    )
    prompt = chat_prompt([engine_module.Message(**m) for m in messages])
    expected = expected_text(model, tokenizer, prompt, 10)
    if "\nuser:" in expected:
        expected = expected[: expected.index("\nuser:")]
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == expected
    # Recent clients send the chat API's newer name for the limit.
    newer = client.chat.completions.create(
        model="tiny-gpt", messages=messages, max_completion_tokens=3, temperature=0
    )
    assert newer.usage.completion_tokens == 3


def test_openai_client_streams_the_same_text(client):
    plain = client.completions.create(
        model="tiny-gpt", prompt="Each step", max_tokens=15, temperature=0
    )
    chunks = list(
        client.completions.create(
            model="tiny-gpt",
            prompt="Each step",
            max_tokens=15,
            temperature=0,
            stream=True,
        )
    )
    assert "".join(c.choices[0].text for c in chunks) == plain.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"
    assert len(chunks) > 2
    messages = [{"role": "user", "content": "A request"}]
    chat = client.chat.completions.create(
        model="tiny-gpt", messages=messages, max_tokens=8, temperature=0
    )
    streamed = list(
        client.chat.completions.create(
            model="tiny-gpt",
            messages=messages,
            max_tokens=8,
            temperature=0,
            stream=True,
        )
    )
    assert streamed[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in streamed)
    assert text == chat.choices[0].message.content


def test_a_stream_ends_with_its_usage_when_the_client_asks(client):
    messages = [{"role": "user", "content": "A request"}]
    ask = dict(model="tiny-gpt", max_tokens=8, temperature=0)
    for create, prompt in (
        (client.chat.completions.create, dict(messages=messages)),
        (client.completions.create, dict(prompt="Each step")),
    ):
        plain = create(**ask, **prompt)
        *pieces, last = create(
            **ask, **prompt, stream=True, stream_options={"include_usage": True}
        )
        assert last.choices == [] and last.usage == plain.usage
        assert pieces and all(c.usage is None and c.choices for c in pieces)
        assert pieces[-1].choices[0].finish_reason == plain.choices[0].finish_reason
        unasked = list(create(**ask, **prompt, stream=True))
        assert len(unasked) == len(pieces) and all(c.choices for c in unasked)
    with pytest.raises(openai.BadRequestError, match="only allowed when stream"):
        client.completions.create(
            **ask, prompt="A", stream_options={"include_usage": True}
        )


def test_sampling_parameters_travel_over_http(client):
    def ask(seed):
        return (
            client.completions.create(
                model="tiny-gpt",
                prompt="A request",
                max_tokens=10,
                temperature=1.0,
                top_p=0.9,
                seed=seed,
            )
            .choices[0]
            .text
        )

    assert ask(3) == ask(3)
    plain = (
        client.completions.create(
            model="tiny-gpt", prompt="A request", max_tokens=12, temperature=0
        )
        .choices[0]
        .text
    )
    stop = plain[4:6]
    stopped = client.completions.create(
        model="tiny-gpt",
        prompt="A request",
        max_tokens=12,
        temperature=0,
        stop=[stop, "never"],
    ).choices[0]
    assert stopped.text == plain[: plain.index(stop)]
    assert stopped.finish_reason == "stop"
    # one string, as OpenAI's API allows, is one stop string, not its characters
    one = client.completions.create(
        model="tiny-gpt", prompt="A request", max_tokens=12, temperature=0, stop=stop
    ).choices[0]
    assert one.text == stopped.text and one.finish_reason == "stop"


def test_32_concurrent_clients_each_get_their_own_answer(server, model, tokenizer):
    words = TEXT.split()
    prompts = [" ".join(words[i : i + 1 + i % 5]) for i in range(32)]
    limits = [1 + (5 * i) % 17 for i in range(32)]

    def ask(i):
        client = openai.OpenAI(base_url=f"{server[0]}/v1", api_key="x", max_retries=0)
        return (
            client.completions.create(
                model="tiny-gpt", prompt=prompts[i], max_tokens=limits[i], temperature=0
            )
            .choices[0]
            .text
        )

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(ask, range(32)))
    for prompt, limit, answer in zip(prompts, limits, answers):
        assert answer == expected_text(model, tokenizer, prompt, limit)


def test_bad_requests_get_4xx_with_a_reason(server, client):
    url = server[0]
    with httpx.Client(base_url=url, timeout=10) as http:
        malformed = http.post(
            "/v1/completions",
            content=b'{"model": "tiny-gpt", "prompt": ',
            headers={"content-type": "application/json"},
        )
        assert malformed.status_code == 400
        assert "invalid request" in malformed.json()["error"]["message"]
        long = http.post(
            "/v1/completions",
            json={"model": "tiny-gpt", "prompt": "x " * 300, "max_tokens": 4},
        )
        assert long.status_code == 400 and "context is 256" in long.text
        negative = http.post(
            "/v1/completions",
            json={"model": "tiny-gpt", "prompt": "x", "max_tokens": -3},
        )
        assert negative.status_code == 400 and "max_tokens" in negative.text
        empty_stop = http.post(
            "/v1/completions",
            json={"model": "tiny-gpt", "prompt": "x", "max_tokens": 2, "stop": [""]},
        )
        assert empty_stop.status_code == 400 and "stop must be" in empty_stop.text
        unknown = http.post(
            "/v1/chat/completions",
            json={"model": "gpt-5", "messages": [{"role": "user", "content": "x"}]},
        )
        assert (
            unknown.status_code == 404 and "gpt-5" in unknown.json()["error"]["message"]
        )
        no_messages = http.post(
            "/v1/chat/completions", json={"model": "tiny-gpt", "messages": []}
        )
        assert no_messages.status_code == 400
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model="tiny-gpt", prompt="x", max_tokens=-1)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="other", prompt="x", max_tokens=1)
    # ... and the server keeps serving.
    ok = client.completions.create(model="tiny-gpt", prompt="x", max_tokens=2)
    assert ok.choices[0].finish_reason in ("length", "stop")
    assert httpx.get(f"{server[0]}/health").json() == {"status": "ok"}


def test_a_client_that_disconnects_frees_its_blocks(server):
    url, engine = server
    while engine.running or engine.waiting:  # let earlier tests' requests finish
        time.sleep(0.01)
    free_before = engine.allocator.num_free
    aborted = engine.stats["finished_abort"]
    body = {
        "model": "tiny-gpt",
        "prompt": "The engine",
        "max_tokens": 240,
        "temperature": 0,
        "stream": True,
    }
    with httpx.Client(base_url=url, timeout=10) as http:
        with http.stream("POST", "/v1/completions", json=body) as response:
            assert response.status_code == 200
            lines = [line for _, line in zip(range(3), response.iter_lines())]
    assert lines[0].startswith("data: {")
    assert json.loads(lines[0][6:])["object"] == "text_completion"
    deadline = time.monotonic() + 15
    while engine.stats["finished_abort"] == aborted or engine.running:
        assert time.monotonic() < deadline, "the request was not aborted"
        time.sleep(0.01)
    assert engine.allocator.num_free == free_before


def test_sse_ends_with_done(server):
    body = {"model": "tiny-gpt", "prompt": "A", "max_tokens": 3, "stream": True}
    with httpx.Client(base_url=server[0], timeout=10) as http:
        lines = http.post("/v1/completions", json=body).text.split("\n\n")
    assert lines[-2] == "data: [DONE]" and lines[-1] == ""
    assert all(line.startswith("data: ") for line in lines[:-1])


def test_a_failed_step_ends_its_requests_with_errors_and_refuses_new_ones(
    capfd, model, tokenizer
):
    engine = Engine(model, tokenizer, num_blocks=32, block_size=4)
    real_step = engine.step

    def planted_step():  # two good steps once both requests are in, then a failure
        if len(engine.waiting) + len(engine.running) < 2:
            time.sleep(0.01)
        elif engine.stats["steps"] < 2:
            real_step()
        else:
            raise RuntimeError("CUDA out of memory (planted)")

    engine.step = planted_step
    with running(build_app(AsyncEngine(engine), "tiny-gpt")) as url:
        client = openai.OpenAI(
            base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=30
        )
        ask = dict(
            model="tiny-gpt", prompt="The engine keeps", max_tokens=20, temperature=0
        )

        def streamed():
            pieces = []
            with pytest.raises(openai.APIError, match="planted"):
                for chunk in client.completions.create(**ask, stream=True):
                    pieces.append(chunk.choices[0].text)
            return pieces

        def plain():
            with pytest.raises(openai.InternalServerError, match="planted") as info:
                client.completions.create(**ask)
            return info.value.status_code

        with ThreadPoolExecutor(2) as pool:
            pieces, status = pool.submit(streamed), pool.submit(plain)
            assert len(pieces.result()) == 2 and status.result() == 500
        with pytest.raises(openai.InternalServerError, match="engine stopped") as info:
            client.completions.create(**ask)
        assert info.value.status_code == 503
        health = httpx.get(f"{url}/health")
        assert health.status_code == 503 and "planted" in health.text
        assert [m.id for m in client.models.list()] == ["tiny-gpt"]
    assert "RuntimeError: CUDA out of memory (planted)" in capfd.readouterr().err


def test_a_request_queued_after_a_failed_step_is_refused_too(capfd, model, tokenizer):
    """An "add" still in the command queue when a step fails ends with "error"."""
    engine = Engine(model, tokenizer, num_blocks=32, block_size=4)
    served, events = AsyncEngine(engine), []
    first, late = (
        engine.make_request([1, 2], SamplingParams(), events.append) for _ in range(2)
    )

    def failing_step():  # "late" arrives while the step runs
        served.commands.put(("add", late))
        served.commands.put(("stop", None))
        raise RuntimeError("planted")

    engine.step = failing_step
    served.commands.put(("add", first))
    served.loop()  # in this thread: returns at "stop"
    assert [e.finish_reason for e in events] == ["error", "error"]
    assert [e.request_id for e in events] == [first.id, late.id]
    assert late.finish_reason == "error" and "planted" in capfd.readouterr().err


def stand_in_for_the_small_gpt(monkeypatch, tokenizer):
    """A tiny GPT that the demo's `small_gpt` returns, moved to the demo's device."""
    small = GPT2(
        GPT2Config(
            vocab_size=tokenizer.vocabulary_size,
            n_positions=64,
            n_embd=16,
            n_layer=1,
            n_head=2,
            dropout=0.0,
        )
    ).eval()
    pages = [TEXT] * 4
    monkeypatch.setattr(
        engine_module,
        "small_gpt",
        lambda device: (small.to(device), tokenizer, pages, pages),
    )
    return small


def test_workload_prompts_are_4_to_24_tokens_of_the_pages_with_bounded_limits(
    tokenizer,
):
    # The demo's requests: each prompt a run of 4 to 24 consecutive tokens of its page
    # (every length turns up in 400), each limit between 1 and context - 24.
    pages = [TEXT * 3, TEXT[::-1] * 3]
    prompts, limits = workload(tokenizer, pages, 400, context=64, seed=0)
    assert {len(prompt) for prompt in prompts} == set(range(4, 25))
    for i, prompt in enumerate(prompts):
        page = tokenizer.encode_ordinary(pages[i % 2])
        starts = [s for s in range(len(page)) if page[s : s + len(prompt)] == prompt]
        assert starts, f"prompt {i} is not a run of its page's tokens"
    assert min(limits) >= 1 and max(limits) == 40
    again = workload(tokenizer, pages, 400, context=64, seed=0)
    assert again == (prompts, limits)


def test_demo_compares_the_three_ways(tmp_path, monkeypatch, model, tokenizer):
    stand_in_for_the_small_gpt(monkeypatch, tokenizer)
    result = main(["--requests", "12", "--batch", "4", "--out", str(tmp_path)])
    assert result["outputs_equal_static"] == 1.0
    assert result["prefix_hit_rate"] > 0.4
    assert result["tokens_per_s_continuous"] > 0
    assert (tmp_path / "engine.png").is_file()


def test_demo_serves_the_model_over_http(monkeypatch, tokenizer):
    # `--serve` hands the app to `uvicorn.run`, which would block until Ctrl-C; here
    # it runs on a free port in a thread while a client asks, then stops.
    small = stand_in_for_the_small_gpt(monkeypatch, tokenizer)
    greedy = expected_text(small, tokenizer, "The engine keeps", 8)
    answers = []

    def run_and_ask(app, host, port, log_level):
        with running(app, port) as url:
            client = openai.OpenAI(
                base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=30
            )
            for temperature in (0.0, 1.0, 1.0):
                answer = client.completions.create(
                    model="small-gpt",
                    prompt="The engine keeps",
                    max_tokens=8,
                    temperature=temperature,
                    seed=5,
                )
                answers.append(answer.choices[0].text)

    monkeypatch.setattr(uvicorn, "run", run_and_ask)
    argv = ["--serve", "--port", str(free_port()), "--batch", "4", "--num-blocks", "32"]
    assert main(argv) == {}
    assert answers[0] == greedy
    assert answers[1] == answers[2]  # the seed, drawn in the engine's own thread


# ------------------------------------------------------------------ benchmarks

BENCH_GROUP = "greedy serving of 24 mixed requests, batch 8, tiny GPT-2"


def bench_setup():
    tokenizer = train(TEXT * 4, 60)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=tokenizer.vocabulary_size,
        n_positions=128,
        n_embd=64,
        n_layer=2,
        n_head=4,
        dropout=0.0,
    )
    model = GPT2(config).eval()
    prompts = prompts_of(tokenizer, 24)
    limits = [1 + (i * 11) % 7 if i % 5 else 30 for i in range(24)]
    return model, tokenizer, prompts, limits


@pytest.mark.benchmark(group=BENCH_GROUP)
def test_bench_serving_hf_generate(benchmark):
    benchmark.extra_info["label"] = "GPT2LMHeadModel.generate, static batches"
    benchmark.extra_info["baseline"] = True
    model, _, prompts, limits = bench_setup()
    hf = hf_model(model)
    benchmark(hf_static_batching, hf, prompts, limits, 8)


@pytest.mark.benchmark(group=BENCH_GROUP)
def test_bench_serving_static(benchmark):
    benchmark.extra_info["label"] = "static batching, paged_forward"
    model, _, prompts, limits = bench_setup()
    benchmark(static_batching, model, prompts, limits, 8)


@pytest.mark.benchmark(group=BENCH_GROUP)
def test_bench_serving_continuous(benchmark):
    benchmark.extra_info["label"] = "continuous batching (Engine)"
    model, tokenizer, prompts, limits = bench_setup()
    params = [SamplingParams(max_tokens=m, temperature=0) for m in limits]

    def serve():
        return Engine(model, tokenizer, 64, 16, max_batch=8).generate(prompts, params)

    benchmark(serve)


def test_sampling_a_gpu_row_with_the_requests_cpu_generator():
    # On a GPU the logits row is on CUDA and the request's generator on the CPU; the
    # fake GPU raises PyTorch's error if the draw mixes them.
    from tools.fake_cuda import fake_cuda

    with fake_cuda():
        logits = torch.randn(50, device="cuda")  # [vocab]
        params = SamplingParams(temperature=1.0, top_p=0.9)
        tokens = [sample(logits, params, torch.Generator().manual_seed(3))]
    tokens.append(sample(logits.cpu(), params, torch.Generator().manual_seed(3)))
    assert tokens[0] == tokens[1] and 0 <= tokens[0] < 50
