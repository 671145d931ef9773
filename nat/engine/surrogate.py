"""Accuracy predictors (surrogates) that rank candidate architectures inside the search.

The search keeps an archive of (integer encoding, validation accuracy) pairs from real
evaluations, typically tens to a few hundred, and fits a surrogate on it so NSGA-II can
rank thousands of candidates without training them. Only the *order* of the predictions
matters there, so models are compared by Kendall's tau, not by RMSE.

Models, all behind the same ``fit(X, y)`` / ``predict(X)`` interface on encodings of one
search space (see :data:`SURROGATES`):

* ``"rbf"``: cubic radial-basis-function interpolation with a linear tail (NAT's default);
* ``"gp"``: Gaussian process, Matérn 5/2 kernel plus white noise;
* ``"mlp"``: small multi-layer perceptron on a standardised target;
* ``"trees"``: extremely randomised trees;
* ``"adaptive"``: NAT's adaptive switching, which picks one of the four above by
  cross-validated Kendall's tau on the archive at every fit.

Each model is a scikit-learn :class:`~sklearn.pipeline.Pipeline`, the shared feature
encoding (:func:`encode_features`) followed by the regressor, and every :class:`Surrogate`
is itself a scikit-learn regressor, so the adaptive switching cross-validates it with
:func:`~sklearn.model_selection.cross_validate`. All models are deterministic for a given
``seed``. An archive too small or too flat to learn from (fewer than
:data:`MIN_POINTS` points, or constant accuracy) gives a surrogate that predicts the mean
accuracy, so the search can start before the archive is informative.
"""

from __future__ import annotations

import functools
import time
import warnings
from typing import Any, ClassVar

import numpy as np
from scipy import stats
from scipy.interpolate import RBFInterpolator
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.compose import TransformedTargetRegressor
from sklearn.ensemble import ExtraTreesRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel
from sklearn.metrics import make_scorer
from sklearn.model_selection import KFold, cross_validate
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from threadpoolctl import ThreadpoolController

from ..spec import SURROGATE_MODELS

__all__ = [
    "MIN_POINTS",
    "SURROGATES",
    "AdaptiveSurrogate",
    "GPSurrogate",
    "MLPSurrogate",
    "RBFSurrogate",
    "Surrogate",
    "TreesSurrogate",
    "encode_features",
    "holdout_metrics",
    "make_surrogate",
    "rank_metrics",
]

MIN_POINTS = 4
"""Fewest archive points a model is fitted on; below this the surrogate predicts the mean."""

# Accuracy spreads smaller than this are treated as constant: there is no order to learn.
_FLAT_Y = 1e-12


@functools.cache
def _blas_controller() -> ThreadpoolController:
    # Built once, on first use (after numpy/scipy have loaded their BLAS): building one
    # inspects every loaded library, ~10 ms, too slow to repeat for each CV fold.
    return ThreadpoolController()


def _one_blas_thread() -> Any:
    """Context limiting BLAS to one thread.

    Surrogate matrices are tiny (hundreds of rows); multi-threaded BLAS spends more time
    synchronising than computing on them (an MLP fit was ten times slower with two
    threads), and a search may run other work on the remaining cores.
    """
    return _blas_controller().limit(limits=1, user_api="blas")


# -- inputs ----------------------------------------------------------------------------------
def _check_encodings(space: Any, X: np.ndarray) -> np.ndarray:
    """``X`` as a 2-D float array of valid encodings of ``space``, or a ValueError."""
    return space.check(X).astype(float)


def _check_accuracies(y: np.ndarray, n: int) -> np.ndarray:
    """``y`` as a 1-D float array of ``n`` finite accuracies, or a ValueError."""
    y = np.asarray(y, dtype=float)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"need one accuracy per encoding: y has shape {y.shape}, X has {n} rows")
    bad = ~np.isfinite(y)
    if bad.any():
        # A NaN is a failed evaluation; scoring it as anything would corrupt the ranking.
        raise ValueError(
            f"accuracies contain {int(bad.sum())} NaN/infinite value(s), first at index "
            f"{int(np.argmax(bad))}: drop or re-evaluate failed architectures before fitting"
        )
    return y


def encode_features(space: Any, X: np.ndarray) -> np.ndarray:
    """Float features in [0, 1] of encodings ``X`` (n, n_var) of ``space``.

    Each variable is scaled by its range, ``(x - lower) / (upper - lower)``, which is
    ``x / upper`` for the usual ``lower == 0``. Variables with a single choice
    (``upper == lower``) are dropped: they carry no information and would only add a
    constant dimension. Returns an (n, n_free) float64 array; deterministic.
    """
    # Hand-written, not MinMaxScaler: that scales by the data's range (not the space's)
    # and multiplies by a reciprocal, which differs from this division in the last bit.
    X = _check_encodings(space, X)
    lower = np.asarray(space.lower, dtype=float)
    span = np.asarray(space.upper, dtype=float) - lower
    free = span > 0
    return (X[:, free] - lower[free]) / span[free]


def _pipeline(space: Any, regressor: Any) -> Pipeline:
    """``regressor`` behind the feature encoding of ``space``: a model of raw encodings."""
    encode = FunctionTransformer(functools.partial(encode_features, space))
    return Pipeline([("encode", encode), ("model", regressor)])


# -- the interface ---------------------------------------------------------------------------
class Surrogate(RegressorMixin, BaseEstimator):
    """Predicts validation accuracy (0..1) from integer encodings of one search space.

    A scikit-learn regressor whose parameters are ``space`` and ``seed``. Subclasses give
    the regressor on encoded features (``_regressor``), which ``fit`` puts behind the
    encoding in a pipeline (``pipeline_``); this class checks shapes and values, and
    handles archives too small or flat to learn from by predicting their mean accuracy.
    """

    name: ClassVar[str] = "surrogate"

    def __init__(self, space: Any, seed: int = 0) -> None:
        self.space = space
        self.seed = int(seed)
        self.mean_: float | None = None  # mean training accuracy, None until fitted
        self.constant_ = False  # True when the last fit had nothing to learn from

    def fit(self, X: np.ndarray, y: np.ndarray) -> Surrogate:
        """Fit on encodings ``X`` (n, n_var) and accuracies ``y`` (n,) in 0..1; returns self.

        Raises ValueError on a wrong width, out-of-range encodings, NaN accuracies or an
        empty archive.
        """
        X = _check_encodings(self.space, X)
        y = _check_accuracies(y, X.shape[0])
        if y.size == 0:
            raise ValueError("cannot fit a surrogate on an empty archive")
        self.mean_ = float(y.mean())
        self.constant_ = y.size < MIN_POINTS or float(np.ptp(y)) <= _FLAT_Y
        if not self.constant_:
            with _one_blas_thread():
                self._fit(X, y)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted accuracies (m,) of encodings ``X`` (m, n_var)."""
        if self.mean_ is None:
            raise RuntimeError(f"{type(self).__name__} must be fitted before predict")
        X = _check_encodings(self.space, X)
        if self.constant_ or X.shape[0] == 0:
            return np.full(X.shape[0], self.mean_)
        with _one_blas_thread():
            prediction = self._predict(X)
        return np.asarray(prediction, dtype=float).reshape(X.shape[0])

    def _regressor(self) -> Any:
        """A new, unfitted scikit-learn regressor on :func:`encode_features` output."""
        raise NotImplementedError

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        self.pipeline_ = _pipeline(self.space, self._regressor())
        with warnings.catch_warnings():
            # Hitting max_iter (MLP) or a hyper-parameter bound (GP) is still a usable fit:
            # the ranking is what matters, and the warning would only be noise in the log.
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.pipeline_.fit(X, y)

    def _predict(self, X: np.ndarray) -> np.ndarray:
        return self.pipeline_.predict(X)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.space.name!r}, seed={self.seed})"


# -- the models ------------------------------------------------------------------------------
class _RBFRegressor(RegressorMixin, BaseEstimator):
    """scipy's RBFInterpolator as a scikit-learn regressor, with fallbacks (see below)."""

    def __init__(self, smoothing: float = 1e-3) -> None:
        self.smoothing = smoothing

    def fit(self, F: np.ndarray, y: np.ndarray) -> _RBFRegressor:
        # Variables constant over this archive make the linear tail rank-deficient
        # (a column of zeros after scipy's shift); they carry nothing here, so drop them.
        # Not VarianceThreshold(0): same columns, but it raises when none is left.
        self.columns_ = np.ptp(F, axis=0) > 0
        # Not StandardScaler: it takes a spread below ~n*eps*mean for zero (scale 1).
        self.y_mean_, self.y_std_ = float(y.mean()), float(y.std())
        target = (y - self.y_mean_) / self.y_std_
        self.model_ = self._solve(F[:, self.columns_], target)
        return self

    def _solve(self, F: np.ndarray, target: np.ndarray) -> RBFInterpolator:
        n, d = F.shape
        s = self.smoothing
        # Fallbacks, most faithful first. The cubic kernel needs the linear tail to be
        # well posed, and the tail needs more points than dimensions; without it use the
        # linear kernel, which is well posed with a constant tail. More smoothing handles
        # collinear or near-duplicate points.
        attempts = [("cubic", 1, s), ("cubic", 1, 100 * s), ("linear", 0, s), ("linear", 0, 1.0)]
        if n <= d + 1:
            attempts = attempts[2:]
        error: Exception | None = None
        for kernel, degree, smoothing in attempts:
            try:
                return RBFInterpolator(F, target, kernel=kernel, degree=degree, smoothing=smoothing)
            except (np.linalg.LinAlgError, ValueError) as exc:
                error = exc
        raise RuntimeError(f"RBF surrogate could not be fitted on {n} points") from error

    def predict(self, F: np.ndarray) -> np.ndarray:
        return self.model_(F[:, self.columns_]) * self.y_std_ + self.y_mean_


class RBFSurrogate(Surrogate):
    """Cubic RBF interpolation with a degree-1 polynomial tail, as NAT's default predictor.

    The target is standardised so that ``smoothing`` is relative to the spread of the
    accuracies. A little smoothing keeps the system solvable with duplicate encodings (the
    same architecture evaluated twice) and stops the interpolant chasing evaluation noise.
    """

    name = "rbf"
    smoothing: float = 1e-3
    """Regularisation added to the kernel diagonal, in units of the target's variance."""

    def _regressor(self) -> _RBFRegressor:
        return _RBFRegressor(smoothing=self.smoothing)


class GPSurrogate(Surrogate):
    """Gaussian process: amplitude x Matérn 5/2 (one shared length scale) + white noise.

    A single length scale rather than one per variable (ARD) keeps the number of
    hyper-parameters at three, which tens of points can support. ``normalize_y`` makes the
    amplitude and noise bounds independent of the accuracy range.
    """

    name = "gp"
    n_restarts: int = 1
    """Extra random starts of the marginal-likelihood optimiser, against poor local optima
    (none changed the held-out tau on synthetic archives; one is cheap insurance)."""

    def _regressor(self) -> GaussianProcessRegressor:
        kernel = ConstantKernel(1.0, (1e-2, 1e2)) * Matern(
            length_scale=1.0, length_scale_bounds=(1e-2, 1e3), nu=2.5
        ) + WhiteKernel(noise_level=0.1, noise_level_bounds=(1e-6, 1e1))
        return GaussianProcessRegressor(
            kernel=kernel,
            normalize_y=True,
            n_restarts_optimizer=self.n_restarts,
            random_state=self.seed,
        )


class MLPSurrogate(Surrogate):
    """Two hidden layers of 64 ReLU units on a standardised target.

    NAT used 3 x 300 units on ImageNet-sized archives; a few hundred points support far
    less. Full-batch L-BFGS rather than Adam: on small data it ranked better, and it needs
    no learning-rate schedule or early-stopping split (which would waste scarce points).
    """

    name = "mlp"
    hidden: tuple[int, ...] = (64, 64)
    alpha: float = 1.0
    """L2 penalty on the weights (scikit-learn divides it by n): small archives overfit
    without it. 1.0 ranked best of 0.01 / 0.1 / 1.0 on synthetic archives of all spaces."""
    max_iter: int = 200
    """L-BFGS iterations: 300 and 500 did not rank better on synthetic archives, and fit
    time is linear in this."""

    def _regressor(self) -> TransformedTargetRegressor:
        mlp = MLPRegressor(
            hidden_layer_sizes=self.hidden,
            solver="lbfgs",
            alpha=self.alpha,
            max_iter=self.max_iter,
            early_stopping=False,
            random_state=self.seed,
        )
        return TransformedTargetRegressor(regressor=mlp, transformer=StandardScaler())


class TreesSurrogate(Surrogate):
    """Extremely randomised trees (ExtraTreesRegressor), 100 of them.

    Random split thresholds give a smoother response than bagged CART, which helps rank
    neighbouring encodings, and trees need no scaling or tuning of the target.
    """

    name = "trees"
    n_estimators: int = 100
    """200 trees ranked no better on synthetic archives and took twice as long to fit."""

    def _regressor(self) -> ExtraTreesRegressor:
        return ExtraTreesRegressor(n_estimators=self.n_estimators, random_state=self.seed, n_jobs=1)


class AdaptiveSurrogate(Surrogate):
    """NAT's adaptive switching: pick the candidate model that ranks held-out points best.

    Each candidate is scored by k-fold cross-validation on the archive, k = min(10, n // 2)
    so every held-out fold has at least two points (Kendall's tau of one point is
    undefined), shuffled with ``seed``. The score is mean(tau) - std(tau) over the folds,
    which prefers a model that ranks consistently over one that is sometimes excellent.
    The winner is refitted on all points and used for prediction.

    After ``fit``: ``chosen`` is the winner's name (``"mean"`` when the archive is too
    small or flat to learn from) and ``cv_scores`` maps each candidate to
    ``{"tau_mean", "tau_std", "score"}`` (empty when nothing was fitted).
    """

    name = "adaptive"
    candidates: tuple[str, ...] = SURROGATE_MODELS
    max_folds: int = 10

    def __init__(self, space: Any, seed: int = 0) -> None:
        super().__init__(space, seed)
        self.chosen: str | None = None
        self.cv_scores: dict[str, dict[str, float]] = {}
        self.model: Surrogate | None = None

    def fit(self, X: np.ndarray, y: np.ndarray) -> AdaptiveSurrogate:
        self.chosen, self.cv_scores, self.model = None, {}, None
        super().fit(X, y)
        if self.constant_:
            self.chosen = "mean"
        return self

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        folds = KFold(
            n_splits=min(self.max_folds, len(y) // 2), shuffle=True, random_state=self.seed
        )
        for name in self.candidates:
            # Cross-validate the Surrogate, not its bare pipeline: a training fold too
            # small or flat to learn from must predict its mean, as in a search.
            taus = cross_validate(
                make_surrogate(name, self.space, self.seed),
                X,
                y,
                cv=folds,
                scoring=_KENDALL_TAU,
                n_jobs=1,  # folds are small; a search may use the other cores
                error_score="raise",  # a model that cannot be fitted is a bug, not a score
            )["test_score"]
            mean, std = float(np.mean(taus)), float(np.std(taus))
            self.cv_scores[name] = {"tau_mean": mean, "tau_std": std, "score": mean - std}
        # Ties go to the earlier candidate, so the choice is deterministic.
        self.chosen = max(self.candidates, key=lambda name: self.cv_scores[name]["score"])
        self.model = make_surrogate(self.chosen, self.space, self.seed).fit(X, y)

    def _predict(self, X: np.ndarray) -> np.ndarray:
        assert self.model is not None
        return self.model.predict(X)

    def __repr__(self) -> str:
        return f"AdaptiveSurrogate({self.space.name!r}, seed={self.seed}, chosen={self.chosen!r})"


SURROGATES: dict[str, type[Surrogate]] = {
    cls.name: cls
    for cls in (RBFSurrogate, GPSurrogate, MLPSurrogate, TreesSurrogate, AdaptiveSurrogate)
}


def make_surrogate(name: str, space: Any, seed: int = 0) -> Surrogate:
    """An unfitted surrogate by name (one of :data:`SURROGATES`) for ``space``."""
    if name not in SURROGATES:
        raise ValueError(f"unknown surrogate {name!r}: choose one of {sorted(SURROGATES)}")
    return SURROGATES[name](space, seed=seed)


# -- evaluation ------------------------------------------------------------------------------
def _kendall_tau(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Kendall's tau of ``y_pred`` against ``y_true`` (>= 2 points); 0.0 where undefined."""
    with warnings.catch_warnings():
        # Constant input is expected here (a mean predictor); its NaN tau becomes 0.0.
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        tau = float(stats.kendalltau(y_true, y_pred).statistic)
    return tau if np.isfinite(tau) else 0.0


_KENDALL_TAU = make_scorer(_kendall_tau)
"""Scorer for :func:`~sklearn.model_selection.cross_validate`: tau of held-out points."""


def rank_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """``{"kendall_tau", "spearman_rho", "rmse"}`` of predictions against measurements.

    Correlations are undefined for constant inputs or fewer than two points; they are
    reported as 0.0 (no ranking information) rather than NaN, so that averages over folds
    stay finite. ``rmse`` is in the units of the accuracies (0..1).
    """
    y_true = np.asarray(y_true, dtype=float).ravel()
    y_pred = np.asarray(y_pred, dtype=float).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in length")
    if y_true.size == 0:
        raise ValueError("rank_metrics needs at least one point")
    tau = rho = 0.0
    if y_true.size >= 2:
        tau = _kendall_tau(y_true, y_pred)
        with warnings.catch_warnings():
            # Constant input is expected here (a mean predictor); it is handled below.
            warnings.simplefilter("ignore", stats.ConstantInputWarning)
            rho = float(stats.spearmanr(y_true, y_pred).statistic)
    return {
        "kendall_tau": tau,
        "spearman_rho": rho if np.isfinite(rho) else 0.0,
        "rmse": float(np.sqrt(np.mean((y_pred - y_true) ** 2))),
    }


def holdout_metrics(
    surrogate_name: str,
    space: Any,
    X: np.ndarray,
    y: np.ndarray,
    test_fraction: float = 0.25,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit ``surrogate_name`` on a random split of (X, y) and score it on the rest.

    Returns :func:`rank_metrics` of the held-out points plus ``n_train``, ``n_test``,
    ``fit_seconds`` (wall-clock) and, for ``"adaptive"``, the ``chosen`` model.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    X = _check_encodings(space, X)
    y = _check_accuracies(y, X.shape[0])
    n_test = round(test_fraction * len(y))
    if n_test < 1 or n_test >= len(y):
        raise ValueError(f"{len(y)} points cannot be split with test_fraction={test_fraction}")
    order = np.random.default_rng(seed).permutation(len(y))
    test, train = order[:n_test], order[n_test:]
    surrogate = make_surrogate(surrogate_name, space, seed)
    start = time.perf_counter()
    surrogate.fit(X[train], y[train])
    fit_seconds = time.perf_counter() - start
    result: dict[str, Any] = rank_metrics(y[test], surrogate.predict(X[test]))
    result.update(n_train=len(train), n_test=n_test, fit_seconds=fit_seconds)
    if isinstance(surrogate, AdaptiveSurrogate):
        result["chosen"] = surrogate.chosen
    return result
