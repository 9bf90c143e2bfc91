"""Build the artefacts the bad-input corpus points at (one folder, made once per test session).

Good artefacts are made through the public APIs (``write_cache``, ``train_probes``/``save_probe``,
``build_from_cache``/``save``); bad ones are damaged copies of them or the small files in
``files/`` (names ending ``.h5.txt``/``.gguf.txt`` lose the ``.txt``: git ignores those suffixes).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np

FILES = Path(__file__).parent / "files"
D_MODEL = 64  # the tiny test model's width
HOOKS = ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post")


def _arrays(n: int, d: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], n // 2)
    pair_ids = np.tile(np.arange(n // 2), 2)
    acts = {h: (rng.normal(size=(n, d)) + 0.8 * labels[:, None]).astype(np.float32) for h in HOOKS}
    return acts, labels, pair_ids


def build_corpus_root(root: Path, model_dir: Path) -> dict[str, str]:
    """Write every artefact under ``root``; return the placeholder -> path map the cases use."""
    from geomprobe.activations.store import write_cache
    from geomprobe.probes import save_probe, train_probes
    from geomprobe.steering import build_from_cache

    root = Path(root)
    for src in FILES.iterdir():
        name = src.name[:-4] if src.name.endswith((".h5.txt", ".gguf.txt")) else src.name
        shutil.copyfile(src, root / name)

    acts, labels, pairs = _arrays(40, D_MODEL, 0)
    names = ["harmless", "harmful"]
    good = write_cache(
        root / "good.h5",
        {h: {"last": a} for h, a in acts.items()},
        labels,
        names,
        pair_ids=pairs,
        texts=[f"prompt {i}" for i in range(40)],
        attrs={"n_layers": 2},
    )
    acts32, labels32, pairs32 = _arrays(40, 32, 1)
    write_cache(root / "width32.h5", acts32, labels32, names, pair_ids=pairs32, attrs={"n_layers": 2})
    write_cache(root / "one_class.h5", acts, np.zeros(40, dtype=np.int64), ["harmless"], attrs={"n_layers": 2})
    write_cache(
        root / "other.h5",
        _arrays(40, D_MODEL, 2)[0],
        labels,
        names,
        pair_ids=pairs,
        attrs={"n_layers": 2, "model_id": "some-other-model"},
    )

    # NaN/inf: write a good file, then poke non-finite values in (the writer itself refuses them).
    shutil.copyfile(good, root / "nan.h5")
    with h5py.File(root / "nan.h5", "r+") as f:
        for hook in HOOKS:
            ds = f[f"activations/{hook}/last"]
            block = ds[0:3]
            block[0, 0], block[1, 5], block[2, 9] = np.nan, np.inf, -np.inf
            ds[0:3] = block

    shutil.copyfile(good, root / "incomplete.h5")
    with h5py.File(root / "incomplete.h5", "r+") as f:
        f.attrs["complete"] = False
    data = good.read_bytes()
    (root / "truncated.h5").write_bytes(data[: len(data) // 2])
    with h5py.File(root / "foreign.h5", "w") as f:  # valid HDF5, not a geomprobe cache
        f.create_dataset("x", data=np.arange(4))
    (root / "dir.h5").mkdir()
    spaced = root / "dir with spaces ünïcødé"
    spaced.mkdir()
    shutil.copyfile(root / "not_hdf5.h5", spaced / "cache ünïcødé.h5")

    # Probes and vectors made through the APIs, then damaged copies.
    probes, _ = train_probes(good, "mean-diff", test_size=0.25, device="cpu")
    save_probe(probes, root / "probe")
    probes32, _ = train_probes(root / "width32.h5", "mean-diff", test_size=0.25, device="cpu")
    save_probe(probes32, root / "probe32")
    build_from_cache(good).save(root / "vector")
    build_from_cache(root / "width32.h5").save(root / "vector32")

    def damaged(src: str, dst: str, edit) -> None:
        shutil.copytree(root / src, root / dst)
        edit(root / dst)

    damaged("probe", "probe_bad_json", lambda p: shutil.copyfile(root / "truncated_sidecar.json", p / "probe.json"))
    damaged("probe", "probe_utf16_json", lambda p: shutil.copyfile(root / "utf16_sidecar.json", p / "probe.json"))

    def drop_hooks(p: Path) -> None:
        side = json.loads((p / "probe.json").read_text())
        del side["hooks"]
        (p / "probe.json").write_text(json.dumps(side))

    damaged("probe", "probe_no_hooks", drop_hooks)

    def cut(name: str):
        def edit(p: Path) -> None:
            raw = (p / name).read_bytes()
            (p / name).write_bytes(raw[: len(raw) // 2])

        return edit

    damaged("probe", "probe_truncated", cut("probe.safetensors"))
    damaged("vector", "vector_truncated", cut("vector.safetensors"))
    damaged("vector", "vector_bad_json", lambda p: shutil.copyfile(root / "truncated_sidecar.json", p / "vector.json"))
    (root / "empty_dir").mkdir()
    (root / "not_a_model").mkdir()
    (root / "not_a_model" / "README").write_text("no config.json here\n")
    (root / "bad_config").mkdir()
    (root / "bad_config" / "config.json").write_text("{ this is not json")
    # Pre-existing outputs that a failing command must leave byte-identical.
    (root / "existing.json").write_text('{"keep": "me"}\n')
    (root / "existing.png").write_bytes(b"\x89PNG keep me")
    (root / "existing.gguf").write_bytes(b"GGUF keep me")
    (root / "project_out").mkdir()
    (root / "project_out" / "keep.txt").write_text("keep me\n")

    # -- outputs, disks and arguments (issue 16 part 2) ------------------------------------------
    (root / "existing.md").write_text("| keep | me |\n")
    (root / "existing.html").write_text("<p>keep me</p>\n")
    (root / "old_audit").mkdir()
    (root / "old_audit" / "metrics.json").write_text('{"keep": "me"}\n')
    _write_gguf_files(root)
    _write_hostile_inputs(root)  # issue 16 part 1
    write_round3_inputs(root, model_dir)  # issue 21

    paths = {p.name.replace(" ", "_"): str(p) for p in root.iterdir()}
    paths.update(
        root=str(root),
        model=str(model_dir),
        spaced_bad=str(spaced / "cache ünïcødé.h5"),
        spaced_missing=str(spaced / "nöt thére.h5"),
    )
    return {k.replace(".", "_").replace("-", "_"): v for k, v in paths.items()}


def _write_gguf_files(root: Path) -> None:
    """A small well-formed GGUF (llama arch, two tensors), a copy cut inside its tensor data, and one cut in its header."""
    import gguf

    whole = root / "small_whole.gguf"
    writer = gguf.GGUFWriter(str(whole), arch="llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.ones((16, 8), dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones(8, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    data = whole.read_bytes()
    (root / "truncated.gguf").write_bytes(data[: len(data) - 200])  # header intact, tensor data cut short
    (root / "header_cut.gguf").write_bytes(data[:40])
    whole.unlink()


# == hostile input (issue 16 part 1) =================================================================
def _write_hostile_inputs(root: Path) -> None:
    """Datasets with text HDF5 or the tokenizer cannot take, and caches/sidecars damaged field by field."""
    from geomprobe.activations.format import CHECKSUM_ATTR

    good_row = '{"text": "a fine prompt", "label": 0}\n'
    (root / "nul.jsonl").write_text(good_row + '{"text": "a\\u0000b", "label": 1}\n')
    (root / "nul_label.jsonl").write_text(good_row + '{"text": "b", "label": "evil\\u0000"}\n')
    (root / "surrogate.jsonl").write_text(good_row + '{"text": "bad \\ud800 text", "label": 1}\n')
    (root / "surrogate_note.jsonl").write_text(good_row + '{"text": "ok", "label": 1, "note": "x\\udfff"}\n')
    (root / "nul.csv").write_text("text,label\nfine,0\na\x00b,1\n")
    (root / "empty_response.jsonl").write_text(
        '{"prompt": "q", "response": "an answer", "label": 0}\n{"prompt": "q", "response": "", "label": 1}\n'
    )
    (root / "long_prompt.jsonl").write_text(good_row + json.dumps({"text": "many words " * 300, "label": 1}) + "\n")

    def cache_copy(name: str, edit) -> None:
        shutil.copyfile(root / "good.h5", root / name)
        with h5py.File(root / name, "r+") as f:
            edit(f)

    def set_row(dataset: str, value: int, keep_checksum: bool):
        def edit(f) -> None:
            data = f[dataset][()]
            data[0] = value
            f[dataset][...] = data
            if not keep_checksum:
                del f.attrs[CHECKSUM_ATTR]

        return edit

    def set_attr(key: str, value):
        def edit(f) -> None:
            f.attrs[key] = value

        return edit

    def short_pairs(f) -> None:
        del f["pair_ids"]
        f.create_dataset("pair_ids", data=np.zeros(5, dtype=np.int64))

    cache_copy("label_range.h5", set_row("labels", 7, keep_checksum=False))
    cache_copy("label_tampered.h5", set_row("labels", 1, keep_checksum=True))
    cache_copy("pair_tampered.h5", set_row("pair_ids", 5, keep_checksum=True))
    cache_copy("d_model_string.h5", set_attr("d_model", "64"))
    cache_copy("version_string.h5", set_attr("format_version", "x"))
    cache_copy("version_newer.h5", set_attr("format_version", 9))
    cache_copy("no_hooks_attr.h5", lambda f: f.attrs.__delitem__("hooks"))
    cache_copy("short_pairs.h5", short_pairs)

    def sidecar_copy(src: str, dst: str, sidecar: str, key: str, value) -> None:
        shutil.copytree(root / src, root / dst)
        side = json.loads((root / dst / sidecar).read_text())
        side[key] = value
        (root / dst / sidecar).write_text(json.dumps(side))

    sidecar_copy("probe", "probe_d_model_string", "probe.json", "d_model", "64")
    sidecar_copy("probe", "probe_version_string", "probe.json", "format_version", "x")
    sidecar_copy("vector", "vector_hooks_numbers", "vector.json", "hooks", [0, 1])
    sidecar_copy("vector", "vector_metadata_list", "vector.json", "metadata", [1, 2])


# == integrity, outputs and parsing limits (issue 21) =====================================================
def write_round3_inputs(root: Path, model_dir: Path) -> None:
    """Forged caches and probes, broken model folders, hostile JSON Lines and a tiny cache (issue 21)."""
    import torch
    from safetensors.numpy import load_file as load_numpy
    from safetensors.numpy import save_file as save_numpy
    from safetensors.torch import load_file, save_file

    from geomprobe.activations.format import CHECKSUM_ATTR
    from geomprobe.activations.store import write_cache

    def cache_copy(name: str, edit) -> None:
        shutil.copyfile(root / "good.h5", root / name)
        with h5py.File(root / name, "r+") as f:
            edit(f)

    def flip_and_drop(f) -> None:  # the forgery: labels flipped, checksums deleted
        f["labels"][...] = 1 - f["labels"][()]
        del f.attrs[CHECKSUM_ATTR]

    def drop_label_digest(f) -> None:
        digests = json.loads(f.attrs[CHECKSUM_ATTR])
        del digests["labels"]
        f.attrs[CHECKSUM_ATTR] = json.dumps(digests)

    cache_copy("forged_no_checksums.h5", flip_and_drop)
    cache_copy("dup_labels.h5", lambda f: f.attrs.__setitem__("label_names", json.dumps(["harmful", "harmful"])))
    cache_copy("no_label_digest.h5", drop_label_digest)
    cache_copy("deep_checksums.h5", lambda f: f.attrs.__setitem__(CHECKSUM_ATTR, "[" * 100_000 + "]" * 100_000))
    cache_copy("deep_label_names.h5", lambda f: f.attrs.__setitem__("label_names", "[" * 100_000 + "]" * 100_000))
    acts, labels, pairs = _arrays(8, D_MODEL, 5)
    write_cache(root / "few_rows.h5", acts, labels, ["harmless", "harmful"], pair_ids=pairs, attrs={"n_layers": 2})
    write_cache(root / "few_unpaired.h5", acts, labels, ["harmless", "harmful"], attrs={"n_layers": 2})

    def probe_copy(name: str, edit_side=None, edit_tensors=None) -> None:
        shutil.copytree(root / "probe", root / name)
        if edit_side is not None:
            side = json.loads((root / name / "probe.json").read_text())
            edit_side(side)
            (root / name / "probe.json").write_text(json.dumps(side))
        if edit_tensors is not None:
            tensors = load_numpy(str(root / name / "probe.safetensors"))
            edit_tensors(tensors)
            save_numpy(tensors, str(root / name / "probe.safetensors"))

    hook = HOOKS[0]
    probe_copy("probe_direction_flipped", edit_tensors=lambda t: t.__setitem__(f"{hook}.direction", -t[f"{hook}.direction"]))
    probe_copy("probe_scale_zero", edit_tensors=lambda t: t[f"{hook}.scale"].__setitem__(0, 0.0))
    probe_copy("probe_no_model_id", edit_side=lambda s: s.pop("model_id"))
    probe_copy("probe_model_id_number", edit_side=lambda s: s.__setitem__("model_id", 7))
    probe_copy("probe_dup_labels", edit_side=lambda s: s.__setitem__("label_names", ["harmful", "harmful"]))
    shutil.copytree(root / "probe", root / "probe_deep_json")
    (root / "probe_deep_json" / "probe.json").write_text("[" * 100_000 + "]" * 100_000)
    shutil.copytree(root / "probe", root / "probe_bigint_json")
    (root / "probe_bigint_json" / "probe.json").write_text('{"format": "geomprobe-probe", "format_version": ' + "9" * 5000 + "}")
    shutil.copytree(root / "probe", root / "probe_other_model")  # trained on "some-other-model"
    side = json.loads((root / "probe_other_model" / "probe.json").read_text())
    side["model_id"] = "some-other-model"
    (root / "probe_other_model" / "probe.json").write_text(json.dumps(side))

    # Model folders whose weights do not fit their config, or whose config is broken.
    weights = load_file(str(model_dir / "model.safetensors"))

    def model_copy(name: str, edit_weights=None, edit_config=None, edit_folder=None) -> None:
        shutil.copytree(model_dir, root / name)
        if edit_weights is not None:
            tensors = dict(weights)
            edit_weights(tensors)
            save_file(tensors, str(root / name / "model.safetensors"), metadata={"format": "pt"})
        if edit_config is not None:
            config = json.loads((root / name / "config.json").read_text())
            edit_config(config)
            (root / name / "config.json").write_text(json.dumps(config))
        if edit_folder is not None:
            edit_folder(root / name)

    norm = "model.norm.weight"
    model_copy("model_missing_tensor", edit_weights=lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    model_copy("model_unexpected_tensor", edit_weights=lambda t: t.__setitem__("model.extra.weight", t[norm].clone()))
    model_copy("model_wrong_shape", edit_weights=lambda t: t.__setitem__(norm, torch.ones(32)))
    model_copy("model_more_layers", edit_config=lambda c: c.__setitem__("num_hidden_layers", 3))
    model_copy("model_layers_text", edit_config=lambda c: c.__setitem__("num_hidden_layers", "two"))
    model_copy("model_zero_heads", edit_config=lambda c: c.__setitem__("num_attention_heads", 0))
    model_copy("model_negative_width", edit_config=lambda c: c.__setitem__("hidden_size", -4))
    model_copy("model_config_list", edit_folder=lambda p: (p / "config.json").write_text("[1, 2]"))

    def cut_weights(p: Path) -> None:
        raw = (p / "model.safetensors").read_bytes()
        (p / "model.safetensors").write_bytes(raw[:5000])

    model_copy("model_cut_weights", edit_folder=cut_weights)
    model_copy("model_bad_tokenizer", edit_folder=lambda p: (p / "tokenizer.json").write_text("{"))

    # JSON Lines: a valid U+2028 / U+0085 row before a broken one (the error must name line 2),
    # nesting past the recursion limit, an integer past the digit limit.
    valid = json.dumps({"text": "first\u2028second\u0085third", "label": 0}, ensure_ascii=False)
    (root / "u2028_then_bad.jsonl").write_text(valid + '\n{"text": }\n', encoding="utf-8")
    (root / "deep.jsonl").write_text('{"text": "a", "label": 0}\n{"text": ' + "[" * 100_000 + "]" * 100_000 + ', "label": 1}\n')
    (root / "bigint.jsonl").write_text('{"text": "a", "label": 0}\n{"text": "b", "label": ' + "9" * 5000 + "}\n")
    (root / "deep_questions.jsonl").write_text('{"question": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    (root / "bigint_questions.jsonl").write_text('{"question": "q", "answer": "a", "id": ' + "7" * 5000 + "}\n")
    u_q = json.dumps({"question": "a\u2028b", "answer": "yes"}, ensure_ascii=False)
    (root / "u2028_questions.jsonl").write_text(u_q + "\n{broken\n", encoding="utf-8")
    (root / "deep_metrics").mkdir()
    (root / "deep_metrics" / "metrics.json").write_text("[" * 100_000 + "]" * 100_000)
    # Output folders holding files a command would write (not its marker file).
    (root / "user_report").mkdir()
    (root / "user_report" / "report.html").write_text("<p>my own report</p>\n")
    (root / "user_plots").mkdir()
    (root / "user_plots" / "aqi_layers.png").write_bytes(b"\x89PNG mine")
    (root / "half_probe").mkdir()
    (root / "half_probe" / "probe.safetensors").write_bytes(b"someone else's tensors")
    (root / "half_vector").mkdir()
    (root / "half_vector" / "vector.safetensors").write_bytes(b"someone else's tensors")
    (root / "organisms_out").mkdir()
    (root / "organisms_out" / "aligned").mkdir()
    (root / "organisms_out" / "aligned" / "config.json").write_text("{}")
    (root / "good_link.h5").symlink_to(root / "good.h5")
    (root / "old_audit" / "caches").mkdir()
    (root / "old_audit" / "caches" / "d.jsonl").write_text('{"text": "q", "label": 0}\n')
