r"""
---
title: A matrix library in pure Python
summary: >-
  Matrices as lists of lists, with two loop orders for the product and an LU solver
  whose error is measured against the condition number.
time: 2 s
references:
  - key: golub2013matrix
    authors: [Gene H. Golub, Charles F. Van Loan]
    title: Matrix Computations (4th edition)
    year: 2013
    venue: Johns Hopkins University Press
    url: https://www.press.jhu.edu/books/title/10678/matrix-computations
  - key: trefethen1997numerical
    authors: [Lloyd N. Trefethen, David Bau III]
    title: Numerical Linear Algebra
    year: 1997
    venue: SIAM
    url: https://doi.org/10.1137/1.9780898719574
  - key: higham2002accuracy
    authors: [Nicholas J. Higham]
    title: Accuracy and Stability of Numerical Algorithms (2nd edition)
    year: 2002
    venue: SIAM
    url: https://doi.org/10.1137/1.9780898718027
worksheet:
  - region: matmul_ijk
    hint: >-
      Build the result row by row; each entry is the sum over k of left[i, k] *
      right[k, j], accumulated in a plain float.
    tests: [test_matmul_both_orders_match_numpy, test_loop_orders_are_bitwise_identical]
  - region: lu
    hint: >-
      For each column pick the row with the largest absolute entry at or below the
      diagonal, swap it up, record the swap in the permutation, and eliminate below
      it, storing each multiplier in L.
    tests: [test_lu_reconstructs_pa_with_bounded_multipliers, test_lu_matches_scipy]
---

Every layer of a neural network is a matrix product, and much of numerical analysis is
the solution of $Ax = b$. Libraries do both in a few microseconds, in hand-tuned C and
assembly, which hides two facts worth seeing once with our own eyes:

- **The order of the loops matters.** $C_{ij} = \sum_k A_{ik} B_{kj}$ fixes what is
  computed, not the order in which the three loops over $i$, $j$ and $k$ run. Two orders
  give bitwise-identical results and differ in speed, for reasons that differ between
  CPython and C.
- **A correct solver still makes errors.** Gaussian elimination with partial pivoting is
  *backward stable* [@higham2002accuracy]: it solves a system within rounding of the one
  we asked about. How
  far that answer lies from the true one is set by the problem, through the condition
  number $\kappa(A)$: expect a relative error near $\kappa(A)\,\varepsilon$, with
  $\varepsilon \approx 2.2 \times 10^{-16}$ in float64.

We build a `Matrix` type over plain lists of floats (no NumPy anywhere in this file),
the elementwise operations, the product in two loop orders, the transpose, an LU
factorisation with partial pivoting, and on top of it `solve`, `inverse` and `det`. The
demo times the two products and then solves systems with Hilbert matrices, whose
condition numbers grow so fast that by $n = 12$ the answer is wrong in its first digit.
The tests check everything against `numpy.linalg`. The algorithms are the textbook
ones [@golub2013matrix; @trefethen1997numerical].
"""

import argparse
import math
import numbers
import random
import sys
import time
from pathlib import Path

from tqdm import tqdm

from annotated.data import integer
from annotated.figures import figure, save

# Machine epsilon for float64: the gap between 1.0 and the next float,
# $2^{-52} \approx 2.2 \times 10^{-16}$. Every rounding error below is measured in units
# of it.
EPS = sys.float_info.epsilon


def _shape_text(shape: tuple[int, int]) -> str:
    """A shape as the messages and diagrams print it: `(2, 3)` becomes `2×3`."""
    return f"{shape[0]}×{shape[1]}"


def _is_number(value) -> bool:
    """A real number that is not a bool (`True + True == 2` is a trap, not sums)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_index(value) -> bool:
    """An integer that is not a bool; NumPy's integers count, as `numbers.Integral`."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


# ## The container
#
# A matrix is a list of rows, each row a list of floats: the *row-major* layout that C
# and NumPy use by default. Entry $(i, j)$ is `rows[i][j]`, so walking along a row is
# walking along one Python list, while walking down a column jumps from list to list.
# That asymmetry decides the speed of the loop orders below.
#
# The constructor is the one place that checks the data. Everything later can then trust
# that `rows` is rectangular and holds floats.
class Matrix:
    """A dense matrix of floats stored as a list of equally long rows.

    `Matrix([[1, 2], [3, 4]])` copies its argument, turning every entry into a `float`.
    A 2-D NumPy array works too, through its `tolist()`. Ragged rows raise `ValueError`
    and entries that are not real numbers raise `TypeError`. The algorithms read `rows`
    directly; treat it as read-only.
    """

    def __init__(self, rows):
        if hasattr(rows, "tolist") and not isinstance(rows, (list, tuple)):
            rows = rows.tolist()  # a NumPy array: nested lists of Python floats
        if not isinstance(rows, (list, tuple)) or not all(
            isinstance(row, (list, tuple)) for row in rows
        ):
            raise TypeError(
                f"rows must be a list of lists of numbers, got {type(rows).__name__}"
            )
        if len(rows) == 0 or len(rows[0]) == 0:
            raise ValueError("rows must hold at least one row with at least one entry")
        row_lengths = [len(row) for row in rows]
        if len(set(row_lengths)) != 1:
            raise ValueError(
                f"rows must all have the same length, got row lengths {row_lengths}"
            )
        for i, row in enumerate(rows):
            for j, value in enumerate(row):
                if not _is_number(value):
                    raise TypeError(
                        f"rows[{i}][{j}] must be a real number, "
                        f"got {type(value).__name__} {value!r}"
                    )
        self.rows = [[float(value) for value in row] for row in rows]

    @property
    def shape(self) -> tuple[int, int]:
        """`(number of rows, number of columns)`."""
        return len(self.rows), len(self.rows[0])

    def __getitem__(self, index: tuple[int, int]) -> float:
        """`m[i, j]` is the entry in row `i`, column `j`, both counted from 0."""
        if not (
            isinstance(index, tuple)
            and len(index) == 2
            and all(_is_index(k) for k in index)
        ):
            raise TypeError(
                f"a Matrix is indexed by a pair of ints m[row, col], got {index!r}"
            )
        row, col = index
        n_rows, n_cols = self.shape
        if not (0 <= row < n_rows and 0 <= col < n_cols):
            raise IndexError(
                f"index ({row}, {col}) is outside a {_shape_text(self.shape)} matrix"
            )
        return self.rows[int(row)][int(col)]

    def tolist(self) -> list[list[float]]:
        """A copy of the entries as a list of row lists, e.g. to hand to NumPy."""
        return [row[:] for row in self.rows]

    # Equality is exact, entry by entry, as for lists. Floating-point results that went
    # through different roundings need the tolerant comparison instead:
    #
    # $$
    # |a_{ij} - b_{ij}| \le \text{atol} + \text{rtol}\,|b_{ij}|
    # \quad \text{for all } i, j,
    # $$
    #
    # the same rule as `numpy.allclose`.
    def __eq__(self, other) -> bool:
        if not isinstance(other, Matrix):
            return NotImplemented
        return self.rows == other.rows

    def allclose(self, other: "Matrix", rtol: float = 1e-9, atol: float = 0.0) -> bool:
        """True when the shapes match and every entry is within the rule's distance."""
        if not isinstance(other, Matrix):
            raise TypeError(
                f"allclose: other must be a Matrix, got {type(other).__name__}"
            )
        if not (_is_number(rtol) and _is_number(atol) and rtol >= 0 and atol >= 0):
            raise ValueError(
                f"allclose: rtol and atol must be numbers >= 0, got {rtol!r}, {atol!r}"
            )
        if self.shape != other.shape:
            return False
        return all(
            abs(mine - theirs) <= atol + rtol * abs(theirs)
            for my_row, their_row in zip(self.rows, other.rows)
            for mine, theirs in zip(my_row, their_row)
        )

    def __repr__(self) -> str:
        """One row per line, in a form that `eval` turns back into an equal matrix."""
        lines = ",\n        ".join(repr(row) for row in self.rows)
        return f"Matrix([{lines}])"

    # ### Elementwise arithmetic and broadcasting
    #
    # `a + b`, `a - b`, `a * b` and `a / b` act entry by entry and need equal shapes. A
    # plain number on either side is *broadcast*: it behaves like a matrix of the right
    # shape filled with that number, so `2 * a`, `a - 1` and `1 / a` all work. Python
    # tries `a.__add__(2)` first; for `2 + a` it tries `int.__add__`, which returns
    # `NotImplemented`, and then falls back to `a.__radd__(2)`. The `r` methods
    # therefore swap the operands before applying the operation, which matters for `-`
    # and `/`.
    #
    # `*` is the elementwise (Hadamard) product, $(A \odot B)_{ij} = A_{ij} B_{ij}$, as
    # in NumPy; the matrix product is `@`.
    def _elementwise(self, other, operation, name: str, swap: bool = False) -> "Matrix":
        """Apply `operation(x, y)` entry by entry; a number `other` is broadcast."""
        if _is_number(other):
            other_rows = [[float(other)] * self.shape[1] for _ in self.rows]
        elif isinstance(other, Matrix):
            if other.shape != self.shape:
                raise ValueError(
                    f"{name}: left is {_shape_text(self.shape)} "
                    f"but right is {_shape_text(other.shape)}; "
                    "elementwise operations need equal shapes"
                )
            other_rows = other.rows
        else:
            return NotImplemented
        left_rows, right_rows = (
            (other_rows, self.rows) if swap else (self.rows, other_rows)
        )
        return Matrix(
            [
                [operation(x, y) for x, y in zip(left_row, right_row)]
                for left_row, right_row in zip(left_rows, right_rows)
            ]
        )

    def __add__(self, other):
        return self._elementwise(other, lambda x, y: x + y, "add")

    def __radd__(self, other):
        return self._elementwise(other, lambda x, y: x + y, "add", swap=True)

    def __sub__(self, other):
        return self._elementwise(other, lambda x, y: x - y, "subtract")

    def __rsub__(self, other):
        return self._elementwise(other, lambda x, y: x - y, "subtract", swap=True)

    def __mul__(self, other):
        return self._elementwise(other, lambda x, y: x * y, "multiply")

    def __rmul__(self, other):
        return self._elementwise(other, lambda x, y: x * y, "multiply", swap=True)

    def __truediv__(self, other):
        return self._elementwise(other, lambda x, y: x / y, "divide")

    def __rtruediv__(self, other):
        return self._elementwise(other, lambda x, y: x / y, "divide", swap=True)

    def __neg__(self):
        return self._elementwise(-1.0, lambda x, y: x * y, "negate")

    def __matmul__(self, other):
        """`a @ b` is the matrix product in the fast i-k-j order, `matmul_ikj` below."""
        return matmul_ikj(self, other)


def zeros(n_rows: int, n_cols: int) -> Matrix:
    """The `n_rows × n_cols` matrix of zeros."""
    if not (_is_index(n_rows) and _is_index(n_cols) and n_rows >= 1 and n_cols >= 1):
        raise ValueError(
            f"zeros: n_rows and n_cols must be ints >= 1, got {n_rows!r} and {n_cols!r}"
        )
    return Matrix([[0.0] * int(n_cols) for _ in range(n_rows)])


def identity(n: int) -> Matrix:
    r"""The `n × n` identity $I$, with $I_{ij} = 1$ if $i = j$ and 0 otherwise."""
    if not (_is_index(n) and n >= 1):
        raise ValueError(f"identity: n must be an int >= 1, got {n!r}")
    return Matrix([[1.0 if i == j else 0.0 for j in range(n)] for i in range(n)])


def _require_matrix(value, name: str, function: str) -> None:
    """Raise `TypeError` unless `value` is a `Matrix`, naming `name` and `function`."""
    if not isinstance(value, Matrix):
        raise TypeError(
            f"{function}: {name} must be a Matrix, got {type(value).__name__}"
        )


def _require_square(value: Matrix, name: str, function: str) -> None:
    """Raise `ValueError` unless `value` is square."""
    if value.shape[0] != value.shape[1]:
        raise ValueError(
            f"{function}: {name} must be square, got {_shape_text(value.shape)}"
        )


def _check_matmul_shapes(left: Matrix, right: Matrix, function: str) -> None:
    """Both operands are matrices and the inner dimensions agree."""
    _require_matrix(left, "left", function)
    _require_matrix(right, "right", function)
    if left.shape[1] != right.shape[0]:
        raise ValueError(
            f"{function}: left is {_shape_text(left.shape)} "
            f"but right is {_shape_text(right.shape)}; "
            "left's columns must equal right's rows"
        )


def _check_system(
    matrix: Matrix, rhs: Matrix, names: tuple[str, str], function: str
) -> None:
    """`matrix` is square and the right-hand side `rhs` has as many rows."""
    _require_matrix(matrix, names[0], function)
    _require_matrix(rhs, names[1], function)
    _require_square(matrix, names[0], function)
    if rhs.shape[0] != matrix.shape[0]:
        raise ValueError(
            f"{function}: {names[0]} is {_shape_text(matrix.shape)} "
            f"but {names[1]} is {_shape_text(rhs.shape)}; "
            f"{names[1]} must have {matrix.shape[0]} rows"
        )


def transpose(a: Matrix) -> Matrix:
    r"""The transpose, $(A^\top)_{ij} = A_{ji}$: row $i$ of it is column $i$ of `a`.

    `zip(*rows)` walks all rows in step and yields their first entries, then their
    second entries, and so on: exactly the columns.
    """
    _require_matrix(a, "a", "transpose")
    return Matrix([list(column) for column in zip(*a.rows)])  # [n_cols, n_rows]


# ## The matrix product and its loop orders
#
# For $A$ of shape $n \times p$ and $B$ of shape $p \times m$,
#
# $$
# C_{ij} = \sum_{k=0}^{p-1} A_{ik} B_{kj}, \qquad C \in \mathbb{R}^{n \times m}.
# $$
#
# That is $n\,m\,p$ multiply-adds, and three nested loops over $i$, $j$, $k$ perform
# them. The sum fixes *what* is added, not the order of the loops: any of the $3! = 6$
# orders visits every $(i, j, k)$ once. We compare the order that transcribes the
# formula, i-j-k, with i-k-j.
def matmul_ijk(left: Matrix, right: Matrix) -> Matrix:
    r"""The product in the order of the formula: for each entry $C_{ij}$, run down $k$.

    The inner loop walks along row $i$ of $A$ and *down column $j$* of $B$, and every
    step indexes from the outermost list inwards: `out[i][j]`, `a[i][k]` and `b[k][j]`.
    """
    _check_matmul_shapes(left, right, "matmul_ijk")
    a, b = left.rows, right.rows
    n, inner, m = len(a), len(b), len(b[0])
    out = [[0.0] * m for _ in range(n)]  # [n, m]
    for i in range(n):
        for j in range(m):
            for k in range(inner):
                out[i][j] += a[i][k] * b[k][j]
    return Matrix(out)


# Swap the two inner loops and look at what stays fixed. Inside the loop over $j$, both
# $i$ and $k$ are fixed, so $A_{ik}$ is one number, and the loop adds a multiple of row
# $k$ of $B$ to row $i$ of $C$:
#
# $$
# C_{i,:} \mathrel{+}= A_{ik}\, B_{k,:}.
# $$
#
# The i-k-j order computes the same products and adds them into each $C_{ij}$ in the
# same order of $k$, so **the result is bitwise identical** to i-j-k. Only the walk
# through memory changes:
#
# - **In CPython**, each step of the innermost loop is a handful of interpreted
#   bytecodes, and every subscript is one of them, with its type check, bounds check and
#   reference counting. i-j-k's `out[i][j] += a[i][k] * b[k][j]` performs seven
#   subscripts per multiply-add (`out[i]`, `[j]` read, `a[i]`, `[k]`, `b[k]`, `[j]`,
#   `[j]` write). In i-k-j the loop over $j$ sees a fixed scalar `a_ik` and two fixed
#   rows, `b_row` and `out_row`, which we look up once outside it, leaving three
#   subscripts (`b_row[j]`, and `out_row[j]` read and write). That is the difference the
#   demo measures: i-k-j is 1.4 to 2 times faster at $n = 128$, depending on the Python
#   version and how busy the machine is. The cache plays little part here, because the
#   lists hold pointers to float objects scattered over the heap.
# - **In C**, or in NumPy's own kernels, the entries sit contiguously in row-major
#   order, and the cost is memory traffic. i-j-k's inner loop strides down a column of
#   $B$, $8m$ bytes per step, so each access touches a new 64-byte cache line and uses 8
#   bytes of it. i-k-j's inner loop streams along rows of $B$ and $C$, uses every byte
#   of every line it loads, and lets the compiler vectorise. For matrices larger than
#   the cache the gap is several-fold; real BLAS goes further and works on blocks that
#   fit in cache.
def matmul_ikj(left: Matrix, right: Matrix) -> Matrix:
    r"""The product by row updates, $C_{i,:} \mathrel{+}= A_{ik} B_{k,:}$, as in `@`."""
    _check_matmul_shapes(left, right, "matmul_ikj")
    a, b = left.rows, right.rows
    n, inner, m = len(a), len(b), len(b[0])
    out = [[0.0] * m for _ in range(n)]  # [n, m]
    for i in range(n):
        a_row, out_row = a[i], out[i]  # [inner], [m]
        for k in range(inner):
            a_ik, b_row = a_row[k], b[k]  # scalar, [m]
            for j in range(m):
                out_row[j] += a_ik * b_row[j]
    return Matrix(out)


# ## LU decomposition with partial pivoting
#
# Gaussian elimination turns $A$ into an upper triangular $U$ by subtracting multiples
# of one row from the rows below it. At step $k$ the *pivot* $u_{kk}$ sits on the
# diagonal, and row $i > k$ loses $l_{ik} = a_{ik} / u_{kk}$ times row $k$, which zeroes
# its entry in column $k$. Recording the multipliers in a unit lower triangular $L$
# (ones on the diagonal) gives $A = LU$ [@golub2013matrix; @trefethen1997numerical].
#
# A zero pivot stops this. When is a pivot "zero"? Entries computed from $A$ carry
# rounding errors of about $n\,\varepsilon\max|a_{ij}|$, so a pivot no larger than that
# cannot be told apart from zero: the matrix is *singular to working precision*. The
# Hilbert matrix of order 12 passes (its smallest pivot is about $5 \times 10^{-15}$),
# the one of order 13 does not. `lu` reports it with its own exception, a `ValueError`,
# so that a caller can catch exactly this case (`det` does, and returns 0).
class SingularMatrixError(ValueError):
    """A pivot is zero to working precision, so the matrix has no usable inverse."""


# A tiny pivot is nearly as bad as a zero one. Take
#
# $$
# \begin{aligned}
# A &= \begin{pmatrix} 10^{-20} & 1 \\ 1 & 1 \end{pmatrix}, \\
# L &= \begin{pmatrix} 1 & 0 \\ 10^{20} & 1 \end{pmatrix}, \quad
# U = \begin{pmatrix} 10^{-20} & 1 \\ 0 & 1 - 10^{20} \end{pmatrix}.
# \end{aligned}
# $$
#
# In float64, $1 - 10^{20}$ rounds to $-10^{20}$: the entry $a_{22} = 1$ is lost
# entirely, and solving $Ax = (1, 2)^\top$ returns $x = (0, 1)$ instead of about
# $(1, 1)$. The trouble is the growth of the entries: a multiplier of $10^{20}$ produced
# an entry $10^{20}$ times larger than any in $A$, and rounding errors are relative to
# the largest numbers in play. The **growth factor**
#
# $$
# \rho = \frac{\max_{ij} |u_{ij}|}{\max_{ij} |a_{ij}|}
# $$
#
# enters Wilkinson's backward error bound for elimination [@higham2002accuracy]: the
# computed factors satisfy $\hat L \hat U = A + \delta A$ with
# $\|\delta A\|_\infty \lesssim c\, n\, \rho\, \varepsilon\, \|A\|_\infty$.
#
# **Partial pivoting** keeps $\rho$ small. Before eliminating column $k$, swap into row
# $k$ the row (from $k$ down) whose entry in column $k$ is largest in absolute value.
# Then every multiplier has $|l_{ik}| \le 1$, each step at most doubles the largest
# entry, and $\rho \le 2^{n-1}$. That bound is attained only by contrived matrices; in
# practice $\rho$ stays small. The swaps form a permutation matrix $P$, and the
# factorisation becomes
#
# $$
# PA = LU.
# $$
#
# We record $P$ as a list `perm`: row $i$ of $PA$ is row `perm[i]` of $A$.
def lu(a: Matrix) -> tuple[list[int], Matrix, Matrix]:
    r"""Factor a square `a` as $PA = LU$ with partial pivoting; returns `(perm, L, U)`.

    `perm[i]` is the row of `a` that ends up in row `i`. `L` is unit lower triangular
    with every $|l_{ij}| \le 1$ and `U` is upper triangular. Raises
    `SingularMatrixError` when no pivot candidate in some column exceeds
    $n\,\varepsilon \max|a_{ij}|$.

    The work happens in place in one array, as LAPACK does: after step $k$ the
    multipliers of column $k$ sit below the diagonal, where elimination has just made
    zeros. A later row swap exchanges whole rows, those stored multipliers included,
    which is exactly the reordering that keeps $PA = LU$ true.
    """
    _require_matrix(a, "a", "lu")
    _require_square(a, "a", "lu")
    if not all(math.isfinite(value) for row in a.rows for value in row):
        raise ValueError("lu: a must hold finite numbers, got inf or nan")
    n = a.shape[0]
    work = a.tolist()  # [n, n]: U on and above the diagonal, L's multipliers below it
    perm = list(range(n))
    tolerance = n * EPS * max(abs(value) for row in work for value in row)
    for k in range(n):
        pivot_row = max(range(k, n), key=lambda i: abs(work[i][k]))
        pivot = work[pivot_row][k]
        if abs(pivot) <= tolerance:
            raise SingularMatrixError(
                f"matrix is singular: the largest pivot candidate at column {k} is "
                f"{abs(pivot):.3g}, below the tolerance n·eps·max|a| = {tolerance:.3g}"
            )
        work[k], work[pivot_row] = work[pivot_row], work[k]
        perm[k], perm[pivot_row] = perm[pivot_row], perm[k]
        pivot_values = work[k]  # [n]
        # Eliminate below the pivot: the same row update as in `matmul_ikj`, with the
        # same hoisting.
        for i in range(k + 1, n):
            row = work[i]  # [n]
            multiplier = row[k] / pivot
            row[k] = multiplier
            for j in range(k + 1, n):
                row[j] -= multiplier * pivot_values[j]
    lower = [
        [work[i][j] if j < i else (1.0 if j == i else 0.0) for j in range(n)]
        for i in range(n)
    ]
    upper = [[work[i][j] if j >= i else 0.0 for j in range(n)] for i in range(n)]
    return perm, Matrix(lower), Matrix(upper)


# ## Solving with the factors
#
# With $PA = LU$, the system $Ax = b$ becomes $LUx = Pb$, two triangular systems solved
# in turn: $Ly = Pb$ from the top down, then $Ux = y$ from the bottom up. Row $i$ of the
# first reads $y_i + \sum_{j<i} l_{ij} y_j = (Pb)_i$, and every $y_j$ with $j < i$ is
# already known:
#
# $$
# \begin{aligned}
# y_i &= (Pb)_i - \sum_{j<i} l_{ij}\, y_j, \\
# x_i &= \frac{1}{u_{ii}} \Big( y_i - \sum_{j>i} u_{ij}\, x_j \Big).
# \end{aligned}
# $$
#
# Each costs $n^2$ operations per right-hand side, against $\tfrac{2}{3} n^3$ for the
# factorisation, so one factorisation serves many right-hand sides. We let $b$ have $m$
# columns and solve for all of them at once, with the row update
# $y_{i,:} \mathrel{-}= l_{ij}\, y_{j,:}$ in the inner loop: the i-k-j pattern again.
def forward_substitution(lower: Matrix, rhs: Matrix) -> Matrix:
    r"""Solve $Ly = \text{rhs}$ for a unit lower triangular $L$ (diagonal read as 1)."""
    _check_system(lower, rhs, ("lower", "rhs"), "forward_substitution")
    n = lower.shape[0]
    solution = rhs.tolist()  # [n, m]
    for i in range(n):
        row = solution[i]  # [m]
        for j in range(i):
            l_ij, known = lower.rows[i][j], solution[j]  # scalar, [m]
            for col in range(len(row)):
                row[col] -= l_ij * known[col]
    return Matrix(solution)


def back_substitution(upper: Matrix, rhs: Matrix) -> Matrix:
    r"""Solve $Ux = \text{rhs}$ for an upper triangular $U$ with a nonzero diagonal."""
    _check_system(upper, rhs, ("upper", "rhs"), "back_substitution")
    n = upper.shape[0]
    solution = rhs.tolist()  # [n, m]
    for i in reversed(range(n)):
        row = solution[i]  # [m]
        for j in range(i + 1, n):
            u_ij, known = upper.rows[i][j], solution[j]  # scalar, [m]
            for col in range(len(row)):
                row[col] -= u_ij * known[col]
        diagonal = upper.rows[i][i]
        if diagonal == 0.0:
            raise SingularMatrixError(
                f"back_substitution: upper has a zero on its diagonal at row {i}"
            )
        solution[i] = [value / diagonal for value in row]
    return Matrix(solution)


def solve(a: Matrix, b: Matrix) -> Matrix:
    r"""The solution $x$ of $Ax = b$, `a` [n×n] and `b` [n×m], by LU with pivoting.

    Raises `SingularMatrixError` (a `ValueError`) when `a` is singular to working
    precision.
    """
    _check_system(a, b, ("a", "b"), "solve")
    perm, lower, upper = lu(a)
    permuted_b = Matrix([b.rows[source] for source in perm])  # [n, m]: Pb
    y = forward_substitution(lower, permuted_b)  # [n, m]
    return back_substitution(upper, y)  # [n, m]


def inverse(a: Matrix) -> Matrix:
    r"""$A^{-1}$, as the solution of $AX = I$: one factorisation, $n$ right-hand sides.

    Rarely what a computation needs: to apply $A^{-1}$ to a vector, `solve` is cheaper
    and more accurate.
    """
    _require_matrix(a, "a", "inverse")
    _require_square(a, "a", "inverse")
    return solve(a, identity(a.shape[0]))


# ## The determinant
#
# The factors give the determinant almost for free, once we know the *sign* of the row
# permutation: $+1$ if it is an even number of swaps, $-1$ if odd. The sign does not
# need the swaps themselves. A permutation splits into cycles ($0 \to 2 \to 1 \to 0$ is
# one cycle of length 3), and a cycle of length $\ell$ takes $\ell - 1$ swaps, so
# even-length cycles flip the sign.
def permutation_sign(perm: list[int]) -> int:
    """+1 for an even permutation of `range(len(perm))`, -1 for an odd one."""
    if sorted(perm) != list(range(len(perm))):
        raise ValueError(
            f"permutation_sign: perm must be a permutation of 0..{len(perm) - 1}, "
            f"got {perm}"
        )
    visited = [False] * len(perm)
    sign = 1
    for start in range(len(perm)):
        cycle_length = 0
        position = start
        while not visited[position]:
            visited[position] = True
            position = perm[position]
            cycle_length += 1
        if cycle_length > 0 and cycle_length % 2 == 0:
            sign = -sign
    return sign


# Determinants multiply, $\det P \det A = \det L \det U$. A triangular matrix's
# determinant is the product of its diagonal, so $\det L = 1$ and
# $\det U = \prod_k u_{kk}$, and $\det P = \pm 1$ is the sign of the permutation.
# Dividing by $\pm 1$ is multiplying by it, so
#
# $$
# \det A = \operatorname{sign}(\text{perm}) \prod_{k} u_{kk}.
# $$
def det(a: Matrix) -> float:
    r"""$\det A$ from the LU factors; 0.0 for a matrix singular to working precision."""
    _require_matrix(a, "a", "det")
    _require_square(a, "a", "det")
    try:
        perm, _, upper = lu(a)
    except SingularMatrixError:
        return 0.0
    product = 1.0
    for k in range(a.shape[0]):
        product *= upper.rows[k][k]
    return permutation_sign(perm) * product


# ## Conditioning: how wrong the right answer can be
#
# To say how wrong an answer is we need sizes. For a vector we take the largest entry,
# $\|x\|_\infty = \max_i |x_i|$; for a matrix, the norm that vector norm induces,
# $\|A\|_\infty = \max_{x \ne 0} \|Ax\|_\infty / \|x\|_\infty$, which works out to the
# largest absolute row sum. It is the cheapest induced norm to compute, and any norm
# would serve in the argument below.
def norm_inf(a: Matrix) -> float:
    r"""$\|A\|_\infty = \max_i \sum_j |a_{ij}|$."""
    _require_matrix(a, "a", "norm_inf")
    return max(sum(abs(value) for value in row) for row in a.rows)


# Backward stability says the computed $\hat x$ solves a nearby system exactly,
# $(A + \delta A)\hat x = b$ with $\|\delta A\| \lesssim c\, n \rho\, \varepsilon
# \|A\|$. How far that moves the solution is a property of $A$ alone. Subtract $Ax = b$
# to get $A(\hat x - x) = -\delta A\, \hat x$, so with $\kappa(A) = \|A\|\,\|A^{-1}\|$
#
# $$
# \begin{aligned}
# \frac{\|\hat x - x\|}{\|\hat x\|} &\le \|A^{-1}\|\,\|\delta A\|
#   = \kappa(A)\, \frac{\|\delta A\|}{\|A\|} \\
# &\lesssim c\, n\, \rho\; \kappa(A)\, \varepsilon .
# \end{aligned}
# $$
#
# The **condition number** $\kappa(A)$ converts relative backward error into relative
# forward error [@higham2002accuracy; @trefethen1997numerical]. No algorithm in float64
# can promise better than $\kappa(A)\,\varepsilon$, since rounding $A$'s entries to
# floats already perturbs them by $\varepsilon$; a good one achieves it up to a modest
# factor. The rule of thumb: *with $\kappa = 10^k$, expect to lose about $k$ of
# float64's 16 significant digits.*
#
# We get $\|A^{-1}\|_\infty$ from our own `inverse`. For very ill-conditioned $A$ that
# inverse is itself inaccurate, but $\kappa$ only needs its order of magnitude.
def condition_number(a: Matrix) -> float:
    r"""$\kappa_\infty(A) = \|A\|_\infty \|A^{-1}\|_\infty$ for a nonsingular `a`."""
    return norm_inf(a) * norm_inf(inverse(a))


# The classic ill-conditioned family is the Hilbert matrix,
#
# $$
# H_{ij} = \frac{1}{i + j + 1}, \qquad i, j = 0, \dots, n-1,
# $$
#
# symmetric, positive definite, with every entry harmless, and yet $\kappa_\infty(H_n)$
# grows about 30-fold per step of $n$: $27$ at $n = 2$, $3.5 \times 10^{13}$ at
# $n = 10$, $4 \times 10^{16}$ at $n = 12$. Its columns are samples of $1/(x + j)$,
# which look more and more alike as $j$ grows, so $H$ is close to a matrix with
# dependent columns.
def hilbert(n: int) -> Matrix:
    """The `n × n` Hilbert matrix."""
    if not (_is_index(n) and n >= 1):
        raise ValueError(f"hilbert: n must be an int >= 1, got {n!r}")
    return Matrix([[1.0 / (i + j + 1) for j in range(n)] for i in range(n)])


def relative_error(approximate: Matrix, exact: Matrix) -> float:
    r"""$\|\hat x - x\|_\infty / \|x\|_\infty$: largest absolute entries."""
    _require_matrix(approximate, "approximate", "relative_error")
    _require_matrix(exact, "exact", "relative_error")
    if approximate.shape != exact.shape:
        raise ValueError(
            f"relative_error: approximate is {_shape_text(approximate.shape)} but "
            f"exact is {_shape_text(exact.shape)}; they must have the same shape"
        )
    largest_exact = max(abs(value) for row in exact.rows for value in row)
    if largest_exact == 0.0:
        raise ValueError("relative_error: exact must have a nonzero entry")
    largest_difference = max(
        abs(value) for row in (approximate - exact).rows for value in row
    )
    return largest_difference / largest_exact


# ## The example
#
# A $3 \times 3$ system whose solution is $x = (1, 1, 2)$. Column 0's largest entry is
# in row 1, so the first step already swaps rows.
def example():
    """`solve(a, b)` on a small system: `fn(*args)` runs it."""
    a = Matrix([[2.0, 1.0, 1.0], [4.0, -6.0, 0.0], [-2.0, 7.0, 2.0]])  # [3, 3]
    b = Matrix([[5.0], [-2.0], [9.0]])  # [3, 1]
    return solve, (a, b)


def dataflow(output: Matrix):
    """The steps of `solve` as a graph, with the shapes between them, for `output`."""
    _require_matrix(output, "output", "dataflow")
    n, m = output.shape
    square, column = _shape_text((n, n)), _shape_text((n, m))
    nodes = [
        ("a", f"A [{square}]"),
        ("b", f"b [{column}]"),
        ("lu", "LU with partial pivoting"),
        ("perm", f"perm [{n}]"),
        ("lower", f"L [{square}] unit lower"),
        ("upper", f"U [{square}] upper"),
        ("permute", "permute rows: Pb"),
        ("forward", "forward substitution Ly = Pb"),
        ("y", f"y [{column}]"),
        ("back", "back substitution Ux = y"),
        ("x", f"x [{column}]"),
    ]
    edges = [
        ("a", "lu", ""),
        ("lu", "perm", "row swaps"),
        ("lu", "lower", "multipliers"),
        ("lu", "upper", "eliminated rows"),
        ("perm", "permute", ""),
        ("b", "permute", ""),
        ("permute", "forward", f"Pb [{column}]"),
        ("lower", "forward", ""),
        ("forward", "y", ""),
        ("y", "back", ""),
        ("upper", "back", ""),
        ("back", "x", ""),
    ]
    return nodes, edges


# ## The demo
#
# The demo needs random matrices to multiply, a timer, and two plots.
def random_matrix(n_rows: int, n_cols: int, rng: random.Random) -> Matrix:
    """An `n_rows × n_cols` matrix with entries drawn uniformly from [-1, 1]."""
    return Matrix(
        [[rng.uniform(-1.0, 1.0) for _ in range(n_cols)] for _ in range(n_rows)]
    )


def best_time(function, args, repeats: int) -> float:
    """The fastest of `repeats` runs of `function(*args)`, in seconds.

    The fastest run is the one least disturbed by the rest of the machine.
    """
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function(*args)
        times.append(time.perf_counter() - start)
    return min(times)


def plot_matmul_times(
    sizes: list[int], ijk_times: list[float], ikj_times: list[float], path: Path
) -> None:
    """Time against $n$ for both orders on log-log axes, with an $n^3$ guide."""
    fig, axis = figure()
    axis.loglog(sizes, ijk_times, "o-", label="i-j-k")
    axis.loglog(sizes, ikj_times, "s-", label="i-k-j")
    guide = [ikj_times[-1] * (n / sizes[-1]) ** 3 for n in sizes]
    axis.loglog(sizes, guide, "k:", label=r"$\propto n^3$")
    axis.minorticks_off()
    axis.set_xticks(sizes, labels=[str(n) for n in sizes])
    axis.set_xlabel(r"$n$ (the matrices are $n \times n$)")
    axis.set_ylabel("seconds (best of repeats)")
    axis.set_title("Pure-Python matrix product")
    axis.legend()
    save(
        fig,
        path,
        caption="Time of the pure-Python matrix product in the two loop orders, best "
        "of several runs. Both grow like n³ (dotted guide); i-k-j is faster by a "
        "constant factor because its inner loop performs fewer subscripts.",
    )


def plot_hilbert_errors(
    orders: list[int], errors: list[float], bounds: list[float], path: Path
) -> None:
    r"""The relative error of `solve` on Hilbert systems beside $\kappa \varepsilon$."""
    fig, axis = figure()
    axis.semilogy(
        orders,
        errors,
        "o-",
        label=r"$\|\hat x - x\|_\infty \,/\, \|x\|_\infty$",
    )
    axis.semilogy(orders, bounds, "k--", label=r"$\kappa_\infty(H)\,\varepsilon$")
    axis.set_xlabel(r"Hilbert order $n$")
    axis.set_ylabel("relative error")
    axis.set_title(r"Solving $Hx = b$: the error follows $\kappa$")
    axis.legend()
    save(
        fig,
        path,
        caption="Relative error of our LU solve on Hilbert systems with solution "
        "(1, …, 1), beside the condition number times machine epsilon. The error "
        "grows with κε, about 30 times each time n grows by one, and stays below it; "
        "at n = 12 it reaches the first digit.",
    )


# Two experiments. First, time both products on random $n \times n$ matrices; the time
# grows as $n^3$ and the ratio shows what the loop order is worth in CPython. Second,
# for each Hilbert matrix, build $b = Hx$ from $x = (1, \dots, 1)$, solve, and compare
# the relative error with $\kappa_\infty(H)\,\varepsilon$.
def main(argv: list[str] | None = None) -> dict[str, float]:
    """Time both products, then solve Hilbert systems; print, plot, return metrics."""
    parser = argparse.ArgumentParser(
        description="Time the i-j-k and i-k-j matrix products and measure solve's "
        "error on Hilbert matrices.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--sizes",
        type=integer(at_least=1),
        nargs="+",
        default=[16, 32, 64, 128],
        help="matrix sizes n to time",
    )
    parser.add_argument(
        "--repeats",
        type=integer(at_least=1),
        default=3,
        help="runs per timing; the fastest counts",
    )
    parser.add_argument(
        "--hilbert-max",
        type=integer(at_least=2, at_most=12),
        default=12,
        help="largest Hilbert order to solve (at most 12: from 13 on it is singular)",
    )
    parser.add_argument(
        "--seed",
        type=integer(at_least=0),
        default=0,
        help="random seed for the timed matrices",
    )
    parser.add_argument("--out", default="out/matrix", help="folder for the figures")
    args = parser.parse_args(argv)
    out = Path(args.out)
    rng = random.Random(args.seed)

    sizes = sorted(args.sizes)
    ijk_times, ikj_times = [], []
    for n in tqdm(sizes, desc="timing matmul"):
        left, right = random_matrix(n, n, rng), random_matrix(n, n, rng)
        ijk_times.append(best_time(matmul_ijk, (left, right), args.repeats))
        ikj_times.append(best_time(matmul_ikj, (left, right), args.repeats))
    for n, ijk_time, ikj_time in zip(sizes, ijk_times, ikj_times):
        print(
            f"n={n:4d}  i-j-k {ijk_time * 1e3:8.2f} ms  "
            f"i-k-j {ikj_time * 1e3:8.2f} ms  "
            f"ratio {ijk_time / ikj_time:.2f}"
        )
    speedup = ijk_times[-1] / ikj_times[-1]
    print(f"i-k-j speedup over i-j-k at n={sizes[-1]}: {speedup:.2f}x")
    plot_matmul_times(sizes, ijk_times, ikj_times, out / "matmul_time.png")

    orders = list(range(2, args.hilbert_max + 1))
    errors, bounds = [], []
    for n in tqdm(orders, desc="hilbert solves"):
        h = hilbert(n)  # [n, n]
        x_true = Matrix([[1.0] for _ in range(n)])  # [n, 1]
        x_solved = solve(h, h @ x_true)  # [n, 1]
        errors.append(relative_error(x_solved, x_true))
        bounds.append(condition_number(h) * EPS)
    for n, error, bound in zip(orders, errors, bounds):
        print(
            f"hilbert n={n:2d}  cond {bound / EPS:9.2e}  relative error {error:9.2e}  "
            f"cond*eps {bound:9.2e}"
        )
    worst_ratio = max(error / bound for error, bound in zip(errors, bounds))
    print(f"largest error / (cond*eps) over n=2..{args.hilbert_max}: {worst_ratio:.3f}")
    plot_hilbert_errors(orders, errors, bounds, out / "hilbert_error.png")

    return {
        "ikj_speedup": speedup,
        "hilbert_max_relative_error": errors[-1],
        "max_error_over_cond_eps": worst_ratio,
    }


if __name__ == "__main__":
    main()

# ## Exercises
#
# 1. Hoist `a[i]` out of `matmul_ijk` and accumulate $C_{ij}$ in a local variable
#    instead of `out[i][j]`. How much of the gap to i-k-j closes, and why would the same
#    change not save i-j-k in C?
# 2. Time the other four loop orders. Which ones walk along rows in the innermost loop,
#    and do the timings split into the groups you predict?
# 3. Remove the pivot search from `lu` (always take row $k$) and solve the $10^{-20}$
#    system from the text. Then measure the growth factor $\rho$ with pivoting on the
#    matrix with ones on the diagonal, $-1$ below it and ones in the last column: how
#    does it grow with $n$?
# 4. For each Hilbert system in the demo, also compute the relative residual $\|b -
#    H\hat x\|_\infty / (\|H\|_\infty \|\hat x\|_\infty)$. Which of residual and error
#    stays near $\varepsilon$ as $n$ grows, and what does that say about backward
#    stability?
