"""SSMLanguageModel: token embedding, a create_model backbone, tied LM head; training loss and generation.

Generation runs the prompt through each layer's parallel form once (prefill: the outputs and the recurrent
state after the prompt, ssm_universal.layers._prefill), then the recurrent step with one state per layer
(constant memory per token, whatever the length).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._pytree import tree_flatten

from ssm_kernels.validation import ArgCheck

from ..layers._step_constants import FrozenStepConstants
from .cuda_graph import GraphedStep
from .factory import create_model
from .state_rows import select_rows, write_rows

IGNORE_INDEX = -100


class SSMLanguageModel(nn.Module):
    """input_ids (B, L) -> logits (B, L, vocab_size) over any create_model architecture.

    Args:
        vocab_size, architecture, d_model, n_layer: as named; the rest goes to create_model (block_type,
            d_state, d_conv, expand_factor, conv_kernel_size, dropout, layer options).
        tie_embeddings: the LM head reuses the embedding matrix (mamba_ssm's default).
        pad_vocab_size_multiple: round the embedding rows up to a multiple (logits keep the padded width,
            as mamba_ssm's MambaLMHeadModel does).
    """

    def __init__(self, vocab_size: int, architecture: str, d_model: int = 256, n_layer: int = 4,
                 tie_embeddings: bool = True, pad_vocab_size_multiple: int = 1, **create_model_kwargs):
        super().__init__()
        check = ArgCheck("SSMLanguageModel")
        check.integer("vocab_size", vocab_size, minimum=1)
        check.integer("pad_vocab_size_multiple", pad_vocab_size_multiple, minimum=1)
        if architecture == "hiss":
            check.fail("architecture 'hiss' predicts at the chunk rate, not per token: it has no language model "
                       "head here (use ssm_universal.models.HiSS for sequence-to-sequence tasks)")
        padded = -(-vocab_size // pad_vocab_size_multiple) * pad_vocab_size_multiple
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(padded, d_model)
        self.backbone = create_model(architecture, d_model=d_model, n_layer=n_layer, **create_model_kwargs)
        self.lm_head = nn.Linear(d_model, padded, bias=False)
        nn.init.normal_(self.embedding.weight, std=0.02)
        if tie_embeddings:
            self.lm_head.weight = self.embedding.weight
        self.config = dict(vocab_size=vocab_size, tie_embeddings=tie_embeddings,
                           pad_vocab_size_multiple=pad_vocab_size_multiple, **self.backbone.config)

    @classmethod
    def from_pretrained(cls, path, device=None, dtype: Optional[torch.dtype] = None) -> "SSMLanguageModel":
        """The model of a local checkpoint directory, in eval mode, on `device`, in `dtype` (default fp32;
        A_log, D, dt_bias stay fp32): transformers' Mamba / Mamba2 / FalconMamba format (config.json +
        model.safetensors, sharded or not, or pytorch_model.bin) or mamba_ssm's MambaLMHeadModel format.
        Never touches the network, never unpickles (models/pretrained.py)."""
        from .pretrained import load_pretrained
        return load_pretrained(path, device=device, dtype=dtype, model_class=cls)

    def save_pretrained(self, path) -> None:
        """Write the transformers format (config.json + model.safetensors) to directory `path`, loadable by
        transformers' AutoModelForCausalLM.from_pretrained with the same logits ("mamba", "mamba2" only)."""
        from .pretrained import save_pretrained
        save_pretrained(self, path)

    def forward(self, input_ids: torch.Tensor, labels: Optional[torch.Tensor] = None):
        """input_ids: (B, L) int. Returns logits (B, L, V); with labels (B, L) (the targets aligned with the
        inputs: position t predicts labels[t + 1]; -100 is ignored) returns (logits, mean cross-entropy)."""
        logits = self.lm_head(self.backbone(self.embedding(input_ids)))
        if labels is None:
            return logits
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                               ignore_index=IGNORE_INDEX)
        return logits, loss

    def default_state(self, batch_size: int, device=None, dtype=None) -> list:
        device = self.embedding.weight.device if device is None else device
        return self.backbone.default_state(batch_size, device=device, dtype=dtype)

    def step(self, token_ids: torch.Tensor, state: list, state_batch_indices: Optional[torch.Tensor] = None):
        """token_ids (B,) -> (logits (B, V), new state).

        state_batch_indices: (B,) distinct ints: `state` is a cache of C >= B sequences' states (default_state(C))
        and token i continues row state_batch_indices[i] of it, which is updated in place (sequences may join
        and leave the cache between steps, as in a server's continuous batching). The other rows are untouched.
        """
        if state_batch_indices is None:
            hidden, state = self.backbone.step(self.embedding(token_ids), state)
            return self.lm_head(hidden), state
        rows = self._check_rows(state_batch_indices, token_ids, state)
        logits, rows_state = self.step(token_ids, select_rows(state, rows))
        write_rows(state, rows, rows_state)
        return logits, state

    @staticmethod
    def _check_rows(rows: torch.Tensor, token_ids: torch.Tensor, state) -> torch.Tensor:
        check = ArgCheck("step")
        check.tensor("state_batch_indices", rows, ("B",), dtypes=(torch.int64, torch.int32))
        if rows.shape != token_ids.shape[:1]:
            check.fail(f"state_batch_indices must have one entry per token: shape ({token_ids.shape[0]},), got "
                       f"{tuple(rows.shape)}")
        cache_size = next(t for t in tree_flatten(state)[0] if torch.is_tensor(t)).shape[0]
        if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= cache_size):
            check.fail(f"state_batch_indices must lie in [0, {cache_size}) (the state's batch), got "
                       f"{rows.tolist()}")
        if rows.unique().numel() != rows.numel():
            check.fail(f"state_batch_indices must be distinct (two tokens cannot continue one state), got "
                       f"{rows.tolist()}")
        return rows.long()

    def prefill(self, input_ids: torch.Tensor, state: list):
        """input_ids (B, L) from `state` (default_state or later) -> (the logits after the last position (B, V),
        the state after it): what L steps give, through each layer's parallel form where it has one."""
        hidden, state = self.backbone.prefill(self.embedding(input_ids), state)
        return self.lm_head(hidden[:, -1]), state

    def _eager_step(self, state: list):
        """token_ids -> logits, keeping the state in a closure (step.state() returns it)."""
        state = [state]

        def step(token_ids):
            logits, state[0] = self.step(token_ids, state[0])
            return logits
        step.state = lambda: state[0]
        return step

    def _graphed_step(self, input_ids: torch.Tensor) -> GraphedStep:
        """The cached GraphedStep for this batch size and device, in whatever state its last use left it (the
        caller loads one: load_state also refreshes its step constants)."""
        cache = self.__dict__.setdefault("_graphed_steps", {})  # not a submodule, not in the state_dict
        key = (input_ids.shape[0], input_ids.device)
        if key not in cache:
            cache[key] = GraphedStep(self, input_ids.shape[0], input_ids.device)
        return cache[key]

    def _run_prompts(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor], prefill: bool):
        """(logits after each prompt (B, V), state after it): prompts of equal length together (attention_mask:
        left padding), each group through `prefill` or token by token, from default states."""
        def run(ids):
            state = self.default_state(ids.shape[0])
            if prefill:
                return self.prefill(ids, state)
            step = self._eager_step(state)
            for t in range(ids.shape[1]):
                logits = step(ids[:, t])
            return logits, step.state()
        if attention_mask is None:
            return run(input_ids)
        lengths = attention_mask.sum(1)
        state, logits = self.default_state(input_ids.shape[0]), None
        for length in lengths.unique().tolist():
            rows = (lengths == length).nonzero().squeeze(1)
            group_logits, group_state = run(input_ids[rows, input_ids.shape[1] - length:])
            logits = group_logits.new_empty(input_ids.shape[0], group_logits.shape[1]) if logits is None else logits
            logits[rows] = group_logits
            write_rows(state, rows, group_state)
        return logits, state

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_length: int, temperature: float = 1.0,
                 top_k: Optional[int] = None, top_p: Optional[float] = None,
                 eos_token_id: Optional[int] = None, generator: Optional[torch.Generator] = None,
                 cuda_graph: bool = False, prefill: bool = True,
                 attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Continue input_ids (B, L0) to max_length tokens in all (prompt included): (B, max_length).

        Sampling from softmax(logits / temperature) restricted to the top_k tokens and to the smallest set
        whose probability reaches top_p; top_k=1 or temperature=0 is greedy decoding. After eos_token_id
        a sequence keeps emitting it. Runs in eval mode (restored afterwards), one recurrent step per token.
        prefill: run the prompt through the layers' parallel forms once (see `prefill`); False steps through
            it token by token (the same tokens up to rounding: for checking, or timing the difference).
        attention_mask: (B, L0) of 0 / 1 (or bool), prompts of different lengths left-padded as transformers
            pads them: row i's prompt is its last attention_mask[i].sum() tokens (at least one); the padding
            is kept in the output and never read, so each row gets the tokens it would get alone.
        cuda_graph (CUDA only): replay each step from a CUDA graph captured on first use per batch size
        (GraphedStep, kept on the model): one launch per token instead of one per kernel.
        """
        check = ArgCheck("generate")
        check.tensor("input_ids", input_ids, ("B", "L"), dtypes=(torch.int64, torch.int32))
        check.integer("input_ids.shape[1] (the prompt length)", input_ids.shape[1], minimum=1)
        check.integer("max_length", max_length, minimum=input_ids.shape[1])
        if check.finite("temperature", temperature) < 0:
            check.fail(f"temperature must be >= 0, got {temperature}")
        if top_k is not None:
            check.integer("top_k", top_k, minimum=1)
        if top_p is not None and not 0.0 < check.finite("top_p", top_p) <= 1.0:
            check.fail(f"top_p must be in (0, 1], got {top_p}")
        if cuda_graph and input_ids.device.type != "cuda":
            check.fail(f"cuda_graph=True needs CUDA tensors, got input_ids on {input_ids.device}")
        if not isinstance(prefill, bool):
            raise TypeError(f"generate: prefill must be a bool, got {type(prefill).__name__}")
        if attention_mask is not None:
            check.tensor("attention_mask", attention_mask, ("B", "L"), dtypes=(torch.bool, torch.int64, torch.int32))
            if attention_mask.shape != input_ids.shape:
                check.fail(f"attention_mask must have input_ids' shape {tuple(input_ids.shape)}, got "
                           f"{tuple(attention_mask.shape)}")
            mask = attention_mask.long()
            if ((mask != 0) & (mask != 1)).any():
                check.fail("attention_mask must hold only 0 and 1")
            if (mask[:, 1:] < mask[:, :-1]).any() or (mask[:, -1] == 0).any():
                check.fail("attention_mask must be left padding (each row 0 ... 0 1 ... 1, ending with 1): "
                           "the prompts end where generation starts")
            attention_mask = mask

        # eval mode for the call, every module's own mode restored after it (setting the flags directly: eval()
        # and train() walk the modules through nn.Module.__setattr__, milliseconds per call for a large model)
        training = [m for m in self.modules() if m.training]
        for m in training:
            m.training = False
        try:
            new_tokens = []
            with FrozenStepConstants(self):  # the eager steps' parameter-derived tensors, once per call
                logits, state = self._run_prompts(input_ids, attention_mask, prefill)
                step = self._graphed_step(input_ids) if cuda_graph else self._eager_step(state)
                if cuda_graph:
                    step.load_state(state)
                finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
                for remaining in range(max_length - input_ids.shape[1], 0, -1):
                    nxt = sample(logits[:, :self.vocab_size].float(), temperature, top_k, top_p, generator)
                    if eos_token_id is not None:
                        nxt = torch.where(finished, torch.full_like(nxt, eos_token_id), nxt)
                        finished |= nxt == eos_token_id
                    new_tokens.append(nxt.to(input_ids.dtype))
                    if remaining > 1:
                        logits = step(new_tokens[-1])
        finally:
            for m in training:
                m.training = True
        return torch.cat([input_ids] + [t.unsqueeze(1) for t in new_tokens], dim=1)


def sample(logits: torch.Tensor, temperature: float = 1.0, top_k: Optional[int] = None,
           top_p: Optional[float] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """logits (B, V) -> token ids (B,)."""
    if top_k == 1 or temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the tokens ranked above it already reach top_p (the first one always stays)
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)
