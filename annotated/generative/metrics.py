r"""
---
title: FID and the Inception Score
summary: >-
  The Fréchet distance computed through a symmetric eigen-decomposition and checked
  against scipy's sqrtm and an exact SVD, the Inception Score on any classifier's
  probabilities, a digits CNN as the feature extractor later lessons score with, and
  FID's small-sample bias measured.
time: 15 s
references:
  - key: heusel2017gans
    authors:
      - Martin Heusel
      - Hubert Ramsauer
      - Thomas Unterthiner
      - Bernhard Nessler
      - Sepp Hochreiter
    title: >-
      GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
      Equilibrium
    year: 2017
    venue: NeurIPS 2017
    arxiv: "1706.08500"
  - key: salimans2016improved
    authors:
      - Tim Salimans
      - Ian Goodfellow
      - Wojciech Zaremba
      - Vicki Cheung
      - Alec Radford
      - Xi Chen
    title: Improved Techniques for Training GANs
    year: 2016
    venue: NeurIPS 2016
    arxiv: "1606.03498"
  - key: chong2020effectively
    authors: [Min Jin Chong, David Forsyth]
    title: Effectively Unbiased FID and Inception Score and where to find them
    year: 2020
    venue: CVPR 2020
    arxiv: "1911.07023"
  - key: barratt2018note
    authors: [Shane Barratt, Rishi Sharma]
    title: A Note on the Inception Score
    year: 2018
    venue: ICML 2018 Workshop on Theoretical Foundations of Deep Generative Models
    arxiv: "1801.01973"
  - key: dowson1982frechet
    authors: [D. C. Dowson, B. V. Landau]
    title: The Fréchet distance between multivariate normal distributions
    year: 1982
    venue: Journal of Multivariate Analysis 12(3)
    url: https://doi.org/10.1016/0047-259X(82)90077-X
  - key: seitzer2020pytorchfid
    authors: [Maximilian Seitzer]
    title: "pytorch-fid: FID Score for PyTorch"
    year: 2020
    venue: GitHub repository, version 0.3.0
    url: https://github.com/mseitzer/pytorch-fid
worksheet:
  - region: frechet_distance
    hint: >-
      Check both Gaussians and that their dimensions match. Take the symmetric square
      root of sigma1 from its floored eigen-decomposition, form the symmetric middle
      matrix sqrt(sigma1) sigma2 sqrt(sigma1) (symmetrised), and sum the square roots
      of its floored eigenvalues: that is the trace term. Return the squared mean
      difference plus tr(sigma1) + tr(sigma2) - 2 × that trace, clamped at 0.
    tests:
      - test_frechet_distance_matches_scipy_sqrtm
      - test_diagonal_covariances_match_the_closed_form
      - test_one_dimensional_gaussians
  - region: inception_score_from_probabilities
    hint: >-
      Check the rows and splits; cut the rows into `splits` consecutive folds; in each
      fold the marginal p(y) is the mean row, the KL of each row from it is the sum of
      p log p - p log p(y) (xlogy makes 0 log 0 = 0), and the fold's score is exp of
      the mean KL. Return the mean and standard deviation of the fold scores.
    tests:
      - test_uniform_predictions_score_one
      - test_confident_balanced_predictions_score_the_number_of_classes
      - test_inception_score_matches_scipy_entropy
---

A generative model is judged by the pictures it draws, and there are too many of them
to look at. The two numbers every GAN and diffusion paper reports instead both push the
pictures through a trained classifier and compare what comes out:

- the **Fréchet Inception Distance** (FID) [@heusel2017gans] fits a Gaussian to the
  classifier's penultimate-layer features of the real images and another to those of
  the generated ones, and measures how far apart the two Gaussians are. Lower is
  better; identical sets score 0.
- the **Inception Score** (IS) [@salimans2016improved] uses only the generated images
  and the classifier's class probabilities: it is high when each image is confidently
  one class and the classes are used evenly. Higher is better, between 1 and the number
  of classes.

"Inception" is the ImageNet classifier both papers used. Its weights cannot be
downloaded here, and they would be the wrong judge of 16×16 digits anyway, so this
lesson trains its own judge: a small CNN on scikit-learn's digits, cached on disk for
the [DCGAN](dcgan.md) and [diffusion](ddpm.md) lessons to score with. The numbers it
gives are FIDs and ISs *on digit features*: comparable with each other, not with
published ImageNet values.

The Fréchet distance hides a matrix square root, the step where implementations go
wrong: the standard code takes `scipy.linalg.sqrtm` of a non-symmetric product and
patches its complex output. Here it goes through a symmetric matrix and
`numpy.linalg.eigh` instead, matches an exact SVD formula to 1e-13 where `sqrtm` is off
by 1e-6, and the demo measures what every FID user should know: between two samples of
the *same* distribution, FID is not 0 but falls like $1/n$ [@chong2020effectively].
"""

import argparse
from pathlib import Path

import numpy as np
import scipy.linalg
import scipy.ndimage
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from annotated.data import cached_weights, digit_images, integer, torch_device
from annotated.figures import figure, save

# ## The Fréchet distance between two Gaussians
#
# Fit $\mathcal N(\mu_1, \Sigma_1)$ to one set of feature vectors and
# $\mathcal N(\mu_2, \Sigma_2)$ to the other. The Fréchet (or 2-Wasserstein) distance
# between them has a closed form [@dowson1982frechet]; its square is
#
# $$
# \begin{aligned}
# d^2 &= \lVert \mu_1 - \mu_2 \rVert^2 \\
# &\quad + \operatorname{Tr}\big(\Sigma_1 + \Sigma_2
#   - 2\,(\Sigma_1 \Sigma_2)^{1/2}\big),
# \end{aligned}
# $$
#
# and FID is this $d^2$ (no square root is taken at the end). The first term compares
# the centres, the second the shapes. For one-dimensional Gaussians it is
# $(\mu_1-\mu_2)^2 + (\sigma_1 - \sigma_2)^2$; for diagonal covariances, the same
# sum over the axes.
#
# Only the *trace* of $(\Sigma_1\Sigma_2)^{1/2}$ is needed, and a trace is the sum of
# the eigenvalues: $\operatorname{Tr}(\Sigma_1\Sigma_2)^{1/2} = \sum_i \sqrt{\lambda_i}$
# with $\lambda_i$ the eigenvalues of $\Sigma_1\Sigma_2$. That product is not
# symmetric, so a general eigen-solver would return them with rounding noise in the
# imaginary parts. But $AB$ and $BA$ have the same eigenvalues, and with
# $A = \Sigma_1^{1/2}$, $B = \Sigma_1^{1/2}\Sigma_2$ that gives
#
# $$
# \lambda(\Sigma_1\Sigma_2) = \lambda\big(\Sigma_1^{1/2}\,\Sigma_2\,\Sigma_1^{1/2}\big),
# $$
#
# a symmetric positive semi-definite matrix, whose eigenvalues `numpy.linalg.eigh`
# returns real and sorted. Two symmetric eigen-decompositions, no complex numbers.
#
# ### The rounding floor
#
# Covariances of real features are often *singular*: fewer samples than feature
# dimensions (rank at most $n-1$), or a feature that is constant (a ReLU unit that never
# fires). Their zero eigenvalues come back from `eigh` as $\pm 10^{-16}$-sized noise,
# and a square root magnifies noise: $\sqrt{10^{-16}} = 10^{-8}$, summed over dozens of
# null directions, puts a $10^{-6}$ error into a value that should be exact. Rounding
# cannot resolve an eigenvalue smaller than about $d\,\varepsilon\,\lambda_\max$
# ($\varepsilon = 2.2\times10^{-16}$, float64's machine epsilon), so `psd_eigenvalues`
# sets everything below that floor to exactly 0, the negative noise included. What is
# more negative than the floor is not noise: the matrix is not a covariance, and the
# public function says so.


def psd_eigenvalues(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r"""Eigenvalues and eigenvectors of a symmetric positive semi-definite `matrix`
    `[d, d]`, with those below the rounding floor $d\,\varepsilon\,\lambda_\max$ set to
    0."""
    values, vectors = np.linalg.eigh(matrix)  # [d], [d, d]
    floor = len(values) * np.finfo(np.float64).eps * max(np.abs(values).max(), 1e-300)
    return np.where(values > floor, values, 0.0), vectors


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    r"""$\lVert\mu_1-\mu_2\rVert^2 + \operatorname{Tr}(\Sigma_1 + \Sigma_2
    - 2(\Sigma_1\Sigma_2)^{1/2})$ for means `[d]` and covariances `[d, d]`, in
    float64, through the symmetric matrix $\Sigma_1^{1/2}\Sigma_2\Sigma_1^{1/2}$."""
    mu1, sigma1 = check_gaussian("mu1", mu1, "sigma1", sigma1)
    mu2, sigma2 = check_gaussian("mu2", mu2, "sigma2", sigma2)
    if mu1.shape != mu2.shape:
        raise ValueError(
            f"frechet_distance: the two Gaussians live in {mu1.shape[0]} and "
            f"{mu2.shape[0]} dimensions; they must match"
        )
    values, vectors = psd_eigenvalues(sigma1)
    sqrt_sigma1 = (vectors * np.sqrt(values)) @ vectors.T  # [d, d], symmetric
    middle = sqrt_sigma1 @ sigma2 @ sqrt_sigma1  # [d, d]
    # Rounding leaves `middle` asymmetric in its last bits; eigh reads one triangle
    # only, so symmetrise it explicitly rather than let that choice decide.
    middle = (middle + middle.T) / 2
    trace_sqrt = np.sqrt(psd_eigenvalues(middle)[0]).sum()
    difference = mu1 - mu2  # [d]
    shapes = np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt
    # The exact value is >= 0; rounding can take a distance of 0 a hair below.
    return float(max(difference @ difference + shapes, 0.0))


# The checks sit behind the one function every FID goes through. A symmetric matrix is
# required because `eigh` reads only its lower triangle and would silently compute
# with a different matrix; a covariance must be positive semi-definite, and the
# rounding floor above is the tolerance.


def check_gaussian(
    mu_name: str, mu, sigma_name: str, sigma
) -> tuple[np.ndarray, np.ndarray]:
    """`mu` and `sigma` as float64 arrays, or a ValueError naming the argument that is
    not a mean `[d]` with its covariance `[d, d]`."""
    mu = np.asarray(mu, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise ValueError(
            f"frechet_distance: {mu_name} must be a vector [d] and {sigma_name} a "
            f"[d, d] matrix, got {mu.shape} and {sigma.shape}"
        )
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"frechet_distance: {mu_name} and {sigma_name} must be finite")
    scale = max(np.abs(sigma).max(initial=0.0), 1e-300)
    if np.abs(sigma - sigma.T).max(initial=0.0) > 1e-10 * scale:
        raise ValueError(f"frechet_distance: {sigma_name} must be symmetric")
    values = np.linalg.eigvalsh(sigma)
    if len(values) and values[0] < -len(values) * np.finfo(np.float64).eps * scale:
        raise ValueError(
            f"frechet_distance: {sigma_name} must be positive semi-definite, but has "
            f"the eigenvalue {values[0]:.3g}"
        )
    return mu, sigma


# ## The standard implementation, and its patches
#
# The FID code most papers ran [@heusel2017gans; @seitzer2020pytorchfid]
# (`pytorch_fid/fid_score.py`, `calculate_frechet_distance`) takes
# `scipy.linalg.sqrtm(sigma1 @ sigma2)` directly: a Schur decomposition of the
# non-symmetric product, in complex arithmetic when needed. Two patches follow:
#
# 1. if the root is not finite ("the product might be almost singular"), it adds
#    $\varepsilon I$ with $\varepsilon = 10^{-6}$ to both covariances and tries again;
#    the offset lowers the FID by about $2\varepsilon d$ when the two covariances are
#    alike and well conditioned (by exactly that when they are equal), and by about
#    $2\sqrt{\varepsilon\lambda}$, far more, for each direction in which one of them
#    is singular and the other has variance $\lambda$: a bias nobody reports;
# 2. if the root came back complex, it checks that the imaginary parts on the
#    diagonal are below $10^{-3}$ and drops them; larger ones raise.
#
# Both patches treat symptoms of asking a general-matrix routine about a product whose
# eigenvalues are known to be real and non-negative. Restated here line for line (with
# the error as a `ValueError`) as the baseline of the test and the benchmark. With
# fewer samples than dimensions the complex branch is the usual one, and the result is
# off by about $10^{-6}$, the noise of the null space under a square root.


def frechet_distance_sqrtm(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    eps: float = 1e-6,
) -> float:
    """The Fréchet distance as pytorch-fid computes it, through
    `scipy.linalg.sqrtm(sigma1 @ sigma2)`."""
    difference = mu1 - mu2
    root = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(root).all():
        offset = np.eye(sigma1.shape[0]) * eps
        root = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(root):
        if not np.allclose(np.diagonal(root).imag, 0, atol=1e-3):
            raise ValueError(f"Imaginary component {np.abs(root.imag).max()}")
        root = root.real
    trace_sqrt = np.trace(root)
    shapes = np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt
    return float(difference @ difference + shapes)


# ## From feature vectors to FID
#
# The Gaussians are fitted by the sample mean and the unbiased sample covariance
# ($1/(n-1)$, `numpy.cov`'s default and pytorch-fid's), in float64 whatever the
# features came in: a covariance accumulated in float32 loses the small eigenvalues the
# square root is most sensitive to. At least two vectors per set are needed for a
# covariance; fewer than the number of dimensions is allowed (the covariance is then
# singular, which the eigen route handles), but FID then means little, as the demo
# shows.


def as_matrix(name: str, values) -> np.ndarray:
    """A `[n, d]` tensor or array as float64 NumPy, or a ValueError naming `name`."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or len(values) < 2:
        raise ValueError(
            f"{name} must be a matrix [n, features] with n >= 2, got shape "
            f"{values.shape}"
        )
    if not np.isfinite(values).all():
        raise ValueError(f"{name} must be finite, but holds NaN or inf")
    return values


def fid_from_features(features_a, features_b) -> float:
    """FID between two sets of feature vectors `[n_a, d]` and `[n_b, d]` (NumPy or
    torch)."""
    features_a = as_matrix("features_a", features_a)
    features_b = as_matrix("features_b", features_b)
    if features_a.shape[1] != features_b.shape[1]:
        raise ValueError(
            f"features_a has {features_a.shape[1]} features per row but features_b "
            f"has {features_b.shape[1]}; they must match"
        )
    mu_a, mu_b = features_a.mean(axis=0), features_b.mean(axis=0)  # [d]
    sigma_a = np.cov(features_a, rowvar=False).reshape(len(mu_a), len(mu_a))  # [d, d]
    sigma_b = np.cov(features_b, rowvar=False).reshape(len(mu_b), len(mu_b))  # [d, d]
    return frechet_distance(mu_a, sigma_a, mu_b, sigma_b)


# ## The Inception Score
#
# A classifier gives every image $x$ a distribution $p(y\mid x)$ over $C$ classes; the
# set's marginal is $p(y) = \mathbb E_x\, p(y\mid x)$. The score
# [@salimans2016improved] is
#
# $$
# \mathrm{IS} = \exp\Big(\mathbb E_x\,
#   \mathrm{KL}\big(p(y\mid x)\,\Vert\,p(y)\big)\Big).
# $$
#
# The expected KL is the mutual information between image and label,
# $H(p(y)) - \mathbb E_x H(p(y\mid x))$: large when the marginal is spread over the
# classes (diversity) and each conditional is peaked (confidence). So
# $1 \le \mathrm{IS} \le C$: 1 when every image gets the same distribution (uniform
# ones included), $C$ when every image is one class with certainty and the classes
# are used equally often.
#
# The original code splits the $N$ images into $k = 10$ consecutive folds, computes
# the score on each (with that fold's own marginal) and reports the mean and standard
# deviation over folds. Barratt and Sharma [@barratt2018note] list what this hides: the
# fold size changes the value (a marginal estimated from fewer images is more peaked,
# so the score is biased low); a different classifier, even a retrained Inception,
# changes it by more than many reported improvements; and it never looks at the real
# data, so a generator that draws one perfect image per class scores the maximum, $C$.
# It is computed here on *any* classifier's probabilities. `xlogy` makes
# $0 \log 0 = 0$, so one-hot probabilities need no epsilon.


def inception_score_from_probabilities(
    probabilities, splits: int = 10
) -> tuple[float, float]:
    r"""Mean and standard deviation over `splits` consecutive folds of
    $\exp(\mathbb E_x \mathrm{KL}(p(y|x)\,\Vert\,p(y)))$, from class probabilities
    `[n, C]` whose rows sum to 1."""
    probabilities = as_matrix("probabilities", probabilities)
    if (probabilities < 0).any() or not np.allclose(
        probabilities.sum(axis=1), 1.0, atol=1e-4
    ):
        raise ValueError(
            "probabilities must be non-negative rows that sum to 1 (softmax outputs)"
        )
    if not isinstance(splits, int) or not 1 <= splits <= len(probabilities):
        raise ValueError(
            f"splits must be an int between 1 and the {len(probabilities)} rows, "
            f"got {splits!r}"
        )
    probabilities = torch.from_numpy(probabilities)
    scores = []
    for index in range(splits):
        start = index * len(probabilities) // splits
        stop = (index + 1) * len(probabilities) // splits
        fold = probabilities[start:stop]  # [n_fold, C]
        marginal = fold.mean(dim=0, keepdim=True)  # [1, C]
        kl = torch.special.xlogy(fold, fold) - torch.special.xlogy(fold, marginal)
        scores.append(torch.exp(kl.sum(dim=1).mean()).item())
    return float(np.mean(scores)), float(np.std(scores))


# ## The judge: a digits classifier
#
# Inception v3 reads 299×299 colour photographs; our generators draw 16×16 digits. The
# judge here is the smallest network that reads digits well: two 3×3 convolutions with
# max pooling (16×16 → 8×8 → 4×4), a 64-unit hidden layer, and the 10-way output. The
# 64 hidden activations, after their ReLU, are the *features* FID compares, as
# Inception's 2048 pooled activations are; the softmax of the output is $p(y\mid x)$
# for the IS. A ReLU unit that never fires on digits is a constant feature: in the
# trained judge only 28 of the 64 features ever vary (the demo prints it), so the
# covariances here are singular however many samples there are, and the eigen route's
# floor is not an academic corner.


class DigitFeatures(nn.Module):
    """A CNN on `[n, 1, 16, 16]` digits in [0, 1]: `features` gives the `[n, 64]`
    penultimate activations, `forward` the `[n, 10]` logits."""

    def __init__(self, width: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.hidden = nn.Linear(32 * 4 * 4, width)
        self.classify = nn.Linear(width, 10)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(images)), 2)  # [n, 16, 8, 8]
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # [n, 32, 4, 4]
        return F.relu(self.hidden(x.flatten(1)))  # [n, 64]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(images))  # [n, 10]


# ### Training it, once
#
# Adam and cross-entropy on the 1,438 training digits of `digit_images(16)`, with one
# augmentation: each batch is shifted by up to one pixel in each direction (`torch.roll`
# on the zero-padded border), because generated digits are not centred as carefully as
# scanned ones, and a judge that has only seen centred digits would call a shifted one
# a different distribution. Thirty epochs reach about 98 % on the 359 test digits.
#
# Later lessons need the *same* judge, or their FIDs would not be comparable between
# runs. `feature_extractor` trains it once and keeps the weights with
# `annotated.data.cached_weights`, a safetensors file in the user's cache named after
# this file's hash: editing this lesson trains a new judge. A shorter training (the
# tests') is cached under its own name, so it never replaces the real judge.

EPOCHS = 30


def train_extractor(
    epochs: int = EPOCHS, seed: int = 0, device: str = "cpu"
) -> DigitFeatures:
    """Train a `DigitFeatures` on the digits' training split; returns it in eval
    mode."""
    x_train, y_train, _, _ = digit_images(size=16)
    images = torch.from_numpy(x_train).to(device)  # [1438, 1, 16, 16]
    labels = torch.from_numpy(y_train).to(device)  # [1438]
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = DigitFeatures().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for _ in tqdm(range(epochs), desc="training the judge"):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), 64):
            batch = order[start : start + 64]
            dy, dx = torch.randint(-1, 2, (2,), generator=generator).tolist()
            shifted = torch.roll(images[batch], shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(model(shifted), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def feature_extractor(epochs: int = EPOCHS, device: str = "cpu") -> DigitFeatures:
    """The trained digits judge, from the cache (training it on the first call), in
    eval mode on `device`."""
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    name = "digits-features" if epochs == EPOCHS else f"digits-features-{epochs}-epochs"

    def train() -> dict:
        trained = train_extractor(epochs, device=device)
        return {key: value.cpu() for key, value in trained.state_dict().items()}

    model = DigitFeatures()
    model.load_state_dict(cached_weights(name, __file__, train))
    return model.to(device).eval()


# ## The API later lessons call
#
# `fid(images_a, images_b)` and `inception_score(images)` take images the way every
# generative lesson here produces them, `[n, 1, 16, 16]` in [0, 1] (a tanh output maps
# there by $(x + 1)/2$), and pass them through the judge in batches without
# gradients. Images outside [0, 1] are refused rather than scored: a generator's
# $[-1, 1]$ output fed in by mistake would otherwise give a plausible-looking, wrong
# FID. Pass `model=` to reuse one loaded judge across many calls.


def check_images(name: str, images) -> torch.Tensor:
    """`images` as a float tensor `[n, 1, 16, 16]` in [0, 1], or a ValueError/TypeError
    naming `name`."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise TypeError(
            f"{name} must be a float tensor or array, got "
            f"{getattr(images, 'dtype', type(images).__name__)}"
        )
    if images.ndim != 4 or tuple(images.shape[1:]) != (1, 16, 16):
        raise ValueError(
            f"{name} must be [n, 1, 16, 16] digit images, got {tuple(images.shape)}"
        )
    if len(images) < 2:
        raise ValueError(f"{name} needs at least 2 images, got {len(images)}")
    low, high = images.min().item(), images.max().item()
    if not (0.0 <= low and high <= 1.0):
        raise ValueError(
            f"{name} must lie in [0, 1], got values in [{low:.3g}, {high:.3g}]; "
            "map a tanh output with (x + 1) / 2"
        )
    return images.float()


@torch.no_grad()
def extract(
    images, model: DigitFeatures | None = None, batch_size: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """The judge's features `[n, 64]` and class probabilities `[n, 10]` for `images`
    `[n, 1, 16, 16]` in [0, 1], as float64 NumPy arrays."""
    images = check_images("images", images)
    model = feature_extractor() if model is None else model
    device = next(model.parameters()).device
    features, probabilities = [], []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(device)
        hidden = model.features(batch)  # [batch, 64]
        features.append(hidden.double().cpu())
        probabilities.append(model.classify(hidden).double().softmax(dim=1).cpu())
    return torch.cat(features).numpy(), torch.cat(probabilities).numpy()


def fid(images_a, images_b, model: DigitFeatures | None = None) -> float:
    """FID between two sets of `[n, 1, 16, 16]` digit images in [0, 1], on the digits
    judge's 64 features. Lower is closer; 0 for identical sets."""
    check_images("images_a", images_a)
    check_images("images_b", images_b)
    model = feature_extractor() if model is None else model
    return fid_from_features(extract(images_a, model)[0], extract(images_b, model)[0])


def inception_score(
    images, splits: int = 10, model: DigitFeatures | None = None
) -> tuple[float, float]:
    """Mean and standard deviation over `splits` folds of the Inception Score of
    `[n, 1, 16, 16]` digit images in [0, 1], on the digits judge. Between 1 and 10."""
    return inception_score_from_probabilities(extract(images, model)[1], splits)


# ## What FID measures on a finite sample
#
# FID is estimated from $n$ samples, and the estimate is biased upwards. Even the mean
# term shows it: two independent samples of one distribution have sample means that
# differ by noise of covariance $\Sigma/n$ each, so
# $\mathbb E\lVert\hat\mu_1 - \hat\mu_2\rVert^2 = 2\operatorname{Tr}\Sigma / n$, not 0.
# The trace term adds a positive bias of the same $1/n$ order. Chong and Forsyth
# [@chong2020effectively] show the expected FID is, to first order, linear in $1/n$:
#
# $$
# \mathbb E\,\mathrm{FID}_n \approx \mathrm{FID}_\infty + \frac{k}{n},
# $$
#
# where $k$ depends on the generator, so two models compared at the same $n$ can swap
# order at another $n$. Their fix, $\mathrm{FID}_\infty$: compute FID at several $n$,
# fit the line in $1/n$, and report its intercept. The demo does this for two disjoint
# samples of the *real* digits, whose true FID is 0.


def fid_against_sample_size(
    features: np.ndarray, sizes: list[int], repeats: int, seed: int = 0
) -> np.ndarray:
    """FID between two disjoint random samples of `n` rows of `features`, for each `n`
    in `sizes`, `repeats` times: `[len(sizes), repeats]`."""
    if 2 * max(sizes) > len(features):
        raise ValueError(
            f"sizes up to {max(sizes)} need {2 * max(sizes)} feature rows, "
            f"got {len(features)}"
        )
    rng = np.random.default_rng(seed)
    values = np.zeros((len(sizes), repeats))
    for row, n in enumerate(tqdm(sizes, desc="FID against n")):
        for column in range(repeats):
            order = rng.permutation(len(features))
            values[row, column] = fid_from_features(
                features[order[:n]], features[order[n : 2 * n]]
            )
    return values


def extrapolate_fid(sizes: list[int], values: np.ndarray) -> tuple[float, float]:
    r"""Least-squares fit of $\mathrm{FID}_n = \mathrm{FID}_\infty + k/n$ to the mean of
    each row of `values`; returns $(\mathrm{FID}_\infty, k)$."""
    inverse = 1.0 / np.asarray(sizes, dtype=np.float64)
    slope, intercept = np.polyfit(inverse, values.mean(axis=1), 1)
    return float(intercept), float(slope)


# ## A sanity check: corrupted real images
#
# A metric that cannot rank a known order is useless, so Heusel et al.
# [@heusel2017gans] corrupted real images by increasing amounts and checked that FID
# rises with the disturbance. Two corruptions here: Gaussian noise of standard
# deviation $\sigma$ (clipped back to [0, 1]), and a Gaussian blur of width $\sigma$
# pixels. FID against the clean training digits should rise steadily with $\sigma$ for
# both; the IS, which never looks at real images, should fall as the judge grows less
# sure.


def add_noise(images: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    """`images` plus Gaussian noise of standard deviation `sigma`, clipped to [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(images.shape, generator=generator)
    return (images + sigma * noise).clamp(0.0, 1.0)


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """`images [n, 1, H, W]` blurred by a Gaussian of `sigma` pixels (none at 0)."""
    blurred = scipy.ndimage.gaussian_filter(
        images.numpy(), sigma=(0, 0, sigma, sigma), mode="constant"
    )
    return torch.from_numpy(blurred)


# ## The example
#
# The page's diagrams and the benchmark use the Fréchet distance on two fixed sets of
# 64-dimensional features, 500 each: the sizes the judge produces.


def example():
    """FID between two seeded sets of 500 64-dimensional feature vectors."""
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(64, 64)) / 8
    features_a = rng.normal(size=(500, 64)) @ mixing
    features_b = rng.normal(size=(500, 64)) @ mixing + 0.1
    return fid_from_features, (features_a, features_b)


def dataflow(output):
    """The steps of `fid_from_features` on the example, with the shapes between them
    (declared by the lesson, not traced)."""
    nodes = [
        ("a", "features_a"),
        ("b", "features_b"),
        ("stats", "mean, np.cov (float64)"),
        ("eigh1", "eigh(Σ₁) → Σ₁^½"),
        ("middle", "Σ₁^½ Σ₂ Σ₁^½"),
        ("eigh2", "eigvalsh, floor, √, sum"),
        ("fid", f"‖μ₁−μ₂‖² + Tr Σ₁ + Tr Σ₂ − 2 Tr = {output:.3f}"),
    ]
    edges = [
        ("a", "stats", "[500, 64]"),
        ("b", "stats", "[500, 64]"),
        ("stats", "eigh1", "Σ₁ [64, 64]"),
        ("eigh1", "middle", "Σ₁^½ [64, 64]"),
        ("stats", "middle", "Σ₂ [64, 64]"),
        ("middle", "eigh2", "[64, 64]"),
        ("eigh2", "fid", "Tr (Σ₁Σ₂)^½"),
        ("stats", "fid", "μ₁, μ₂ [64]"),
    ]
    return nodes, edges


# ## The demo


def plot_bias(sizes, values, trace_sigma, fid_infinity, slope, out: Path) -> Path:
    """FID between disjoint real samples against n, and against 1/n with the fit."""
    fig, (left, right) = figure(panels=2)
    sizes = np.asarray(sizes, dtype=np.float64)
    mean, std = values.mean(axis=1), values.std(axis=1)
    left.errorbar(
        sizes, mean, yerr=std, marker="o", capsize=3, label="FID, real vs real"
    )
    left.plot(
        sizes,
        2 * trace_sigma / sizes,
        "--",
        label=r"mean term $2\,\mathrm{Tr}\Sigma/n$",
    )
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xticks(sizes, [str(int(n)) for n in sizes])
    left.minorticks_off()
    left.set_xlabel("samples per set $n$")
    left.set_ylabel("FID")
    left.set_title("FID of one distribution against itself")
    left.legend()
    inverse = 1.0 / sizes
    right.errorbar(inverse, mean, yerr=std, marker="o", capsize=3, ls="none")
    grid = np.linspace(0.0, inverse.max(), 50)
    right.plot(
        grid,
        fid_infinity + slope * grid,
        label=rf"fit: $\mathrm{{FID}}_\infty$ = {fid_infinity:.2f} + {slope:.0f}/$n$",
    )
    right.axhline(0.0, color="gray", lw=0.8)
    right.set_xlabel("$1/n$")
    right.set_ylabel("FID")
    right.set_title(r"linear in $1/n$; the intercept is $\mathrm{FID}_\infty$")
    right.legend()
    return save(
        fig,
        out / "bias.png",
        caption="FID between two disjoint random samples of the real digits (mean and "
        "spread over repeats): positive, falling like 1/n with n, and extrapolating "
        "to nearly 0 at 1/n = 0 (Chong & Forsyth's FID∞).",
    )


def plot_corruptions(images, noise, blur_levels, results, out: Path) -> Path:
    """One digit under each corruption, and FID and IS against the corruption's
    strength."""
    fig, axes = figure(panels=3)
    strip = [add_noise(images[:1], s)[0, 0] for s in noise]
    strip_blur = [blur(images[:1], s)[0, 0] for s in blur_levels]
    rows = [torch.cat(strip, dim=1), torch.cat(strip_blur, dim=1)]
    width = max(row.shape[1] for row in rows)
    rows = [F.pad(row, (0, width - row.shape[1])) for row in rows]
    axes[0].imshow(torch.cat(rows, dim=0), cmap="gray_r", vmin=0, vmax=1)
    axes[0].set_xticks([])
    axes[0].set_yticks([8, 24], ["noise", "blur"])
    axes[0].set_title("one test digit, σ rising left to right")
    for ax, kind, levels in ((axes[1], "noise", noise), (axes[2], "blur", blur_levels)):
        fids = [results[kind][s][0] for s in levels]
        scores = [results[kind][s][1] for s in levels]
        ax.plot(levels, fids, "o-", color="C0", label="FID (left)")
        ax.set_xlabel(f"{kind} $\\sigma$" + (" (pixels)" if kind == "blur" else ""))
        ax.set_ylabel("FID against clean training digits")
        twin = ax.twinx()
        twin.plot(levels, scores, "s--", color="C1", label="IS (right)")
        twin.set_ylabel("Inception Score")
        ax.set_title(f"Gaussian {kind}")
        ax.legend(
            handles=ax.get_lines() + twin.get_lines(),
            loc="upper center",
            bbox_to_anchor=(0.5, -0.2),
            ncol=2,
        )
    return save(
        fig,
        out / "corruptions.png",
        caption="Corrupting the 359 test digits with Gaussian noise or blur: FID "
        "against the clean training digits rises steadily with the strength, and the "
        "Inception Score falls.",
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train (or load) the judge, score real digits, measure FID's bias against n and
    its response to corruption."""
    parser = argparse.ArgumentParser(
        description="FID and the Inception Score on a digits judge: the bias of FID "
        "with sample size, and its response to noise and blur.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--epochs",
        type=integer(at_least=1),
        default=EPOCHS,
        help="training epochs of the judge",
    )
    parser.add_argument(
        "--repeats",
        type=integer(at_least=1),
        default=20,
        help="random sample pairs per size n",
    )
    parser.add_argument(
        "--sizes",
        type=integer(at_least=2, at_most=898),
        nargs="+",
        default=[25, 50, 100, 200, 400, 800],
        help="sample sizes n for the bias measurement (2n <= 1,797)",
    )
    parser.add_argument(
        "--seed", type=integer(at_least=0), default=0, help="random seed"
    )
    parser.add_argument(
        "--threads",
        type=integer(at_least=1),
        default=1,
        help="CPU threads for torch: the network is tiny, so more threads mostly wait",
    )
    parser.add_argument(
        "--device",
        type=torch_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device for the judge",
    )
    parser.add_argument("--out", default="out/metrics", help="folder for the figures")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    model = feature_extractor(args.epochs, args.device)
    x_train, y_train, x_test, y_test = (
        torch.from_numpy(a) for a in digit_images(size=16)
    )
    train_features, _ = extract(x_train, model)
    test_features, test_probabilities = extract(x_test, model)
    accuracy = float((test_probabilities.argmax(axis=1) == y_test.numpy()).mean())
    print(f"judge: test accuracy {accuracy:.4f} on {len(y_test)} digits")
    varying = int((train_features.std(axis=0) > 0).sum())
    print(f"judge: {varying} of its {train_features.shape[1]} features ever vary")
    fid_real = fid_from_features(train_features, test_features)
    score, score_std = inception_score_from_probabilities(test_probabilities)
    print(f"FID(train digits, test digits) {fid_real:.3f}")
    print(f"Inception Score of the test digits {score:.2f} ± {score_std:.2f} (max 10)")

    pool = np.concatenate([train_features, test_features])  # [1797, 64]
    trace_sigma = float(np.trace(np.cov(pool, rowvar=False)))
    values = fid_against_sample_size(pool, args.sizes, args.repeats, args.seed)
    fid_infinity, slope = extrapolate_fid(args.sizes, values)
    for n, row in zip(args.sizes, values):
        mean, spread = row.mean(), row.std()
        print(f"n {n:4d}: FID {mean:8.3f} ± {spread:.3f}   n·FID {n * mean:7.1f}")
    print(f"FID_inf {fid_infinity:.3f} (fit FID_n = FID_inf + {slope:.1f}/n)")
    plot_bias(args.sizes, values, trace_sigma, fid_infinity, slope, out)

    noise_levels = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    blur_levels = [0.0, 0.5, 1.0, 1.5, 2.0]
    results = {"noise": {}, "blur": {}}
    for kind, levels in (("noise", noise_levels), ("blur", blur_levels)):
        for level in levels:
            corrupted = (
                add_noise(x_test, level) if kind == "noise" else blur(x_test, level)
            )
            features, probabilities = extract(corrupted, model)
            results[kind][level] = (
                fid_from_features(train_features, features),
                inception_score_from_probabilities(probabilities)[0],
            )
        print(
            f"{kind}: FID "
            + ", ".join(f"{results[kind][s][0]:.2f}" for s in levels)
            + f" for σ = {levels}"
        )
    plot_corruptions(x_test, noise_levels, blur_levels, results, out)
    monotone = all(
        np.all(np.diff([results[kind][s][0] for s in levels]) > 0)
        for kind, levels in (("noise", noise_levels), ("blur", blur_levels))
    )
    return {
        "accuracy": accuracy,
        "fid_train_test": fid_real,
        "inception_score": score,
        "fid_smallest_n": float(values[0].mean()),
        "fid_largest_n": float(values[-1].mean()),
        "fid_infinity": fid_infinity,
        "corruption_monotone": float(monotone),
    }


if __name__ == "__main__":
    main()


# ## Exercises
#
# 1. Show that the nonzero eigenvalues of $\Sigma_1\Sigma_2$, for sample covariances
#    $\Sigma_1 = X^\top X/(n_1-1)$ and $\Sigma_2 = Y^\top Y/(n_2-1)$ of centred data,
#    are the squared singular values of $XY^\top/\sqrt{(n_1-1)(n_2-1)}$. Write FID
#    with `scipy.linalg.svdvals` (the test does) and say when it is cheaper than
#    `eigh` on $d\times d$ matrices.
# 2. Train the judge twice with different seeds and compute the FID between the train
#    and test digits with each. How far apart are the two numbers, against the
#    $1/n$ bias at $n = 359$? What does that say about comparing FIDs across papers?
# 3. Feed `inception_score_from_probabilities` with `splits=1` ten images, one
#    confident image per class, and then the same ten repeated 100 times (1,000 rows).
#    Both score 10: what does the IS miss that FID would catch? (With the default
#    `splits=10` the ten images fall one to a fold, and each fold scores 1.)
# 4. Replace the features by the judge's *logits* (10 dimensions) and repeat the
#    corruption experiment. Does FID still rise monotonically, and which corruption
#    does it become blind to?
