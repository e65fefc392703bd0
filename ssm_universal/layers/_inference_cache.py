"""mamba_ssm's inference_params protocol (generation utilities keep per-layer states in
inference_params.key_value_memory_dict[layer_idx]), on top of a layer's default_state."""
from __future__ import annotations


class InferenceCacheMixin:
    """For layers with `layer_idx` and `default_state(batch_size, device=None, dtype=None)`."""

    def allocate_inference_cache(self, batch_size, max_seqlen, dtype=None, **kwargs):
        """mamba_ssm's cache allocation: default_state (the state size does not grow with max_seqlen)."""
        return self.default_state(batch_size, dtype=dtype)

    def _get_states_from_cache(self, inference_params, batch_size, initialize_states=False):
        if self.layer_idx is None:
            raise ValueError(f"{type(self).__name__} needs layer_idx to keep its state in inference_params")
        cache = inference_params.key_value_memory_dict
        if self.layer_idx not in cache:
            cache[self.layer_idx] = self.default_state(batch_size)
        elif initialize_states:
            for s in cache[self.layer_idx]:
                s.zero_()
        return cache[self.layer_idx]

    def _continued_state(self, inference_params, state, batch_size):
        """(the state a forward call continues and leaves updated, continuing): `state=`, or layer_idx's in
        inference_params (zeroed when seqlen_offset is 0: a prefill), or None for neither; continuing is True
        when the call extends a cache past its start (seqlen_offset > 0), where one token is just a step."""
        if inference_params is None:
            return state, False
        if state is not None:
            raise ValueError(f"{type(self).__name__}: pass either state= or inference_params, not both")
        state = self._get_states_from_cache(inference_params, batch_size)
        if inference_params.seqlen_offset == 0:
            for s in state:
                s.zero_()
            return state, False
        return state, True
