"""The discrepancy-VAE's per-epoch weights: centroid weight α, KL weight β and softmax temperature.

Transcribed from the formulas of the reference training loop (uhlerlab/discrepancy_vae,
``src/train.py``), which gCRL keeps (appendix A.6), for ``T`` epochs indexed ``n = 0 … T−1``:

- ``β_n = 0`` for ``n < 10``, then ``linspace(0, β_max, T − 10)[n − 10]``;
- ``α_n = 0`` for ``n < 5``, ``linspace(0, α_max, ⌊T/2⌋ − 5)[n − 5]`` for ``5 ≤ n < ⌊T/2⌋``, and
  ``α_max`` from ``⌊T/2⌋`` on;
- ``temp_n = 1`` for ``n < 5``, then ``linspace(1, temp_max, T − 5)[n − 5]``.

Runs shorter than the warm-up keep the warm-up values (the reference fails there).
"""

from __future__ import annotations

import numpy as np

#: epochs before the centroid weight and the temperature start to ramp
ALPHA_START = 5
#: epochs before the KL weight starts to ramp
BETA_START = 10


def alpha_schedule(n_epochs: int, alpha_max: float) -> np.ndarray:
    """Centroid-loss weight per epoch: 0 for 5 epochs, a linear ramp to ``α_max`` at ``⌊T/2⌋``, then ``α_max``."""
    alpha = np.full(n_epochs, float(alpha_max))
    alpha[:ALPHA_START] = 0.0
    half = n_epochs // 2
    if half > ALPHA_START:
        alpha[ALPHA_START:half] = np.linspace(0.0, alpha_max, half - ALPHA_START)
    return alpha


def beta_schedule(n_epochs: int, beta_max: float, kind: str = "ramp") -> np.ndarray:
    """KL weight per epoch: ``"ramp"`` (0 for 10 epochs, then linear from 0 to ``β_max``) or ``"constant"``."""
    if kind == "constant":
        return np.full(n_epochs, float(beta_max))
    beta = np.zeros(n_epochs)
    if n_epochs > BETA_START:
        beta[BETA_START:] = np.linspace(0.0, beta_max, n_epochs - BETA_START)
    return beta


def temperature_schedule(n_epochs: int, temperature_max: float) -> np.ndarray:
    """Softmax temperature of the intervention encoder per epoch: 1 for 5 epochs, then linear to ``temp_max``."""
    temperature = np.ones(n_epochs)
    if n_epochs > ALPHA_START:
        temperature[ALPHA_START:] = np.linspace(1.0, temperature_max, n_epochs - ALPHA_START)
    return temperature
