"""What geomprobe knows about each model architecture, in one table.

Stages that depend on how a Hugging Face architecture is built read it from here, never from a
table of their own:

* steering at ``resid_mid`` (:func:`geomprobe.steering.steering_site`) needs blocks whose
  residual after attention is ``resid_pre + attn_out``, unscaled (``resid_mid_is_attn_sum``);
* baking an ablation into the weights (:func:`geomprobe.steering.orthogonalize_weights`) needs
  the modules that write to the residual stream (``embeddings``, ``layers``, ``attn_writer``,
  ``mlp_writer``) and whether the embeddings are tied to the unembedding;
* the weight-space subspace analysis (:mod:`geomprobe.subspace.weights`) and the audit need which
  matrices write to the stream (:data:`RESIDUAL_WRITER_NAMES`) and which store ``(in, out)``
  (GPT-2's ``Conv1D``, :func:`stores_transposed`).

Adding an architecture is one :class:`Architecture` row in :data:`ARCHITECTURES` plus a test that
builds a tiny model of it (tests/test_architecture_table.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Architecture:
    """Facts about one Hugging Face ``config.model_type``.

    Module paths are dotted attribute paths: ``embeddings`` and ``layers`` from the top of the
    ``*ForCausalLM`` model, ``attn_writer`` and ``mlp_writer`` from inside one layer. Empty paths
    mean "not known here" (baking an ablation is then refused).
    """

    model_type: str
    # Pre-norm block that adds the attention output to the residual unchanged: then
    # resid_mid = resid_pre + attn_out, so a vector added to attn_out moves resid_mid by exactly
    # the vector. False for post-sublayer norms (Gemma 2/3), parallel blocks (GPT-NeoX, Falcon)
    # and residual multipliers (Granite).
    resid_mid_is_attn_sum: bool
    embeddings: tuple[str, ...] = ()  # token (and learned position) embeddings: write the stream before block 0
    layers: str = ""  # the ModuleList of decoder layers
    attn_writer: str = ""  # attention output projection (writes the stream)
    mlp_writer: str = ""  # MLP down projection (writes the stream); a mixture of experts has none

    @property
    def writers_known(self) -> bool:
        """Whether every module that writes the residual stream is listed (weights can be orthogonalised)."""
        return bool(self.embeddings and self.layers and self.attn_writer and self.mlp_writer)


def _llama_like(model_type: str) -> Architecture:
    return Architecture(model_type, True, ("model.embed_tokens",), "model.layers", "self_attn.o_proj", "mlp.down_proj")


ARCHITECTURES: dict[str, Architecture] = {
    arch.model_type: arch
    for arch in (
        _llama_like("llama"),
        _llama_like("mistral"),
        _llama_like("qwen2"),
        _llama_like("qwen3"),
        _llama_like("phi3"),
        Architecture("gpt2", True, ("transformer.wte", "transformer.wpe"), "transformer.h", "attn.c_proj", "mlp.c_proj"),
        # GPT-NeoX blocks run attention and MLP in parallel by default: no resid_mid sum.
        Architecture("gpt_neox", False, ("gpt_neox.embed_in",), "gpt_neox.layers", "attention.dense", "mlp.dense_4h_to_h"),
        # Known to steer at resid_mid; their writers are not listed (experts, or not checked yet).
        Architecture("mixtral", True),
        Architecture("qwen2_moe", True),
        Architecture("qwen3_moe", True),
        Architecture("gemma", True),
    )
}

# Short matrix names (as geomprobe.subspace.weight_matrices names them) of weights that write to
# the residual stream: the writers of the table above, plus the usual names in families the table
# does not list (OPT/BART out_proj and fc2, T5 wo, Mixtral experts' w2).
RESIDUAL_WRITER_NAMES: tuple[str, ...] = tuple(
    dict.fromkeys(
        [
            name
            for arch in ARCHITECTURES.values()
            for path in (arch.attn_writer, arch.mlp_writer)
            if path
            for name in (path.rsplit(".", 1)[-1], path)
        ]
        + ["out_proj", "fc2", "wo", "w2"]
    )
)


def model_type(model: Any) -> str:
    """``config.model_type`` of a Hugging Face model, a loaded model or a checkpoint ("" if none)."""
    hf_model = getattr(model, "hf_model", model)
    return str(getattr(getattr(hf_model, "config", None), "model_type", "") or "")


def architecture(model: Any) -> Architecture | None:
    """The table row for ``model`` (a model_type string or any model :func:`model_type` reads); None if unlisted."""
    return ARCHITECTURES.get(model if isinstance(model, str) else model_type(model))


def resid_mid_is_attn_sum(model: Any) -> bool:
    """Whether ``resid_mid`` of ``model``'s blocks is ``resid_pre + attn_out`` (see :class:`Architecture`)."""
    arch = architecture(model)
    return arch is not None and arch.resid_mid_is_attn_sum


def model_types_supporting(what: str) -> list[str]:
    """Model types that support ``what``: ``"resid_mid"`` steering or ``"writers"`` (baked ablation)."""
    if what == "resid_mid":
        return sorted(a.model_type for a in ARCHITECTURES.values() if a.resid_mid_is_attn_sum)
    if what == "writers":
        return sorted(a.model_type for a in ARCHITECTURES.values() if a.writers_known)
    raise ValueError(f"unknown capability {what!r}; use resid_mid or writers")


def stores_transposed(module: Any) -> bool:
    """Whether ``module`` keeps its weight as ``(in, out)`` (GPT-2's ``Conv1D``: y = x W + b),
    not the ``nn.Linear`` layout ``(out, in)``."""
    return type(module).__name__ == "Conv1D"


def embeddings_tied(hf_model: Any) -> bool:
    """Whether the unembedding shares its weight tensor with the token embedding."""
    output = hf_model.get_output_embeddings()
    return output is not None and output.weight.data_ptr() == hf_model.get_input_embeddings().weight.data_ptr()


def untie_embeddings(hf_model: Any) -> bool:
    """Give the unembedding its own copy of the weight (and say so in the config); True if it was tied.

    Needed before changing the token embedding alone: a tied unembedding would change with it.
    """
    if not embeddings_tied(hf_model):
        return False
    output = hf_model.get_output_embeddings()
    output.weight = torch.nn.Parameter(output.weight.detach().clone())
    hf_model.config.tie_word_embeddings = False
    if hasattr(hf_model.config, "get_text_config"):
        hf_model.config.get_text_config().tie_word_embeddings = False
    return True
