"""Getters: read what pertgrn wrote into an AnnData back as tidy tables and arrays."""

from pertgrn.get._ate import ate_df
from pertgrn.get._grn import grn_df
from pertgrn.get._metrics import metrics_df
from pertgrn.get._pairing import paired_control_mean, pairing_df
from pertgrn.get._reference_grn import reference_grn_df

__all__ = ["ate_df", "grn_df", "metrics_df", "paired_control_mean", "pairing_df", "reference_grn_df"]
