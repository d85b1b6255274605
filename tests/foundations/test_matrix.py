"""Verified against numpy.linalg and scipy.linalg.lu in float64: products, solves,
inverses and determinants of well-conditioned random matrices to a relative 1e-9, and
Hilbert solves within the error bound backward stability gives, n·ρ·κ(H)·ε, rather than
a fixed tolerance.

Also checked: every entry of the Hilbert matrices against scipy.linalg.hilbert and their
condition numbers against the numbers in the prose, NumPy arrays and integers as input,
and that no operation changes its operands.
"""

import random

import numpy as np
import pytest
import scipy.linalg
from hypothesis import given, strategies as st

from annotated.foundations.matrix import (
    EPS,
    Matrix,
    SingularMatrixError,
    back_substitution,
    condition_number,
    dataflow,
    det,
    example,
    forward_substitution,
    hilbert,
    identity,
    inverse,
    lu,
    main,
    matmul_ijk,
    matmul_ikj,
    norm_inf,
    permutation_sign,
    random_matrix,
    relative_error,
    solve,
    transpose,
    zeros,
)

RTOL = 1e-9


@st.composite
def matrices(draw, n_rows=None, n_cols=None, max_side=6, bound=100.0):
    """A Matrix with entries in [-bound, bound]; unset sides come from 1..max_side."""
    n_rows = n_rows or draw(st.integers(1, max_side))
    n_cols = n_cols or draw(st.integers(1, max_side))
    entries = st.floats(-bound, bound, allow_nan=False, allow_infinity=False)
    return Matrix(
        draw(
            st.lists(
                st.lists(entries, min_size=n_cols, max_size=n_cols),
                min_size=n_rows,
                max_size=n_rows,
            )
        )
    )


@st.composite
def well_conditioned(draw, max_side=6):
    """A square matrix with entries in [-1, 1] plus n + 1 on the diagonal.

    Each diagonal entry is at least n and the rest of its row sums to at most n - 1, so
    the matrix is strictly diagonally dominant, hence nonsingular with an infinity-norm
    condition number of at most 2n + 1: a fair target for a 1e-9 comparison.
    """
    n = draw(st.integers(1, max_side))
    base = draw(matrices(n_rows=n, n_cols=n, bound=1.0))
    return base + (n + 1) * identity(n)


def as_array(m: Matrix) -> np.ndarray:
    return np.array(m.tolist(), dtype=np.float64)


# --- the container --------------------------------------------------------------------


def test_construction_shape_indexing_and_repr_round_trip():
    m = Matrix([[1, 2.5, -3], [4, 5, 6]])
    assert m.shape == (2, 3)
    assert m[0, 1] == 2.5 and m[1, 2] == 6.0
    assert isinstance(m[0, 0], float)
    assert eval(repr(m), {"Matrix": Matrix}) == m
    assert m != Matrix([[1, 2.5, -3], [4, 5, 7]])
    assert m != Matrix([[1, 2.5], [4, 5]])
    assert m != m.tolist()  # a list of rows is not a Matrix, even with equal entries
    assert zeros(2, 3) == Matrix([[0, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(as_array(identity(4)), np.eye(4))


def test_constructor_copies_its_argument():
    rows = [[1.0, 2.0]]
    m = Matrix(rows)
    rows[0][0] = 99.0
    assert m[0, 0] == 1.0


def test_allclose_follows_numpy_rule():
    a = Matrix([[1.0, 100.0]])
    b = Matrix([[1.0 + 1e-10, 100.0 + 1e-6]])
    for rtol in (1e-8, 1e-9):
        assert a.allclose(b, rtol=rtol) == np.allclose(
            as_array(a), as_array(b), rtol=rtol, atol=0.0
        )
    assert a.allclose(b, rtol=1e-8) and not a.allclose(b, rtol=1e-9)
    assert not a.allclose(Matrix([[1.0], [100.0]]))
    # The bound itself counts as close (numpy's <=): equal matrices with no tolerance,
    # and a difference of exactly atol.
    assert a.allclose(a, rtol=0.0) and np.allclose(as_array(a), as_array(a), 0.0, 0.0)
    c = Matrix([[1.5, 100.0]])
    assert c.allclose(a, rtol=0.0, atol=0.5) == np.allclose(
        as_array(c), as_array(a), rtol=0.0, atol=0.5
    )
    assert c.allclose(a, rtol=0.0, atol=0.5)
    with pytest.raises(TypeError, match="other must be a Matrix, got list"):
        a.allclose([[1.0, 100.0]])


def test_bad_construction_raises_clear_errors():
    with pytest.raises(ValueError, match="rows must all have the same length"):
        Matrix([[1, 2], [3]])
    with pytest.raises(ValueError, match="rows must hold at least one row"):
        Matrix([])
    with pytest.raises(
        TypeError, match=r"rows\[0\]\[1\] must be a real number, got str"
    ):
        Matrix([[1, "2"]])
    with pytest.raises(
        TypeError, match=r"rows\[0\]\[0\] must be a real number, got bool"
    ):
        Matrix([[True]])
    with pytest.raises(TypeError, match="rows must be a list of lists"):
        Matrix("12")
    with pytest.raises(ValueError, match="n_rows and n_cols"):
        zeros(0, 2)
    with pytest.raises(ValueError, match="identity: n"):
        identity(0)
    with pytest.raises(ValueError, match="hilbert: n"):
        hilbert(-1)


def test_bad_index_raises_clear_errors():
    m = Matrix([[1, 2], [3, 4]])
    with pytest.raises(IndexError, match=r"index \(0, 2\) is outside a 2×2 matrix"):
        m[0, 2]
    with pytest.raises(TypeError, match="pair of ints"):
        m[0]


# --- elementwise arithmetic -----------------------------------------------------------


@given(data=st.data())
@np.errstate(
    over="ignore"
)  # dividing by a subnormal overflows to inf in both libraries; only numpy warns
def test_elementwise_ops_match_numpy_exactly(data):
    # Each entry is one IEEE operation in both libraries, so the results must agree bit
    # for bit.
    a = data.draw(matrices())
    b = data.draw(matrices(n_rows=a.shape[0], n_cols=a.shape[1]))
    scalar = data.draw(st.floats(-10, 10, allow_nan=False).filter(lambda x: x != 0.0))
    x, y = as_array(a), as_array(b)
    np.testing.assert_array_equal(as_array(a + b), x + y)
    np.testing.assert_array_equal(as_array(a - b), x - y)
    np.testing.assert_array_equal(as_array(a * b), x * y)
    np.testing.assert_array_equal(as_array(-a), -x)
    np.testing.assert_array_equal(as_array(a + scalar), x + scalar)
    np.testing.assert_array_equal(as_array(scalar + a), scalar + x)
    np.testing.assert_array_equal(as_array(scalar - a), scalar - x)
    np.testing.assert_array_equal(as_array(scalar * a), scalar * x)
    np.testing.assert_array_equal(as_array(a / scalar), x / scalar)
    if np.all(x != 0.0):
        np.testing.assert_array_equal(as_array(scalar / a), scalar / x)
    if np.all(y != 0.0):
        np.testing.assert_array_equal(as_array(a / b), x / y)


def test_elementwise_shape_mismatch_names_both_shapes():
    a, b = zeros(2, 3), zeros(3, 2)
    for operation in (lambda: a + b, lambda: a - b, lambda: a * b, lambda: a / b):
        with pytest.raises(ValueError, match="left is 2×3 but right is 3×2"):
            operation()
    with pytest.raises(TypeError):
        a + "1"


# --- products and transpose -----------------------------------------------------------


@given(data=st.data())
def test_matmul_both_orders_match_numpy(data):
    a = data.draw(matrices())
    b = data.draw(matrices(n_rows=a.shape[1]))
    x, y = as_array(a), as_array(b)
    reference = x @ y
    # Rounding error of a dot product is bounded by a multiple of sum_k |a_ik| |b_kj|,
    # so that is the scale.
    scale = (np.abs(x) @ np.abs(y)).max()
    for ours in (matmul_ijk(a, b), matmul_ikj(a, b), a @ b):
        assert ours.shape == reference.shape
        np.testing.assert_allclose(
            as_array(ours), reference, rtol=RTOL, atol=RTOL * scale
        )


@given(data=st.data())
def test_loop_orders_are_bitwise_identical(data):
    # Same products, added in the same order of k: the two orders differ only in speed.
    a = data.draw(matrices())
    b = data.draw(matrices(n_rows=a.shape[1]))
    assert matmul_ijk(a, b) == matmul_ikj(a, b)


def test_matmul_shape_mismatch_names_both_shapes():
    a = zeros(2, 3)
    for product in (matmul_ijk, matmul_ikj, lambda left, right: left @ right):
        with pytest.raises(
            ValueError,
            match="left is 2×3 but right is 2×3; left's columns must equal right's",
        ):
            product(a, a)
    with pytest.raises(TypeError, match="matmul_ikj: right must be a Matrix"):
        matmul_ikj(a, [[1.0]])


@given(matrices())
def test_transpose_matches_numpy(a):
    np.testing.assert_array_equal(as_array(transpose(a)), as_array(a).T)
    assert transpose(transpose(a)) == a


# --- LU, solve, inverse, det ----------------------------------------------------------


@given(st.integers(1, 6).flatmap(lambda n: matrices(n_rows=n, n_cols=n, bound=10.0)))
def test_lu_reconstructs_pa_with_bounded_multipliers(a):
    try:
        perm, lower, upper = lu(a)
    except SingularMatrixError:
        # Only matrices that numpy also sees as (nearly) singular may be refused.
        assert np.linalg.cond(as_array(a)) > 1e12
        return
    x, l_array, u_array = as_array(a), as_array(lower), as_array(upper)
    assert sorted(perm) == list(range(a.shape[0]))
    np.testing.assert_array_equal(
        np.tril(l_array, -1) + np.eye(a.shape[0]), l_array
    )  # unit lower triangular
    np.testing.assert_array_equal(np.triu(u_array), u_array)  # upper triangular
    assert np.abs(l_array).max() <= 1.0  # partial pivoting's promise
    np.testing.assert_allclose(
        l_array @ u_array, x[perm], rtol=RTOL, atol=RTOL * np.abs(x).max()
    )


@pytest.mark.parametrize("n", [1, 3, 8, 40])
def test_lu_matches_scipy(n):
    rng = random.Random(n)
    a = random_matrix(n, n, rng)
    p, l_ref, u_ref = scipy.linalg.lu(as_array(a))  # a = p @ l @ u, so p.T @ a = l @ u
    perm, lower, upper = lu(a)
    np.testing.assert_array_equal(np.eye(n)[perm], p.T)
    np.testing.assert_allclose(as_array(lower), l_ref, rtol=RTOL, atol=1e-12)
    np.testing.assert_allclose(as_array(upper), u_ref, rtol=RTOL, atol=1e-12)


@given(data=st.data())
def test_solve_matches_numpy(data):
    a = data.draw(well_conditioned())
    b = data.draw(matrices(n_rows=a.shape[0], max_side=3, bound=10.0))
    reference = np.linalg.solve(as_array(a), as_array(b))
    np.testing.assert_allclose(
        as_array(solve(a, b)), reference, rtol=RTOL, atol=RTOL * np.abs(reference).max()
    )


@given(well_conditioned())
def test_inverse_and_condition_number_match_numpy(a):
    reference = np.linalg.inv(as_array(a))
    np.testing.assert_allclose(
        as_array(inverse(a)), reference, rtol=RTOL, atol=RTOL * np.abs(reference).max()
    )
    assert norm_inf(a) == pytest.approx(np.linalg.norm(as_array(a), np.inf), rel=1e-15)
    assert condition_number(a) == pytest.approx(
        np.linalg.cond(as_array(a), np.inf), rel=RTOL
    )


@given(well_conditioned())
def test_det_matches_numpy(a):
    assert det(a) == pytest.approx(np.linalg.det(as_array(a)), rel=RTOL)


@given(st.integers(1, 7).flatmap(lambda n: st.permutations(list(range(n)))))
def test_permutation_sign_is_determinant_of_permutation_matrix(perm):
    assert permutation_sign(perm) == round(np.linalg.det(np.eye(len(perm))[perm]))


def test_example_needs_a_row_swap_and_solves_exactly():
    fn, args = example()
    x = fn(*args)
    assert x.allclose(Matrix([[1.0], [1.0], [2.0]]), rtol=1e-14)
    perm, _, _ = lu(args[0])
    assert perm[0] == 1
    assert det(args[0]) == pytest.approx(np.linalg.det(as_array(args[0])), rel=1e-14)


def test_dataflow_is_a_wellformed_graph_with_shapes():
    fn, args = example()
    nodes, edges = dataflow(fn(*args))
    ids = [node_id for node_id, _ in nodes]
    assert len(ids) == len(set(ids)) <= 25
    assert all(src in ids and dst in ids for src, dst, _ in edges)
    labels = dict(nodes)
    assert (
        labels["a"] == "A [3×3]"
        and labels["x"] == "x [3×1]"
        and labels["y"] == "y [3×1]"
    )
    with pytest.raises(TypeError, match="output must be a Matrix"):
        dataflow([[1.0]])


def test_partial_pivoting_rescues_a_tiny_pivot():
    # Without the row swap, 1 - 1e20 rounds to -1e20 and the answer comes out as (0, 1).
    a = Matrix([[1e-20, 1.0], [1.0, 1.0]])
    x = solve(a, Matrix([[1.0], [2.0]]))
    np.testing.assert_allclose(
        as_array(x), np.linalg.solve(as_array(a), [[1.0], [2.0]]), rtol=1e-15
    )
    perm, lower, _ = lu(a)
    assert perm == [1, 0] and lower[1, 0] == 1e-20


@pytest.mark.parametrize("n", [6, 7, 8, 9, 10])
def test_hilbert_error_within_condition_bound(n):
    # Backward stability gives ||x_hat - x|| / ||x|| <~ n * rho * kappa * eps, with rho
    # the growth factor. A fixed 1e-9 would be wrong here: at n = 10, kappa * eps is
    # about 8e-3.
    h = hilbert(n)
    x_true = np.ones((n, 1))
    b = Matrix((as_array(h) @ x_true).tolist())
    kappa = np.linalg.cond(as_array(h), np.inf)
    _, _, upper = lu(h)
    growth = np.abs(as_array(upper)).max() / np.abs(as_array(h)).max()
    bound = n * growth * kappa * EPS
    assert growth <= 2.0
    assert bound < 0.5  # the bound says something: at least a correct leading digit
    ours = solve(h, b)
    assert relative_error(ours, Matrix(x_true.tolist())) <= bound
    numpy_solution = np.linalg.solve(as_array(h), as_array(b))
    assert relative_error(ours, Matrix(numpy_solution.tolist())) <= 2 * bound
    assert condition_number(h) == pytest.approx(kappa, rel=n * kappa * EPS)


def test_hilbert_matrices_match_scipy_entry_by_entry_and_the_prose_numbers():
    for n in range(1, 13):
        np.testing.assert_array_equal(as_array(hilbert(n)), scipy.linalg.hilbert(n))
    kappa = {n: np.linalg.cond(scipy.linalg.hilbert(n), np.inf) for n in range(2, 13)}
    # The prose: 27 at n = 2, 3.5e13 at n = 10, 4e16 at n = 12, about 30-fold a step.
    assert kappa[2] == pytest.approx(27.0, rel=1e-12)
    assert kappa[10] == pytest.approx(3.5e13, rel=0.02)
    assert kappa[12] == pytest.approx(4e16, rel=0.1)
    steps = np.array([kappa[n + 1] / kappa[n] for n in range(2, 12)])
    assert 25 < np.exp(np.log(steps).mean()) < 40
    assert condition_number(hilbert(2)) == pytest.approx(27.0, rel=1e-12)


def test_random_matrix_entries_are_uniform_on_minus_one_to_one():
    m = as_array(random_matrix(200, 50, random.Random(3)))
    assert m.shape == (200, 50)
    assert m.min() >= -1.0 and m.max() <= 1.0
    # Uniform on [-1, 1]: mean 0 and variance 1/3, over all 10,000 entries.
    assert abs(m.mean()) < 4 * np.sqrt(1 / 3 / m.size)
    assert m.var() == pytest.approx(1 / 3, rel=0.05)
    np.testing.assert_array_equal(m, as_array(random_matrix(200, 50, random.Random(3))))


def test_numpy_arrays_and_integers_are_accepted():
    array = np.array([[1.0, 2.0], [3.0, 4.5]])
    m = Matrix(array)
    assert m == Matrix([[1.0, 2.0], [3.0, 4.5]])
    assert all(type(value) is float for row in m.rows for value in row)
    assert m[np.int64(1), np.int32(1)] == 4.5
    assert zeros(np.int64(2), 3).shape == (2, 3)
    assert identity(np.int64(3)) == identity(3)
    assert hilbert(np.int32(4)) == hilbert(4)
    assert Matrix([[np.float32(0.5), np.int64(2)]]) == Matrix([[0.5, 2.0]])
    with pytest.raises(TypeError, match="rows must be a list of lists"):
        Matrix(np.array([1.0, 2.0]))  # 1-D: a list of numbers, not of rows
    with pytest.raises(TypeError, match="must be a real number, got bool True"):
        Matrix(np.array([[True, False]], dtype=object))


def test_operations_leave_their_operands_unchanged():
    rng = random.Random(4)
    a = random_matrix(5, 5, rng) + 5 * identity(5)
    b = random_matrix(5, 2, rng)
    kept_a, kept_b = a.tolist(), b.tolist()
    for operation in (
        lambda: lu(a),
        lambda: solve(a, b),
        lambda: inverse(a),
        lambda: det(a),
        lambda: transpose(a),
        lambda: matmul_ijk(a, b),
        lambda: a @ b,
        lambda: a + 1.0,
        lambda: 2.0 / a,
        lambda: condition_number(a),
        lambda: forward_substitution(lu(a)[1], b),
        lambda: back_substitution(lu(a)[2], b),
    ):
        operation()
        assert a.tolist() == kept_a and b.tolist() == kept_b
    rows = [[1.0, 2.0], [3.0, 4.0]]
    m = Matrix(rows)
    m.tolist()[0][0] = 99.0  # tolist hands out a copy
    assert m[0, 0] == 1.0


def test_hilbert_13_is_singular_to_working_precision():
    with pytest.raises(SingularMatrixError, match="column 12"):
        lu(hilbert(13))


@pytest.mark.parametrize(
    "singular",
    [
        Matrix([[1.0, 2.0], [2.0, 4.0]]),
        Matrix([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]),
        zeros(3, 3),
    ],
)
def test_singular_matrices(singular):
    n = singular.shape[0]
    with pytest.raises(ValueError, match="matrix is singular"):
        solve(singular, zeros(n, 1))
    with pytest.raises(
        SingularMatrixError, match=r"column \d+ is .* below the tolerance"
    ):
        inverse(singular)
    assert det(singular) == 0.0


def test_solver_bad_shapes_raise_clear_errors():
    with pytest.raises(ValueError, match="solve: a must be square, got 2×3"):
        solve(zeros(2, 3), zeros(2, 1))
    with pytest.raises(
        ValueError, match="solve: a is 3×3 but b is 2×1; b must have 3 rows"
    ):
        solve(identity(3), zeros(2, 1))
    with pytest.raises(TypeError, match="solve: b must be a Matrix"):
        solve(identity(2), [1.0, 2.0])
    with pytest.raises(ValueError, match="lu: a must be square"):
        lu(zeros(3, 2))
    with pytest.raises(ValueError, match="det: a must be square"):
        det(zeros(1, 2))
    with pytest.raises(ValueError, match="inverse: a must be square"):
        inverse(zeros(1, 2))
    with pytest.raises(
        ValueError, match="forward_substitution: lower is 2×2 but rhs is 3×1"
    ):
        forward_substitution(identity(2), zeros(3, 1))
    with pytest.raises(SingularMatrixError, match="zero on its diagonal at row 1"):
        back_substitution(Matrix([[1.0, 1.0], [0.0, 0.0]]), zeros(2, 1))
    with pytest.raises(ValueError, match="perm must be a permutation"):
        permutation_sign([0, 0, 1])
    with pytest.raises(ValueError, match="exact must have a nonzero entry"):
        relative_error(zeros(2, 1), zeros(2, 1))
    with pytest.raises(ValueError, match="approximate is 2×1 but exact is 3×1"):
        relative_error(zeros(2, 1), Matrix([[1.0], [2.0], [3.0]]))
    with pytest.raises(ValueError, match="lu: a must hold finite numbers"):
        lu(Matrix([[1.0, float("nan")], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="rtol and atol must be numbers >= 0"):
        identity(2).allclose(identity(2), rtol=-1.0)


# --- the demo -------------------------------------------------------------------------


def test_demo_runs_and_error_stays_below_cond_eps(tmp_path):
    metrics = main(
        [
            "--sizes",
            "8",
            "16",
            "--repeats",
            "1",
            "--hilbert-max",
            "8",
            "--out",
            str(tmp_path),
        ]
    )
    assert metrics["ikj_speedup"] > 0.0
    assert 0.0 < metrics["max_error_over_cond_eps"] < 1.0
    assert 0.0 < metrics["hilbert_max_relative_error"] < 1e-4
    assert (tmp_path / "matmul_time.png").stat().st_size > 0
    assert (tmp_path / "hilbert_error.png").stat().st_size > 0


def test_demo_rejects_bad_flags(tmp_path):
    with pytest.raises(SystemExit):
        main(["--hilbert-max", "13", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["--sizes", "0", "--out", str(tmp_path)])


# --- benchmarks -----------------------------------------------------------------------

_RNG = random.Random(0)
_LEFT_128, _RIGHT_128 = random_matrix(128, 128, _RNG), random_matrix(128, 128, _RNG)
_SYSTEM_64 = random_matrix(64, 64, _RNG) + 64 * identity(64)
_RHS_64 = random_matrix(64, 1, _RNG)


@pytest.mark.benchmark(group="matmul n=128")
def test_bench_matmul_ijk(benchmark):
    benchmark.extra_info["label"] = "matmul, i-j-k loop order"
    benchmark.extra_info["baseline"] = True
    benchmark(matmul_ijk, _LEFT_128, _RIGHT_128)


@pytest.mark.benchmark(group="matmul n=128")
def test_bench_matmul_ikj(benchmark):
    benchmark.extra_info["label"] = "matmul, i-k-j loop order"
    benchmark(matmul_ikj, _LEFT_128, _RIGHT_128)


@pytest.mark.benchmark(group="solve n=64")
def test_bench_solve_ours(benchmark):
    benchmark.extra_info["label"] = "our LU solve (pure Python)"
    benchmark(solve, _SYSTEM_64, _RHS_64)


@pytest.mark.benchmark(group="solve n=64")
def test_bench_solve_numpy(benchmark):
    benchmark.extra_info["label"] = "numpy.linalg.solve"
    benchmark.extra_info["baseline"] = True
    a, b = as_array(_SYSTEM_64), as_array(_RHS_64)
    benchmark(np.linalg.solve, a, b)
