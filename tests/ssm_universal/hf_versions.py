"""What the tests that compare with transformers' Mamba models need to know about the installed 5.x release.

* Its Mamba2 gated RMSNorm: releases before `MambaRMSNormGated(hidden_size, group_size, eps)` (renamed
  `Mamba2RMSNormGated` in 5.25) normalise over the whole intermediate size at once, mamba_ssm (and this package)
  per group of intermediate_size / n_groups. The two agree only for n_groups = 1, so a comparison with such a
  release builds its Mamba2 with one group.
* The cache a model returns: `output.cache` (passed back as `cache=`), or `output.cache_params` (`cache_params=`)
  in releases before the rename.
"""
import inspect

import transformers


def mamba2_groups(requested: int) -> int:
    """n_groups for a Mamba2 compared with the installed transformers: `requested` where its gated norm is
    grouped, else 1."""
    from transformers.models.mamba2 import modeling_mamba2
    norm = getattr(modeling_mamba2, "Mamba2RMSNormGated", None) or modeling_mamba2.MambaRMSNormGated
    grouped = "group_size" in inspect.signature(norm.__init__).parameters
    return requested if grouped else 1


def cache_kwargs(output) -> dict:
    """The keyword argument continuing from `output`'s cache: {"cache": ...} or {"cache_params": ...}."""
    if hasattr(output, "cache"):
        return {"cache": output.cache}
    return {"cache_params": output.cache_params}


__all__ = ["mamba2_groups", "cache_kwargs", "transformers"]
