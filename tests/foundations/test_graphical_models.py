"""Verified against brute-force enumeration (every assignment of random Bayesian
networks, every state path of random HMMs) to 1e-12, with the samplers within 4 standard
errors (5 for Gibbs, across chains) of the exact marginals.

Also checked: a 3,000-variable chain listed children-first (no recursion limit), the
elimination order's largest factor where fill-in matters, the samplers' full joint (not
only the marginals), and that no function changes its inputs.
"""

import argparse
import itertools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy.special import logsumexp

from annotated.foundations import graphical_models
from annotated.foundations.graphical_models import (
    BayesianNetwork,
    Factor,
    HiddenMarkovModel,
    casino_hmm,
    dataflow,
    empirical_marginal,
    example,
    SPRINKLER_EVIDENCE,
    SPRINKLER_STATES,
    main,
    min_degree_order,
    sample_categorical,
    sampled_marginals,
    sprinkler_network,
    topological_order,
)

seeds = st.integers(0, 2**32 - 1)


# --------------------------------------------------------------------------------------
# References: a random network, and the full joint summed assignment by assignment.


def random_network(seed: int, concentration: float = 1.0):
    """A random DAG of 3–6 variables with 2–3 states, at most 3 parents, Dirichlet CPTs.

    Returns the network and the raw `(cards, parents, cpts)` it was built from, listed
    in shuffled order so that the network has to find a topological order itself.
    """
    rng = np.random.default_rng(seed)
    names = [f"x{i}" for i in range(int(rng.integers(3, 7)))]
    cards = {name: int(rng.integers(2, 4)) for name in names}
    parents = {}
    for i, name in enumerate(names):
        n_parents = min(i, int(rng.integers(0, 4)))
        parents[name] = (
            tuple(str(p) for p in rng.choice(names[:i], size=n_parents, replace=False))
            if n_parents
            else ()
        )
    cpts = {
        name: rng.dirichlet(
            np.full(cards[name], concentration),
            size=tuple(cards[p] for p in parents[name]),
        )
        for name in names
    }
    shuffled = [names[i] for i in rng.permutation(len(names))]
    cards, parents, cpts = ({v: d[v] for v in shuffled} for d in (cards, parents, cpts))
    return BayesianNetwork(cards, parents, cpts), (cards, parents, cpts)


def joint_probability(assignment, parents, cpts) -> float:
    """p(x) as the product of one CPT entry per variable."""
    probability = 1.0
    for variable in parents:
        probability *= cpts[variable][
            tuple(assignment[p] for p in parents[variable]) + (assignment[variable],)
        ]
    return probability


def brute_force_posterior(cards, parents, cpts, query, evidence) -> np.ndarray:
    """p(query | evidence): the joint summed over every assignment agreeing with it."""
    names = list(cards)
    table = np.zeros([cards[q] for q in query])
    for values in itertools.product(*(range(cards[v]) for v in names)):
        assignment = dict(zip(names, values))
        if all(assignment[v] == s for v, s in evidence.items()):
            table[tuple(assignment[q] for q in query)] += joint_probability(
                assignment, parents, cpts
            )
    return table / table.sum()


def random_query(network: BayesianNetwork, rng: np.random.Generator):
    """1–2 query variables and 0–2 observed others, with random observed values."""
    names = list(network.variables)
    rng.shuffle(names)
    n_query, n_evidence = int(rng.integers(1, 3)), int(rng.integers(0, 3))
    query = tuple(names[:n_query])
    evidence = {
        v: int(rng.integers(network.cards[v]))
        for v in names[n_query : n_query + n_evidence]
    }
    return query, evidence


# --------------------------------------------------------------------------------------
# Factor operations against explicit loops and numpy.


@settings(max_examples=30)
@given(seed=seeds)
def test_factor_product_matches_entrywise_loop(seed):
    rng = np.random.default_rng(seed)
    pool_cards = {"a": 2, "b": 3, "c": 2, "d": 3}

    def random_factor():
        scope = [v for v in pool_cards if rng.random() < 0.6]
        scope = [scope[i] for i in rng.permutation(len(scope))]
        cards = [pool_cards[v] for v in scope]
        return Factor(scope, cards, rng.random(cards))

    left, right = random_factor(), random_factor()
    product = left.product(right)
    assert set(product.variables) == set(left.variables) | set(right.variables)
    for values in itertools.product(*(range(c) for c in product.cards)):
        x = dict(zip(product.variables, values))
        expected = (
            left.table[tuple(x[v] for v in left.variables)]
            * right.table[tuple(x[v] for v in right.variables)]
        )
        assert product.table[values] == pytest.approx(expected, rel=1e-14, abs=0)


def test_factor_sum_out_reduce_normalize_transpose_match_numpy():
    rng = np.random.default_rng(0)
    table = rng.random((2, 3, 4))
    factor = Factor(("a", "b", "c"), (2, 3, 4), table)
    np.testing.assert_allclose(
        factor.sum_out(["b"]).table, table.sum(axis=1), rtol=1e-14
    )
    assert factor.sum_out(["c", "a"]).variables == ("b",)
    np.testing.assert_allclose(
        factor.sum_out(["c", "a"]).table, table.sum(axis=(0, 2)), rtol=1e-14
    )
    reduced = factor.reduce({"c": 3, "a": 1})
    assert reduced.variables == ("b",)
    np.testing.assert_array_equal(reduced.table, table[1, :, 3])
    assert factor.reduce({"a": 0, "b": 1, "c": 2}).table.shape == ()
    assert factor.normalize().table.sum() == pytest.approx(1.0, abs=1e-14)
    np.testing.assert_array_equal(
        factor.transpose(("c", "a", "b")).table, table.transpose(2, 0, 1)
    )


# --------------------------------------------------------------------------------------
# Variable elimination against enumeration of the full joint.


@settings(max_examples=40)
@given(seed=seeds)
def test_variable_elimination_matches_enumeration_on_random_networks(seed):
    network, (cards, parents, cpts) = random_network(seed)
    query, evidence = random_query(network, np.random.default_rng(seed + 1))
    expected = brute_force_posterior(cards, parents, cpts, query, evidence)
    posterior = network.variable_elimination(query, evidence)
    assert posterior.variables == query
    np.testing.assert_allclose(posterior.table, expected, rtol=0, atol=1e-12)
    # Any elimination order gives the same answer; only the cost changes.
    hidden = [v for v in network.variables if v not in query and v not in evidence]
    order = [
        hidden[i] for i in np.random.default_rng(seed + 2).permutation(len(hidden))
    ]
    np.testing.assert_allclose(
        network.variable_elimination(query, evidence, order).table,
        expected,
        rtol=0,
        atol=1e-12,
    )


@settings(max_examples=20)
@given(seed=seeds)
def test_parents_come_before_children(seed):
    network, (_, parents, _) = random_network(seed)
    position = {v: i for i, v in enumerate(network.variables)}
    assert sorted(network.variables) == sorted(parents)
    for child, its_parents in parents.items():
        assert all(position[p] < position[child] for p in its_parents)
        assert all(child in network.children[p] for p in its_parents)


def test_min_degree_eliminates_leaves_of_a_star_before_its_hub():
    scopes = [("hub",)] + [(f"leaf{i}", "hub") for i in range(5)]
    order = min_degree_order(scopes, ["hub"] + [f"leaf{i}" for i in range(5)])
    # Each leaf has one neighbour and the hub five; the hub goes only once a single leaf
    # is left beside it.
    assert order.index("hub") >= 4 and sorted(order) == sorted(
        ["hub"] + [f"leaf{i}" for i in range(5)]
    )


def largest_clique(scopes, order):
    """Eliminate `order` from the graph of `scopes` with fill-in; the most variables any
    step multiplies together (the eliminated one and its neighbours)."""
    neighbours = {}
    for scope in scopes:
        for v in scope:
            neighbours.setdefault(v, set()).update(u for u in scope if u != v)
    largest = 0
    for v in order:
        joined = neighbours.pop(v)
        largest = max(largest, len(joined) + 1)
        for u in joined:
            neighbours[u] |= joined - {u}
            neighbours[u].discard(v)
    return largest


def test_min_degree_order_reaches_the_treewidth_of_a_grid_where_fill_in_matters():
    # A 3 x 4 grid of pairwise factors has treewidth 3: no order can avoid a step over
    # 4 variables. Min-degree reaches that only because it counts the fill-in edges;
    # without them it misjudges the degrees after the corners go and builds a table
    # over 5. Eliminating the middle row first is far worse: by the time its last
    # variable goes, the fill-in has joined all of rows 0 and 2 to it, 9 variables.
    rows, cols = 3, 4
    names = [[f"x{i}{j}" for j in range(cols)] for i in range(rows)]
    scopes = [
        (names[i][j], names[i][j + 1]) for i in range(rows) for j in range(cols - 1)
    ]
    scopes += [
        (names[i][j], names[i + 1][j]) for i in range(rows - 1) for j in range(cols)
    ]
    variables = [v for row in names for v in row]
    order = min_degree_order(scopes, variables)
    assert sorted(order) == sorted(variables)
    assert largest_clique(scopes, order) == 4
    middle_first = names[1] + names[0] + names[2]
    assert largest_clique(scopes, middle_first) == 9


def star_network(leaves: int = 8):
    """A binary hub with `leaves` binary children."""
    rng = np.random.default_rng(0)
    names = [f"leaf{i}" for i in range(leaves)]
    cards = {"hub": 2, **{name: 2 for name in names}}
    parents = {name: ("hub",) for name in names}
    cpts = {"hub": np.array([0.3, 0.7])}
    cpts.update({name: rng.dirichlet(np.ones(2), size=2) for name in names})
    return BayesianNetwork(cards, parents, cpts)


def test_variable_elimination_default_order_keeps_factors_small(monkeypatch):
    # Record the size of every table that is summed out. With the hub eliminated first,
    # one table spans the hub and all eight leaves (2^9 entries); min-degree removes the
    # other leaves first and never builds a table over more than two variables.
    network = star_network()
    sizes = []
    summed_out = Factor.sum_out

    def recording_sum_out(self, variables):
        sizes.append(self.table.size)
        return summed_out(self, variables)

    monkeypatch.setattr(graphical_models.Factor, "sum_out", recording_sum_out)
    default = network.variable_elimination(("leaf0",))
    assert max(sizes) == 4
    sizes.clear()
    hub_first = network.variable_elimination(
        ("leaf0",), order=["hub"] + [f"leaf{i}" for i in range(1, 8)]
    )
    assert max(sizes) == 2**9
    np.testing.assert_allclose(default.table, hub_first.table, rtol=0, atol=1e-12)


def chain_cpts(names, rng):
    return {
        name: rng.dirichlet(np.ones(2), size=(2,) if i > 0 else ())
        for i, name in enumerate(names)
    }


def test_a_3000_variable_chain_listed_children_first_needs_no_recursion():
    n = 3000
    names = [f"x{i}" for i in range(n)]
    cpts = chain_cpts(names, np.random.default_rng(0))
    listed = list(reversed(names))  # every child before its parent
    network = BayesianNetwork(
        {name: 2 for name in listed},
        {names[i]: (names[i - 1],) for i in range(n - 1, 0, -1)},
        {name: cpts[name] for name in listed},
    )
    assert network.variables == names
    # The marginal of the last variable, given the first, by pushing the first
    # variable's point mass through every transition table.
    expected = np.array([0.0, 1.0])
    for name in names[1:]:
        expected = expected @ cpts[name]
    posterior = network.variable_elimination((names[-1],), {names[0]: 1})
    np.testing.assert_allclose(posterior.table, expected, rtol=1e-12)
    # A cycle through all of them is still found, and named, without recursion.
    cyclic = {names[i]: (names[i - 1],) for i in range(n)}  # x0's parent is x2999
    with pytest.raises(ValueError, match="cycle through"):
        topological_order(cyclic)


def test_sprinkler_explains_away_and_example_dataflow():
    network = sprinkler_network()
    on_given_wet = network.variable_elimination(("Sprinkler",), {"WetGrass": 1}).table[
        1
    ]
    on_prior = network.variable_elimination(("Sprinkler",)).table[1]
    on_given_wet_and_heavy_rain = network.variable_elimination(
        ("Sprinkler",), {"WetGrass": 1, "Rain": 2}
    ).table[1]
    assert on_given_wet > on_prior > on_given_wet_and_heavy_rain
    fn, args = example()
    posterior = fn(*args)
    assert posterior.variables == ("Rain",) and posterior.table.sum() == pytest.approx(
        1.0, abs=1e-12
    )
    nodes, edges = dataflow(posterior)
    ids = {node_id for node_id, _ in nodes}
    assert len(nodes) == 6 and all(src in ids and dst in ids for src, dst, _ in edges)
    assert all(isinstance(label, str) for _, label in nodes) and all(
        isinstance(e[2], str) for e in edges
    )


# --------------------------------------------------------------------------------------
# Samplers against the exact marginals, within a few of their standard errors.


def test_sample_categorical_frequencies_and_zero_probability_states():
    rng = np.random.default_rng(0)
    probabilities = np.array([0.0, 0.2, 0.0, 0.5, 0.3])
    draws = sample_categorical(
        np.tile(probabilities * 7.0, (50_000, 1)), rng
    )  # unnormalised rows
    frequency = empirical_marginal(draws, 5)
    assert frequency[0] == 0 and frequency[2] == 0
    standard_error = np.sqrt(probabilities * (1 - probabilities) / len(draws))
    assert np.all(np.abs(frequency - probabilities) <= 4 * standard_error)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_ancestral_sampling_matches_exact_marginals(seed):
    network, _ = random_network(seed)
    samples, weights = network.sample(20_000, np.random.default_rng(seed))
    assert np.all(weights == 1.0)
    for v in network.variables:
        exact = network.variable_elimination((v,)).table
        estimate = empirical_marginal(samples[v], network.cards[v])
        standard_error = np.sqrt(exact * (1 - exact) / len(weights))
        assert np.all(np.abs(estimate - exact) <= 4 * standard_error + 1e-12), (
            v,
            estimate,
            exact,
        )


@pytest.mark.parametrize("seed", [11, 12])
def test_ancestral_samples_follow_the_full_joint_not_only_the_marginals(seed):
    # Marginals alone would pass a sampler that drew every variable independently from
    # its marginal; the joint table of all variables catches a wrong parent lookup.
    network, (cards, parents, cpts) = random_network(seed)
    names = list(cards)
    samples, _ = network.sample(40_000, np.random.default_rng(seed))
    counts = np.zeros([cards[v] for v in names])
    np.add.at(counts, tuple(samples[v] for v in names), 1.0)
    frequency = counts / 40_000
    exact = np.zeros_like(frequency)
    for values in itertools.product(*(range(cards[v]) for v in names)):
        exact[values] = joint_probability(dict(zip(names, values)), parents, cpts)
    standard_error = np.sqrt(exact * (1 - exact) / 40_000)
    assert np.all(np.abs(frequency - exact) <= 4.5 * standard_error + 1e-4)


@pytest.mark.parametrize("seed", [4, 5, 6])
def test_likelihood_weighting_matches_exact_posteriors(seed):
    network, _ = random_network(seed, concentration=2.0)
    observed = network.variables[-1]
    evidence = {observed: 0}
    samples, weights = network.sample(20_000, np.random.default_rng(seed), evidence)
    assert np.all(samples[observed] == 0)
    for v in network.variables:
        if v == observed:
            continue
        exact = network.variable_elimination((v,), evidence).table
        estimate = empirical_marginal(samples[v], network.cards[v], weights)
        indicator = samples[v][:, None] == np.arange(network.cards[v])  # [n, card]
        standard_error = (
            np.sqrt((weights[:, None] ** 2 * (indicator - estimate) ** 2).sum(0))
            / weights.sum()
        )
        assert np.all(np.abs(estimate - exact) <= 4 * standard_error + 1e-12), (
            v,
            estimate,
            exact,
        )


@pytest.mark.parametrize("seed", [4, 5, 6])
def test_likelihood_weights_multiply_the_cpt_entries_of_every_observed_variable(seed):
    # With two observed variables each weight is p(e1 | parents) * p(e2 | parents), the
    # CPT entries looked up at the sample's own parent values.
    network, (cards, parents, cpts) = random_network(seed, concentration=2.0)
    observed = network.variables[-2:]
    evidence = {v: cards[v] - 1 for v in observed}
    samples, weights = network.sample(200, np.random.default_rng(seed), evidence)
    expected = np.ones(200)
    for v in observed:
        expected *= np.array(
            [
                cpts[v][tuple(samples[p][i] for p in parents[v]) + (evidence[v],)]
                for i in range(200)
            ]
        )
    np.testing.assert_allclose(weights, expected, rtol=1e-12, atol=0)


@settings(max_examples=20)
@given(seed=seeds)
def test_markov_blanket_conditional_matches_joint_ratio(seed):
    network, (cards, parents, cpts) = random_network(seed)
    rng = np.random.default_rng(seed)
    state = {
        v: rng.integers(0, cards[v], size=4) for v in cards
    }  # 4 random full assignments
    variable = network.variables[int(rng.integers(len(network.variables)))]
    conditional = network.markov_blanket_conditional(variable, state)  # [4, card]
    for row in range(4):
        joint = np.array(
            [
                joint_probability(
                    {**{v: state[v][row] for v in cards}, variable: value},
                    parents,
                    cpts,
                )
                for value in range(cards[variable])
            ]
        )
        np.testing.assert_allclose(
            conditional[row], joint / joint.sum(), rtol=0, atol=1e-12
        )


@pytest.mark.parametrize("seed", [7, 8, 9])
def test_gibbs_matches_exact_posteriors_across_chains(seed):
    # Each chain's estimate is correlated within the chain but independent of the other
    # chains, so the spread of the 20 chain estimates gives a standard error that
    # already accounts for autocorrelation.
    network, _ = random_network(seed, concentration=2.0)
    evidence = {network.variables[-1]: 1}
    n_chains = 20
    trace = network.gibbs(
        evidence,
        n_sweeps=1500,
        n_chains=n_chains,
        rng=np.random.default_rng(seed),
        burn_in=100,
    )
    assert np.all(trace[network.variables[-1]] == 1)
    for v in network.variables:
        if v in evidence:
            continue
        exact = network.variable_elimination((v,), evidence).table
        per_chain = np.stack(
            [
                empirical_marginal(trace[v][:, c], network.cards[v])
                for c in range(n_chains)
            ]
        )
        estimate, standard_error = (
            per_chain.mean(0),
            per_chain.std(0, ddof=1) / np.sqrt(n_chains),
        )
        assert np.all(np.abs(estimate - exact) <= 5 * standard_error + 1e-3), (
            v,
            estimate,
            exact,
            standard_error,
        )
        assert np.all(np.abs(estimate - exact) < 0.02)


# --------------------------------------------------------------------------------------
# Hidden Markov models against the sum and the max over every state path.


def random_hmm(rng):
    n_states, n_symbols = int(rng.integers(2, 4)), int(rng.integers(2, 5))
    return HiddenMarkovModel(
        rng.dirichlet(np.ones(n_states)),
        rng.dirichlet(np.ones(n_states), size=n_states),
        rng.dirichlet(np.ones(n_symbols), size=n_states),
    )


def path_probabilities(hmm: HiddenMarkovModel, observations):
    """Every state path and its joint probability p(z, x)."""
    paths = list(itertools.product(range(hmm.n_states), repeat=len(observations)))
    probabilities = []
    for path in paths:
        p = hmm.initial[path[0]] * hmm.emission[path[0], observations[0]]
        for t in range(1, len(observations)):
            p *= (
                hmm.transition[path[t - 1], path[t]]
                * hmm.emission[path[t], observations[t]]
            )
        probabilities.append(p)
    return np.array(paths), np.array(probabilities)


@settings(max_examples=40)
@given(seed=seeds, n_steps=st.integers(1, 5))
def test_forward_backward_and_viterbi_match_path_enumeration(seed, n_steps):
    rng = np.random.default_rng(seed)
    hmm = random_hmm(rng)
    observations = rng.integers(0, hmm.n_symbols, size=n_steps)
    paths, probabilities = path_probabilities(hmm, observations)
    posteriors, log_likelihood = hmm.forward_backward(observations)
    assert log_likelihood == pytest.approx(np.log(probabilities.sum()), abs=1e-12)
    expected_posteriors = np.stack(
        [
            np.bincount(paths[:, t], weights=probabilities, minlength=hmm.n_states)
            / probabilities.sum()
            for t in range(n_steps)
        ]
    )
    np.testing.assert_allclose(posteriors, expected_posteriors, rtol=0, atol=1e-12)
    path, best_log_probability = hmm.viterbi(observations)
    # Two paths can tie exactly; any of them is a correct answer, so compare the
    # probability of the returned path with the best one, not the paths themselves.
    returned = probabilities[np.flatnonzero((paths == path).all(axis=1))[0]]
    assert returned == pytest.approx(probabilities.max(), rel=1e-12)
    assert best_log_probability == pytest.approx(np.log(probabilities.max()), abs=1e-12)


def test_scaled_forward_survives_where_unscaled_underflows():
    hmm = casino_hmm()
    _, rolls = hmm.sample(1000, np.random.default_rng(0))
    # The unscaled forward message is a probability of t rolls: it hits float64's floor
    # long before t = 1000.
    alpha = hmm.initial * hmm.emission[:, rolls[0]]
    for roll in rolls[1:]:
        alpha = (alpha @ hmm.transition) * hmm.emission[:, roll]
    assert alpha.sum() == 0.0
    # Reference: the forward recursion in log space with scipy's logsumexp.
    log_alpha = np.log(hmm.initial) + np.log(hmm.emission[:, rolls[0]])
    for roll in rolls[1:]:
        log_alpha = logsumexp(
            log_alpha[:, None] + np.log(hmm.transition), axis=0
        ) + np.log(hmm.emission[:, roll])
    posteriors, log_likelihood = hmm.forward_backward(rolls)
    assert log_likelihood == pytest.approx(logsumexp(log_alpha), rel=1e-12)
    np.testing.assert_allclose(posteriors.sum(axis=1), 1.0, atol=1e-12)
    path, best = hmm.viterbi(rolls)
    assert np.isfinite(best) and best <= log_likelihood


def test_viterbi_returns_a_best_path_when_every_path_ties():
    # Identical rows everywhere: all 2^6 paths have the same probability 2^-6 p(x).
    hmm = HiddenMarkovModel(
        [0.5, 0.5], [[0.5, 0.5], [0.5, 0.5]], [[0.2, 0.8], [0.2, 0.8]]
    )
    rolls = np.array([0, 1, 1, 0, 1, 0])
    path, best = hmm.viterbi(rolls)
    assert path.shape == (6,) and set(path) <= {0, 1}
    assert best == pytest.approx(np.log(0.5**6 * 0.2**3 * 0.8**3), rel=1e-12)


def test_hmm_sample_starts_from_the_initial_distribution():
    hmm = HiddenMarkovModel([0.3, 0.7], np.eye(2), [[1.0, 0.0], [0.0, 1.0]])
    rng = np.random.default_rng(2)
    first = np.array([hmm.sample(1, rng)[0][0] for _ in range(4000)])
    standard_error = np.sqrt(0.3 * 0.7 / 4000)
    assert abs((first == 0).mean() - 0.3) <= 4 * standard_error


def test_hmm_sample_follows_transition_and_emission_tables():
    hmm = casino_hmm()
    states, rolls = hmm.sample(20_000, np.random.default_rng(1))
    for table, before, after in [
        (hmm.transition, states[:-1], states[1:]),
        (hmm.emission, states, rolls),
    ]:
        for k in range(hmm.n_states):
            rows = after[before == k]
            frequency = np.bincount(rows, minlength=table.shape[1]) / len(rows)
            standard_error = np.sqrt(table[k] * (1 - table[k]) / len(rows))
            assert np.all(np.abs(frequency - table[k]) <= 4 * standard_error)


# --------------------------------------------------------------------------------------
# Bad input.


def test_factor_rejects_bad_input():
    with pytest.raises(ValueError, match="table has shape"):
        Factor(("a", "b"), (2, 3), np.ones((3, 2)))
    with pytest.raises(ValueError, match="distinct"):
        Factor(("a", "a"), (2, 2), np.ones((2, 2)))
    with pytest.raises(ValueError, match="non-negative"):
        Factor(("a",), (2,), [0.5, -0.1])
    with pytest.raises(TypeError, match="variables must be a tuple of str"):
        Factor((1, 2), (2, 2), np.ones((2, 2)))
    with pytest.raises(ValueError, match="one entry per variable"):
        Factor(("a",), (2, 2), np.ones((2, 2)))
    with pytest.raises(ValueError, match="cards must be positive ints"):
        Factor(("a",), (0,), [])
    with pytest.raises(TypeError, match="table must be an array of numbers"):
        Factor(("a",), (2,), ["x", "y"])
    a = Factor(("a",), (2,), [1.0, 1.0])
    with pytest.raises(TypeError, match="other must be a Factor, got list"):
        a.product([1.0, 1.0])
    with pytest.raises(ValueError, match=r"must be a permutation of \('a',\)"):
        a.transpose(["b"])
    with pytest.raises(ValueError, match="a has 2 states in one factor and 3"):
        a.product(Factor(("a",), (3,), [1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="unknown variable 'z'"):
        a.sum_out(["z"])
    with pytest.raises(ValueError, match=r"evidence\['a'\] = 2 is out of range"):
        a.reduce({"a": 2})
    with pytest.raises(ValueError, match="sums to zero"):
        Factor(("a",), (2,), [0.0, 0.0]).normalize()


def test_network_rejects_bad_structure_and_tables():
    cards = {"A": 2, "B": 2}
    good = {"A": [0.5, 0.5], "B": [[0.9, 0.1], [0.2, 0.8]]}
    with pytest.raises(ValueError, match="unknown variable 'Nope'"):
        BayesianNetwork(cards, {"B": ("Nope",)}, good)
    with pytest.raises(
        ValueError,
        match=r"cpts\['B'\] has shape \(2, 2\), but parents \(\) .* need \(2,\)",
    ):
        BayesianNetwork(cards, {}, good)
    with pytest.raises(
        ValueError, match=r"cpts\['B'\] is not stochastic.*sums to 0\.9"
    ):
        BayesianNetwork(
            cards, {"B": ("A",)}, {"A": [0.5, 0.5], "B": [[0.8, 0.1], [0.2, 0.8]]}
        )
    with pytest.raises(ValueError, match="one CPT per variable"):
        BayesianNetwork(cards, {"B": ("A",)}, {"A": [0.5, 0.5]})
    with pytest.raises(ValueError, match=r"cpts\['A'\] must hold finite, non-neg"):
        BayesianNetwork({"A": 2}, {}, {"A": [1.5, -0.5]})
    with pytest.raises(TypeError, match="cards, parents and cpts must be dicts"):
        BayesianNetwork([("A", 2)], {}, good)
    with pytest.raises(TypeError, match="variable names must be str, got 1"):
        BayesianNetwork({1: 2}, {}, {1: [0.5, 0.5]})
    cyclic_cards = {"A": 2, "B": 2, "C": 2}
    cyclic_cpts = {v: np.full((2, 2), 0.5) for v in cyclic_cards}
    with pytest.raises(ValueError, match="cycle through '(A|B|C)'"):
        BayesianNetwork(
            cyclic_cards, {"A": ("C",), "B": ("A",), "C": ("B",)}, cyclic_cpts
        )


def test_network_rejects_bad_queries():
    network = sprinkler_network()
    with pytest.raises(ValueError, match="query: unknown variable 'Snow'"):
        network.variable_elimination(("Snow",))
    with pytest.raises(ValueError, match="evidence: unknown variable 'Snow'"):
        network.variable_elimination(("Rain",), {"Snow": 1})
    with pytest.raises(
        ValueError,
        match=r"evidence\['Rain'\] = 3 is out of range; Rain has states 0..2",
    ):
        network.variable_elimination(("Cloudy",), {"Rain": 3})
    with pytest.raises(TypeError, match=r"evidence\['Rain'\] must be an int"):
        network.variable_elimination(("Cloudy",), {"Rain": 1.0})
    with pytest.raises(ValueError, match="also in the evidence"):
        network.variable_elimination(("Rain",), {"Rain": 1})
    with pytest.raises(TypeError, match="query must be a tuple"):
        network.variable_elimination("Rain")
    with pytest.raises(ValueError, match="query: variables must be distinct"):
        network.variable_elimination(("Rain", "Rain"))
    with pytest.raises(ValueError, match="query must name at least one variable"):
        network.variable_elimination(())
    with pytest.raises(TypeError, match="evidence must be a dict"):
        network.variable_elimination(("Rain",), [("WetGrass", 1)])
    with pytest.raises(ValueError, match="order must list each hidden variable"):
        network.variable_elimination(("Rain",), {"WetGrass": 1}, order=["Cloudy"])
    with pytest.raises(ValueError, match="n_sweeps must be an int >= 1"):
        network.gibbs(
            {"WetGrass": 1}, n_sweeps=0, n_chains=2, rng=np.random.default_rng(0)
        )
    with pytest.raises(TypeError, match="n_chains must be an int, got float"):
        network.gibbs({"WetGrass": 1}, 10, 2.0, np.random.default_rng(0))
    with pytest.raises(TypeError, match="n_samples must be an int, got bool"):
        network.sample(True, np.random.default_rng(0))
    with pytest.raises(ValueError, match="burn_in must be an int >= 0"):
        network.gibbs({"WetGrass": 1}, 10, 2, np.random.default_rng(0), burn_in=-1)
    with pytest.raises(TypeError, match=r"cards\['A'\] must be an int"):
        BayesianNetwork({"A": 2.0}, {}, {"A": [0.5, 0.5]})
    with pytest.raises(TypeError, match=r"cpts\['A'\] must be an array of numbers"):
        BayesianNetwork({"A": 2}, {}, {"A": ["a", "b"]})
    with pytest.raises(ValueError, match="hidden: variables must be distinct"):
        min_degree_order([("a", "b")], ["a", "a"])
    with pytest.raises(TypeError, match="posterior must be a Factor"):
        dataflow({"Rain": [0.5, 0.5]})
    with pytest.raises(
        ValueError, match="state: needs an array of values for every variable"
    ):
        network.markov_blanket_conditional(
            "Rain", {"Rain": np.zeros(2, dtype=np.int64)}
        )
    with pytest.raises(ValueError, match="variable: unknown variable 'Snow'"):
        network.markov_blanket_conditional("Snow", {})
    deterministic = BayesianNetwork(
        {"A": 2, "B": 2, "C": 2},
        {"B": ("A",), "C": ("A",)},
        {"A": [0.5, 0.5], "B": [[1.0, 0.0], [0.0, 1.0]], "C": [[0.5, 0.5], [0.5, 0.5]]},
    )
    with pytest.raises(ValueError, match="probability zero"):
        deterministic.variable_elimination(("C",), {"A": 0, "B": 1})
    with pytest.raises(ValueError, match="no sampled state is consistent with it"):
        deterministic.gibbs({"A": 0, "B": 1}, 10, 2, np.random.default_rng(0))


def test_hmm_rejects_bad_input():
    with pytest.raises(ValueError, match=r"initial must be a vector \[K\]"):
        HiddenMarkovModel(np.eye(2), np.eye(2), [[1.0], [1.0]])
    with pytest.raises(ValueError, match="transition is not stochastic"):
        HiddenMarkovModel([0.5, 0.5], [[0.5, 0.6], [0.5, 0.5]], [[1.0], [1.0]])
    with pytest.raises(ValueError, match=r"transition must be \[K, K\]"):
        HiddenMarkovModel([0.5, 0.5], [[1.0]], [[1.0], [1.0]])
    with pytest.raises(ValueError, match=r"emission must be \[K, M\] with K = 2"):
        HiddenMarkovModel([0.5, 0.5], np.eye(2), [[1.0]])
    hmm = casino_hmm()
    with pytest.raises(ValueError, match=r"observations must lie in 0..5"):
        hmm.forward_backward([0, 6, 1])
    with pytest.raises(TypeError, match="non-empty 1-D int array"):
        hmm.viterbi([0.5, 1.0])
    with pytest.raises(ValueError, match="n_steps must be an int >= 1"):
        hmm.sample(0, np.random.default_rng(0))
    impossible = HiddenMarkovModel([1.0, 0.0], np.eye(2), [[1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match="probability zero"):
        impossible.forward_backward([0, 1])
    with pytest.raises(ValueError, match="probability zero"):
        impossible.viterbi([0, 1])


def test_inputs_are_left_unchanged_and_tables_are_copied():
    cards = {"A": 2, "B": 3}
    cpts = {
        "A": np.array([0.4, 0.6]),
        "B": np.array([[0.2, 0.3, 0.5], [0.1, 0.1, 0.8]]),
    }
    originals = {v: table.copy() for v, table in cpts.items()}
    network = BayesianNetwork(cards, {"B": ("A",)}, cpts)
    before = network.variable_elimination(("A",), {"B": 2}).table
    evidence = {"B": np.int64(2)}
    network.variable_elimination(("A",), evidence)
    network.sample(50, np.random.default_rng(0), evidence)
    network.gibbs(evidence, 5, 2, np.random.default_rng(0))
    assert evidence == {"B": 2}
    for v in cpts:
        np.testing.assert_array_equal(cpts[v], originals[v])
    cpts["B"][1] = [1.0, 0.0, 0.0]  # the caller edits their array afterwards
    np.testing.assert_array_equal(
        network.variable_elimination(("A",), {"B": 2}).table, before
    )
    factor = Factor(("a", "b"), (2, 2), np.array([[1.0, 2.0], [3.0, 4.0]]))
    kept = factor.table.copy()
    factor.product(factor.sum_out(["a"]))
    factor.reduce({"a": 1}).normalize()
    factor.transpose(("b", "a"))
    np.testing.assert_array_equal(factor.table, kept)
    initial = np.array([0.5, 0.5])
    hmm = HiddenMarkovModel(initial, np.eye(2), [[0.5, 0.5], [0.5, 0.5]])
    initial[0] = 1.0
    np.testing.assert_array_equal(hmm.initial, [0.5, 0.5])


def test_numpy_integers_are_counts_and_states():
    network = sprinkler_network()
    posterior = network.variable_elimination(("Rain",), {"WetGrass": np.int64(1)})
    np.testing.assert_allclose(
        posterior.table,
        network.variable_elimination(("Rain",), {"WetGrass": 1}).table,
        rtol=0,
        atol=0,
    )
    samples, _ = network.sample(np.int64(10), np.random.default_rng(0))
    assert samples["Rain"].shape == (10,)
    states, _ = casino_hmm().sample(np.int32(7), np.random.default_rng(0))
    assert states.shape == (7,)
    tiny = BayesianNetwork({"A": np.int64(2)}, {}, {"A": [0.5, 0.5]})
    assert tiny.cards == {"A": 2}


# --------------------------------------------------------------------------------------
# The demo, with small flags.


def test_demo_error_bars_are_the_spread_of_repeated_runs():
    # The demo prints each estimate ± its standard error. Repeat the estimation 150
    # times: the estimates scatter by what the runs reported (their root mean square),
    # for the delta-method error of likelihood weighting and for the spread across
    # Gibbs chains alike. The ratios land between 0.9 and 1.13 over six seeds; a
    # 150-run spread is itself good to about 6 %.
    network = sprinkler_network()
    args = argparse.Namespace(samples=400, sweeps=40, chains=4, burn_in=10)
    rng = np.random.default_rng(0)
    runs = [
        sampled_marginals(network, SPRINKLER_EVIDENCE, args, rng) for _ in range(150)
    ]
    for method in ("weighted", "gibbs"):
        for v in runs[0][method]:
            estimates = np.stack([run[method][v] for run in runs])  # [150, card]
            errors = np.stack([run[f"{method}_se"][v] for run in runs])  # [150, card]
            ratio = estimates.std(axis=0, ddof=1) / np.sqrt((errors**2).mean(axis=0))
            assert np.all((0.8 < ratio) & (ratio < 1.25)), (method, v, ratio)


def test_running_estimate_is_the_gibbs_chains_sprinkler_draws():
    # The figure's running estimate follows the Gibbs draws of Sprinkler = on: one
    # row per sweep, one column per chain; over all of them it averages to the Gibbs
    # estimate of P(Sprinkler = on | evidence).
    args = argparse.Namespace(samples=50, sweeps=30, chains=3, burn_in=5)
    estimates = sampled_marginals(
        sprinkler_network(), SPRINKLER_EVIDENCE, args, np.random.default_rng(1)
    )
    running = estimates["running"]["Sprinkler on"]  # [sweeps, chains]
    assert running.shape == (30, 3) and running.dtype == bool
    assert 0 < running.mean() < 1
    on = SPRINKLER_STATES["Sprinkler"].index("on")
    assert running.mean() == pytest.approx(estimates["gibbs"]["Sprinkler"][on])


def test_demo_runs_and_estimates_close_to_exact(tmp_path):
    metrics = main(
        [
            "--sweeps",
            "300",
            "--burn-in",
            "50",
            "--chains",
            "4",
            "--samples",
            "3000",
            "--hmm-steps",
            "80",
            "--out",
            str(tmp_path),
        ]
    )
    assert metrics["max_gibbs_error"] < 0.08
    assert metrics["max_weighting_error"] < 0.05
    assert metrics["hmm_log_likelihood"] < 0 and np.isfinite(
        metrics["hmm_log_likelihood"]
    )
    assert metrics["viterbi_accuracy"] > 0.6 and metrics["posterior_accuracy"] > 0.6
    for name in ["posteriors.png", "hmm_posterior.png"]:
        assert (tmp_path / name).stat().st_size > 10_000


# --------------------------------------------------------------------------------------
# Benchmark: variable elimination against enumeration of the joint on a 12-variable
# binary chain.


def chain_network(length: int = 12):
    rng = np.random.default_rng(0)
    names = [f"x{i}" for i in range(length)]
    cards = {name: 2 for name in names}
    parents = {name: (names[i - 1],) for i, name in enumerate(names) if i > 0}
    cpts = {
        name: rng.dirichlet(np.ones(2), size=(2,) if i > 0 else ())
        for i, name in enumerate(names)
    }
    full_parents = {name: parents.get(name, ()) for name in names}
    return BayesianNetwork(cards, parents, cpts), (cards, full_parents, cpts)


CHAIN, CHAIN_TABLES = chain_network()


def test_chain_benchmark_inputs_agree():
    expected = brute_force_posterior(*CHAIN_TABLES, ("x11",), {"x0": 1})
    np.testing.assert_allclose(
        CHAIN.variable_elimination(("x11",), {"x0": 1}).table,
        expected,
        rtol=0,
        atol=1e-12,
    )


@pytest.mark.benchmark(group="inference, 12-variable chain")
def test_bench_variable_elimination(benchmark):
    benchmark.extra_info["label"] = "our variable elimination"
    benchmark(CHAIN.variable_elimination, ("x11",), {"x0": 1})


@pytest.mark.benchmark(group="inference, 12-variable chain")
def test_bench_enumeration(benchmark):
    benchmark.extra_info["label"] = "brute-force enumeration"
    benchmark.extra_info["baseline"] = True
    benchmark(brute_force_posterior, *CHAIN_TABLES, ("x11",), {"x0": 1})
