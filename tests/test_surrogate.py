"""Accuracy surrogates: ranking quality on synthetic archives, determinism and edge cases.

The synthetic accuracy grows with log(parameters), as real accuracies roughly do, plus
evaluation noise, so a surrogate must learn a non-trivial function of the encoding.
"""

import functools

import numpy as np
import pytest
from sklearn.base import clone, is_regressor
from sklearn.model_selection import KFold

import search_spaces
from nat.engine.surrogate import (
    MIN_POINTS,
    SURROGATES,
    AdaptiveSurrogate,
    RBFSurrogate,
    Surrogate,
    encode_features,
    holdout_metrics,
    make_surrogate,
    rank_metrics,
)

MODELS = ["rbf", "gp", "mlp", "trees"]
N_TRAIN, N_TEST = 150, 60


def synthetic_archive(
    space: search_spaces.SearchSpace, n: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(encodings, accuracies): 0.5 + 0.4 * normalised log(params) + N(0, 0.05) noise."""
    rng = np.random.default_rng(seed)
    X = space.sample(n, rng)
    params, _ = space.complexity(X, 10)
    log_params = np.log(params.astype(float))
    size = (log_params - log_params.min()) / (log_params.max() - log_params.min())
    return X, 0.5 + 0.4 * size + 0.05 * rng.standard_normal(n)


@functools.cache
def split_archive(space_name: str) -> tuple:
    space = search_spaces.get(space_name)
    X, y = synthetic_archive(space, N_TRAIN + N_TEST, seed=1)
    return space, X[:N_TRAIN], y[:N_TRAIN], X[N_TRAIN:], y[N_TRAIN:]


@functools.cache
def held_out_tau(model: str, space_name: str, shuffled: bool = False) -> float:
    """Kendall tau on the test split, fitted on the train split (labels permuted if asked)."""
    space, X_train, y_train, X_test, y_test = split_archive(space_name)
    if shuffled:
        y_train = np.random.default_rng(7).permutation(y_train)
    surrogate = make_surrogate(model, space, seed=0).fit(X_train, y_train)
    return rank_metrics(y_test, surrogate.predict(X_test))["kendall_tau"]


@functools.cache
def fitted_adaptive(space_name: str) -> AdaptiveSurrogate:
    space, X_train, y_train, _, _ = split_archive(space_name)
    return AdaptiveSurrogate(space, seed=0).fit(X_train, y_train)


@pytest.fixture(scope="module")
def mbv2() -> search_spaces.SearchSpace:
    return search_spaces.get("mbv2")


# -- ranking quality -------------------------------------------------------------------------
@pytest.mark.parametrize("space_name", ["mbv2", "resnet"])
@pytest.mark.parametrize("model", MODELS)
def test_models_rank_held_out_points(model, space_name):
    tau = held_out_tau(model, space_name)
    assert tau > 0.3, f"{model} on {space_name}: held-out tau {tau:.3f}"


@pytest.mark.parametrize("space_name", ["mbv2", "resnet"])
@pytest.mark.parametrize("model", MODELS)
def test_shuffled_labels_give_no_ranking(model, space_name):
    baseline = held_out_tau(model, space_name, shuffled=True)
    # |tau| of 60 unrelated points has a standard deviation of about 0.09.
    assert abs(baseline) < 0.3, f"{model} on permuted labels: tau {baseline:.3f}"
    assert held_out_tau(model, space_name) > baseline + 0.2


@pytest.mark.parametrize("space_name", ["mbv2", "resnet"])
def test_adaptive_picks_a_model_and_ranks_well(space_name):
    space, _, _, X_test, y_test = split_archive(space_name)
    adaptive = fitted_adaptive(space_name)
    assert adaptive.chosen in MODELS
    assert set(adaptive.cv_scores) == set(MODELS)
    for name, scores in adaptive.cv_scores.items():
        assert set(scores) == {"tau_mean", "tau_std", "score"}
        assert scores["score"] == pytest.approx(scores["tau_mean"] - scores["tau_std"])
        assert scores["tau_mean"] > 0.3, name
    best = max(adaptive.cv_scores.values(), key=lambda s: s["score"])
    assert adaptive.cv_scores[adaptive.chosen] == best
    tau = rank_metrics(y_test, adaptive.predict(X_test))["kendall_tau"]
    assert tau >= min(held_out_tau(m, space_name) for m in MODELS) - 0.05
    # The chosen model refitted on everything predicts exactly like the adaptive wrapper.
    chosen = make_surrogate(adaptive.chosen, space, seed=0).fit(*split_archive(space_name)[1:3])
    np.testing.assert_array_equal(adaptive.predict(X_test), chosen.predict(X_test))


def test_adaptive_cv_matches_a_plain_kfold_loop(mbv2):
    # The hand-written loop that cross_validate replaced: its scores must be reproduced exactly.
    X, y = synthetic_archive(mbv2, 12, seed=14)
    adaptive = AdaptiveSurrogate(mbv2, seed=2).fit(X, y)
    folds = list(KFold(n_splits=6, shuffle=True, random_state=2).split(X))
    for name in MODELS:
        taus = [
            rank_metrics(
                y[test], make_surrogate(name, mbv2, 2).fit(X[train], y[train]).predict(X[test])
            )["kendall_tau"]
            for train, test in folds
        ]
        assert adaptive.cv_scores[name]["tau_mean"] == float(np.mean(taus)), name
        assert adaptive.cv_scores[name]["tau_std"] == float(np.std(taus)), name


def test_adaptive_on_shuffled_labels_gives_no_ranking():
    assert abs(held_out_tau("adaptive", "mbv2", shuffled=True)) < 0.3


def test_holdout_metrics(mbv2):
    X, y = synthetic_archive(mbv2, 80, seed=3)
    result = holdout_metrics("gp", mbv2, X, y, test_fraction=0.25, seed=0)
    assert {"kendall_tau", "spearman_rho", "rmse", "n_train", "n_test", "fit_seconds"} <= set(
        result
    )
    assert (result["n_train"], result["n_test"]) == (60, 20)
    assert result["kendall_tau"] > 0.2
    again = holdout_metrics("gp", mbv2, X, y, test_fraction=0.25, seed=0)
    assert {k: v for k, v in again.items() if k != "fit_seconds"} == {
        k: v for k, v in result.items() if k != "fit_seconds"
    }
    assert holdout_metrics("adaptive", mbv2, X[:20], y[:20], seed=0)["chosen"] in MODELS
    with pytest.raises(ValueError, match="test_fraction"):
        holdout_metrics("gp", mbv2, X, y, test_fraction=1.0)


# -- determinism -----------------------------------------------------------------------------
@pytest.mark.parametrize("model", [*MODELS, "adaptive"])
def test_same_seed_same_predictions(model, mbv2):
    X, y = synthetic_archive(mbv2, 30, seed=4)  # small: adaptive fits 40 models
    X_new = mbv2.sample(30, np.random.default_rng(5))
    first = make_surrogate(model, mbv2, seed=3).fit(X, y).predict(X_new)
    second = make_surrogate(model, mbv2, seed=3).fit(X, y).predict(X_new)
    np.testing.assert_array_equal(first, second)
    assert first.shape == (30,) and first.dtype == np.float64


def test_seed_matters_for_randomised_models(mbv2):
    X, y = synthetic_archive(mbv2, 60, seed=4)
    a = make_surrogate("mlp", mbv2, seed=0).fit(X, y).predict(X)
    b = make_surrogate("mlp", mbv2, seed=1).fit(X, y).predict(X)
    assert not np.array_equal(a, b)


# -- bad and degenerate inputs ---------------------------------------------------------------
@pytest.mark.parametrize("model", [*MODELS, "adaptive"])
def test_nan_accuracy_is_rejected(model, mbv2):
    X, y = synthetic_archive(mbv2, 20, seed=6)
    y[5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        make_surrogate(model, mbv2).fit(X, y)


@pytest.mark.parametrize("model", [*MODELS, "adaptive"])
def test_wrong_width_is_rejected(model, mbv2):
    X, y = synthetic_archive(mbv2, 20, seed=6)
    surrogate = make_surrogate(model, mbv2)
    with pytest.raises(ValueError, match="shape"):
        surrogate.fit(X[:, :-1], y)
    surrogate.fit(X[:3], y[:3])  # prediction is checked even for a mean-only fit
    with pytest.raises(ValueError, match="shape"):
        surrogate.predict(np.hstack([X, X[:, :1]]))


def test_other_bad_inputs_are_rejected(mbv2):
    X, y = synthetic_archive(mbv2, 20, seed=6)
    surrogate = make_surrogate("gp", mbv2)
    with pytest.raises(RuntimeError, match="fitted"):
        surrogate.predict(X)
    with pytest.raises(ValueError, match="one accuracy per encoding"):
        surrogate.fit(X, y[:-1])
    with pytest.raises(ValueError, match="empty"):
        surrogate.fit(X[:0], y[:0])
    too_big = X.copy()
    too_big[0, 0] = mbv2.upper[0] + 1
    with pytest.raises(ValueError, match="outside"):
        surrogate.fit(too_big, y)
    with pytest.raises(ValueError, match="adaptive"):
        make_surrogate("xgboost", mbv2)


@pytest.mark.parametrize("model", [*MODELS, "adaptive"])
@pytest.mark.parametrize("case", ["three points", "one point", "constant accuracy"])
def test_degenerate_archives_predict_the_mean(model, case, mbv2):
    X, y = synthetic_archive(mbv2, 30, seed=8)
    if case == "three points":
        X, y = X[:3], y[:3]
    elif case == "one point":
        X, y = X[:1], y[:1]
    else:
        y = np.full(len(y), 0.7)
    surrogate = make_surrogate(model, mbv2).fit(X, y)
    prediction = surrogate.predict(mbv2.sample(10, np.random.default_rng(9)))
    np.testing.assert_allclose(prediction, np.full(10, y.mean()))
    assert surrogate.constant_
    if model == "adaptive":
        assert surrogate.chosen == "mean"


@pytest.mark.parametrize("model", [*MODELS, "adaptive"])
def test_smallest_learnable_archive(model, mbv2):
    # Fewer points than features: the RBF's linear tail is impossible, CV folds are tiny.
    X, y = synthetic_archive(mbv2, MIN_POINTS, seed=10)
    prediction = (
        make_surrogate(model, mbv2).fit(X, y).predict(mbv2.sample(10, np.random.default_rng(11)))
    )
    assert np.isfinite(prediction).all()


def test_rbf_survives_duplicates_and_constant_variables(mbv2):
    X, y = synthetic_archive(mbv2, 60, seed=12)
    X[:, 0] = 1  # a variable constant over this archive (but not over the space)
    X_dup = np.vstack([X, X])
    y_dup = np.concatenate([y, y + 0.01])  # the same architectures evaluated twice
    surrogate = RBFSurrogate(mbv2).fit(X_dup, y_dup)
    X_new = mbv2.sample(50, np.random.default_rng(13))
    prediction = surrogate.predict(X_new)
    assert np.isfinite(prediction).all()
    assert rank_metrics(y, surrogate.predict(X))["kendall_tau"] > 0.5


def test_rbf_fits_identical_encodings_as_a_constant(mbv2):
    # Every variable is constant over this archive, so the RBF has no column left to use.
    X = np.repeat(mbv2.sample(1, np.random.default_rng(15)), 6, axis=0)
    y = np.linspace(0.5, 0.6, 6)
    prediction = RBFSurrogate(mbv2).fit(X, y).predict(mbv2.sample(5, np.random.default_rng(16)))
    np.testing.assert_allclose(prediction, y.mean())


@pytest.mark.parametrize("model", [*MODELS, "adaptive"])
def test_surrogates_are_sklearn_regressors(model, mbv2):
    surrogate = make_surrogate(model, mbv2, seed=5)
    assert is_regressor(surrogate)
    assert surrogate.get_params()["seed"] == 5
    copy = clone(surrogate)
    assert type(copy) is type(surrogate) and copy.seed == 5 and copy.mean_ is None


# -- features and metrics --------------------------------------------------------------------
@pytest.mark.parametrize("space_name", search_spaces.list_spaces())
def test_encode_features(space_name):
    space = search_spaces.get(space_name)
    X = space.sample(50, np.random.default_rng(0))
    F = encode_features(space, X)
    free = space.upper > space.lower
    assert F.shape == (50, int(free.sum())) and F.dtype == np.float64
    assert F.min() >= 0.0 and F.max() <= 1.0
    np.testing.assert_array_equal(F, X[:, free] / space.upper[free])
    np.testing.assert_array_equal(encode_features(space, space.upper[None, :]), 1.0)
    np.testing.assert_array_equal(F, encode_features(space, X))


def test_mbv2_drops_its_fixed_variable(mbv2):
    assert (mbv2.upper == 0).sum() >= 1
    assert encode_features(mbv2, mbv2.sample(2, np.random.default_rng(0))).shape[1] == (
        mbv2.n_var - (mbv2.upper == 0).sum()
    )


def test_rank_metrics_on_known_inputs():
    y = np.array([0.1, 0.4, 0.2, 0.9, 0.5])
    perfect = rank_metrics(y, 2 * y + 1)  # any increasing map ranks perfectly
    assert perfect["kendall_tau"] == pytest.approx(1.0)
    assert perfect["spearman_rho"] == pytest.approx(1.0)
    reversed_ = rank_metrics(y, -y)
    assert reversed_["kendall_tau"] == pytest.approx(-1.0)
    assert reversed_["spearman_rho"] == pytest.approx(-1.0)
    assert reversed_["rmse"] == pytest.approx(np.sqrt(np.mean((2 * y) ** 2)))
    constant = rank_metrics(y, np.full(5, 0.3))
    assert constant["kendall_tau"] == 0.0 and constant["spearman_rho"] == 0.0
    assert rank_metrics([0.5], [0.4]) == {
        "kendall_tau": 0.0,
        "spearman_rho": 0.0,
        "rmse": pytest.approx(0.1),
    }
    with pytest.raises(ValueError):
        rank_metrics(y, y[:-1])


def test_registry():
    assert set(SURROGATES) == {"rbf", "gp", "mlp", "trees", "adaptive"}
    for name, cls in SURROGATES.items():
        assert issubclass(cls, Surrogate) and cls.name == name


def test_the_run_spec_offers_exactly_the_surrogates_there_are():
    from nat import spec

    assert set(spec.SURROGATES) == set(SURROGATES)
    assert AdaptiveSurrogate.candidates == spec.SURROGATE_MODELS
