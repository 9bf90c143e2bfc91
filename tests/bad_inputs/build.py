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
    good = write_cache(root / "good.h5", {h: {"last": a} for h, a in acts.items()}, labels, names,
                       pair_ids=pairs, texts=[f"prompt {i}" for i in range(40)], attrs={"n_layers": 2})
    acts32, labels32, pairs32 = _arrays(40, 32, 1)
    write_cache(root / "width32.h5", acts32, labels32, names, pair_ids=pairs32, attrs={"n_layers": 2})
    write_cache(root / "one_class.h5", acts, np.zeros(40, dtype=np.int64), ["harmless"], attrs={"n_layers": 2})
    write_cache(root / "other.h5", _arrays(40, D_MODEL, 2)[0], labels, names, pair_ids=pairs,
                attrs={"n_layers": 2, "model_id": "some-other-model"})

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

    paths = {p.name.replace(" ", "_"): str(p) for p in root.iterdir()}
    paths.update(root=str(root), model=str(model_dir), spaced_bad=str(spaced / "cache ünïcødé.h5"),
                 spaced_missing=str(spaced / "nöt thére.h5"))
    return {k.replace(".", "_").replace("-", "_"): v for k, v in paths.items()}
