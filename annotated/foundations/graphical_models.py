r"""
---
title: Probabilistic graphical models
summary: >-
  Factors, Bayesian networks, exact inference by variable elimination, ancestral,
  likelihood-weighted and Gibbs sampling, and hidden Markov models, all checked against
  brute-force enumeration.
time: 2 s
references:
  - key: koller2009probabilistic
    authors: [Daphne Koller, Nir Friedman]
    title: "Probabilistic Graphical Models: Principles and Techniques"
    year: 2009
    venue: MIT Press
    url: https://mitpress.mit.edu/9780262013192/probabilistic-graphical-models/
  - key: pearl1988probabilistic
    authors: [Judea Pearl]
    title: >-
      Probabilistic Reasoning in Intelligent Systems: Networks of Plausible Inference
    year: 1988
    venue: Morgan Kaufmann
    url: https://doi.org/10.1016/C2009-0-27609-4
  - key: rabiner1989tutorial
    authors: [Lawrence R. Rabiner]
    title: >-
      A Tutorial on Hidden Markov Models and Selected Applications in Speech
      Recognition
    year: 1989
    venue: Proceedings of the IEEE 77(2)
    url: https://doi.org/10.1109/5.18626
  - key: durbin1998biological
    authors: [Richard Durbin, Sean R. Eddy, Anders Krogh, Graeme Mitchison]
    title: >-
      Biological Sequence Analysis: Probabilistic Models of Proteins and Nucleic Acids
    year: 1998
    venue: Cambridge University Press
    url: https://doi.org/10.1017/CBO9780511790492
worksheet:
  - region: Factor.product
    hint: >-
      After checking that shared variables have the same number of states, the result
      ranges over this factor's variables followed by the other's new ones; give each
      variable one einsum index, so shared axes multiply entrywise and the rest
      broadcast into an outer product.
    tests: [test_factor_product_matches_entrywise_loop]
  - region: BayesianNetwork.variable_elimination
    hint: >-
      Reduce every CPT by the evidence; the hidden variables are those neither queried
      nor observed, taken in the given order (checked) or min_degree_order's; for each,
      multiply the factors that mention it and sum it out; finally multiply what is
      left, normalise, and put the axes in the query's order.
    tests: [test_variable_elimination_matches_enumeration_on_random_networks]
  - region: HiddenMarkovModel.forward_backward
    hint: >-
      Forward: predicted starts at the initial distribution; at each step multiply by
      the emission likelihood, divide by its sum c_t (refuse a zero), and propagate
      through the transition. Backward from all ones: beta_t = transition @
      (likelihood_{t+1} * beta_{t+1}) / c_{t+1}. Return alpha * beta and sum(log c_t).
    tests:
      - test_forward_backward_and_viterbi_match_path_enumeration
      - test_scaled_forward_survives_where_unscaled_underflows
---

A joint distribution over $n$ discrete variables with $k$ states each is a table of
$k^n$ numbers. Twenty binary variables already need a million of them, and every
question we might ask of the table (how likely is rain, given that the grass is wet?) is
a sum over most of it. A *graphical model* avoids writing the table down
[@koller2009probabilistic]. It states which variables influence which, and stores only
small local tables; the joint is their product. In a Bayesian network
[@pearl1988probabilistic] that product is the chain rule of probability with most
conditioning variables dropped:

$$
p(x_1, \dots, x_n) = \prod_{i=1}^{n} p\big(x_i \mid x_{\mathrm{pa}(i)}\big),
$$

where $\mathrm{pa}(i)$ are the *parents* of variable $i$ in a directed acyclic graph.
Storage falls from $k^n$ to $\sum_i k^{1 + |\mathrm{pa}(i)|}$.

This lesson builds the machinery to ask such a model questions, in numpy:

1. a `Factor`, a small named table with the four operations inference needs: product,
   sum out, reduce, normalise;
2. a `BayesianNetwork`, which checks its tables and its graph, and answers
   $p(\text{query} \mid \text{evidence})$ exactly by **variable elimination**: the sum
   over the joint, rearranged so that no big table is ever built;
3. three samplers for when exact answers are too expensive: **ancestral** sampling,
   **likelihood weighting** for evidence, and **Gibbs** sampling, which needs each
   variable's distribution given only its Markov blanket;
4. a `HiddenMarkovModel`, the chain-shaped network behind speech recognisers and gene
   finders, where variable elimination in time order becomes the **forward–backward**
   algorithm and its max-product twin becomes **Viterbi** [@rabiner1989tutorial]. Long
   sequences underflow float64, and we see why scaling or logarithms fix it.

Every answer is checked in the tests against the dumbest method that is obviously right:
enumerate every assignment of every variable, multiply, and add. On random networks and
random HMMs the two agree to $10^{-12}$; the samplers agree within a few of their own
standard errors.
"""

import argparse
import heapq
import numbers
from functools import reduce
from pathlib import Path

import numpy as np
from tqdm import tqdm

from annotated.data import integer
from annotated.figures import figure, save

# ## Checking what comes in
#
# Three checks recur in every class below. Counts (states, samples, sweeps) must be
# positive integers; a NumPy integer is one, a `True` is not. Evidence is a dict from
# variable name to a state index, and a state outside $0, \dots, k-1$ would silently
# index the wrong slice (or wrap around, for $-1$). And every conditional table must be
# *stochastic*: non-negative, with each distribution along its last axis summing to one.
# A table that sums to 0.9 still runs; it just gives wrong answers.


def check_count(value, name: str, least: int = 1) -> int:
    """Return `value` as an int, or raise unless it is an integer >= `least`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < least:
        raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
    return int(value)


def check_evidence(
    evidence: dict, cards: dict[str, int], argument: str = "evidence"
) -> None:
    """Raise unless `evidence` maps known variable names to in-range integer states."""
    if not isinstance(evidence, dict):
        raise TypeError(
            f"{argument} must be a dict from variable name to state index, "
            f"got {type(evidence).__name__}"
        )
    for variable, value in evidence.items():
        if variable not in cards:
            raise ValueError(
                f"{argument}: unknown variable {variable!r}; "
                f"known variables are {sorted(cards)}"
            )
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(
                f"{argument}[{variable!r}] must be an int state index, got {value!r}"
            )
        if not 0 <= value < cards[variable]:
            raise ValueError(
                f"{argument}[{variable!r}] = {value} is out of range; "
                f"{variable} has states 0..{cards[variable] - 1}"
            )


def check_stochastic(table: np.ndarray, argument: str) -> None:
    """Raise unless `table` is finite, non-negative, and sums to one on axis -1."""
    if not np.all(np.isfinite(table)) or np.any(table < 0):
        raise ValueError(f"{argument} must hold finite, non-negative probabilities")
    row_sums = table.sum(axis=-1)
    if not np.allclose(row_sums, 1.0, rtol=0.0, atol=1e-9):
        worst = float(row_sums.flat[np.argmax(np.abs(row_sums - 1.0))])
        raise ValueError(
            f"{argument} is not stochastic: a distribution along its last axis sums "
            f"to {worst:.6g}, not 1"
        )


# ## Factors
#
# Every table in this lesson (a conditional probability table, an intermediate result of
# elimination, a posterior) is a *factor*: a non-negative function
# $\phi(X_1, \dots, X_k)$ of a few discrete variables, stored as a numpy array with one
# axis per variable. Inference needs four operations on them.
#
# - **Product.** $(\phi \cdot \psi)(x_{A \cup B}) = \phi(x_A)\,\psi(x_B)$: an outer
#   product over the variables the two factors do not share, an elementwise product over
#   those they do.
# - **Sum out.** $\big(\sum_{X} \phi\big)(x_{A \setminus \{X\}}) = \sum_{x} \phi(x_{A
#   \setminus \{X\}}, X{=}x)$: the axis of $X$ disappears.
# - **Reduce.** Conditioning on evidence $X = x$ keeps the slice where $X = x$. The axis
#   disappears here too, by indexing instead of summing.
# - **Normalise.** Divide by the total so that the entries sum to one.


class Factor:
    r"""A table $\phi(X_1, \dots, X_k) \ge 0$ over named discrete variables.

    `variables` names the axes of `table` in order, and `cards[i]` is the number of
    states (the *cardinality*) of `variables[i]`, so `table.shape == cards`. A factor
    over no variables is a scalar, with `table.shape == ()`; elimination produces these
    when evidence fixes every variable of a table.
    """

    def __init__(self, variables, cards, table):
        if not isinstance(variables, (tuple, list)) or not all(
            isinstance(v, str) for v in variables
        ):
            raise TypeError(
                f"Factor: variables must be a tuple of str, got {variables!r}"
            )
        if len(set(variables)) != len(variables):
            raise ValueError(f"Factor: variables must be distinct, got {variables!r}")
        if not isinstance(cards, (tuple, list)) or len(cards) != len(variables):
            raise ValueError(
                "Factor: cards must be a tuple with one entry per variable, "
                f"got {cards!r}"
            )
        if not all(
            isinstance(c, (int, np.integer)) and not isinstance(c, bool) and c >= 1
            for c in cards
        ):
            raise ValueError(f"Factor: cards must be positive ints, got {cards!r}")
        try:
            table = np.asarray(table, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise TypeError(
                f"Factor: table must be an array of numbers ({error})"
            ) from None
        if table.shape != tuple(cards):
            raise ValueError(
                f"Factor: table has shape {table.shape} but cards are "
                f"{tuple(cards)}; they must be equal"
            )
        if not np.all(np.isfinite(table)) or np.any(table < 0):
            raise ValueError("Factor: table entries must be finite and non-negative")
        self.variables: tuple[str, ...] = tuple(variables)
        self.cards: tuple[int, ...] = tuple(int(c) for c in cards)
        self.table: np.ndarray = table

    # The product is one `np.einsum` call. Give every variable of the union one integer
    # subscript; a subscript that appears in both inputs and in the output is multiplied
    # elementwise, and one that appears in a single input is broadcast over the other,
    # which makes an outer product. That is the definition of the factor product,
    # written in index notation:
    #
    # $$
    # (\phi \cdot \psi)[a, b, c] = \phi[a, b]\;\psi[b, c].
    # $$
    def product(self, other: "Factor") -> "Factor":
        """The factor over both scopes whose entries multiply the matching entries."""
        if not isinstance(other, Factor):
            raise TypeError(
                f"product: other must be a Factor, got {type(other).__name__}"
            )
        for variable, card in zip(other.variables, other.cards):
            if (
                variable in self.variables
                and self.cards[self.variables.index(variable)] != card
            ):
                raise ValueError(
                    f"product: {variable} has "
                    f"{self.cards[self.variables.index(variable)]} states in one "
                    f"factor and {card} in the other"
                )
        union = self.variables + tuple(
            v for v in other.variables if v not in self.variables
        )
        subscript = {variable: i for i, variable in enumerate(union)}
        table = np.einsum(
            self.table,
            [subscript[v] for v in self.variables],
            other.table,
            [subscript[v] for v in other.variables],
            list(range(len(union))),
        )  # [*cards of union]
        cards = self.cards + tuple(
            c for v, c in zip(other.variables, other.cards) if v not in self.variables
        )
        return Factor(union, cards, table)

    def _check_scope(self, variables, argument: str) -> None:
        """Raise unless every name in `variables` is one of this factor's variables."""
        for variable in variables:
            if variable not in self.variables:
                raise ValueError(
                    f"{argument}: unknown variable {variable!r}; "
                    f"this factor is over {self.variables}"
                )

    def sum_out(self, variables) -> "Factor":
        r"""Marginalise: $\sum_{x_V} \phi$; the variables $V$ named leave the scope."""
        self._check_scope(variables, "sum_out")
        axes = tuple(self.variables.index(v) for v in variables)
        kept = [i for i in range(len(self.variables)) if i not in axes]
        return Factor(
            [self.variables[i] for i in kept],
            [self.cards[i] for i in kept],
            self.table.sum(axis=axes),
        )

    def reduce(self, evidence: dict[str, int]) -> "Factor":
        r"""Condition on evidence: the slice $\phi(\cdot, X{=}x)$ for each $X = x$."""
        check_evidence(evidence, dict(zip(self.variables, self.cards)))
        index = tuple(
            evidence[v] if v in evidence else slice(None) for v in self.variables
        )
        kept = [i for i, v in enumerate(self.variables) if v not in evidence]
        return Factor(
            [self.variables[i] for i in kept],
            [self.cards[i] for i in kept],
            self.table[index],
        )

    def normalize(self) -> "Factor":
        """Scale the table to sum to one; a factor summing to zero cannot be."""
        total = self.table.sum()
        if total == 0:
            raise ValueError(
                "normalize: the factor sums to zero; the evidence has probability zero "
                "under the model"
            )
        return Factor(self.variables, self.cards, self.table / total)

    def transpose(self, variables) -> "Factor":
        """The same factor with its axes in the order `variables` gives."""
        if sorted(variables) != sorted(self.variables):
            raise ValueError(
                f"transpose: variables must be a permutation of {self.variables}, "
                f"got {variables!r}"
            )
        axes = [self.variables.index(v) for v in variables]
        return Factor(
            tuple(variables),
            tuple(self.cards[i] for i in axes),
            self.table.transpose(axes),
        )


# ## The graph must be acyclic
#
# The factorisation $\prod_i p(x_i \mid x_{\mathrm{pa}(i)})$ is a valid distribution
# only if the parent relation has no cycle: then the variables can be listed so that
# every parent comes before its children (a *topological order*), and the product is the
# chain rule in that order with some conditioning dropped. A depth-first search finds
# the order, and finds a cycle as an edge back to a variable still on the search path.
# We report the cycle itself, because "the graph has a cycle" is no help in a network of
# fifty nodes.
#
# The search keeps its path on an explicit stack instead of recursing. A chain of 3,000
# variables listed children-first would otherwise nest 3,000 calls deep, past Python's
# default limit of 1,000, and a valid network would fail with `RecursionError`. Each
# entry of the stack remembers which of its variable's parents are still to be visited.
def topological_order(parents: dict[str, tuple[str, ...]]) -> list[str]:
    """Variables ordered parents-first; a cycle raises ValueError that names it."""
    order: list[str] = []
    status: dict[str, str] = {}  # "on path" while being searched, "done" once ordered
    for root in parents:
        if root in status:
            continue
        path = [root]  # the search path, root first
        unvisited = [iter(parents[root])]  # per path entry: the parents still to visit
        status[root] = "on path"
        while path:
            parent = next(unvisited[-1], None)
            if parent is None:  # every parent of path[-1] is done: it can be ordered
                variable = path.pop()
                unvisited.pop()
                status[variable] = "done"
                order.append(variable)
            elif status.get(parent) == "on path":
                cycle = path[path.index(parent) :] + [
                    parent
                ]  # each a parent of the last
                raise ValueError(
                    f"parents: the graph has a cycle through {parent!r}: "
                    f"{' -> '.join(reversed(cycle))}"
                )
            elif parent not in status:
                status[parent] = "on path"
                path.append(parent)
                unvisited.append(iter(parents[parent]))
    return order


# ## Choosing the elimination order
#
# Variable elimination (below) removes hidden variables one at a time. Removing $X$
# multiplies every factor that mentions $X$ into one table over $X$ and all of its
# current *neighbours* (variables sharing a factor with it), then sums $X$ out. So the
# cost of a step is exponential in the number of neighbours, and the step connects those
# neighbours to each other for the rest of the run: the *fill-in* edges. Finding the
# order that minimises the largest table is NP-hard, but the greedy **min-degree**
# heuristic works well on small networks [@koller2009probabilistic]: always eliminate
# the variable with the fewest neighbours now, then add the fill-in its removal creates.
#
# The order matters. In a star, a hub joined to eight leaves, eliminating the hub first
# builds a table over all eight leaves, $2^8$ entries for binary variables; eliminating
# the leaves first never builds one over more than two variables.
#
# A heap keeps the choice cheap. Scanning every remaining variable for the smallest
# degree at every step costs $O(n^2)$, seconds on a 3,000-variable chain. Instead each
# variable sits in a heap under its degree, and a variable whose degree changes is
# pushed again; an entry whose degree is out of date is skipped when it comes up.
def min_degree_order(scopes: list[tuple[str, ...]], hidden: list[str]) -> list[str]:
    """A greedy elimination order for `hidden`, given the factors' scopes.

    Ties go to the variable listed earlier in `hidden`.
    """
    if len(set(hidden)) != len(hidden):
        raise ValueError(f"hidden: variables must be distinct, got {hidden!r}")
    neighbours: dict[str, set[str]] = {variable: set() for variable in hidden}
    for scope in scopes:
        for variable in scope:
            neighbours.setdefault(variable, set()).update(
                u for u in scope if u != variable
            )
    position = {variable: i for i, variable in enumerate(hidden)}
    heap = [(len(neighbours[v]), position[v], v) for v in hidden]  # (degree, tie, v)
    heapq.heapify(heap)
    order = []
    while heap:
        degree, _, variable = heapq.heappop(heap)
        if variable not in neighbours or degree != len(neighbours[variable]):
            continue  # eliminated already, or its degree has changed since this push
        joined = neighbours.pop(variable)
        for u in joined:
            neighbours[u] |= joined - {u}  # the fill-in edges
            neighbours[u].discard(variable)
            if u in position:
                heapq.heappush(heap, (len(neighbours[u]), position[u], u))
        order.append(variable)
    return order


# ## Sampling a categorical variable
#
# Each sampler below draws, for many rows at once, one state from a row of (possibly
# unnormalised) probabilities. Stack the rows' running totals, draw $u$ uniformly in
# $(0, \text{total}]$, and pick the first state whose running total reaches $u$: state
# $j$ wins with probability $p_j / \text{total}$, and a state of probability zero can
# never win, because its running total equals its predecessor's.


def sample_categorical(
    probabilities: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """One state per row of `probabilities` `[n, k]` (need not sum to one): `[n]`."""
    cumulative = probabilities.cumsum(axis=1)  # [n, k]
    threshold = (1.0 - rng.random(len(probabilities))) * cumulative[
        :, -1
    ]  # [n], in (0, total]
    return (cumulative < threshold[:, None]).sum(axis=1)  # [n]


def empirical_marginal(
    states: np.ndarray, card: int, weights: np.ndarray | None = None
) -> np.ndarray:
    """The (weighted) fraction of `states` in each of `card` states: `[card]`."""
    weights = (
        np.ones(states.shape)
        if weights is None
        else np.broadcast_to(weights, states.shape)
    )
    counts = np.bincount(
        states.ravel(), weights=weights.ravel(), minlength=card
    )  # [card]
    return counts / counts.sum()


# ## Bayesian networks
#
# The network holds one `Factor` per variable, its conditional probability table (CPT)
# $p(X_i \mid X_{\mathrm{pa}(i)})$, with the parents' axes first and the variable's own
# axis last, so that each row along the last axis is a distribution. Everything is
# validated before anything is stored: that every parent is a known variable, that each
# CPT has the shape the parents' cardinalities dictate, that every row sums to one, and
# that the graph has no cycle.


class BayesianNetwork:
    r"""A DAG over discrete variables with a CPT each.

    The joint is $p(x) = \prod_i p(x_i \mid x_{\mathrm{pa}(i)})$.

    `cards` maps each variable to its number of states; `parents` maps a variable to the
    tuple of its parents (a variable left out has none); `cpts` maps each variable to an
    array of shape `[*parents' cards, own card]` whose last axis sums to one. For
    example `cpts["WetGrass"][s, r]` is the distribution of `WetGrass` when `Sprinkler =
    s` and `Rain = r`.
    """

    def __init__(
        self,
        cards: dict[str, int],
        parents: dict[str, tuple[str, ...]],
        cpts: dict[str, np.ndarray],
    ):
        if (
            not isinstance(cards, dict)
            or not isinstance(parents, dict)
            or not isinstance(cpts, dict)
        ):
            raise TypeError(
                "BayesianNetwork: cards, parents and cpts must be dicts keyed by "
                "variable name"
            )
        for variable, card in cards.items():
            if not isinstance(variable, str):
                raise TypeError(f"cards: variable names must be str, got {variable!r}")
            check_count(card, f"cards[{variable!r}]")
        for variable, its_parents in parents.items():
            for name in [variable, *its_parents]:
                if name not in cards:
                    raise ValueError(
                        f"parents: unknown variable {name!r} (for {variable!r}); "
                        f"known are {sorted(cards)}"
                    )
        if set(cpts) != set(cards):
            raise ValueError(
                f"cpts: need exactly one CPT per variable {sorted(cards)}, "
                f"got {sorted(cpts)}"
            )
        full_parents = {v: tuple(parents.get(v, ())) for v in cards}
        tables = {}
        for variable in cards:
            try:  # a copy: a caller editing their array later cannot change the network
                table = np.array(cpts[variable], dtype=np.float64)
            except (TypeError, ValueError) as error:
                raise TypeError(
                    f"cpts[{variable!r}] must be an array of numbers ({error})"
                )
            expected = tuple(cards[p] for p in full_parents[variable]) + (
                cards[variable],
            )
            if table.shape != expected:
                raise ValueError(
                    f"cpts[{variable!r}] has shape {table.shape}, but parents "
                    f"{full_parents[variable]} and {cards[variable]} own states "
                    f"need {expected}"
                )
            check_stochastic(table, f"cpts[{variable!r}]")
            tables[variable] = table
        order = topological_order(full_parents)
        self.cards: dict[str, int] = {v: int(cards[v]) for v in order}
        self.parents: dict[str, tuple[str, ...]] = {v: full_parents[v] for v in order}
        self.variables: list[str] = order
        self.children: dict[str, list[str]] = {v: [] for v in order}
        for child in order:
            for parent in full_parents[child]:
                self.children[parent].append(child)
        self.cpts: dict[str, Factor] = {
            v: Factor((*full_parents[v], v), tables[v].shape, tables[v]) for v in order
        }

    def _check_query(self, query, evidence: dict[str, int]) -> tuple[str, ...]:
        """Check a query (names) against the network and the evidence; as a tuple."""
        check_evidence(evidence, self.cards)
        if isinstance(query, str) or not isinstance(query, (tuple, list)):
            raise TypeError(f"query must be a tuple of variable names, got {query!r}")
        for variable in query:
            if variable not in self.cards:
                raise ValueError(
                    f"query: unknown variable {variable!r}; "
                    f"known variables are {self.variables}"
                )
            if variable in evidence:
                raise ValueError(
                    f"query: {variable!r} is also in the evidence; "
                    "its posterior is a point mass"
                )
        if len(set(query)) != len(query):
            raise ValueError(f"query: variables must be distinct, got {query!r}")
        return tuple(query)

    # ### Variable elimination
    #
    # The posterior is a ratio of two sums over the joint:
    # $p(q \mid e) = p(q, e) / \sum_{q'} p(q', e)$, with every hidden variable $h$
    # summed out of $p(q, e) = \sum_h \prod_i p(x_i \mid x_{\mathrm{pa}(i)})$. Summing
    # that product term by term costs $\prod_i k_i$. But multiplication distributes over
    # addition, so a sum can move inside every factor that does not mention its
    # variable. In the sprinkler network below, with wet grass observed:
    #
    # $$
    # \begin{aligned}
    # p(R, W{=}1) &= \sum_{c} p(c)\,p(R \mid c) \\
    # &\quad \times \sum_{s} p(s \mid c)\,p(W{=}1 \mid s, R) \\
    # &\quad \times \sum_{\ell} p(\ell \mid R).
    # \end{aligned}
    # $$
    #
    # The last sum is one: a variable with no observed descendant simply drops out.
    # The next one is a factor $\tau(c, R)$ over two variables. The algorithm does
    # exactly this, mechanically: reduce every CPT by the evidence, then for each hidden
    # variable in turn multiply the factors that mention it and sum it out. What remains
    # mentions only the query; normalising it divides by $p(e)$.
    def variable_elimination(
        self, query, evidence: dict[str, int] | None = None, order=None
    ) -> Factor:
        r"""The exact posterior $p(\text{query} \mid \text{evidence})$.

        A Factor over `query`, its axes in that order.

        `order` lists the hidden variables (neither queried nor observed) in the order
        to eliminate them; by default the min-degree heuristic chooses it. Any order
        gives the same answer, only the cost differs.
        """
        evidence = {} if evidence is None else evidence
        query = self._check_query(query, evidence)
        if not query:
            raise ValueError("query must name at least one variable")
        hidden = [v for v in self.variables if v not in query and v not in evidence]
        factors = [
            cpt.reduce({v: s for v, s in evidence.items() if v in cpt.variables})
            for cpt in self.cpts.values()
        ]
        if order is None:
            order = min_degree_order([f.variables for f in factors], hidden)
        elif (
            not isinstance(order, (tuple, list))
            or len(order) != len(hidden)
            or set(order) != set(hidden)
        ):
            raise ValueError(
                f"order must list each hidden variable {sorted(hidden)} exactly once, "
                f"got {order!r}"
            )
        for variable in order:
            touching = [f for f in factors if variable in f.variables]
            factors = [f for f in factors if variable not in f.variables]
            factors.append(reduce(Factor.product, touching).sum_out([variable]))
        unnormalised = reduce(
            Factor.product, factors
        )  # p(query, evidence), over the query variables
        return unnormalised.normalize().transpose(query)

    # ### Ancestral sampling and likelihood weighting
    #
    # A topological order makes sampling trivial: draw each variable from its CPT row,
    # given its parents' values drawn already. The samples come from the joint, so the
    # fraction with $X = x$ estimates $p(X = x)$ with standard error
    # $\sqrt{p(1 - p)/N}$.
    #
    # Evidence breaks this. *Rejection* sampling throws away the samples that disagree
    # with it, which wastes all but a fraction $p(e)$ of the work. *Likelihood
    # weighting* instead clamps each observed variable to its value and weights the
    # sample by how likely that value was given the sampled parents:
    #
    # $$
    # \begin{aligned}
    # w &= \prod_{X_j \in E} p\big(e_j \mid x_{\mathrm{pa}(j)}\big), \\
    # \hat p(X = x \mid e) &= \frac{\sum_n w_n\,[x_n = x]}{\sum_n w_n}.
    # \end{aligned}
    # $$
    #
    # The samples come from a proposal $q$, the network with the evidence CPTs removed,
    # and $w = p(x, e)/q(x)$ is exactly the importance weight, so the ratio is
    # consistent. It struggles when evidence sits *below* unlikely causes: the
    # unobserved parents are sampled blind to the evidence, and a few samples carry all
    # the weight.
    def sample(
        self,
        n_samples: int,
        rng: np.random.Generator,
        evidence: dict[str, int] | None = None,
    ):
        """Ancestral samples, with evidence clamped and weighted.

        Returns `({variable: [n]}, weights [n])`.

        Without evidence every weight is one and the samples come from the joint
        distribution.
        """
        evidence = {} if evidence is None else evidence
        check_evidence(evidence, self.cards)
        n_samples = check_count(n_samples, "n_samples")
        samples: dict[str, np.ndarray] = {}
        weights = np.ones(n_samples)  # [n]
        for variable in self.variables:
            rows = self.cpts[variable].table[
                tuple(samples[p] for p in self.parents[variable])
            ]  # [n, card] or [card]
            rows = np.broadcast_to(rows, (n_samples, self.cards[variable]))  # [n, card]
            if variable in evidence:
                samples[variable] = np.full(n_samples, evidence[variable])
                weights = weights * rows[:, evidence[variable]]
            else:
                samples[variable] = sample_categorical(rows, rng)
        return samples, weights

    # ### The Markov blanket conditional
    #
    # Gibbs sampling resamples one variable at a time from its distribution given *all*
    # the others. That looks expensive, but in the ratio almost everything cancels:
    #
    # $$
    # \begin{aligned}
    # p(x_v \mid x_{-v})
    # &= \frac{\prod_i p(x_i \mid x_{\mathrm{pa}(i)})}
    #   {\sum_{x_v'} \prod_i p(x_i \mid x_{\mathrm{pa}(i)})\big|_{x_v = x_v'}} \\
    # &\propto p(x_v \mid x_{\mathrm{pa}(v)})
    #   \prod_{c \in \mathrm{ch}(v)} p(x_c \mid x_{\mathrm{pa}(c)}).
    # \end{aligned}
    # $$
    #
    # Only the factors that mention $x_v$ survive: its own CPT and its children's. Their
    # variables (parents, children, and the children's other parents) form the *Markov
    # blanket* of $v$. To vectorise over many chains, each factor is indexed at the
    # chains' current values with $v$'s axis moved last and left free, giving one
    # unnormalised row over $v$'s states per chain.
    def markov_blanket_conditional(
        self, variable: str, state: dict[str, np.ndarray]
    ) -> np.ndarray:
        r"""$p(x_v \mid x_{-v})$ for `n` states at once, `[n, card]`.

        `state[name]` is an int array `[n]` for every variable.
        """
        if variable not in self.cards:
            raise ValueError(
                f"variable: unknown variable {variable!r}; "
                f"known variables are {self.variables}"
            )
        missing = [v for v in self.variables if v not in state]
        if missing:
            raise ValueError(
                f"state: needs an array of values for every variable; missing {missing}"
            )
        n = len(state[self.variables[0]])
        unnormalised = np.ones((n, self.cards[variable]))  # [n, card]
        for owner in [variable, *self.children[variable]]:
            cpt = self.cpts[owner]
            free_last = np.moveaxis(
                cpt.table, cpt.variables.index(variable), -1
            )  # [..., card]
            unnormalised = (
                unnormalised
                * free_last[tuple(state[u] for u in cpt.variables if u != variable)]
            )
        return unnormalised / unnormalised.sum(axis=1, keepdims=True)

    # ### Gibbs sampling
    #
    # One *sweep* resamples every unobserved variable from its Markov blanket
    # conditional. Each update leaves the posterior $p(x \mid e)$ invariant, and when
    # all conditionals are positive the chain can reach every state, so the distribution
    # of the state converges to the posterior. Two practical details follow from this.
    # The chain starts wherever it starts, so the first `burn_in` sweeps are discarded;
    # we start each chain from a likelihood-weighted sample, resampled in proportion to
    # its weight, which is already near the posterior and never at a state of
    # probability zero. And consecutive states are correlated, so $N$ sweeps carry less
    # information than $N$ independent samples. Running several independent chains gives
    # an honest error bar: the spread of the chains' estimates.
    def gibbs(
        self,
        evidence: dict[str, int],
        n_sweeps: int,
        n_chains: int,
        rng: np.random.Generator,
        burn_in: int = 0,
        progress: bool = False,
    ) -> dict[str, np.ndarray]:
        """Run `n_chains` Gibbs chains; every variable's states after burn-in.

        Returns `{variable: [n_sweeps, n_chains]}`.
        """
        check_evidence(evidence, self.cards)
        n_sweeps = check_count(n_sweeps, "n_sweeps")
        n_chains = check_count(n_chains, "n_chains")
        burn_in = check_count(burn_in, "burn_in", least=0)
        pool, weights = self.sample(100 * n_chains, rng, evidence)
        if weights.sum() == 0:
            raise ValueError(
                "evidence: no sampled state is consistent with it; "
                "it has (near) zero probability"
            )
        start = rng.choice(
            len(weights), size=n_chains, p=weights / weights.sum()
        )  # [chains]
        state = {v: pool[v][start] for v in self.variables}  # {variable: [chains]}
        trace = {
            v: np.empty((n_sweeps, n_chains), dtype=np.int64) for v in self.variables
        }
        unobserved = [v for v in self.variables if v not in evidence]
        for sweep in tqdm(
            range(burn_in + n_sweeps), desc="Gibbs sweeps", disable=not progress
        ):
            for variable in unobserved:
                state[variable] = sample_categorical(
                    self.markov_blanket_conditional(variable, state), rng
                )
            if sweep >= burn_in:
                for variable in self.variables:
                    trace[variable][sweep - burn_in] = state[variable]
        return trace


# ## Hidden Markov models
#
# An HMM is the Bayesian network $z_1 \to z_2 \to \dots \to z_T$ of hidden states, each
# emitting an observed symbol $z_t \to x_t$, with the same tables at every step: an
# initial distribution $\pi_k = p(z_1 = k)$, a transition matrix
# $A_{jk} = p(z_{t+1} = k \mid z_t = j)$ and an emission matrix
# $B_{km} = p(x_t = m \mid z_t = k)$.
#
# Variable elimination in time order is the **forward algorithm**. Eliminating
# $z_1, \dots, z_{t-1}$ leaves the message $\alpha_t(k) = p(x_{1:t}, z_t = k)$, and one
# more step is a matrix–vector product:
#
# $$
# \begin{aligned}
# \alpha_1 &= \pi \odot B_{:, x_1}, \\
# \alpha_t &= (\alpha_{t-1}^\top A) \odot B_{:, x_t}, \\
# p(x_{1:T}) &= \textstyle\sum_k \alpha_T(k).
# \end{aligned}
# $$
#
# Eliminating from the other end gives $\beta_t(k) = p(x_{t+1:T} \mid z_t = k)$, and the
# posterior of each state is $\gamma_t(k) = \alpha_t(k)\,\beta_t(k) / p(x_{1:T})$. That
# is $O(TK^2)$ work instead of the $K^T$ paths [@rabiner1989tutorial].


class HiddenMarkovModel:
    r"""An HMM: `initial` $\pi$ `[K]`, `transition` $A$ `[K, K]`, `emission` `[K, M]`.

    Row $j$ of $A$ is the distribution of the next state after state $j$, and row $k$
    of the emission matrix $B$ that of the symbol emitted in state $k$.
    """

    def __init__(self, initial, transition, emission):
        initial, transition, emission = (
            np.array(a, dtype=np.float64) for a in (initial, transition, emission)
        )
        if initial.ndim != 1:
            raise ValueError(f"initial must be a vector [K], got shape {initial.shape}")
        n_states = len(initial)
        if transition.shape != (n_states, n_states):
            raise ValueError(
                f"transition must be [K, K] = [{n_states}, {n_states}], "
                f"got shape {transition.shape}"
            )
        if emission.ndim != 2 or len(emission) != n_states:
            raise ValueError(
                f"emission must be [K, M] with K = {n_states}, "
                f"got shape {emission.shape}"
            )
        check_stochastic(initial, "initial")
        check_stochastic(transition, "transition")
        check_stochastic(emission, "emission")
        self.initial: np.ndarray = initial
        self.transition: np.ndarray = transition
        self.emission: np.ndarray = emission
        self.n_states: int = n_states
        self.n_symbols: int = emission.shape[1]

    def _check_observations(self, observations) -> np.ndarray:
        """`observations` as an int array `[T]`, T >= 1, every symbol in 0..M-1."""
        observations = np.asarray(observations)
        if (
            observations.ndim != 1
            or len(observations) == 0
            or not np.issubdtype(observations.dtype, np.integer)
        ):
            raise TypeError(
                "observations must be a non-empty 1-D int array [T], "
                f"got {observations.dtype} {observations.shape}"
            )
        if observations.min() < 0 or observations.max() >= self.n_symbols:
            raise ValueError(
                f"observations must lie in 0..{self.n_symbols - 1}, "
                f"got values {observations.min()}..{observations.max()}"
            )
        return observations

    def sample(
        self, n_steps: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Draw hidden states and observations, both int arrays `[n_steps]`."""
        n_steps = check_count(n_steps, "n_steps")
        states = np.empty(n_steps, dtype=np.int64)
        states[0] = rng.choice(self.n_states, p=self.initial)
        for t in range(1, n_steps):
            states[t] = rng.choice(self.n_states, p=self.transition[states[t - 1]])
        observations = sample_categorical(self.emission[states], rng)  # [T]
        return states, observations

    # **Why scale.** $\alpha_t$ is a probability of $t$ observations, so it shrinks
    # geometrically: with six-sided dice, by about $1/6$ a step. After about 400 rolls
    # it is below $10^{-308}$, where float64 keeps ever fewer digits, and after 416 it
    # rounds to zero; every posterior becomes $0/0$. Two cures exist. Logarithms turn
    # products into sums but need a log-sum-exp for every addition. Scaling keeps linear
    # arithmetic: normalise each $\alpha_t$ to sum to one and remember the divisor
    #
    # $$
    # \begin{aligned}
    # c_t &= \textstyle\sum_k (\hat\alpha_{t-1}^\top A)_k\, B_{k, x_t}
    #   = p(x_t \mid x_{1:t-1}), \\
    # \log p(x_{1:T}) &= \textstyle\sum_t \log c_t.
    # \end{aligned}
    # $$
    #
    # The divisors are conditional probabilities of one symbol each, never tiny, and
    # their logs add up to the log-likelihood. The backward messages are divided by the
    # same $c_{t+1}$, which makes $\gamma_t = \hat\alpha_t \odot \hat\beta_t$ with no
    # further normalisation.
    def forward_backward(self, observations) -> tuple[np.ndarray, float]:
        r"""Posteriors $\gamma_t(k) = p(z_t = k \mid x_{1:T})$ `[T, K]`; $\log p(x)$."""
        observations = self._check_observations(observations)
        n_steps = len(observations)
        likelihood = self.emission[:, observations].T  # [T, K]: p(x_t | z_t = k)
        alpha = np.empty((n_steps, self.n_states))  # [T, K], each row sums to one
        scale = np.empty(n_steps)  # [T]: c_t = p(x_t | x_{1:t-1})
        predicted = self.initial  # [K]: p(z_t | x_{1:t-1})
        for t in range(n_steps):
            joint = predicted * likelihood[t]  # [K]
            scale[t] = joint.sum()
            if scale[t] == 0:
                raise ValueError(
                    f"observations: symbol {observations[t]} at step {t} has "
                    "probability zero under the model"
                )
            alpha[t] = joint / scale[t]
            predicted = alpha[t] @ self.transition  # [K]
        beta = np.ones((n_steps, self.n_states))  # [T, K]
        for t in range(n_steps - 2, -1, -1):
            beta[t] = self.transition @ (likelihood[t + 1] * beta[t + 1]) / scale[t + 1]
        return alpha * beta, float(np.log(scale).sum())

    # **Viterbi** replaces the sums by maxima: $\delta_t(k)$ is the probability of the
    # best path ending in state $k$. There is nothing to normalise, so this one runs in
    # log space, where the products become sums of log-probabilities and
    # $\log 0 = -\infty$ marks impossible transitions correctly. A backpointer per step
    # and state records which predecessor won; tracing them back from the best final
    # state gives the path.
    def viterbi(self, observations) -> tuple[np.ndarray, float]:
        r"""The most probable state path `[T]` and $\max_z \log p(z, x_{1:T})$."""
        observations = self._check_observations(observations)
        with np.errstate(divide="ignore"):
            log_initial = np.log(self.initial)  # [K]
            log_transition = np.log(self.transition)  # [K, K]
            log_emission = np.log(self.emission)  # [K, M]
        score = (
            log_initial + log_emission[:, observations[0]]
        )  # [K]: best log p(z_1 = k, x_1)
        backpointer = np.zeros(
            (len(observations), self.n_states), dtype=np.int64
        )  # [T, K]
        for t in range(1, len(observations)):
            candidates = score[:, None] + log_transition  # [K from, K to]
            backpointer[t] = candidates.argmax(axis=0)
            score = candidates.max(axis=0) + log_emission[:, observations[t]]  # [K]
        if not np.isfinite(score.max()):
            raise ValueError(
                "observations: every state path has probability zero under the model"
            )
        path = np.empty(len(observations), dtype=np.int64)
        path[-1] = score.argmax()
        for t in range(len(observations) - 1, 0, -1):
            path[t - 1] = backpointer[t, path[t]]
        return path, float(score.max())


# ## The running example: a sprinkler network
#
# The textbook sprinkler network, with one three-state variable so that cardinalities
# matter. Cloudy days make rain likelier and the sprinkler less likely; either one wets
# the grass; rain (not the sprinkler) makes the road slippery. Observing wet grass
# raises the belief in both causes. Then observing heavy rain lowers the belief in the
# sprinkler again, since the rain already explains the wet grass. That is *explaining
# away* [@pearl1988probabilistic].
SPRINKLER_STATES = {
    "Cloudy": ("clear", "cloudy"),
    "Sprinkler": ("off", "on"),
    "Rain": ("none", "light", "heavy"),
    "WetGrass": ("dry", "wet"),
    "SlipperyRoad": ("no", "yes"),
}
SPRINKLER_EVIDENCE = {"WetGrass": 1}


def sprinkler_network() -> BayesianNetwork:
    """The five-variable sprinkler network; state names are in `SPRINKLER_STATES`."""
    cards = {variable: len(states) for variable, states in SPRINKLER_STATES.items()}
    parents = {
        "Sprinkler": ("Cloudy",),
        "Rain": ("Cloudy",),
        "WetGrass": ("Sprinkler", "Rain"),
        "SlipperyRoad": ("Rain",),
    }
    cpts = {
        "Cloudy": [0.5, 0.5],
        "Sprinkler": [[0.4, 0.6], [0.9, 0.1]],  # [Cloudy, Sprinkler]
        "Rain": [[0.8, 0.15, 0.05], [0.2, 0.45, 0.35]],  # [Cloudy, Rain]
        "WetGrass": [  # [Sprinkler, Rain, WetGrass]
            [[0.99, 0.01], [0.3, 0.7], [0.05, 0.95]],
            [[0.1, 0.9], [0.05, 0.95], [0.01, 0.99]],
        ],
        "SlipperyRoad": [[0.95, 0.05], [0.6, 0.4], [0.2, 0.8]],  # [Rain, SlipperyRoad]
    }
    return BayesianNetwork(cards, parents, cpts)


def casino_hmm() -> HiddenMarkovModel:
    """The occasionally dishonest casino [@durbin1998biological].

    A fair die, and a loaded one that rolls a six half the time; the casino starts with
    the fair die four times in five and switches rarely.
    """
    fair, loaded = np.full(6, 1 / 6), np.array([0.1, 0.1, 0.1, 0.1, 0.1, 0.5])
    return HiddenMarkovModel([0.8, 0.2], [[0.95, 0.05], [0.1, 0.9]], [fair, loaded])


# ## The example
#
# The example asks the sprinkler network for the posterior of `Rain` given wet grass.
# Its dataflow diagram is declared by `dataflow`, not traced: it draws the network's DAG
# with each variable's number of states, and the posterior the example computed.
def example():
    """Variable elimination on the sprinkler network: `Rain` given wet grass."""
    network = sprinkler_network()
    return network.variable_elimination, (("Rain",), dict(SPRINKLER_EVIDENCE))


def dataflow(posterior: Factor):
    """The network's DAG with each variable's states, and the example's posterior."""
    if not isinstance(posterior, Factor):
        raise TypeError(
            f"dataflow: posterior must be a Factor, got {type(posterior).__name__}"
        )
    network = sprinkler_network()
    nodes = [(v, f"{v} [{network.cards[v]}]") for v in network.variables]
    edges = [
        (parent, child, f"P({child} | {', '.join(network.parents[child])})")
        for child in network.variables
        for parent in network.parents[child]
    ]
    values = ", ".join(f"{p:.2f}" for p in posterior.table.ravel())
    nodes.append(("posterior", f"posterior {list(posterior.cards)} = [{values}]"))
    edges += [(v, "posterior", "query") for v in posterior.variables]
    edges += [
        (v, "posterior", f"evidence = {s}") for v, s in SPRINKLER_EVIDENCE.items()
    ]
    return nodes, edges


# ## The demo
#
# The demo answers "what does wet grass tell us?" exactly, then estimates the same
# posterior marginals with likelihood weighting and with Gibbs chains, and prints all
# three side by side with standard errors. For likelihood weighting the standard error
# of the self-normalised estimate $\hat p$ is the delta-method one,
# $\sqrt{\sum_n w_n^2 ([x_n = x] - \hat p)^2} / \sum_n w_n$. The Gibbs error bars come
# from the spread across independent chains, which accounts for the autocorrelation
# within each chain.
def sampled_marginals(
    network: BayesianNetwork,
    evidence: dict[str, int],
    args: argparse.Namespace,
    rng: np.random.Generator,
) -> dict[str, dict[str, np.ndarray]]:
    """Each unobserved variable's posterior by weighting and by Gibbs, with errors."""
    unobserved = [v for v in network.variables if v not in evidence]
    samples, weights = network.sample(args.samples, rng, evidence)
    trace = network.gibbs(
        evidence, args.sweeps, args.chains, rng, burn_in=args.burn_in, progress=True
    )
    estimates = {"weighted": {}, "weighted_se": {}, "gibbs": {}, "gibbs_se": {}}
    for v in unobserved:
        card = network.cards[v]
        weighted = empirical_marginal(samples[v], card, weights)  # [card]
        indicator = samples[v][:, None] == np.arange(card)  # [n, card]
        squared = (weights[:, None] ** 2 * (indicator - weighted) ** 2).sum(axis=0)
        estimates["weighted"][v] = weighted
        estimates["weighted_se"][v] = np.sqrt(squared) / weights.sum()  # [card]
        per_chain = np.stack(
            [empirical_marginal(trace[v][:, c], card) for c in range(args.chains)]
        )  # [chains, card]
        estimates["gibbs"][v] = per_chain.mean(axis=0)  # [card]
        spread = per_chain.std(axis=0, ddof=1) if args.chains > 1 else np.zeros(card)
        estimates["gibbs_se"][v] = spread / np.sqrt(args.chains)  # [card]
    estimates["running"] = {"Sprinkler on": trace["Sprinkler"] == 1}  # [sweeps, chains]
    return estimates


def plot_posteriors(exact: dict[str, np.ndarray], estimates: dict, path: Path) -> None:
    """Exact marginals with both samplers' estimates, and Gibbs running estimates."""
    fig, (bars, running) = figure(panels=2)
    labels = [f"{v}={name}" for v in exact for name in SPRINKLER_STATES[v]]
    position = np.arange(len(labels))

    def flat(per_variable):
        return np.concatenate([per_variable[v] for v in exact])  # [total states]

    bars.bar(position, flat(exact), color="#cccccc", label="exact")
    for offset, name, marker, label in [
        (-0.15, "gibbs", "o", r"Gibbs $\pm 2$ se"),
        (0.15, "weighted", "s", r"weighting $\pm 2$ se"),
    ]:
        bars.errorbar(
            position + offset,
            flat(estimates[name]),
            yerr=2 * flat(estimates[f"{name}_se"]),
            fmt=marker,
            ms=3,
            capsize=2,
            label=label,
        )
    bars.set_xticks(position, labels, rotation=60, ha="right")
    bars.set_ylabel(r"$p(x \mid \mathrm{wet\ grass})$")
    # Probabilities on [0, 1]: the legend fits in one row above the bars.
    bars.set_ylim(0, 1)
    bars.legend(loc="upper center", ncols=3)
    sprinkler_on = estimates["running"]["Sprinkler on"]  # [sweeps, chains]
    sweep = np.arange(1, len(sprinkler_on) + 1)
    for c in range(min(sprinkler_on.shape[1], 6)):
        running.plot(sweep, np.cumsum(sprinkler_on[:, c]) / sweep, lw=0.7, alpha=0.6)
    pooled = np.cumsum(sprinkler_on.mean(axis=1)) / sweep
    running.plot(sweep, pooled, color="black", lw=1.5, label="all chains pooled")
    running.axhline(exact["Sprinkler"][1], color="red", ls="--", label="exact")
    running.set_xscale("log")
    running.set_xlabel("Gibbs sweep $n$")
    running.set_ylabel(r"running $\hat p(\mathrm{sprinkler\ on} \mid \mathrm{wet})$")
    running.legend()
    save(
        fig,
        path,
        caption="Left: the exact posterior marginals of the sprinkler network given "
        "wet grass, with the Gibbs and likelihood-weighting estimates and two standard "
        "errors. Right: running Gibbs estimates of P(sprinkler on | wet) for six "
        "chains and pooled; single chains wander for hundreds of sweeps before they "
        "settle near the exact value.",
    )


def plot_hmm(
    true_states: np.ndarray,
    posteriors: np.ndarray,
    viterbi_path: np.ndarray,
    path: Path,
) -> None:
    """The loaded die's posterior and the Viterbi path, a third of the rolls a row."""
    fig, axes = figure(panels=3, rows=3, sharey=True)
    for axis, steps in zip(axes, np.array_split(np.arange(len(true_states)), 3)):
        axis.fill_between(
            steps,
            0,
            1,
            where=true_states[steps] == 1,
            step="mid",
            color="#f4b183",
            alpha=0.5,
            label="true: loaded die",
        )
        axis.plot(steps, posteriors[steps, 1], color="black", lw=1, label="posterior")
        axis.step(
            steps,
            viterbi_path[steps] * 0.96 + 0.02,
            where="mid",
            color="tab:blue",
            lw=1,
            ls="--",
            label="Viterbi (loaded = top)",
        )
        axis.set_ylim(0, 1)
        axis.set_ylabel(r"$p(z_t = \mathrm{loaded} \mid x_{1:T})$")
    axes[-1].set_xlabel("roll $t$")
    fig.legend(
        *axes[0].get_legend_handles_labels(), loc="outside upper center", ncols=2
    )
    # The loaded runs as [start, stop), and which of them each decoder catches.
    flags = np.concatenate(([0], (true_states == 1).astype(int), [0]))
    edges = np.flatnonzero(np.diff(flags))
    runs = list(zip(edges[::2], edges[1::2]))
    long = [stop - start >= 10 for start, stop in runs]
    posterior_hits = [bool((posteriors[a:b, 1] > 0.5).any()) for a, b in runs]
    viterbi_hits = [bool((viterbi_path[a:b] == 1).any()) for a, b in runs]

    def caught(hits, want_long):
        return sum(hit for hit, is_long in zip(hits, long) if is_long == want_long)

    save(
        fig,
        path,
        caption="The dishonest casino's rolls, a third per row: the shaded runs are "
        "where the loaded die was in play, the black line is the forward-backward "
        "posterior that the die is loaded, and the dashed line is the Viterbi path. "
        f"Of the {sum(long)} loaded runs of ten rolls or more, the posterior rises "
        f"above 0.5 in {caught(posterior_hits, True)} and the Viterbi path marks "
        f"{caught(viterbi_hits, True)}; of the {len(runs) - sum(long)} shorter runs, "
        f"the posterior catches {caught(posterior_hits, False)} and the Viterbi path "
        f"{caught(viterbi_hits, False)}.",
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Exact and sampled posteriors on the sprinkler network, then HMM decoding."""
    parser = argparse.ArgumentParser(
        description="Exact and sampled inference in a Bayesian network, and HMM "
        "decoding.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--sweeps",
        type=integer(at_least=1),
        default=4000,
        help="Gibbs sweeps kept per chain",
    )
    parser.add_argument(
        "--burn-in",
        type=integer(at_least=0),
        default=200,
        help="Gibbs sweeps discarded per chain",
    )
    parser.add_argument(
        "--chains",
        type=integer(at_least=1),
        default=16,
        help="independent Gibbs chains; their spread gives error bars",
    )
    parser.add_argument(
        "--samples",
        type=integer(at_least=1),
        default=20000,
        help="likelihood-weighting samples",
    )
    parser.add_argument(
        "--hmm-steps",
        type=integer(at_least=1),
        default=300,
        help="length of the HMM's sequence",
    )
    parser.add_argument(
        "--seed", type=integer(at_least=0), default=0, help="random seed"
    )
    parser.add_argument(
        "--out", default="out/graphical_models", help="folder for the figures"
    )
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    out = Path(args.out)
    network, evidence = sprinkler_network(), SPRINKLER_EVIDENCE

    unobserved = [v for v in network.variables if v not in evidence]
    exact = {
        v: network.variable_elimination((v,), evidence).table for v in unobserved
    }  # {v: [card]}
    estimates = sampled_marginals(network, evidence, args, rng)
    observed = ", ".join(f"{v} = {SPRINKLER_STATES[v][s]}" for v, s in evidence.items())
    print(f"posterior marginals given {observed}")
    header = ("variable", "state", "exact", "Gibbs ± se", "weighting ± se")
    print(f"{header[0]:<14}{header[1]:<8}{header[2]:>8}{header[3]:>20}{header[4]:>20}")
    for v in unobserved:
        for s, name in enumerate(SPRINKLER_STATES[v]):
            gibbs = (
                f"{estimates['gibbs'][v][s]:.4f} ± {estimates['gibbs_se'][v][s]:.4f}"
            )
            weighted = (
                f"{estimates['weighted'][v][s]:.4f} ± "
                f"{estimates['weighted_se'][v][s]:.4f}"
            )
            print(f"{v:<14}{name:<8}{exact[v][s]:>8.4f}{gibbs:>20}{weighted:>20}")
    errors = {
        name: max(
            float(np.abs(estimates[name][v] - exact[v]).max()) for v in unobserved
        )
        for name in ("gibbs", "weighted")
    }
    given_heavy_rain = network.variable_elimination(
        ("Sprinkler",), {**evidence, "Rain": 2}
    ).table[1]
    print(
        f"explaining away: P(sprinkler on | wet) = {exact['Sprinkler'][1]:.3f}, "
        f"P(sprinkler on | wet, heavy rain) = {given_heavy_rain:.3f}"
    )
    print(
        f"max |Gibbs - exact| {errors['gibbs']:.4f}   "
        f"max |weighting - exact| {errors['weighted']:.4f}"
    )
    plot_posteriors(exact, estimates, out / "posteriors.png")

    # Finally a few hundred rolls of the dishonest casino's dice, decoded both ways.
    hmm = casino_hmm()
    true_states, rolls = hmm.sample(args.hmm_steps, rng)
    posteriors, log_likelihood = hmm.forward_backward(rolls)  # [T, 2]
    viterbi_path, best_log_probability = hmm.viterbi(rolls)  # [T]
    viterbi_accuracy = float((viterbi_path == true_states).mean())
    posterior_accuracy = float((posteriors.argmax(axis=1) == true_states).mean())
    print(
        f"HMM: log p(rolls) {log_likelihood:.2f}, "
        f"best path log p {best_log_probability:.2f}, "
        f"Viterbi accuracy {viterbi_accuracy:.3f}, "
        f"posterior decoding accuracy {posterior_accuracy:.3f}"
    )
    plot_hmm(true_states, posteriors, viterbi_path, out / "hmm_posterior.png")
    return {
        "max_gibbs_error": errors["gibbs"],
        "max_weighting_error": errors["weighted"],
        "hmm_log_likelihood": log_likelihood,
        "viterbi_accuracy": viterbi_accuracy,
        "posterior_accuracy": posterior_accuracy,
    }


if __name__ == "__main__":
    main()

# ## Exercises
#
# 1. Turn variable elimination into *max-product* elimination (replace `sum_out` by a
#    max that also records the argmax) to find the single most probable assignment given
#    the evidence. Build the HMM of `casino_hmm()` as a `BayesianNetwork` with ten time
#    steps and check that your answer is the Viterbi path.
# 2. Make `variable_elimination` report the largest factor it builds. On a 4 × 4 grid
#    of binary variables (each with its upper and left neighbours as parents), compare
#    min-degree with eliminating row by row and with a random order. Then implement
#    min-fill (choose the variable whose elimination adds the fewest new edges) and find
#    a graph where it beats min-degree.
# 3. Make the sprinkler network nearly deterministic (replace 0.99 and 0.01 by 0.9999
#    and 0.0001 everywhere). Watch the Gibbs chains stall and the across-chain error
#    bars grow. Why does the one-at-a-time update get stuck here, and why does
#    likelihood weighting not suffer in the same way?
# 4. Implement one step of Baum–Welch: with the pairwise posteriors $\xi_t(j, k) \propto
#    \hat\alpha_t(j)\,A_{jk}\,B_{k, x_{t+1}}\,\hat\beta_{t+1}(k)$ and $\gamma_t$,
#    re-estimate $\pi$, $A$ and $B$. Check that the log-likelihood from
#    `forward_backward` never decreases from one step to the next.
