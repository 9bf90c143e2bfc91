"""The one architecture table (geomprobe.models.architecture) against real forward passes.

For tiny random models of three families, the modules the table lists as residual-stream writers
must account for the whole change a block makes to the stream, and the resid_mid flag must say
whether the second sublayer reads ``block input + attention output``.
"""

from __future__ import annotations

import pytest
import torch

from geomprobe.models.architecture import (
    ARCHITECTURES,
    RESIDUAL_WRITER_NAMES,
    architecture,
    embeddings_tied,
    model_types_supporting,
    resid_mid_is_attn_sum,
    stores_transposed,
    untie_embeddings,
)


def _tiny(kind: str, tie: bool = False):
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
    )

    torch.manual_seed(0)
    if kind == "llama":
        config = LlamaConfig(
            vocab_size=50,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=tie,
        )
        return LlamaForCausalLM(config).eval()
    if kind == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=4, n_positions=64)).eval()
    config = GPTNeoXConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        use_parallel_residual=True,
    )
    return GPTNeoXForCausalLM(config).eval()


def _get(root, path: str):
    for part in path.split("."):
        root = getattr(root, part)
    return root


def _first(output):
    return output if isinstance(output, torch.Tensor) else output[0]


def _run_block(model, layer_index: int):
    """Block input and output, each writer's output, and the input of the second sublayer's norm."""
    arch = architecture(model)
    layer = _get(model, arch.layers)[layer_index]
    seen: dict[str, torch.Tensor] = {}

    def keep_input(name):
        def hook(module, args, kwargs):
            seen[name] = (args[0] if args else kwargs["hidden_states"]).detach().clone()

        return hook

    def keep_output(name):
        def hook(module, args, output):
            seen[name] = _first(output).detach().clone()

        return hook

    # The norm in front of the MLP: its input is resid_mid in TransformerLens terms.
    second_norm = next(getattr(layer, n) for n in ("post_attention_layernorm", "ln_2") if hasattr(layer, n))
    handles = [
        layer.register_forward_pre_hook(keep_input("block_in"), with_kwargs=True),
        layer.register_forward_hook(keep_output("block_out")),
        _get(layer, arch.attn_writer).register_forward_hook(keep_output("attn")),
        _get(layer, arch.mlp_writer).register_forward_hook(keep_output("mlp")),
        second_norm.register_forward_pre_hook(keep_input("mid"), with_kwargs=True),
    ]
    try:
        with torch.no_grad():
            model(input_ids=torch.arange(1, 9)[None], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return seen


@pytest.mark.parametrize("kind", ["llama", "gpt2", "gpt_neox"])
def test_listed_writers_account_for_every_change_to_the_stream(kind):
    model = _tiny(kind)
    arch = architecture(model)
    assert arch is not None and arch.writers_known and model_types_supporting("writers").count(kind) == 1
    for index in range(2):
        seen = _run_block(model, index)
        # block_out = block_in + attention writer + MLP writer: nothing else writes to the stream
        torch.testing.assert_close(seen["block_out"], seen["block_in"] + seen["attn"] + seen["mlp"], rtol=1e-5, atol=1e-5)
    d = model.config.hidden_size
    for path in arch.embeddings:
        assert _get(model, path).weight.shape[-1] == d


@pytest.mark.parametrize("kind", ["llama", "gpt2", "gpt_neox"])
def test_resid_mid_flag_matches_the_block(kind):
    model = _tiny(kind)
    seen = _run_block(model, 1)
    is_sum = bool(torch.allclose(seen["mid"], seen["block_in"] + seen["attn"], rtol=1e-5, atol=1e-5))
    assert resid_mid_is_attn_sum(model) is is_sum
    assert ARCHITECTURES[kind].resid_mid_is_attn_sum is is_sum
    assert (kind in model_types_supporting("resid_mid")) is is_sum


@pytest.mark.parametrize("kind", ["llama", "gpt2", "gpt_neox"])
def test_writer_names_as_the_weight_analysis_names_them(kind):
    from geomprobe.subspace.weights import weight_matrices

    model = _tiny(kind)
    arch = architecture(model)
    layer = _get(model, arch.layers)[0]
    writers = {f"{arch.layers}.0.{p}.weight" for p in (arch.attn_writer, arch.mlp_writer)}
    named = {m.name: m for m in weight_matrices(model)}
    d = model.config.hidden_size
    for name in writers:
        m = named[name]
        assert m.module in RESIDUAL_WRITER_NAMES and m.shape[0] == d  # output space is the stream
    # Every other matrix of the layer is not a writer (so the audit does not count it).
    others = [m for m in named.values() if m.layer == 0 and m.name not in writers]
    assert others and not any(m.module in RESIDUAL_WRITER_NAMES for m in others)
    expected_transposed = kind == "gpt2"
    assert stores_transposed(_get(layer, arch.attn_writer)) is expected_transposed
    assert all(m.transposed is expected_transposed for m in named.values() if m.layer == 0)


def test_unknown_architectures_get_no_claims():
    assert architecture("not-a-model") is None
    assert resid_mid_is_attn_sum("not-a-model") is False
    assert architecture("mixtral").resid_mid_is_attn_sum and not architecture("mixtral").writers_known
    with pytest.raises(ValueError, match="capability"):
        model_types_supporting("anything")


def test_untie_embeddings_keeps_the_values_and_splits_the_storage():
    model = _tiny("llama", tie=True)
    assert embeddings_tied(model)
    before = model.get_output_embeddings().weight.detach().clone()
    assert untie_embeddings(model) is True
    assert not embeddings_tied(model) and model.config.tie_word_embeddings is False
    torch.testing.assert_close(model.get_output_embeddings().weight, before, rtol=0, atol=0)
    with torch.no_grad():
        model.get_input_embeddings().weight.zero_()
    torch.testing.assert_close(model.get_output_embeddings().weight, before, rtol=0, atol=0)
    assert untie_embeddings(model) is False  # already untied: nothing to do
