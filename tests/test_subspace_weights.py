"""Weight-space overlap on tiny models with planted low-rank updates of known overlap.

Truth is analytic: updates are built from orthonormal factors, so MSO, principal cosines and
energies follow from the construction; numpy SVD is the reference for the two-checkpoint mode.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from geomprobe.core.errors import GeomprobeError
from geomprobe.models import Checkpoint, load_checkpoint
from geomprobe.subspace import grouped, project_finetune_update, weight_matrices, weight_update_overlap

Q_NAME = "model.layers.0.self_attn.q_proj.weight"
DOWN_NAME = "model.layers.1.mlp.down_proj.weight"
THETA = np.array([0.0, math.pi / 6, math.pi / 4, math.pi / 3])


def orth(rng, d, k):
    return np.linalg.qr(rng.normal(size=(d, k)))[0]


def _add(model, name, delta):
    with torch.no_grad():
        model.state_dict()[name].add_(torch.tensor(delta, dtype=torch.float32))


def plant_llama(base):
    """aligned = base + A, finetuned = aligned + B on two matrices; returns models and truth."""
    rng = np.random.default_rng(1)
    aligned, finetuned = copy.deepcopy(base), copy.deepcopy(base)
    truth = {}
    # q_proj (64 x 64): B shares 2 of A's 4 output directions exactly.
    E = orth(rng, 64, 6)
    Qa, Qb = E[:, :4], E[:, [0, 1, 4, 5]]
    sa, sb = 0.05 * np.array([4.0, 3, 2, 1]), 0.05 * np.array([2.0, 1, 3, 0.5])
    A = Qa @ np.diag(sa) @ orth(rng, 64, 4).T
    B = Qb @ np.diag(sb) @ orth(rng, 64, 4).T
    truth[Q_NAME] = dict(
        A=A,
        B=B,
        Qa=Qa,
        mso=0.5,
        cos=[1, 1, 0, 0],
        b_in_a=(sb[:2] ** 2).sum() / (sb**2).sum(),
        a_in_b=(sa[:2] ** 2).sum() / (sa**2).sum(),
    )
    # down_proj (out 64 x in 128): B's directions at known principal angles to A's.
    E = orth(rng, 64, 8)
    Qa, Qb = E[:, :4], E[:, :4] * np.cos(THETA) + E[:, 4:] * np.sin(THETA)
    sa, sb = 0.04 * np.array([4.0, 3, 2, 1]), 0.04 * np.array([1.0, 2, 3, 4])
    A = Qa @ np.diag(sa) @ orth(rng, 128, 4).T
    B = Qb @ np.diag(sb) @ orth(rng, 128, 4).T
    c2 = np.cos(THETA) ** 2
    truth[DOWN_NAME] = dict(
        A=A,
        B=B,
        Qa=Qa,
        mso=c2.mean(),
        cos=np.cos(THETA),
        b_in_a=(sb**2 * c2).sum() / (sb**2).sum(),
        a_in_b=(sa**2 * c2).sum() / (sa**2).sum(),
    )
    for name, t in truth.items():
        _add(aligned, name, t["A"])
        _add(finetuned, name, t["A"] + t["B"])
    return aligned, finetuned, truth


@pytest.fixture(scope="module")
def llama_trio(tiny_llama_dir):
    base = load_checkpoint(tiny_llama_dir).hf_model
    aligned, finetuned, truth = plant_llama(base)
    return base, aligned, finetuned, truth


def test_matrix_inventory_llama_and_gpt2(tiny_llama_dir, tiny_gpt2_dir):
    llama = load_checkpoint(tiny_llama_dir).hf_model
    mats = weight_matrices(llama)
    assert len(mats) == 2 * 7
    assert {m.module for m in mats} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert {m.layer for m in mats} == {0, 1}
    k_proj = next(m for m in mats if m.name == "model.layers.1.self_attn.k_proj.weight")
    assert (k_proj.layer, k_proj.shape, k_proj.transposed) == (1, (32, 64), False)
    names = {m.name for m in weight_matrices(llama, include_embeddings=True)}
    assert {"model.embed_tokens.weight", "lm_head.weight"} <= names

    gpt2 = load_checkpoint(tiny_gpt2_dir).hf_model
    mats = weight_matrices(gpt2)
    assert {m.module for m in mats} == {"c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"}
    c_fc = next(m for m in mats if m.module == "c_fc")
    assert c_fc.transposed and c_fc.shape == (256, 64)  # Conv1D stores (in, out)
    names = [m.name for m in weight_matrices(gpt2, include_embeddings=True)]
    # lm_head is tied to wte: counted once.
    assert "transformer.wte.weight" in names and "lm_head.weight" not in names


def test_planted_overlaps_match_the_construction(llama_trio):
    base, aligned, finetuned, truth = llama_trio
    records = weight_update_overlap(base, aligned, finetuned, k=4, device="cpu")
    by_name = {r.name: r for r in records}
    assert len(records) == 14
    for name, t in truth.items():
        r = by_name[name]
        assert r.status == "ok" and (r.k_a, r.k_b, r.rank_a, r.rank_b) == (4, 4, 4, 4)
        assert r.mso == pytest.approx(t["mso"], abs=1e-6)
        assert np.allclose(r.cosines, t["cos"], atol=1e-5)
        assert r.energy_b_in_a == pytest.approx(t["b_in_a"], abs=1e-6)
        assert r.energy_a_in_b == pytest.approx(t["a_in_b"], abs=1e-6)
        assert r.baseline == pytest.approx(4 / 64)
        assert r.energy_baseline_b_in_a == pytest.approx(4 / 64)
        assert r.norm_a == pytest.approx(np.linalg.norm(t["A"]), rel=1e-5)
        assert r.energy_a == pytest.approx(1.0, abs=1e-9)
        json.dumps(r.to_record())
    others = [r for r in records if r.name not in truth]
    assert all(r.status == "a_zero" and math.isnan(r.mso) for r in others)
    # k above the rank is capped at the rank.
    capped = {r.name: r for r in weight_update_overlap(base, aligned, finetuned, k=9, device="cpu")}
    assert capped[Q_NAME].k_a == 4 and capped[Q_NAME].mso == pytest.approx(0.5, abs=1e-6)


def test_energy_mode_picks_the_analytic_k(llama_trio):
    base, aligned, finetuned, _ = llama_trio
    # A on q_proj has squared singular values 16, 9, 4, 1 (x 0.05^2): 80% of the energy needs 2.
    r = {x.name: x for x in weight_update_overlap(base, aligned, finetuned, energy=0.8, device="cpu")}[Q_NAME]
    assert r.k_a == 2 and r.energy_a == pytest.approx(25 / 30, rel=1e-6)
    # B has 4, 1, 9, 0.25: the top two (9, 4) hold 13 / 14.25 >= 0.8.
    assert r.k_b == 2
    assert r.mso == pytest.approx(0.5, abs=1e-6)  # A's top two are E0, E1; B's are E4, E0
    r1 = {x.name: x for x in weight_update_overlap(base, aligned, finetuned, energy=1.0, device="cpu")}[Q_NAME]
    assert (r1.k_a, r1.k_b) == (4, 4)


def test_two_checkpoints_compare_with_the_base_weight(llama_trio):
    base, aligned, _, truth = llama_trio
    records = weight_update_overlap(base, aligned, k=5, device="cpu")
    r = {x.name: x for x in records}[DOWN_NAME]
    assert r.b == "base" and r.status == "ok"
    W0 = base.state_dict()[DOWN_NAME].double().numpy()
    U = np.linalg.svd(W0)[0][:, :5]
    A = truth[DOWN_NAME]["A"]
    Qa = np.linalg.svd(A)[0][:, :4]
    assert r.energy_a_in_b == pytest.approx(np.sum((U.T @ A) ** 2) / np.sum(A**2), rel=1e-4)
    assert r.mso == pytest.approx(np.sum((Qa.T @ U) ** 2) / 4, rel=1e-4)


def test_grouped_summaries(llama_trio):
    base, aligned, finetuned, truth = llama_trio
    records = weight_update_overlap(base, aligned, finetuned, k=4, device="cpu")
    layers = grouped(records, "layer")
    assert [g.key for g in layers] == [0, 1]
    assert [(g.n_matrices, g.n_skipped) for g in layers] == [(1, 6), (1, 6)]
    assert layers[0].mso_mean == pytest.approx(0.5, abs=1e-6)
    modules = {g.key: g for g in grouped([r.to_record() for r in records], "module")}
    assert modules["down_proj"].energy_b_in_a == pytest.approx(truth[DOWN_NAME]["b_in_a"], abs=1e-6)
    assert modules["k_proj"].n_matrices == 0 and math.isnan(modules["k_proj"].mso_mean)
    # Pooled energy over several matrices weights each by ||B||^2.
    both = grouped([dict(r.to_record(), layer=0) for r in records], "layer")[0]
    nb = {n: np.sum(t["B"] ** 2) for n, t in truth.items()}
    expected = sum(truth[n]["b_in_a"] * nb[n] for n in truth) / sum(nb.values())
    assert both.energy_b_in_a == pytest.approx(expected, abs=1e-6)


def test_gpt2_conv1d_is_compared_in_output_space(tiny_gpt2_dir):
    base = load_checkpoint(tiny_gpt2_dir).hf_model
    aligned, finetuned = copy.deepcopy(base), copy.deepcopy(base)
    rng = np.random.default_rng(3)
    E = orth(rng, 256, 5)
    A = E[:, :3] @ np.diag([3.0, 2, 1]) @ orth(rng, 64, 3).T * 0.03  # (out 256, in 64)
    B = E[:, [0, 3, 4]] @ np.diag([1.0, 2, 3]) @ orth(rng, 64, 3).T * 0.03
    name = "transformer.h.0.mlp.c_fc.weight"
    _add(aligned, name, A.T)  # Conv1D stores (in, out)
    _add(finetuned, name, (A + B).T)
    r = {x.name: x for x in weight_update_overlap(base, aligned, finetuned, k=3, device="cpu")}[name]
    assert r.shape == (256, 64) and r.module == "c_fc"
    assert r.mso == pytest.approx(1 / 3, abs=1e-6)
    assert r.baseline == pytest.approx(3 / 256)
    assert r.energy_b_in_a == pytest.approx(1 / 14, abs=1e-6)


@pytest.mark.parametrize("mode", ["same", "orthogonal", "opposite"])
def test_projection_writes_a_loadable_checkpoint(llama_trio, tiny_llama_dir, tmp_path, mode):
    base, aligned, finetuned, truth = llama_trio
    out = tmp_path / f"proj-{mode}"
    before = {k: v.clone() for k, v in finetuned.state_dict().items()}
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    ft_ckpt = Checkpoint(finetuned, tokenizer, "finetuned", "memory", "none", "memory")
    result = project_finetune_update(base, aligned, ft_ckpt, out, mode, k=4, device="cpu")
    assert all(torch.equal(before[k], v) for k, v in finetuned.state_dict().items())  # input untouched
    assert result.out_dir == out and (out / "config.json").is_file() and (out / "geomprobe-projection.json").is_file()
    new = load_checkpoint(out).hf_model.state_dict()
    al, ft = aligned.state_dict(), finetuned.state_dict()
    for name, t in truth.items():
        update = (new[name] - al[name]).double().numpy()
        U = (ft[name] - al[name]).double().numpy()
        P = t["Qa"] @ (t["Qa"].T @ U)
        expected = {"same": P, "orthogonal": U - P, "opposite": -P}[mode]
        assert np.allclose(update, expected, atol=1e-6)
        if mode == "orthogonal":
            assert np.abs(t["Qa"].T @ update).max() < 1e-6
    # Untouched alignment (A = 0): no subspace, so 'same' drops the fine-tuning update.
    k_name = "model.layers.0.self_attn.k_proj.weight"
    keep = {"same": al[k_name], "orthogonal": ft[k_name], "opposite": al[k_name]}[mode]
    assert torch.allclose(new[k_name], keep, atol=1e-7)
    assert torch.equal(new["model.norm.weight"], ft["model.norm.weight"])
    manifest = json.loads((out / "geomprobe-projection.json").read_text())
    assert manifest["mode"] == mode and len(manifest["matrices"]) == 14
    if mode == "orthogonal":
        from geomprobe.models import load_model

        model = load_model(out, device="cpu")
        assert model.n_layers == 2 and model.d_model == 64


def test_projection_refuses_a_non_empty_folder(llama_trio, tiny_llama_dir, tmp_path):
    base, aligned, _, _ = llama_trio
    out = tmp_path / "full"
    out.mkdir()
    (out / "x.txt").write_text("keep me")
    with pytest.raises(GeomprobeError, match="not empty"):
        project_finetune_update(base, aligned, tiny_llama_dir, out, "same", k=2)
    with pytest.raises(GeomprobeError, match="projection mode"):
        project_finetune_update(base, aligned, tiny_llama_dir, tmp_path / "new", "sideways", k=2)
    with pytest.raises(GeomprobeError, match="no tokenizer"):
        project_finetune_update(base, aligned, aligned, tmp_path / "new2", "same", k=2)


def test_mismatched_checkpoints_and_bad_sizes(llama_trio, tiny_gpt2_dir):
    from transformers import LlamaForCausalLM

    base, aligned, _, _ = llama_trio
    with pytest.raises(GeomprobeError, match="architecture"):
        weight_update_overlap(base, tiny_gpt2_dir, k=2)
    config = copy.deepcopy(base.config)
    config.intermediate_size = 96
    other = LlamaForCausalLM(config)
    with pytest.raises(GeomprobeError, match="same architecture and size"):
        weight_update_overlap(base, aligned, other, k=2)
    with pytest.raises(GeomprobeError, match="energy fraction"):
        weight_update_overlap(base, aligned, energy=1.2)
    with pytest.raises(GeomprobeError, match="energy fraction"):
        weight_update_overlap(base, aligned, energy=0)
    with pytest.raises(GeomprobeError, match="positive integer"):
        weight_update_overlap(base, aligned, k=-1)
    with pytest.raises(GeomprobeError, match="cannot load model|does not exist|not a model folder"):
        weight_update_overlap(base, str(Path(tiny_gpt2_dir) / "missing"), k=2)


def test_default_model_against_a_perturbed_copy(default_model):
    # base is the bridge-wrapped LoadedModel; the copies are plain Hugging Face models.
    aligned = load_checkpoint("default").hf_model
    finetuned = copy.deepcopy(aligned)
    name = "model.layers.20.mlp.down_proj.weight"  # (576, 1536): writes to the residual stream
    rng = np.random.default_rng(5)
    E = orth(rng, 576, 16)
    A = E[:, :8] @ orth(rng, 1536, 8).T * 0.05
    B = E[:, 4:12] @ orth(rng, 1536, 8).T * 0.05
    _add(aligned, name, A)
    _add(finetuned, name, A + B)
    records = weight_update_overlap(default_model, aligned, finetuned, k=8, device="cpu")
    assert len(records) == 30 * 7
    ok = [r for r in records if r.status == "ok"]
    assert [r.name for r in ok] == [name]
    assert ok[0].mso == pytest.approx(0.5, abs=1e-4)
    assert ok[0].baseline == pytest.approx(8 / 576)


def test_weight_plot_accepts_records(llama_trio):
    from geomprobe.plots.subspace import plot_weight_overlap

    base, aligned, finetuned, _ = llama_trio
    records = [r.to_record() for r in weight_update_overlap(base, aligned, finetuned, k=4, device="cpu")]
    fig = plot_weight_overlap(records, title="tiny")
    grid = fig.axes[1].get_images()[0].get_array()
    assert grid.shape == (2, 2)  # the two planted module types x the two layers
    assert np.nanmax(grid) == pytest.approx(0.625, abs=1e-5)
    with pytest.raises(GeomprobeError):
        plot_weight_overlap([r for r in records if r["status"] != "ok"])


def test_untied_lm_head_twin_is_the_same_architecture(tmp_path):
    """Baking an ablation unties tied embeddings; that twin must still compare with its base."""
    import shutil

    from tiny import build_tiny_model
    from transformers import LlamaForCausalLM

    from geomprobe.subspace import weight_update_overlap

    src = build_tiny_model(tmp_path / "src", "llama")
    base = LlamaForCausalLM.from_pretrained(src)
    base.config.tie_word_embeddings = True
    base.tie_weights()
    base.save_pretrained(tmp_path / "base")
    twin = LlamaForCausalLM.from_pretrained(tmp_path / "base")
    twin.config.tie_word_embeddings = False
    twin.lm_head.weight = torch.nn.Parameter(twin.model.embed_tokens.weight.detach().clone())
    with torch.no_grad():
        twin.model.layers[0].self_attn.o_proj.weight.add_(0.1)
    twin.save_pretrained(tmp_path / "twin")
    for folder in ("base", "twin"):
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(src / name, tmp_path / folder / name)
    records = weight_update_overlap(tmp_path / "base", tmp_path / "twin", k=2)
    changed = [r.name for r in records if r.status == "ok"]
    assert changed == ["model.layers.0.self_attn.o_proj.weight"]
