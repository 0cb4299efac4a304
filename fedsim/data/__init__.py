"""Cohorts, dataset plug-ins and partitioners."""

# Registers the on-disk layouts (ixi, ixi_tiny, msd, bids, nifti_csv) in every process that touches
# fedsim.data, Ray workers included: they resolve data.dataset without calling load_builtins().
from fedsim.data import loaders as _loaders  # noqa: F401
