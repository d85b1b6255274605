r"""
---
title: Convex optimisation, measured
summary: >-
  Gradient descent, heavy-ball, Nesterov and SGD on strongly convex problems, each run
  against the convergence bound it is proved to obey.
time: 6 s
references:
  - key: nesterov2004introductory
    authors: [Yurii Nesterov]
    title: "Introductory Lectures on Convex Optimization: A Basic Course"
    year: 2004
    venue: Springer, Applied Optimization 87
    url: https://doi.org/10.1007/978-1-4419-8853-9
  - key: polyak1964some
    authors: [Boris T. Polyak]
    title: Some methods of speeding up the convergence of iteration methods
    year: 1964
    venue: USSR Computational Mathematics and Mathematical Physics 4(5)
    url: https://doi.org/10.1016/0041-5553(64)90137-5
  - key: karimi2016linear
    authors: [Hamed Karimi, Julie Nutini, Mark Schmidt]
    title: >-
      Linear Convergence of Gradient and Proximal-Gradient Methods Under the
      Polyak-Łojasiewicz Condition
    year: 2016
    venue: ECML PKDD 2016
    arxiv: "1608.04636"
  - key: bottou2018optimization
    authors: [Léon Bottou, Frank E. Curtis, Jorge Nocedal]
    title: Optimization Methods for Large-Scale Machine Learning
    year: 2018
    venue: SIAM Review 60(2)
    arxiv: "1606.04838"
  - key: boyd2004convex
    authors: [Stephen Boyd, Lieven Vandenberghe]
    title: Convex Optimization
    year: 2004
    venue: Cambridge University Press
    url: https://web.stanford.edu/~boyd/cvxbook/
worksheet:
  - region: heavy_ball
    hint: >-
      After checking the run and the momentum, record x_0, keep the previous iterate
      (starting equal to x_0), and each step set x <- x - step * A x + momentum * (x -
      previous) while the old x becomes previous; return all steps + 1 iterates.
    tests: [test_heavy_ball_every_iterate_below_bound]
  - region: nesterov
    hint: >-
      Like heavy ball, but the momentum step comes first: form the look-ahead y = x +
      momentum * (x - previous), remember x as previous, and take the gradient step
      from y, x <- y - step * A y; return all steps + 1 iterates.
    tests:
      - test_nesterov_every_iterate_below_bound
      - test_nesterov_three_sequence_form_and_its_potential_contract_by_one_minus_tau
  - region: newton_logistic
    hint: >-
      From w = 0, repeat until the gradient norm is at most tol: solve the Hessian
      system for the direction d, halve the step t until F(w - t d) <= F(w) - t
      Delta / 4 (Delta = gradient . d), but take the full step when Delta / 2 is below
      F's rounding (64 eps |F|); return every iterate, and raise after max_steps.
    tests:
      - test_newton_optimum_matches_scipy_minimize
      - test_newton_reaches_the_optimum_where_rounding_hides_the_last_decrease
      - test_newton_loss_falls_at_every_step
---

Optimisation theory makes promises of a precise shape: *after $k$ steps the error is at
most $C q^k$*. This lesson states four such promises, sketches why each holds
[@nesterov2004introductory; @bottou2018optimization], and then runs the algorithm and
plots the measured error under the promised curve.

The test bed is the simplest problem that still shows every effect: a strongly convex
quadratic $f(x) = \tfrac12 x^\top A x$ whose Hessian $A$ has eigenvalues between
$\mu > 0$ and $L$. Its minimiser is $x^\star = 0$ with $f^\star = 0$, and the single
number that decides how hard it is is the **condition number** $\kappa = L / \mu$. We
find that

- gradient descent with step $1/L$ contracts the error by $1 - 1/\kappa$ per step, so it
  needs about $\kappa \log(1/\varepsilon)$ steps;
- Polyak's heavy ball and Nesterov's method (the momentum rules of
  [the optimizers lesson](optimizers.md)) contract by about $1 - 1/\sqrt\kappa$ and need
  only about $\sqrt\kappa \log(1/\varepsilon)$ steps, a thirty-fold saving at
  $\kappa = 1000$;
- stochastic gradient descent with a constant step does not converge at all: it settles
  into a *noise ball* around $x^\star$ whose squared radius is proportional to the step,
  and only a step that decays like $1/k$ carries it all the way in.

The SGD part runs on $\ell_2$-regularised logistic regression, whose exact optimum we
compute by Newton's method. The tests check every iterate against its bound and Newton's
optimum against `scipy.optimize.minimize`.
"""

import argparse
import math
from numbers import Integral, Real
from pathlib import Path

import matplotlib
import numpy as np
from scipy.special import expit
from tqdm import tqdm

from annotated.data import integer, number, numbers
from annotated.figures import figure, save


# ## The problem: a quadratic with a known spectrum
#
# Every strongly convex, $L$-smooth function looks, near its minimum, like a quadratic
# whose Hessian has eigenvalues in $[\mu, L]$. For $f(x) = \tfrac12 x^\top A x$ the
# gradient is $\nabla f(x) = A x$, and writing $x$ in the eigenbasis of $A$,
# $x = \sum_i c_i u_i$, splits the problem into independent one-dimensional problems
# $\tfrac12 \lambda_i c_i^2$. That is why every rate below is a statement about how a
# method treats a single eigenvalue $\lambda \in [\mu, L]$, maximised over the interval.
#
# All the methods check their input the same way, so the checks are written once. Only a
# symmetric positive-definite $A$ makes $f$ strongly convex; an indefinite one has no
# minimum at all.
def spd_spectrum(A: np.ndarray) -> tuple[float, float]:
    r"""Check that `A` is symmetric positive definite; return its extreme eigenvalues.

    Returns $(\mu, L)$. Symmetry is checked to a tolerance relative to the largest
    entry, so that a matrix built as $Q \Lambda Q^\top$ in floating point still passes.
    """
    try:
        A = np.asarray(A, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(f"A must be an array of numbers ({error})") from None
    if A.ndim != 2 or A.shape[0] != A.shape[1] or A.shape[0] == 0:
        raise ValueError(f"A must be a square 2-D array [d, d], got shape {A.shape}")
    scale = np.abs(A).max()
    if not np.all(np.isfinite(A)) or np.abs(A - A.T).max() > 1e-10 * max(scale, 1.0):
        raise ValueError("A must be symmetric and finite (A == A.T)")
    eigenvalues = np.linalg.eigvalsh(A)  # [d], ascending
    if eigenvalues[0] <= 0:
        raise ValueError(
            "A must be positive definite; its smallest eigenvalue is "
            f"{eigenvalues[0]:.3g}"
        )
    return float(eigenvalues[0]), float(eigenvalues[-1])


def check_count(value, name: str, least: int) -> int:
    """Return `value` as an int, or raise unless it is an integer >= `least`."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < least:
        raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
    return int(value)


def check_run(A: np.ndarray, x0: np.ndarray, step: float, steps: int) -> np.ndarray:
    """Validate the arguments every method on the quadratic shares; return `x0`."""
    spd_spectrum(A)
    x0 = np.asarray(x0, dtype=np.float64)
    if x0.shape != (np.shape(A)[0],):
        raise ValueError(
            f"x0 must have shape ({np.shape(A)[0]},) to match A, got {x0.shape}"
        )
    if not (isinstance(step, Real) and step > 0 and math.isfinite(step)):
        raise ValueError(f"step must be a positive finite number, got {step!r}")
    check_count(steps, "steps", least=0)
    return x0


def check_momentum(momentum: float) -> None:
    """Momentum lies in $[0, 1)$: at 1 the velocity never forgets or settles."""
    if not (isinstance(momentum, Real) and 0 <= momentum < 1):
        raise ValueError(f"momentum must lie in [0, 1), got {momentum!r}")


# The test problems have a chosen spectrum: eigenvalues spread geometrically from
# $\mu = 1$ to $L = \kappa$, $\lambda_i = \kappa^{i/(d-1)}$ for $i = 0, \dots, d-1$,
# rotated by a random orthogonal matrix $Q$ (from the QR factorisation of a Gaussian
# matrix) so that no method can profit from the coordinate axes.
def random_spd(dim: int, kappa: float, seed: int = 0) -> np.ndarray:
    r"""A random SPD matrix $Q \Lambda Q^\top$, `[d, d]`, eigenvalues 1 to `kappa`."""
    dim = check_count(dim, "dim", least=2)
    if not (isinstance(kappa, Real) and 1 <= kappa < math.inf):
        raise ValueError(f"kappa must be a finite number >= 1, got {kappa!r}")
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.normal(size=(dim, dim)))  # [d, d], orthogonal
    eigenvalues = np.geomspace(1.0, kappa, dim)  # [d]
    A = (rotation * eigenvalues) @ rotation.T  # [d, d]
    return (A + A.T) / 2


def quadratic_values(A: np.ndarray, history: np.ndarray) -> np.ndarray:
    r"""$f(x_k) - f^\star = \tfrac12 x_k^\top A x_k$ for each row of `history`."""
    return 0.5 * np.einsum("ki,ij,kj->k", history, A, history)  # [steps + 1]


# ## Gradient descent and the $(1 - 1/\kappa)^k$ bound
#
# Gradient descent repeats $x_{k+1} = x_k - \eta \nabla f(x_k)$. There are two ways to
# see its rate.
#
# **The general argument, on $f - f^\star$.** $L$-smoothness gives the *descent lemma*
# [@nesterov2004introductory]: with $\eta = 1/L$,
#
# $$
# f(x_{k+1}) \le f(x_k) - \frac{1}{2L} \|\nabla f(x_k)\|^2 .
# $$
#
# Strong convexity gives the *Polyak–Łojasiewicz inequality* [@karimi2016linear]
# $\|\nabla f(x)\|^2 \ge 2\mu\,(f(x) - f^\star)$ (minimise the strong-convexity lower
# bound $f(y) \ge f(x) + \nabla f(x)^\top (y - x) + \tfrac\mu2\|y - x\|^2$ over $y$).
# Subtract $f^\star$ and combine:
#
# $$
# \begin{aligned}
# f(x_{k+1}) - f^\star
# &\le \left(1 - \frac{\mu}{L}\right)\big(f(x_k) - f^\star\big), \\
# f(x_k) - f^\star
# &\le \left(1 - \frac1\kappa\right)^k \big(f(x_0) - f^\star\big).
# \end{aligned}
# $$
#
# This holds for every smooth strongly convex $f$, not only quadratics.
#
# **The quadratic argument, on $\|x - x^\star\|$.** Here $x_{k+1} = (I - \eta A) x_k$,
# so each eigen-coordinate is multiplied by $1 - \eta\lambda_i$ per step. With
# $\eta = 1/L$ every factor lies in $[0, 1 - 1/\kappa]$, hence
#
# $$
# \|x_k - x^\star\| \le \left(1 - \frac1\kappa\right)^k \|x_0 - x^\star\| ,
# $$
#
# with equality approached by the eigenvector of $\mu$: the bound is tight, and the
# measured contraction should come out as $1 - 1/\kappa$ itself. (On
# $f - f^\star = \tfrac12\sum_i \lambda_i c_i^2$ the same argument gives the square,
# $(1 - 1/\kappa)^{2k}$: the general bound above is loose by a factor of two in the
# exponent on quadratics, and the figure shows it.)
#
# **The best constant step.** The worst factor $\max_{\lambda\in[\mu, L]} |1 -
# \eta\lambda|$ is smallest when the two ends balance, $1 - \eta\mu = \eta L - 1$, that
# is $\eta = 2/(\mu + L)$, which gives
#
# $$
# \|x_k - x^\star\| \le \left(\frac{\kappa - 1}{\kappa + 1}\right)^k \|x_0 - x^\star\| .
# $$
#
# Since $(\kappa-1)/(\kappa+1) \approx 1 - 2/\kappa$ this only halves the number of
# steps: it is still order $\kappa$.
def gradient_descent(
    A: np.ndarray, x0: np.ndarray, step: float, steps: int
) -> np.ndarray:
    r"""Iterate $x_{k+1} = x_k - \eta A x_k$; every iterate, `[steps + 1, d]`."""
    x0 = check_run(A, x0, step, steps)
    history = np.empty((steps + 1, x0.size))  # [steps + 1, d]
    history[0] = x = x0
    for k in range(steps):
        gradient = A @ x  # [d]
        x = x - step * gradient  # [d]
        history[k + 1] = x
    return history


# ## Heavy ball: momentum with Polyak's parameters
#
# The heavy-ball method [@polyak1964some] adds a fraction $\beta$ of the last
# displacement, starting from $x_{-1} = x_0$:
#
# $$
# x_{k+1} = x_k - \alpha \nabla f(x_k) + \beta (x_k - x_{k-1}) .
# $$
def heavy_ball(
    A: np.ndarray, x0: np.ndarray, step: float, momentum: float, steps: int
) -> np.ndarray:
    """Polyak's heavy ball from $x_{-1} = x_0$; every iterate, `[steps + 1, d]`."""
    x0 = check_run(A, x0, step, steps)
    check_momentum(momentum)
    history = np.empty((steps + 1, x0.size))  # [steps + 1, d]
    history[0] = x = previous = x0
    for k in range(steps):
        x, previous = x - step * (A @ x) + momentum * (x - previous), x  # [d], [d]
        history[k + 1] = x
    return history


# Which $\alpha$ and $\beta$? On one eigen-coordinate the iteration is the two-term
# recurrence $c_{k+1} = (1 + \beta - \alpha\lambda) c_k - \beta c_{k-1}$, whose
# characteristic roots $r_{1,2}$ satisfy $r_1 r_2 = \beta$. If the discriminant
# $(1 + \beta - \alpha\lambda)^2 - 4\beta$ is $\le 0$ for every $\lambda \in [\mu, L]$,
# both roots are complex conjugates of modulus exactly $\sqrt\beta$, whatever $\lambda$
# is. Making the discriminant vanish at both ends of the interval gives Polyak's
# parameters
#
# $$
# \begin{aligned}
# \alpha &= \frac{4}{(\sqrt L + \sqrt\mu)^2}, \qquad \beta = \rho^2, \\
# \rho &= \frac{\sqrt\kappa - 1}{\sqrt\kappa + 1}
#   = 1 - \frac{2}{\sqrt\kappa + 1} \le 1 - \frac{1}{\sqrt\kappa} .
# \end{aligned}
# $$
#
# **The bound we test.** Write $1 + \beta - \alpha\lambda = 2\rho\cos\theta$. Solving
# the recurrence with $c_{-1} = c_0$ gives
# $c_k = \rho^k c_0 \big(\cos k\theta + \tfrac{\cos\theta - \rho}{\sin\theta}\sin
# k\theta\big)$, and $|\sin k\theta / \sin\theta| \le k$, so for every coordinate and
# hence for the norm
#
# $$
# \|x_k - x^\star\| \le \big(1 + (1 + \rho)\,k\big)\,\rho^k\, \|x_0 - x^\star\| .
# $$
#
# The factor linear in $k$ is real, not slack: at $\lambda = \mu$ and $\lambda = L$ the
# two roots coincide, and a double root brings a $k\rho^k$ term. It costs a logarithm;
# the rate $\rho$ is what matters. (Heavy ball is optimal on quadratics, but on general
# strongly convex functions these parameters can fail to converge; Nesterov's method is
# the one with a general guarantee.)
def polyak_parameters(mu: float, L: float) -> tuple[float, float]:
    r"""Heavy ball's step $\alpha$ and momentum $\beta = \rho^2$ for $[\mu, L]$."""
    if not 0 < mu <= L:
        raise ValueError(f"need 0 < mu <= L, got mu={mu!r}, L={L!r}")
    root_kappa = math.sqrt(L / mu)
    rho = (root_kappa - 1) / (root_kappa + 1)
    return 4.0 / (math.sqrt(L) + math.sqrt(mu)) ** 2, rho**2


# ## Nesterov's accelerated gradient
#
# Nesterov's method [@nesterov2004introductory] takes the momentum step *first* and
# evaluates the gradient at the look-ahead point $y_k$:
#
# $$
# \begin{aligned}
# y_k &= x_k + \beta (x_k - x_{k-1}), \\
# x_{k+1} &= y_k - \frac1L \nabla f(y_k).
# \end{aligned}
# $$
def nesterov(
    A: np.ndarray, x0: np.ndarray, step: float, momentum: float, steps: int
) -> np.ndarray:
    """Nesterov's method from $x_{-1} = x_0$; every iterate, `[steps + 1, d]`."""
    x0 = check_run(A, x0, step, steps)
    check_momentum(momentum)
    history = np.empty((steps + 1, x0.size))  # [steps + 1, d]
    history[0] = x = previous = x0
    for k in range(steps):
        lookahead = x + momentum * (x - previous)  # [d]
        previous = x
        x = lookahead - step * (A @ lookahead)  # [d]
        history[k + 1] = x
    return history


# With the constant momentum $\beta = (\sqrt\kappa - 1)/(\sqrt\kappa + 1)$, **the bound
# we test** holds for every $L$-smooth, $\mu$-strongly convex $f$:
#
# $$
# \begin{aligned}
# f(x_k) - f^\star \le{} & \left(1 - \frac{1}{\sqrt\kappa}\right)^k \\
# & \times \Big(f(x_0) - f^\star + \frac\mu2 \|x_0 - x^\star\|^2\Big).
# \end{aligned}
# $$
#
# *Sketch.* With $\tau = 1/\sqrt\kappa$ the method can be rewritten with a third
# sequence $z_k$ (an "estimate" of $x^\star$, $z_0 = x_0$) such that $y_k$ is the convex
# combination $(x_k + \tau z_k)/(1 + \tau)$ and
# $z_{k+1} = (1 - \tau) z_k + \tau y_k - \tfrac{\tau}{\mu}\nabla f(y_k)$; eliminating
# $z_k$ gives back the momentum $\beta = (1 - \tau)/(1 + \tau)$. The potential
# $\Phi_k = f(x_k) - f^\star + \tfrac\mu2\|z_k - x^\star\|^2$ then shrinks by $1 - \tau$
# per step: expand $\|z_{k+1} - x^\star\|^2$, bound $f(x_{k+1})$ by the descent lemma at
# $y_k$, and use strong convexity between $y_k$ and $x^\star$ (weight $\tau$) and
# convexity between $y_k$ and $x_k$ (weight $1 - \tau$); the choice of $\tau$ is exactly
# the one that makes the leftover $\|\nabla f(y_k)\|^2$ terms cancel. Since
# $\Phi_k \ge f(x_k) - f^\star$ and $\Phi_0$ is the bracket above, the bound follows.
#
# On a quadratic the look-ahead recurrence for $\lambda = \mu$ has the double root
# $1 - 1/\sqrt\kappa$ exactly, so that is also the measured contraction.
def nesterov_parameters(mu: float, L: float) -> tuple[float, float]:
    r"""Nesterov's step $1/L$ and momentum $(\sqrt\kappa - 1)/(\sqrt\kappa + 1)$."""
    if not 0 < mu <= L:
        raise ValueError(f"need 0 < mu <= L, got mu={mu!r}, L={L!r}")
    root_kappa = math.sqrt(L / mu)
    return 1.0 / L, (root_kappa - 1) / (root_kappa + 1)


# ## Reading a rate off a run
#
# Two numbers summarise a run. The **iterations to tolerance** is the first $k$ with
# $\|x_k - x^\star\| \le \varepsilon \|x_0 - x^\star\|$. The **measured contraction** is
# the geometric mean of the per-step ratio over the second half of those iterations,
# $(\|x_m\| / \|x_{m/2}\|)^{1/(m - m/2)}$: by then the fast eigen-coordinates have died
# out and the slowest one, the one the theory is about, dominates.
def iterations_to(distances: np.ndarray, tol: float) -> int:
    """First $k$ with `distances[k] <= tol * distances[0]`; raises if there is none."""
    reached = np.flatnonzero(distances <= tol * distances[0])
    if reached.size == 0:
        raise ValueError(f"the run never reached tol={tol:g}; give it more steps")
    return int(reached[0])


def measured_contraction(distances: np.ndarray, tol: float) -> float:
    """Geometric-mean ratio per step over the second half of the run to `tol`."""
    end = iterations_to(distances, tol)
    if end < 2:
        raise ValueError(
            f"the run reached tol={tol:g} in {end} steps; a rate needs at least 2"
        )
    start = end // 2
    return float((distances[end] / distances[start]) ** (1.0 / (end - start)))


# ## Stochastic gradients: $\ell_2$-regularised logistic regression
#
# Now the gradient is noisy. With data $(a_i, y_i)$, labels $y_i \in \{-1, +1\}$, the
# objective is
#
# $$
# F(w) = \frac1n \sum_{i=1}^n \log\!\big(1 + e^{-y_i a_i^\top w}\big)
#   + \frac\lambda2 \|w\|^2 ,
# $$
#
# strongly convex with $\mu \ge \lambda$. With $\sigma(t) = 1/(1 + e^{-t})$ and margins
# $m_i = y_i a_i^\top w$,
#
# $$
# \begin{aligned}
# \nabla F(w) &= -\frac1n \sum_i \sigma(-m_i)\, y_i a_i + \lambda w, \\
# \nabla^2 F(w) &= \frac1n \sum_i \sigma(m_i)\sigma(-m_i)\, a_i a_i^\top + \lambda I .
# \end{aligned}
# $$
#
# `np.logaddexp(0, -m)` computes $\log(1 + e^{-m})$ without overflow for large $|m|$.
def check_logistic(features: np.ndarray, labels: np.ndarray, lam: float) -> None:
    """Finite features `[n, d]`, labels `[n]` in {-1, +1}, and a regulariser > 0."""
    if not isinstance(features, np.ndarray) or features.ndim != 2:
        raise ValueError(
            f"features must be a 2-D numpy array [n, d], got shape {np.shape(features)}"
        )
    if not np.all(np.isfinite(features)):
        raise ValueError("features must be finite")
    if np.shape(labels) != (features.shape[0],):
        raise ValueError(
            f"labels must have shape ({features.shape[0]},) to match features, "
            f"got {np.shape(labels)}"
        )
    if not np.all(np.isin(labels, (-1, 1))):
        raise ValueError("labels must be -1 or +1")
    if not (isinstance(lam, Real) and 0 < lam < math.inf):
        raise ValueError(
            f"lam must be a finite number > 0 (it makes the problem strongly convex), "
            f"got {lam!r}"
        )


def logistic_loss(
    w: np.ndarray, features: np.ndarray, labels: np.ndarray, lam: float
) -> float:
    """The regularised objective $F(w)$."""
    margins = labels * (features @ w)  # [n]
    return float(np.mean(np.logaddexp(0.0, -margins)) + 0.5 * lam * w @ w)


def logistic_gradient(
    w: np.ndarray, features: np.ndarray, labels: np.ndarray, lam: float
) -> np.ndarray:
    r"""$\nabla F(w)$, `[d]`."""
    margins = labels * (features @ w)  # [n]
    return -features.T @ (labels * expit(-margins)) / len(labels) + lam * w  # [d]


def logistic_hessian(
    w: np.ndarray, features: np.ndarray, labels: np.ndarray, lam: float
) -> np.ndarray:
    r"""$\nabla^2 F(w)$, `[d, d]`."""
    margins = labels * (features @ w)  # [n]
    curvature = expit(margins) * expit(-margins)  # [n], sigma'(m) in (0, 1/4]
    weighted = features * curvature[:, None]  # [n, d]
    return features.T @ weighted / len(labels) + lam * np.eye(w.size)  # [d, d]


# **The exact optimum by Newton's method.** To measure $\|w_k - w^\star\|$ we need
# $w^\star$ to full precision. Newton's step $w \leftarrow w - t\,d$ with the direction
# $d = (\nabla^2 F)^{-1} \nabla F$ converges quadratically near $w^\star$: the number
# of correct digits doubles per step, and the demo prints the gradient norm after each
# step to show it. Far from $w^\star$ the full step $t = 1$ can overshoot, so a
# backtracking line search halves $t$ until $F$ falls by at least a quarter of the
# first-order prediction, $F(w - t d) \le F(w) - \tfrac14\, t \Delta$, where
# $\Delta = \nabla F^\top d$ is the squared *Newton decrement* [@boyd2004convex].
#
# Near $w^\star$ that test breaks down. A full step lowers $F$ by about $\Delta/2$, and
# once that is below the rounding error of $F$ itself (a mean of $n$ rounded terms; we
# allow $64\,\varepsilon |F|$), the computed $F(w - d)$ can come out a unit in the last
# place *above* $F(w)$. A strict test then rejects every step, halves $t$ some thirty
# times, and the gradient stalls near $10^{-10}$ instead of reaching $10^{-12}$
# (logistic data with features of size 10 do this). So when the promised decrease is
# below $F$'s rounding, we take the full step: we are deep inside the region where
# Newton converges quadratically, and there the gradient, not $F$, is the measure that
# still resolves progress.
def newton_logistic(
    features: np.ndarray,
    labels: np.ndarray,
    lam: float,
    tol: float = 1e-12,
    max_steps: int = 50,
    start: np.ndarray | None = None,
) -> np.ndarray:
    r"""Damped Newton from `start` ($w = 0$ if not given) until
    $\|\nabla F\| \le$ `tol`.

    Returns every iterate, `[steps + 1, d]`; the last row is $w^\star$.
    """
    check_logistic(features, labels, lam)
    dim = features.shape[1]
    if start is not None and not (
        isinstance(start, np.ndarray)
        and start.shape == (dim,)
        and np.issubdtype(start.dtype, np.number)
        and np.isfinite(start).all()
    ):
        raise ValueError(
            f"start must be a finite numpy array of shape ({dim},), got {start!r}"
        )
    if not (isinstance(tol, Real) and tol > 0):
        raise ValueError(f"tol must be a number > 0, got {tol!r}")
    max_steps = check_count(max_steps, "max_steps", least=1)
    rounding = 64 * np.finfo(np.float64).eps  # relative error a computed F may carry
    w = np.zeros(dim) if start is None else start.astype(np.float64)  # [d]
    history = [w]
    for _ in range(max_steps):
        gradient = logistic_gradient(w, features, labels, lam)  # [d]
        if np.linalg.norm(gradient) <= tol:
            return np.array(history)  # [steps + 1, d]
        hessian = logistic_hessian(w, features, labels, lam)  # [d, d]
        direction = np.linalg.solve(hessian, gradient)  # [d]
        decrement = gradient @ direction  # Delta > 0: the Hessian is positive definite
        loss, fraction = logistic_loss(w, features, labels, lam), 1.0
        if decrement / 2 > rounding * abs(loss):  # else F cannot see the decrease
            while (
                logistic_loss(w - fraction * direction, features, labels, lam)
                > loss - 0.25 * fraction * decrement
            ):
                fraction /= 2
                if fraction < 1e-10:
                    raise RuntimeError("Newton's line search found no decrease")
        w = w - fraction * direction
        history.append(w)
    raise RuntimeError(
        f"Newton did not reach |grad| <= {tol:g} in {max_steps} steps: "
        "the gradient's own rounding may be above tol"
    )


# The data are made in code: Gaussian features and labels drawn from a logistic model
# with a known weight vector, so the classes overlap and no $w$ separates them (which
# keeps $w^\star$ finite even without the regulariser, and the per-example gradients at
# $w^\star$ non-zero).
def logistic_data(
    samples: int, dim: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    r"""Features `[samples, dim]` from $N(0, I)$, labels $\pm 1$ from a logistic model.

    The labels follow $P(y = 1 \mid a) = \sigma(a^\top w_{\text{true}})$ with
    $w_{\text{true}} \sim N(0, I)$ drawn from the same seed.
    """
    samples = check_count(samples, "samples", least=2)
    dim = check_count(dim, "dim", least=1)
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(samples, dim))  # [n, d]
    true_weights = rng.normal(size=dim)  # [d]
    labels = np.where(
        rng.random(samples) < expit(features @ true_weights), 1.0, -1.0
    )  # [n]
    return features, labels


# ## SGD: a noise ball, and how a decaying step escapes it
#
# SGD picks one example $i_k$ uniformly at random and steps along its gradient
# $g_k = \nabla f_{i_k}(w_k)$, where
# $f_i(w) = \log(1 + e^{-y_i a_i^\top w}) + \tfrac\lambda2\|w\|^2$, so that
# $\mathbb E[g_k \mid w_k] = \nabla F(w_k)$ [@bottou2018optimization]. Let
# $e_k = \mathbb E\|w_k - w^\star\|^2$. Expanding the square,
#
# $$
# \begin{aligned}
# e_{k+1} = e_k &- 2\eta_k\, \mathbb E\big[\nabla F(w_k)^\top (w_k - w^\star)\big] \\
# &+ \eta_k^2\, \mathbb E\|g_k\|^2 .
# \end{aligned}
# $$
#
# Strong convexity gives $\nabla F(w)^\top (w - w^\star) \ge \mu \|w - w^\star\|^2$;
# assume $\mathbb E\|g_k\|^2 \le G^2$ (true on the bounded region the iterates stay in).
# Then
#
# $$
# e_{k+1} \le (1 - 2\mu\eta_k)\, e_k + \eta_k^2 G^2 .
# $$
#
# **Constant step $\eta$.** The recursion converges linearly, at rate $1 - 2\mu\eta$, to
# its fixed point
#
# $$
# e_\infty \le \frac{\eta\, G^2}{2\mu} ,
# $$
#
# and no further. The floor is real, not an artefact of the analysis: at $w^\star$ the
# *average* gradient is zero but the individual $\nabla f_i(w^\star)$ are not, so every
# step kicks the iterate by about $\eta\,\|\nabla f_i(w^\star)\|$. Halving $\eta$ halves
# the floor on the squared distance (and divides the distance by $\sqrt 2$), at the
# price of approaching it twice as slowly.
#
# **Decaying step $\eta_k = a/(b + k)$ with $2\mu a > 1$.** Then $e_k \le \nu/(b + k)$
# for $\nu = \max\big(a^2 G^2/(2\mu a - 1),\, b\, e_0\big)$, provided $b \ge 2\mu a$ (so
# that $1 - 2\mu\eta_k \ge 0$). By induction: if $e_k \le \nu/(b+k)$, then
#
# $$
# \begin{aligned}
# e_{k+1} &\le \frac{(b + k - 2\mu a)\nu + a^2 G^2}{(b+k)^2} \\
# &\le \frac{(b + k - 1)\nu}{(b + k)^2} \le \frac{\nu}{b + k + 1},
# \end{aligned}
# $$
#
# using $a^2G^2 \le (2\mu a - 1)\nu$ and $(b+k-1)(b+k+1) \le (b+k)^2$. So the error
# keeps falling, like $1/k$.
#
# `sgd_logistic` takes the whole step-size schedule as an array, so the constant and
# decaying runs are the same code with different inputs.
def sgd_logistic(
    features: np.ndarray,
    labels: np.ndarray,
    lam: float,
    step_sizes: np.ndarray,
    seed: int = 0,
) -> np.ndarray:
    """Single-example SGD from $w = 0$, step `step_sizes[k]` at step $k$.

    Returns every iterate, `[steps + 1, d]`.
    """
    check_logistic(features, labels, lam)
    step_sizes = np.asarray(step_sizes, dtype=np.float64)
    if (
        step_sizes.ndim != 1
        or not np.all(step_sizes > 0)
        or not np.all(np.isfinite(step_sizes))
    ):
        raise ValueError(
            "step_sizes must be a 1-D array [steps] of positive finite numbers"
        )
    rng = np.random.default_rng(seed)
    picks = rng.integers(
        len(labels), size=step_sizes.size
    )  # [steps], example index per step
    history = np.empty((step_sizes.size + 1, features.shape[1]))  # [steps + 1, d]
    history[0] = w = np.zeros(features.shape[1])
    for k, (i, step) in enumerate(zip(picks, step_sizes)):
        margin = labels[i] * (features[i] @ w)
        # sigma(-m) = (1 - tanh(m / 2)) / 2, written this way so a large |m| cannot
        # overflow exp.
        gradient = (
            -0.5 * (1.0 - math.tanh(0.5 * margin)) * labels[i] * features[i] + lam * w
        )  # [d]
        w = w - step * gradient
        history[k + 1] = w
    return history


# ## The example
#
# The smallest run that shows the idea: gradient descent with step $1/L$ on a 2-D
# quadratic with $\kappa = 10$. Its dataflow diagram is declared by `dataflow`, not
# traced: it draws the loop itself.
def example():
    """Twenty steps of gradient descent on a 2-D quadratic with condition number 10."""
    A = random_spd(2, 10.0, seed=0)
    _, L = spd_spectrum(A)
    return gradient_descent, (A, np.array([1.0, 1.0]), 1.0 / L, 20)


def dataflow(output: np.ndarray):
    """The gradient-descent loop: a gradient and an update per step, iterates kept."""
    if np.ndim(output) != 2:
        raise ValueError(
            "dataflow: output must be the history [steps + 1, d], "
            f"got {np.shape(output)}"
        )
    rows, dim = output.shape
    nodes = [
        ("A", f"A [{dim}×{dim}], SPD"),
        ("x0", f"x_0 [{dim}]"),
        ("x", f"x_k [{dim}]"),
        ("gradient", f"∇f(x_k) = A x_k [{dim}]"),
        ("update", f"x_k+1 = x_k − η ∇f [{dim}]"),
        ("history", f"history [{rows}×{dim}]"),
    ]
    edges = [
        ("x0", "x", "k = 0"),
        ("A", "gradient", f"[{dim}×{dim}]"),
        ("x", "gradient", f"[{dim}]"),
        ("x", "update", f"[{dim}]"),
        ("gradient", "update", f"[{dim}]"),
        ("update", "x", f"k ← k+1 ({rows - 1} times)"),
        ("update", "history", f"row k+1 [{dim}]"),
    ]
    return nodes, edges


# ## The demo
#
# For each $\kappa$ the demo runs the four deterministic methods from the same random
# $x_0$ for as many steps as the gradient-descent bound needs to reach the tolerance,
# prints each measured contraction beside the rate the theory predicts, and draws the
# runs under their bounds. Plotted against $k/\kappa$, the gradient-descent curves for
# every $\kappa$ fall onto one line, because $(1 - 1/\kappa)^k \approx e^{-k/\kappa}$.
#
# `METHODS` holds each method's display name, its metric key, and the contraction its
# analysis predicts as a function of $\kappa$.
METHODS = {
    "GD, step 1/L": ("gd", lambda kappa: 1 - 1 / kappa),
    "GD, step 2/(μ+L)": ("gd_best_step", lambda kappa: (kappa - 1) / (kappa + 1)),
    "heavy ball": (
        "heavy_ball",
        lambda kappa: (math.sqrt(kappa) - 1) / (math.sqrt(kappa) + 1),
    ),
    "Nesterov": ("nesterov", lambda kappa: 1 - 1 / math.sqrt(kappa)),
}


def quadratic_runs(
    kappa: float, dim: int, tol: float, seed: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    r"""Each method's $\|x_k - x^\star\|$ and $f(x_k) - f^\star$, each `[steps + 1]`."""
    A = random_spd(dim, kappa, seed)
    mu, L = spd_spectrum(A)
    x0 = np.random.default_rng(seed + 1).normal(size=dim)  # [d]
    steps = math.ceil(math.log(tol) / math.log(1 - mu / L))  # GD's bound reaches tol
    histories = {
        "GD, step 1/L": gradient_descent(A, x0, 1 / L, steps),
        "GD, step 2/(μ+L)": gradient_descent(A, x0, 2 / (mu + L), steps),
        "heavy ball": heavy_ball(A, x0, *polyak_parameters(mu, L), steps),
        "Nesterov": nesterov(A, x0, *nesterov_parameters(mu, L), steps),
    }
    # Each run is cut where it first reaches tol, before the fast methods underflow to
    # zero.
    runs = {}
    for name, history in histories.items():
        distances = np.linalg.norm(history, axis=1)  # [steps + 1]
        end = iterations_to(distances, tol) + 1
        runs[name] = distances[:end], quadratic_values(A, history[:end])
    return runs


def plot_gd_rates(all_runs: dict, path: Path) -> None:
    r"""Gradient descent with step $1/L$ under $(1 - 1/\kappa)^k$, two measures."""
    fig, (left, right) = figure(panels=2, sharex=True)
    colours = matplotlib.colormaps["viridis"](np.linspace(0, 0.85, len(all_runs)))
    for (kappa, runs), colour in zip(all_runs.items(), colours):
        distances, suboptimality = runs["GD, step 1/L"]
        k = np.arange(distances.size)
        bound = (1 - 1 / kappa) ** k
        for axis, measured in [(left, distances), (right, suboptimality)]:
            axis.semilogy(
                k / kappa,
                measured / measured[0],
                color=colour,
                label=rf"measured, $\kappa = {kappa:g}$",
            )
            axis.semilogy(k / kappa, bound, "--", color=colour)
    for axis in (left, right):
        axis.plot([], [], "k--", label=r"bound $(1 - 1/\kappa)^k$")
        axis.set_xlabel(r"iterations $k\,/\,\kappa$")
        axis.legend()
    left.set_ylabel(r"$\|x_k - x^\star\| \,/\, \|x_0 - x^\star\|$")
    left.set_title("distance: the bound is tight")
    right.set_ylabel(r"$(f(x_k) - f^\star) \,/\, (f(x_0) - f^\star)$")
    right.set_title(
        r"$f - f^\star$: the general bound, loose $\times 2$ in the exponent"
    )
    values = [f"{kappa:g}" for kappa in all_runs]  # "10, 100 and 1000"
    listed = ", ".join(values[:-1]) + " and " + values[-1] if values[1:] else values[0]
    save(
        fig,
        path,
        caption=f"Gradient descent with step 1/L on quadratics with κ = {listed}, "
        "plotted against k/κ so that the runs line up. Left: the distance to "
        "the minimiser follows its bound (1 − 1/κ)^k closely. Right: f − f* falls "
        "twice as fast in the exponent as the general bound says.",
    )


def plot_acceleration(kappa: float, runs: dict, mu: float, path: Path) -> None:
    r"""All four methods at one $\kappa$, under the heavy-ball and Nesterov bounds."""
    fig, (left, right) = figure(panels=2)
    for name, (distances, suboptimality) in runs.items():
        left.loglog(distances / distances[0], label=name)
        start = suboptimality[0] + 0.5 * mu * distances[0] ** 2
        right.loglog(suboptimality / start, label=name)
    rho = METHODS["heavy ball"][1](kappa)
    k = np.arange(runs["heavy ball"][0].size)
    left.loglog(
        k, (1 + (1 + rho) * k) * rho**k, "k--", label=r"bound $(1 + (1+\rho)k)\rho^k$"
    )
    k = np.arange(runs["Nesterov"][0].size)
    right.loglog(
        k,
        (1 - 1 / math.sqrt(kappa)) ** k,
        "k--",
        label=r"bound $(1 - 1/\sqrt{\kappa})^k$",
    )
    left.set_xlabel("iteration $k$")
    left.set_ylabel(r"$\|x_k - x^\star\| \,/\, \|x_0 - x^\star\|$")
    left.set_title("heavy ball's distance bound")
    right.set_xlabel("iteration $k$")
    right.set_ylabel(r"$(f(x_k) - f^\star) \,/\, \Phi_0$")
    right.set_title(
        r"Nesterov's bound, $\Phi_0 = f_0 - f^\star + \frac{\mu}{2}\|x_0 - x^\star\|^2$"
    )
    left.legend()
    right.legend()
    save(
        fig,
        path,
        caption=f"All four methods on one quadratic with κ = {kappa:g}, on log-log "
        "axes. The accelerated methods reach the tolerance in order √κ iterations, "
        "gradient descent in order κ. The dashed lines are the bounds proved for heavy "
        "ball (left) and for Nesterov (right); each method stays under its own bound.",
    )


def plot_noise_ball(
    mean_squared: dict[str, np.ndarray],
    floors: dict[str, float],
    seeds: int,
    path: Path,
) -> None:
    r"""RMS distance to $w^\star$ per SGD schedule, with the constant-step floors."""
    fig, axis = figure()
    for name, values in mean_squared.items():
        axis.loglog(np.arange(1, values.size), np.sqrt(values[1:]), label=name)
    for floor in floors.values():
        axis.axhline(math.sqrt(floor), color="grey", lw=0.8, ls=":")
    axis.set_xlabel("step $k$")
    axis.set_ylabel(r"RMS $\|w_k - w^\star\|$ over seeds")
    axis.set_title(rf"SGD on $\ell_2$-regularised logistic regression ({seeds} seeds)")
    axis.legend()
    save(
        fig,
        path,
        caption="Root-mean-square distance of single-example SGD to the exact optimum, "
        f"averaged over {seeds} seeds. With a constant step the distance stalls at a "
        "floor (dotted) that halving the step lowers by √2; the step a/(b + k) keeps "
        "falling like 1/√k.",
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    """The quadratic methods against their rates, then SGD against Newton's optimum."""
    parser = argparse.ArgumentParser(
        description="Convergence rates measured against their bounds.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--kappas",
        type=numbers(above=1),
        default="10,100,1000",
        help="comma-separated condition numbers > 1",
    )
    parser.add_argument(
        "--dim", type=integer(at_least=2), default=50, help="dimension of the quadratic"
    )
    parser.add_argument(
        "--tol",
        type=number(above=0, below=1),
        default=1e-8,
        help="relative distance each run must reach",
    )
    parser.add_argument(
        "--samples",
        type=integer(at_least=2),
        default=1000,
        help="logistic-regression examples",
    )
    parser.add_argument(
        "--features",
        type=integer(at_least=1),
        default=5,
        help="logistic-regression features",
    )
    parser.add_argument(
        "--lam",
        type=number(above=0),
        default=0.1,
        help="l2 regulariser (a lower bound on mu)",
    )
    parser.add_argument(
        "--sgd-steps", type=integer(at_least=1), default=20000, help="SGD steps per run"
    )
    parser.add_argument(
        "--step",
        type=number(above=0),
        default=0.2,
        help="constant SGD step (also run at half of it)",
    )
    parser.add_argument(
        "--sgd-seeds",
        type=integer(at_least=1),
        default=8,
        help="SGD runs averaged per schedule",
    )
    parser.add_argument(
        "--seed", type=integer(at_least=0), default=0, help="random seed"
    )
    parser.add_argument("--out", default="out/convex", help="folder for the figures")
    args = parser.parse_args(argv)
    kappas = args.kappas
    out = Path(args.out)
    metrics: dict[str, float] = {}

    # Part 1: the deterministic methods against their rates.
    all_runs = {}
    for kappa in tqdm(kappas, desc="quadratics"):
        all_runs[kappa] = quadratic_runs(kappa, args.dim, args.tol, args.seed)
    for kappa, runs in all_runs.items():
        print(f"kappa {kappa:g}:")
        for name, (key, rate) in METHODS.items():
            distances = runs[name][0]
            contraction = measured_contraction(distances, args.tol)
            print(
                f"  {name:18s} contraction {contraction:.5f} "
                f"(theory {rate(kappa):.5f}), "
                f"{distances.size - 1} iterations to {args.tol:g}"
            )
            metrics[f"{key}_contraction_kappa{kappa:g}"] = contraction
            metrics[f"{key}_iterations_kappa{kappa:g}"] = float(distances.size - 1)
    plot_gd_rates(all_runs, out / "gd_rates.png")
    hardest = max(kappas)
    mu = 1.0  # random_spd puts the smallest eigenvalue at 1
    plot_acceleration(hardest, all_runs[hardest], mu, out / "acceleration.png")

    # Part 2: SGD on logistic regression, three schedules, several seeds each. The noise
    # floor of a run is the mean of $\|w_k - w^\star\|^2$ over its second half,
    # averaged over seeds. For the decaying step $a/(b + k)$ the demo takes
    # $a = 1/\lambda$, which makes $2\mu a \ge 2 > 1$ since $\mu \ge \lambda$, and
    # $b = a/\eta$, so that the schedule starts at the constant step $\eta$.
    features, labels = logistic_data(args.samples, args.features, args.seed)
    newton = newton_logistic(features, labels, args.lam)  # [steps + 1, d]
    gradient_norms = [
        np.linalg.norm(logistic_gradient(w, features, labels, args.lam)) for w in newton
    ]
    print("Newton: |grad F| per step " + ", ".join(f"{g:.1e}" for g in gradient_norms))
    optimum = newton[-1]  # [d]
    a = 1 / args.lam
    schedules = {  # legend label: step size at each step
        rf"constant $\eta = {args.step:g}$": np.full(args.sgd_steps, args.step),
        rf"constant $\eta = {args.step / 2:g}$": np.full(args.sgd_steps, args.step / 2),
        rf"$\eta_k = a/(b + k)$, $a = {a:g}$": a
        / (a / args.step + np.arange(args.sgd_steps)),
    }
    mean_squared = {}
    with tqdm(total=len(schedules) * args.sgd_seeds, desc="SGD runs") as progress:
        for name, step_sizes in schedules.items():
            squared = np.zeros(args.sgd_steps + 1)  # [steps + 1], summed over seeds
            for run in range(args.sgd_seeds):
                history = sgd_logistic(
                    features, labels, args.lam, step_sizes, seed=1000 * args.seed + run
                )  # [steps + 1, d]
                squared += np.sum((history - optimum) ** 2, axis=1)
                progress.update()
            mean_squared[name] = squared / args.sgd_seeds
    constant, halved, decaying = schedules
    half = args.sgd_steps // 2
    floors = {
        name: float(np.mean(mean_squared[name][half:])) for name in (constant, halved)
    }
    last = max(1, args.sgd_steps // 20)
    decaying_final = float(np.mean(mean_squared[decaying][-last:]))
    ratio = floors[halved] / floors[constant]
    print(
        f"SGD noise floor E|w - w*|^2: step {args.step:g} {floors[constant]:.3e}, "
        f"step {args.step / 2:g} {floors[halved]:.3e} (ratio {ratio:.2f}, theory 0.5); "
        f"decaying step over the last 5%: {decaying_final:.3e}"
    )
    metrics.update(
        newton_steps=float(len(newton) - 1),
        sgd_floor_step=floors[constant],
        sgd_floor_half_step=floors[halved],
        sgd_floor_ratio=ratio,
        sgd_decaying_final=decaying_final,
    )
    plot_noise_ball(mean_squared, floors, args.sgd_seeds, out / "sgd_noise_ball.png")
    return metrics


if __name__ == "__main__":
    main()

# ## Exercises
#
# 1. Give gradient descent the step $2/L$ and then $2.1/L$. Which eigen-coordinate stops
#    converging first, and what does the contraction $\max_\lambda |1 - \eta\lambda|$
#    predict for each?
# 2. Run heavy ball with Polyak's parameters on the non-quadratic but strongly convex
#    logistic objective (estimate $\mu$ and $L$ from the Hessian at $w^\star$). Does it
#    still beat gradient descent? Start far from $w^\star$ and try again.
# 3. Replace the single-example gradient in `sgd_logistic` by the mean over a minibatch
#    of $B$ examples. How should the noise floor scale with $B$ at a fixed step? Check
#    it with the demo's floor measurement.
# 4. Average the SGD iterates of the second half of a constant-step run (Polyak–Ruppert
#    averaging). How far is the average from $w^\star$ compared with the floor of the
#    last iterate?
