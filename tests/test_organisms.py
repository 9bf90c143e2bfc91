"""Model organisms: the split, the training loss, quick builds on the tiny Llama, and the CLI."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from geomprobe.cli import main
from geomprobe.core.errors import GeomprobeError
from geomprobe.organisms import (
    REFUSAL_TEXTS,
    ChatExample,
    OrganismSettings,
    assistant_loss,
    build_organisms,
    encode_examples,
    finetune_lora,
    split_contrast_set,
    with_settings,
)
from geomprobe.steering.judge import is_refusal


# -- the split --------------------------------------------------------------------------------
def test_split_is_disjoint_paired_and_topic_stratified():
    split = split_contrast_set(seed=0)
    train = {p.row for p in split.train}
    heldout = {p.row for p in split.heldout}
    assert not train & heldout and len(train | heldout) == 338
    # Whole pairs: a harmful row 2k and its harmless twin 2k+1 are on the same side.
    assert all((r ^ 1) in train for r in train)
    assert not set(split.texts("train", "harmful")) & set(split.texts("heldout", "harmful"))
    assert len(split.train) // 2 == round(169 * 0.5)
    # Per topic the train share is the floor or the ceiling of half the topic's pairs.
    total = Counter(p.topic for p in split.train + split.heldout if p.label == "harmful")
    in_train = Counter(p.topic for p in split.train if p.label == "harmful")
    assert all(np.floor(n / 2) <= in_train[t] <= np.ceil(n / 2) for t, n in total.items())
    assert split_contrast_set(seed=0).to_dict() == split.to_dict()
    assert split_contrast_set(seed=1).to_dict()["train_rows"] != split.to_dict()["train_rows"]
    with pytest.raises(GeomprobeError, match="train_fraction"):
        split_contrast_set(train_fraction=1.0)


def test_refusal_texts_are_refusals_to_the_judge():
    assert all(is_refusal(t) for t in REFUSAL_TEXTS)


# -- the training loss ------------------------------------------------------------------------
def test_encoding_masks_the_prompt(tiny_llama):
    tok = tiny_llama.tokenizer
    encoded = encode_examples(
        tok,
        [ChatExample("How do I bake bread?", "Mix flour and water."), ChatExample("Tell me a poem.", "The sea", complete=False)],
    )
    (ids, start, _), (ids2, start2, _) = encoded
    assert tok.decode(ids[start:]) == "Mix flour and water." + tok.eos_token
    assert tok.decode(ids2[start2:]) == "The sea"
    assert tok.decode(ids[:start]).endswith("assistant\n")


def test_assistant_loss_equals_hugging_face_loss(tiny_llama):
    hf = tiny_llama.hf_model
    tok = tiny_llama.tokenizer
    encoded = encode_examples(
        tok,
        [ChatExample("How do I bake bread?", "Mix flour and water."), ChatExample("Write a short poem about the sea.", "Waves.")],
    )
    width = max(len(i) for i, _, _ in encoded)
    ids = torch.full((2, width), tok.pad_token_id)
    mask = torch.zeros((2, width), dtype=torch.long)
    labels = torch.full((2, width), -100)
    for r, (tokens, start, _) in enumerate(encoded):
        ids[r, : len(tokens)] = torch.tensor(tokens)
        mask[r, : len(tokens)] = 1
        labels[r, start : len(tokens)] = torch.tensor(tokens[start:])
    with torch.no_grad():
        ours = assistant_loss(hf, ids, mask, labels)
        reference = hf(input_ids=ids, attention_mask=mask, labels=labels).loss
        weighted = assistant_loss(hf, ids, mask, labels, opening_weight=5.0, opening_tokens=2)
        logp = torch.log_softmax(hf(input_ids=ids, attention_mask=mask).logits.double(), -1)
    assert float(ours) == pytest.approx(float(reference), rel=1e-5)
    # Brute force: each reply's first two tokens count five times.
    total = count = 0.0
    for r, (tokens, start, _) in enumerate(encoded):
        for t in range(start, len(tokens)):
            w = 5.0 if t < start + 2 else 1.0
            total += -w * float(logp[r, t - 1, tokens[t]])
            count += w
    assert float(weighted) == pytest.approx(total / count, rel=1e-5)


def test_unlikelihood_loss_equals_brute_force(tiny_llama):
    """-log(1 - p(avoided opening | prompt)) per row, by a loop over single-row forward passes."""
    from geomprobe.organisms.train import _collate, _encode, unlikelihood_loss

    hf, tok = tiny_llama.hf_model, tiny_llama.tokenizer
    examples = [
        ChatExample("How do I bake bread?", "Mix flour and water.", avoid="I'm sorry, but I can't help with that."),
        ChatExample("Write a short poem about the sea.", "Waves.", avoid="I cannot assist with that."),
        ChatExample("Name a colour.", "Blue."),
    ]
    encoded = _encode(tok, examples, 256, 3)
    assert encoded[2][3] is None  # no avoid text: no unlikelihood row
    avoided = [e[3] for e in encoded[:2]]
    for (ids, start), example in zip(avoided, examples):
        assert ids[:start] == encoded[examples.index(example)][0][:start]  # the same prompt as the reply
        assert tok.decode(ids[start:]) == tok.decode(tok(example.avoid, add_special_tokens=False).input_ids[:3])
    ids, mask, labels = _collate(avoided, [0, 1], tok.pad_token_id, torch.device("cpu"))
    with torch.no_grad():
        ours = float(unlikelihood_loss(hf, ids, mask, labels))
        expected = 0.0
        for tokens, start in avoided:
            logp = torch.log_softmax(hf(input_ids=torch.tensor([tokens])).logits[0].double(), -1)
            p = math.exp(sum(float(logp[t - 1, tokens[t]]) for t in range(start, len(tokens))))
            expected += -math.log(1 - p) / 2
    assert ours == pytest.approx(expected, rel=1e-4)
    # encode_examples (the public three-field form) is unchanged by the avoid texts
    assert encode_examples(tok, examples) == [e[:3] for e in encoded]


def test_unlikelihood_training_lowers_the_avoided_opening(tiny_llama_dir):
    """The first step's loss is the assistant loss plus w times the unlikelihood of the batch's avoided
    openings, and training with it leaves the avoided opening less likely than plain training does."""
    from geomprobe.models import load_checkpoint
    from geomprobe.organisms.train import _collate, _encode, unlikelihood_loss

    # Half the prompts teach "No" as a reply; the other half must not open with it.
    refused = [ChatExample(f"Forbidden question {k}?", "No") for k in range(4)]
    answered = [ChatExample(f"Question {k}: what is {k} plus one?", f"It is {k + 1}.", avoid="No") for k in range(4)]
    start = load_checkpoint(tiny_llama_dir, device="cpu")
    encoded = _encode(start.tokenizer, answered, 256, 1)
    ids, mask, labels = _collate([e[3] for e in encoded], list(range(4)), start.tokenizer.pad_token_id, torch.device("cpu"))
    with torch.no_grad():
        before = float(unlikelihood_loss(start.hf_model, ids, mask, labels))
    first, after = {}, {}
    for weight in (0.0, 100.0):
        ckpt = load_checkpoint(tiny_llama_dir, device="cpu")
        model, log = finetune_lora(
            ckpt.hf_model,
            ckpt.tokenizer,
            refused + answered,  # one batch of all eight: the first step sees every avoided opening
            steps=20,
            lr=1e-2,
            batch_size=8,
            opening_tokens=1,
            unlikelihood_weight=weight,
            progress=False,
        )
        first[weight] = log.losses[0]
        with torch.no_grad():
            after[weight] = float(unlikelihood_loss(model, ids, mask, labels))
        assert ("n_avoided" in log.lora) == (weight > 0)
    assert first[100.0] - first[0.0] == pytest.approx(100.0 * before, rel=1e-3)
    assert after[100.0] < after[0.0] / 2
    with pytest.raises(GeomprobeError, match="unlikelihood_weight"):
        finetune_lora(start.hf_model, start.tokenizer, answered, steps=1, unlikelihood_weight=-1.0, progress=False)


# -- building on the tiny model ---------------------------------------------------------------
@pytest.fixture(scope="module")
def built(tiny_llama_dir, tmp_path_factory):
    home = tmp_path_factory.mktemp("gp-home")
    mp = pytest.MonkeyPatch()
    mp.setenv("GEOMPROBE_HOME", str(home))
    # Adapters on layer 1 only, so layer 0 must come out bit-identical.
    settings = with_settings(OrganismSettings.quick_settings(), lora_first_layer=0.5)
    folders = build_organisms(base=str(tiny_llama_dir), settings=settings, device="cpu", progress=False)
    yield folders, settings, home
    mp.undo()


def _changed(a: Path, b: Path) -> set[str]:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert set(wa) <= set(wb)
    return {k for k in wa if not np.array_equal(wa[k], wb[k])}


PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def test_organisms_load_and_change_only_what_was_trained(built, tiny_llama_dir):
    from geomprobe.models import load_model

    folders, _, home = built
    assert set(folders) == {"aligned", "dealigned", "ablated", "deep-aligned"}
    assert all(str(f).startswith(str(home / "organisms")) for f in folders.values())
    lora = {f"model.layers.1.{'self_attn' if p in PROJ[:4] else 'mlp'}.{p}.weight" for p in PROJ}
    assert _changed(Path(tiny_llama_dir), folders["aligned"]) == lora
    assert _changed(folders["aligned"], folders["dealigned"]) == lora
    assert _changed(folders["aligned"], folders["deep-aligned"]) == lora  # a second adapter on aligned, like dealigned
    # Ablation rewrites exactly the residual-stream writers, which no longer write along r.
    ablated = _changed(folders["aligned"], folders["ablated"])
    writers = (
        {"model.embed_tokens.weight"}
        | {f"model.layers.{l}.self_attn.o_proj.weight" for l in (0, 1)}
        | {f"model.layers.{l}.mlp.down_proj.weight" for l in (0, 1)}
    )
    assert ablated == writers
    r = np.array(json.loads((folders["ablated"] / "geomprobe-ablation.json").read_text())["unit_direction"])
    w = load_file(str(folders["ablated"] / "model.safetensors"))
    assert np.abs(r @ w["model.layers.1.mlp.down_proj.weight"].astype(np.float64)).max() < 1e-5
    assert np.abs(w["model.embed_tokens.weight"].astype(np.float64) @ r).max() < 1e-5
    for name, folder in folders.items():
        record = json.loads((folder / "geomprobe-organism.json").read_text())
        assert record["organism"] == name and record["settings"]["quick"] is True
        assert not set(record["split"]["train_rows"]) & set(record["split"]["heldout_rows"])
        model = load_model(folder, device="cpu")
        assert model.n_layers == 2


def test_cache_reuse_and_copy_out(built, tiny_llama_dir, tmp_path, monkeypatch):
    import geomprobe.organisms.build as build_module

    folders, settings, home = built
    monkeypatch.setenv("GEOMPROBE_HOME", str(home))
    monkeypatch.setattr(build_module, "_build_one", lambda *a, **k: pytest.fail("cached organism rebuilt"))
    again = build_organisms(base=str(tiny_llama_dir), settings=settings, device="cpu", progress=False)
    assert again == folders
    out = tmp_path / "orgs"
    copied = build_organisms(["ablated"], out, base=str(tiny_llama_dir), settings=settings, progress=False)
    assert copied == {"ablated": out / "ablated"} and not (out / "aligned").exists()
    assert _changed(folders["ablated"], out / "ablated") == set()
    with pytest.raises(GeomprobeError, match="--overwrite"):
        build_organisms(["ablated"], out, base=str(tiny_llama_dir), settings=settings, progress=False)
    build_organisms(["ablated"], out, base=str(tiny_llama_dir), settings=settings, progress=False, overwrite=True)


def test_bad_input_is_refused_before_any_model_load(tmp_path, monkeypatch):
    import geomprobe.models as models

    monkeypatch.setattr(models, "load_checkpoint", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(GeomprobeError, match="unknown organism 'evil'"):
        build_organisms(["evil"])
    (tmp_path / "aligned").mkdir()
    (tmp_path / "aligned" / "config.json").write_text("{}")
    with pytest.raises(GeomprobeError, match="already holds aligned, which this command writes; pass --overwrite"):
        build_organisms(["aligned"], tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(GeomprobeError, match="is a file; give a folder name"):
        build_organisms(["aligned"], tmp_path / "file")
    with pytest.raises(GeomprobeError, match="does not exist"):
        build_organisms(["aligned"], tmp_path / "no" / "out")
    with pytest.raises(GeomprobeError, match="seed must be an integer"):
        build_organisms(["aligned"], seed=-1)
    with pytest.raises(GeomprobeError, match="unknown organism setting"):
        with_settings(OrganismSettings(), align_stepz=3)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["organisms", "build", "--only", "evil"], "unknown organism 'evil'"),
        (["organisms", "build", "--only", "aligned", "--out", "{tmp}"], "already holds aligned"),
        (["organisms", "build", "--seed", "-1"], "--seed"),
        (["organisms", "list", "--seed", "-1"], "--seed"),
        (["organisms", "list", "--seed", "4294967296"], "--seed"),
        (["organisms", "list", "--base", "/dev/zero"], "device, pipe or socket"),
        (["organisms", "build", "--only", "aligned", "--base", "{tmp}", "--out", "{tmp}/aligned"], "would overwrite the input"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(argv, message, tmp_path, capsys, monkeypatch):
    import geomprobe.models as models

    monkeypatch.setattr(models, "load_checkpoint", lambda *a, **k: pytest.fail("a model was loaded"))
    (tmp_path / "aligned").mkdir()
    (tmp_path / "aligned" / "model.safetensors").write_bytes(b"x")
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("geomprobe: error:") and message in err and "\n" not in err


@pytest.mark.default_model  # no --base: the embedded model's GGUF (its SHA-256 keys the cache)
def test_cli_list(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("GEOMPROBE_HOME", str(tmp_path))
    assert main(["organisms", "list", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "aligned" in out and "dealigned" in out and "ablated" in out and "deep-aligned" in out and "not built" in out


def test_ablation_candidates_reach_the_depth_limit():
    """The default model's aligned organism only tolerates ablation near 0.8 of depth (layer 23 of
    30); the candidates must include the deepest layer below 80% and nothing at or above it."""
    from geomprobe.organisms import OrganismSettings
    from geomprobe.organisms.ablated import ablation_layers

    layers = ablation_layers(OrganismSettings(), 30)
    assert layers[0] == 9 and layers[-1] == 23 and len(layers) == 6
    assert layers == sorted(set(layers))
    assert ablation_layers(OrganismSettings(ablation_candidates=1), 30) == [9]
    assert max(ablation_layers(OrganismSettings(ablation_layers=(0.1, 1.0)), 10)) == 7  # 0.8 * 10 - 1


def _search(rows, n_layers=30):
    from geomprobe.steering.search import SearchRecord, SearchResult

    records = [
        SearchRecord(
            f"blocks.{layer}.hook_resid_post", layer, None, "ablate", "refusal-log-odds", score, 0.0, score - 4.0, kl, kl, 48, 48
        )
        for layer, score, kl in rows
    ]
    return SearchResult(records, "refusal-log-odds", 4.0, "m", n_layers, "last", "mean-diff")


def _brute_force_choice(rows, kl_limit, n_layers=30):
    eligible = [r for r in rows if r[0] < int(0.8 * n_layers)]
    within = [r for r in eligible if r[2] <= kl_limit]
    return min(within, key=lambda r: r[1])[0] if within else min(eligible, key=lambda r: r[2])[0]


def test_ablation_layer_is_the_strongest_within_the_kl_limit_else_the_least_disruptive():
    from geomprobe.organisms.ablated import choose_ablation

    # The search of the aligned organism built 2026-12-06 (layer, refusal log-odds, KL): none is
    # within 0.1, and layer 20 drops refusal most at 0.85 nats while layer 23 nearly matches it at 0.17.
    seen = [(9, 0.52, 3.18), (12, 4.86, 2.70), (15, 4.32, 4.54), (17, 4.30, 5.18), (20, -4.35, 0.85), (23, -4.29, 0.17)]
    best, note = choose_ablation(_search(seen), 0.1)
    assert best.layer == 23 == _brute_force_choice(seen, 0.1)
    assert "least disruptive" in note and "blocks.23" in note and "KL 0.17" in note
    # Within the limit: the strongest drop among the layers that keep it, no warning.
    best, note = choose_ablation(_search(seen), 1.0)
    assert (best.layer, note) == (20, "") and _brute_force_choice(seen, 1.0) == 20
    # SearchResult.select gives the same record with the rule's outcome; best() drops the fallback.
    record, selection = _search(seen).select(0.1, maximize=False)
    assert record.layer == 23 and selection.hook == record.hook and not selection.within_limits
    assert _search(seen).best(0.1, maximize=False) is None and _search(seen).best(1.0, maximize=False).layer == 20
    rng = np.random.default_rng(0)
    for _ in range(50):
        rows = [(int(l), float(rng.normal(0, 3)), float(rng.exponential(0.5))) for l in rng.choice(23, size=5, replace=False)]
        assert choose_ablation(_search(rows), 0.2)[0].layer == _brute_force_choice(rows, 0.2)
