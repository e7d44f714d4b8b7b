from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import pertgrn as pg
from pertgrn.pl._training_history import base_name, is_validation


def _history(n=6):
    """A GPO-VAE-like history: total loss, ELBO, reconstruction, a KL term and the GPO fit, both phases."""
    epochs = pd.Index(np.arange(n), name="epoch")
    return pd.DataFrame(
        {
            "train_loss_epoch": np.linspace(5, 1, n),
            "validation_loss": np.linspace(5.5, 1.5, n),
            "elbo_train": np.linspace(800, 680, n),
            "elbo_validation": np.linspace(790, 678, n),
            "reconstruction_loss_train": np.linspace(780, 678, n),
            "reconstruction_loss_validation": np.linspace(770, 676, n),
            "kl_local_train": np.linspace(5, 2, n),
            "kl_local_validation": np.linspace(4, 2, n),
            "gpo_fit_train": np.linspace(0.48, 0.47, n),
            "gpo_fit_validation": np.linspace(0.479, 0.471, n),
        },
        index=epochs,
    )


def test_names_are_paired():
    assert is_validation("validation_loss") and is_validation("elbo_validation")
    assert not is_validation("train_loss_epoch") and not is_validation("kl_local_train")
    assert base_name("train_loss_epoch") == base_name("validation_loss") == "loss"
    assert base_name("reconstruction_loss_train") == base_name("reconstruction_loss_validation")


def _lines(ax):
    return {line.get_label(): line for line in ax.get_lines()}


def test_default_panels_elbo_reconstruction_and_the_models_main_term(screen):
    screen.uns["gpovae"] = {"history": _history()}
    axes = pg.pl.training_history(screen, show=False)
    # 10 logged terms, 3 panels: the model's own term on its own axis, KL terms and the total loss left out
    assert list(axes) == ["elbo", "reconstruction_loss", "gpo_fit"]
    assert [ax.get_title() for ax in axes.values()] == [
        "negative ELBO",
        "reconstruction loss",
        "GPO fit (K-hop differential expression)",
    ]
    for quantity, ax in axes.items():
        lines = _lines(ax)
        assert set(lines) == {f"{quantity}_train", f"{quantity}_validation"}
        train, validation = lines[f"{quantity}_train"], lines[f"{quantity}_validation"]
        assert (train.get_linestyle(), validation.get_linestyle()) == ("-", "--")
        assert train.get_color() == validation.get_color()
        np.testing.assert_allclose(train.get_ydata(), _history()[f"{quantity}_train"])
        np.testing.assert_allclose(train.get_xdata(), np.arange(6))
        assert ax.get_xlabel() == "epoch"
        # the y axis spans this quantity only: the small GPO fit is not flattened by the ELBO's scale
        low, high = ax.get_ylim()
        values = _history()[[f"{quantity}_train", f"{quantity}_validation"]].to_numpy()
        assert low <= values.min() and high >= values.max() and high - low < 2 * (values.max() - values.min())
    colors = {ax.get_lines()[0].get_color() for ax in axes.values()}
    assert len(colors) == 3
    legend_texts = [t.get_text() for t in axes["elbo"].figure.legends[0].get_texts()]
    assert legend_texts == ["training cells", "validation cells"]


def test_another_key_has_no_main_term_and_all_draws_every_quantity(screen):
    screen.uns["fit"] = {"history": _history()}
    assert list(pg.pl.training_history(screen, key="fit", show=False)) == ["elbo", "reconstruction_loss"]
    axes = pg.pl.training_history(screen, key="fit", terms="all", show=False)
    assert list(axes) == ["loss", "elbo", "reconstruction_loss", "kl_local", "gpo_fit"]
    assert sum(len(ax.get_lines()) for ax in axes.values()) == 10


def test_history_from_a_model_like_scvi(screen):
    history = _history()

    class GPOVAE:  # the class name tells which main term the model has
        def __init__(self):
            # scvi-tools' model.history: a dict of one-column DataFrames indexed by epoch, step logs included
            self.history = {c: history[[c]] for c in history.columns}
            self.history["train_loss_step"] = pd.DataFrame({"train_loss_step": np.ones(30)})

    model = GPOVAE()
    axes = pg.pl.training_history(model, log=True, show=False)
    assert list(axes) == ["elbo", "reconstruction_loss", "gpo_fit"]
    assert all(ax.get_yscale() == "log" for ax in axes.values())
    ax = pg.pl.training_history(model, terms=["validation_loss"], show=False)  # one panel: an Axes
    assert [line.get_label() for line in ax.get_lines()] == ["validation_loss"]
    ax = pg.pl.training_history(model, terms=["kl_local"], show=False)  # a quantity: both phases
    assert sorted(_lines(ax)) == ["kl_local_train", "kl_local_validation"]
    # a model can declare its own main quantity
    Declared = type("Declared", (), {"main_history_terms": ("kl_local",)})
    declared = Declared()
    declared.history = model.history
    assert list(pg.pl.training_history(declared, show=False)) == ["elbo", "reconstruction_loss", "kl_local"]


def test_a_history_without_elbo_shows_its_total_loss(screen):
    screen.uns["gpovae"] = {"history": _history()[["train_loss_epoch", "validation_loss"]]}
    ax = pg.pl.training_history(screen, show=False)
    assert sorted(_lines(ax)) == ["train_loss_epoch", "validation_loss"]
    assert ax.get_title() == "total loss (optimised)"


def test_one_panel_into_a_given_axes(screen):
    import matplotlib.pyplot as plt

    screen.uns["gpovae"] = {"history": _history()}
    fig, (left, right) = plt.subplots(1, 2)
    assert pg.pl.training_history(screen, terms=["elbo"], ax=left, show=False) is left
    assert len(left.get_lines()) == 2 and not right.get_lines()
    with pytest.raises(ValueError, match="one panel"):
        pg.pl.training_history(screen, ax=right, show=False)


def test_log_with_non_positive_terms_uses_symlog(screen):
    history = _history()
    history["kl_train"] = np.linspace(-1, 1, len(history))
    screen.uns["fit"] = {"history": history}
    ax = pg.pl.training_history(screen, key="fit", terms=["kl_train"], log=True, show=False)
    assert ax.get_yscale() == "symlog"


def test_errors(screen):
    with pytest.raises(KeyError, match="history"):
        pg.pl.training_history(screen, key="shift", show=False)
    with pytest.raises(TypeError, match="trained model"):
        pg.pl.training_history(object(), show=False)
    with pytest.raises(ValueError, match="train it first"):
        pg.pl.training_history(SimpleNamespace(history=None), show=False)
    screen.uns["gpovae"] = {"history": _history()}
    with pytest.raises(KeyError, match="were not logged"):
        pg.pl.training_history(screen, terms=["nope"], show=False)
