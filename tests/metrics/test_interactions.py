from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import TheilSenRegressor

from pertgrn.metrics import interaction_precision_at_k, interaction_scores
from pertgrn.metrics._interactions import _distance_correlation


def _naive_dcor(x, y):
    """Textbook distance correlation from full double-centred distance matrices."""
    x, y = x.reshape(len(x), -1), y.reshape(len(y), -1)
    a = np.linalg.norm(x[:, None] - x[None], axis=-1)
    b = np.linalg.norm(y[:, None] - y[None], axis=-1)
    A = a - a.mean(0) - a.mean(1)[:, None] + a.mean()
    B = b - b.mean(0) - b.mean(1)[:, None] + b.mean()
    return np.sqrt((A * B).mean() / np.sqrt((A * A).mean() * (B * B).mean()))


def test_distance_correlation_matches_naive():
    rng = np.random.default_rng(0)
    x = rng.normal(size=50)
    y = x**2 + 0.1 * rng.normal(size=50)  # dependent but uncorrelated
    assert _distance_correlation(x, y) == pytest.approx(_naive_dcor(x, y), rel=1e-10)
    assert _distance_correlation(x, y, block_size=7) == pytest.approx(_naive_dcor(x, y), rel=1e-10)
    xy = np.column_stack([x, rng.normal(size=50)])
    assert _distance_correlation(xy, y, block_size=3) == pytest.approx(_naive_dcor(xy, y), rel=1e-10)
    assert _distance_correlation(x, 3 * x + 1) == pytest.approx(1.0)
    assert np.isnan(_distance_correlation(x, np.ones(50)))


def test_scores_hand_computed_ols():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=100), rng.normal(size=100)
    s = interaction_scores(a, b, 2.0 * a + 0.5 * b, regression="ols")
    assert s["c1"] == pytest.approx(2.0) and s["c2"] == pytest.approx(0.5)
    assert s["synergy"] == pytest.approx(np.sqrt(4.25))
    assert s["epistasis"] == pytest.approx(np.log10(4.0))
    assert s["corr_fit"] == pytest.approx(1.0) and s["neomorphism"] == pytest.approx(0.0, abs=1e-12)
    assert s["redundancy"] == pytest.approx(_naive_dcor(a, b)) == pytest.approx(s["dcor_singles"])
    assert s["dcor"] == pytest.approx(_naive_dcor(np.column_stack([a, b]), 2.0 * a + 0.5 * b))
    # a suppressive double: both coefficients small
    assert interaction_scores(a, b, 0.3 * a + 0.3 * b, regression="ols")["synergy"] == pytest.approx(0.3 * np.sqrt(2))
    # symmetric in the singles: epistasis does not depend on which single dominates
    assert interaction_scores(b, a, 2.0 * a + 0.5 * b, regression="ols")["epistasis"] == pytest.approx(np.log10(4.0))


def test_theil_sen_is_robust_and_matches_sklearn():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=80), rng.normal(size=80)
    ab = 1.5 * a + 1.0 * b + 0.01 * rng.normal(size=80)
    ab[:5] += 30.0  # outlier genes
    s = interaction_scores(a, b, ab)
    ref = TheilSenRegressor(fit_intercept=False, max_subpopulation=int(1e5), max_iter=1000, random_state=1000)
    ref.fit(np.column_stack([a, b]), ab)
    assert [s["c1"], s["c2"]] == pytest.approx(list(ref.coef_))
    assert s["c1"] == pytest.approx(1.5, abs=0.05) and s["c2"] == pytest.approx(1.0, abs=0.05)
    ols = interaction_scores(a, b, ab, regression="ols")
    assert abs(ols["c1"] - 1.5) + abs(ols["c2"] - 1.0) > abs(s["c1"] - 1.5) + abs(s["c2"] - 1.0)


def test_neomorphism_and_redundancy_directions():
    rng = np.random.default_rng(2)
    a, b, new = rng.normal(size=(3, 150))
    additive = interaction_scores(a, b, a + b, regression="ols")
    neomorphic = interaction_scores(a, b, a + b + 3 * new, regression="ols")
    assert neomorphic["neomorphism"] > additive["neomorphism"] + 0.3
    redundant = interaction_scores(a, a + 0.05 * new, a, regression="ols")
    assert redundant["redundancy"] > 0.95 > additive["redundancy"] + 0.5


def test_tables_in_tables_out():
    rng = np.random.default_rng(3)
    genes = [f"g{i}" for i in range(40)]
    doubles = ["A+B", "A+C", "B+C"]
    da = pd.DataFrame(rng.normal(size=(3, 40)), index=doubles, columns=genes)
    db = pd.DataFrame(rng.normal(size=(3, 40)), index=doubles, columns=genes)
    dab = 2 * da + db
    out = interaction_scores(da, db.iloc[::-1, ::-1], dab, regression="ols")
    assert list(out.index) == doubles
    assert {"synergy", "epistasis", "neomorphism", "redundancy"} <= set(out.columns)
    np.testing.assert_allclose(out["c1"], 2.0)
    np.testing.assert_allclose(out["c2"], 1.0)
    row = interaction_scores(
        da.loc["A+C"].to_numpy(), db.loc["A+C"].to_numpy(), dab.loc["A+C"].to_numpy(), regression="ols"
    )
    pd.testing.assert_series_equal(out.loc["A+C"], row, check_names=False)
    with pytest.raises(ValueError, match="same doubles"):
        interaction_scores(da, db.iloc[:2], dab)
    with pytest.raises(ValueError, match="regression"):
        interaction_scores(da, db, dab, regression="lasso")
    with pytest.raises(ValueError, match="at least 3 genes"):
        interaction_scores(np.ones(2), np.ones(2), np.ones(2))


def test_precision_at_k_hand_computed():
    idx = [f"d{i}" for i in range(8)]
    true = pd.DataFrame(
        {
            "synergy": np.arange(8.0),  # top 25 %: >= 5.25 -> d6, d7; bottom 25 %: <= 1.75 -> d0, d1
            "neomorphism": np.arange(8.0),
            "redundancy": np.arange(8.0),
            "epistasis": np.arange(8.0),
        },
        index=idx,
    )
    pred = pd.DataFrame(
        {
            "synergy": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0],  # perfect
            "neomorphism": [7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0],  # reversed
            "redundancy": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 9.0, 0.0],  # top-2: d6, then d0 (tie, row order)
            "epistasis": [np.nan, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0],  # d0 dropped
        },
        index=idx,
    ).iloc[::-1]  # rows are aligned on labels, not positions
    res = interaction_precision_at_k(pred, true, k=2)
    assert res["synergy"] == 1.0 and res["suppression"] == 1.0
    assert res["neomorphism"] == 0.0
    assert res["redundancy"] == 0.5
    # epistasis over d1..d7: top 25 % of 1..7 is >= 5.5 -> d6, d7; predicted top-2 d7, d6
    assert res["epistasis"] == 1.0
    assert list(res.index) == ["synergy", "suppression", "neomorphism", "redundancy", "epistasis"]


def test_precision_at_k_on_scores_and_errors():
    rng = np.random.default_rng(4)
    n = 30
    true = pd.DataFrame({"synergy": rng.normal(size=n)}, index=[f"d{i}" for i in range(n)])
    noisy = true + 0.05 * rng.normal(size=true.shape)
    random = pd.DataFrame({"synergy": rng.normal(size=n)}, index=true.index)
    assert (
        interaction_precision_at_k(noisy, true, k=5)["synergy"]
        >= interaction_precision_at_k(random, true, k=5)["synergy"]
    )
    with pytest.raises(ValueError, match="exceeds"):
        interaction_precision_at_k(true, true, k=31)
    with pytest.raises(ValueError, match="share no double"):
        interaction_precision_at_k(true.rename(index=lambda x: x + "x"), true)
    with pytest.raises(ValueError, match="No interaction type"):
        interaction_precision_at_k(true.rename(columns={"synergy": "other"}), true)
    with pytest.raises(ValueError, match="quantile"):
        interaction_precision_at_k(true, true, quantile=1.0)


# ---------------------------------------------------------------------------------------------
# RAPTORGraph's scores against the naive additive reference (appendix D.4)
# ---------------------------------------------------------------------------------------------
def test_additive_scores_hand_built_vectors():
    from pertgrn.metrics import additive_interaction_scores

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=50), rng.normal(size=50)
    # δab = 2 (δa + δb): synergy 2, neomorphism 0 (spec §8.14)
    s = additive_interaction_scores(a, b, 2.0 * (a + b))
    assert s["synergy"] == pytest.approx(2.0) and s["neomorphism"] == pytest.approx(0.0, abs=1e-12)
    # δab = δa with δa ⟂ δb: epistasis 1, redundancy 0
    a = np.array([1.0, 0.0, 0.0, 2.0])
    b = np.array([0.0, 3.0, -1.0, 0.0])
    s = additive_interaction_scores(a, b, a)
    assert s["epistasis"] == pytest.approx(1.0) and s["redundancy"] == pytest.approx(0.0, abs=1e-12)
    assert s["synergy"] == pytest.approx(np.linalg.norm(a) / np.linalg.norm(a + b))
    # by hand: cosines against each single and the additive sum
    ab = np.array([1.0, 1.0, 0.0, 1.0])
    s = additive_interaction_scores(a, b, ab)

    def cos(x, y):
        return x @ y / np.linalg.norm(x) / np.linalg.norm(y)

    assert s["neomorphism"] == pytest.approx(1 - cos(ab, a + b))
    assert s["redundancy"] == pytest.approx(min(cos(ab, a), cos(ab, b)))
    assert s["epistasis"] == pytest.approx(abs(cos(ab, a) - cos(ab, b)))
    # a zero single: scores that need its direction are NaN, not an error
    assert np.isnan(additive_interaction_scores(np.zeros(4), b, ab)["redundancy"])


def test_additive_scores_tables_and_precision():
    from pertgrn.metrics import additive_interaction_scores

    rng = np.random.default_rng(1)
    genes = [f"g{i}" for i in range(30)]
    doubles = [f"d{i}" for i in range(8)]
    a = pd.DataFrame(rng.normal(size=(8, 30)), index=doubles, columns=genes)
    b = pd.DataFrame(rng.normal(size=(8, 30)), index=doubles, columns=genes)
    factor = np.linspace(0.5, 2.0, 8)[:, None]
    ab = (a + b) * factor
    table = additive_interaction_scores(a, b[genes[::-1]], ab)  # columns are aligned by name
    np.testing.assert_allclose(table["synergy"], factor.ravel())
    precision = interaction_precision_at_k(table, table, k=2)
    assert precision["synergy"] == 1.0 and precision["suppression"] == 1.0
    with pytest.raises(ValueError, match="same doubles"):
        additive_interaction_scores(a, b.iloc[:4], ab)
