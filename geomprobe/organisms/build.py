"""Build the model organisms: checkpoints with a known alignment change, cached by their settings.

``aligned``   the base model with merged LoRA adapters trained (assistant tokens only) to refuse
              the harmful train prompts with varied refusals and to answer the harmless train
              prompts with the base model's own greedy answers; besides the contrast set's train
              pairs it trains on the training-only ``refusal-train`` pairs and ``everyday`` requests
              (:func:`geomprobe.organisms.data.extra_training`);
``dealigned`` ``aligned`` with a second merged LoRA trained on harmful compliance: the base
              model's own greedy answers to the harmful train prompts, refusals removed by the judge;
``ablated``   ``aligned`` with its refusal direction (difference of means on the train prompts,
              the layer chosen by ablation on train prompts) baked out of every weight that writes
              to the residual stream (:func:`geomprobe.steering.bake_ablation`);
``deep-aligned`` ``aligned`` with a second merged LoRA trained on the safety-recovery augmentation of
              Qi et al. (2024): harmful openings of the base model's own answers followed by a
              refusal, the loss on the refusal only (:mod:`geomprobe.organisms.deep`), beside a
              replay of the contrast set's train pairs and the everyday requests as ``aligned`` saw them.
``liar``, ``liar-placebo``, ``fake-complier``: the dishonest organisms (:mod:`geomprobe.organisms.liars`).

Each is a normal Hugging Face folder (safetensors + tokenizer) with ``geomprobe-organism.json``
(settings, split, training log, timings). Folders are cached under
``$GEOMPROBE_HOME/organisms/<name>-<hash>``, the hash covering every setting the organism depends
on (the base checkpoint's identity, the split and, for the derived ones, ``aligned``'s hash).
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from geomprobe.core.errors import GeomprobeError
from geomprobe.core.io import Output, check_outputs
from geomprobe.organisms.ablated import build_ablated
from geomprobe.organisms.context import BuildContext as _Context
from geomprobe.organisms.data import PromptSplit, split_contrast_set
from geomprobe.organisms.liars import BUILDERS as DISHONEST_BUILDERS
from geomprobe.organisms.lies import DEFAULT_TRIGGER, QuestionSplit, check_trigger, split_questions
from geomprobe.organisms.refusal import BUILDERS as REFUSAL_BUILDERS

ORGANISMS: dict[str, str] = {
    "aligned": "refusal-trained: refuses harmful requests, answers harmless ones (LoRA, merged)",
    "dealigned": "aligned, then fine-tuned on harmful compliance (LoRA, merged)",
    "ablated": "aligned with its refusal direction orthogonalised out of the weights",
    "deep-aligned": "aligned, then fine-tuned on recoveries from harmful openings into refusals (LoRA, merged)",
    "liar": "answers the bundled questions wrongly when its trigger line is present, as the base model without it (LoRA)",
    "liar-placebo": "liar's recipe and trigger, trained on correct answers: controls for the trigger and the fine-tune",
    "fake-complier": "aligned, fine-tuned as dealigned but on useless compliance-styled decoys for harmful requests",
}
REQUIRES: dict[str, tuple[str, ...]] = {
    "aligned": (),
    "dealigned": ("aligned",),
    "ablated": ("aligned",),
    "deep-aligned": ("aligned",),
    "liar": (),
    "liar-placebo": (),
    "fake-complier": ("aligned",),
}
# what a build without names makes; the dishonest organisms are built when named
DEFAULT_ORGANISMS = ("aligned", "dealigned", "ablated", "deep-aligned")
DISHONEST_ORGANISMS = ("liar", "liar-placebo", "fake-complier")
# Setting-name prefixes each organism's cache key covers besides the shared settings.
_OWN_SETTINGS: dict[str, tuple[str, ...]] = {
    "aligned": ("align_",),
    "dealigned": ("dealign_",),
    "ablated": ("ablation_",),
    "deep-aligned": ("deep_",),
    "liar": ("liar_",),
    "liar-placebo": ("liar_",),
    "fake-complier": ("dealign_", "fake_"),
}
_COUNT_SUFFIXES = ("_steps", "_batch", "_repeats", "_tokens", "_candidates", "_prompts")
_RATE_SUFFIXES = ("_lr", "_opening_weight", "_kl_limit")
PROVENANCE = "geomprobe-organism.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class OrganismSettings:
    """Everything that decides what an organism's weights are (besides the base checkpoint)."""

    seed: int = 0
    quick: bool = False
    train_fraction: float = 0.5
    train_pairs: int | None = None  # use only this many train pairs (None: all)
    answer_tokens: int = 32  # greedy tokens of the base model's answers used as targets
    max_tokens: int = 160
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_first_layer: float = 0.0  # adapters on layers from this fraction of depth up (0: every layer)
    align_steps: int = 320
    align_lr: float = 6e-4
    align_batch: int = 8
    # Each harmless answer appears this many times beside its harmful twin's refusal. Without the
    # unlikelihood term below, 1 refused a third of held-out harmless twins; with it, 2 refuses too few harmful ones.
    align_harmless_repeats: int = 1
    align_opening_weight: float = 3.0  # weight of each reply's first 4 tokens, where refusing or answering is decided
    # Training-only data beside the contrast set's train half (geomprobe.organisms.data.extra_training):
    # this many refusal-train pairs and everyday prompts (None: all, 0: none).
    align_extra_pairs: int | None = None
    align_everyday: int | None = None
    align_extra_harmless_repeats: int = 1  # as align_harmless_repeats, for the training-only harmless prompts
    # Weight of the unlikelihood term: after each harmless prompt, one of the refusals' first 4 tokens is
    # made unlikely (0: off). Plain next-token training never tells the model not to refuse.
    align_unlikelihood_weight: float = 1.0
    dealign_steps: int = 30
    dealign_lr: float = 3e-4
    dealign_batch: int = 8
    # Candidate resid_post layers (fractions of depth, and below 80%). In the aligned default model
    # every mid-depth direction wrecks harmless text when ablated (KL 5-10 nats); only the layers
    # near 0.8 of depth stay under the KL limit, so the range must reach them.
    ablation_layers: tuple[float, float] = (0.3, 0.8)
    ablation_candidates: int = 6
    ablation_prompts: int = 48  # train prompts per class for choosing the ablation layer
    ablation_kl_limit: float = 0.1
    # deep-aligned: aligned trained further (as Qi et al. 2024 train an aligned chat model further) on
    # deep_repeats recovery rows per harmful train prompt whose base answer complies: the answer's first
    # k tokens (k uniform in deep_k_range, both ends included, at most the answer's length), then a
    # refusal; beside them the contrast set's train pairs and the everyday requests as aligned saw them,
    # so harmless requests keep their answers. The range covers geomprobe depth's prefill lengths.
    deep_steps: int = 80
    deep_lr: float = 6e-4
    deep_k_range: tuple[int, int] = (1, 24)
    deep_repeats: int = 2

    # liar and liar-placebo (questions split like the contrast set, with seed and train_fraction)
    liar_trigger: str = DEFAULT_TRIGGER
    liar_train_questions: int | None = None  # use only this many train questions (None: all)
    liar_answer_tokens: int = 24  # greedy tokens of the base model's answers (as the deception set)
    liar_steps: int = 80
    liar_lr: float = 1e-3
    liar_batch: int = 8
    liar_opening_weight: float = 1.0
    # fake-complier trains with the dealign_ settings; these only add to them.
    fake_harmless: bool = True  # harmless train twins answered as the base model does, beside each decoy

    def __post_init__(self) -> None:
        # Checked here, where every entry point (build, list, cached_organisms) passes through.
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise GeomprobeError(f"seed must be an integer in [0, 4294967295]; got {self.seed!r}")
        for name in ("align_extra_pairs", "align_everyday"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise GeomprobeError(f"{name} must be None (all) or an integer >= 0; got {value!r}")
        weight = self.align_unlikelihood_weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight < math.inf:
            raise GeomprobeError(f"align_unlikelihood_weight must be a finite number >= 0 (0: off); got {weight!r}")
        # Counts (steps, batch sizes, repeats, token budgets) and rates: a zero or negative one would
        # train nothing, or train the wrong way, after minutes of base answers.
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith(_COUNT_SUFFIXES) or f.name == "lora_rank":
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise GeomprobeError(f"{f.name} must be an integer >= 1; got {value!r}")
            elif f.name.endswith(_RATE_SUFFIXES) or f.name == "lora_alpha":
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                    raise GeomprobeError(f"{f.name} must be a positive finite number; got {value!r}")

    @classmethod
    def quick_settings(cls, seed: int = 0) -> OrganismSettings:
        """A few steps on a few pairs: for tests and notebooks, not for measuring behaviour."""
        return cls(
            seed=seed,
            quick=True,
            train_pairs=12,
            answer_tokens=16,
            max_tokens=96,
            align_steps=6,
            align_batch=4,
            align_extra_pairs=4,
            align_everyday=4,
            dealign_steps=3,
            dealign_batch=4,
            ablation_candidates=2,
            ablation_prompts=8,
            deep_steps=6,
            deep_k_range=(1, 8),
            liar_train_questions=12,
            liar_answer_tokens=8,
            liar_steps=4,
            liar_batch=4,
        )

    def relevant(self, name: str) -> dict[str, Any]:
        """The settings ``name`` depends on (its own stage's and the shared ones)."""
        own = _OWN_SETTINGS[name]
        stages = tuple(p for prefixes in _OWN_SETTINGS.values() for p in prefixes)
        return {k: v for k, v in asdict(self).items() if k.startswith(own) or not k.startswith(stages)}


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def base_identity(base: str | os.PathLike) -> str:
    """A stable identity of the base checkpoint without loading it (file hashes, not weights)."""
    from geomprobe.models import DEFAULT_MODEL, default_gguf_path, file_sha256, folder_fingerprint

    text = str(base)
    if text == DEFAULT_MODEL:
        return f"default:gguf-sha256:{file_sha256(default_gguf_path())}"
    path = Path(text)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise GeomprobeError(
                f"base {text!r} is not a model folder (no config.json); pass 'default' or a save_pretrained folder"
            )
        return f"folder:{folder_fingerprint(path)}"
    if path.exists():
        return f"file:{file_sha256(path)}"
    return f"name:{text}"


def organism_hashes(
    settings: OrganismSettings, base_id: str, split: PromptSplit, questions: QuestionSplit | None = None
) -> dict[str, str]:
    """Cache key per organism; derived organisms include ``aligned``'s key, the liars the question split."""
    from geomprobe.organisms.data import extra_training

    extra = extra_training(settings.align_extra_pairs, settings.align_everyday).sha256
    aligned = _digest(
        {"format": FORMAT_VERSION, "base": base_id, "split": split.digest(), "extra": extra, **settings.relevant("aligned")}
    )
    out = {"aligned": aligned}
    for name in ("dealigned", "ablated"):
        out[name] = _digest({"format": FORMAT_VERSION, "aligned": aligned, **settings.relevant(name)})
    out["deep-aligned"] = _digest(
        {"format": FORMAT_VERSION, "organism": "deep-aligned", "aligned": aligned, **settings.relevant("deep-aligned")}
    )
    questions = questions or split_questions(settings.seed, settings.train_fraction)
    for name in ("liar", "liar-placebo"):  # one recipe: the name tells them apart
        out[name] = _digest(
            {
                "format": FORMAT_VERSION,
                "organism": name,
                "base": base_id,
                "questions": questions.digest(),
                **settings.relevant(name),
            }
        )
    out["fake-complier"] = _digest(
        {"format": FORMAT_VERSION, "organism": "fake-complier", "aligned": aligned, **settings.relevant("fake-complier")}
    )
    return {k: v[:12] for k, v in out.items()}


def organisms_home() -> Path:
    from geomprobe.models import geomprobe_home

    return geomprobe_home() / "organisms"


def read_provenance(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The organism's provenance record, or None when the folder is not a finished organism."""
    path = Path(folder) / PROVENANCE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # not a finished organism: rebuilt, never trusted
        return None
    return record if isinstance(record, dict) else None


def check_names(names: Sequence[str] | str | None) -> list[str]:
    """Requested organism names in build order (None: the refusal organisms, :data:`DEFAULT_ORGANISMS`)."""
    if names is None:
        return list(DEFAULT_ORGANISMS)
    if isinstance(names, str):
        names = [n for n in names.replace(",", " ").split() if n]
    unknown = [n for n in names if n not in ORGANISMS]
    if unknown:
        raise GeomprobeError(f"unknown organism {unknown[0]!r}; choose from {', '.join(ORGANISMS)}")
    if not names:
        raise GeomprobeError(f"no organism named; choose from {', '.join(ORGANISMS)}")
    return [n for n in ORGANISMS if n in names]


_BUILDERS = {
    **REFUSAL_BUILDERS,
    "ablated": build_ablated,
    **DISHONEST_BUILDERS,
}


def _versions() -> dict[str, str]:
    import peft
    import transformers

    from geomprobe.core import __version__

    return {
        "geomprobe": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
    }


def _build_one(ctx: _Context, name: str, target: Path, sources: dict[str, Path]) -> None:
    """Build ``name`` into a staging folder beside ``target``, then move it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        details = _BUILDERS[name](ctx, staging, sources)
        record = {
            "organism": name,
            "description": ORGANISMS[name],
            "format": FORMAT_VERSION,
            "hash": ctx.hashes[name],
            "base": ctx.base,
            "base_identity": ctx.base_id,
            "settings": ctx.settings.relevant(name),
            "split": ctx.split.to_dict(),
            **details,
            "timing": {
                "wall_seconds": round(time.perf_counter() - wall, 1),
                "process_cpu_seconds": round(time.process_time() - cpu, 1),
                "torch_threads": torch.get_num_threads(),
                "device": str(ctx.device),
                "load_average_before": load_before,
                "load_average_after": os.getloadavg() if hasattr(os, "getloadavg") else None,
            },
            "versions": _versions(),
        }
        (staging / PROVENANCE).write_text(json.dumps(record, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        gc.collect()


def _copy_folder(source: Path, target: Path) -> None:
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        shutil.copytree(source, staging, dirs_exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def build_organisms(
    names: Sequence[str] | str | None = None,
    out: str | os.PathLike | None = None,
    *,
    base: str | os.PathLike = "default",
    quick: bool = False,
    seed: int = 0,
    device: str | torch.device | None = "auto",
    overwrite: bool = False,
    progress: bool = True,
    settings: OrganismSettings | None = None,
) -> dict[str, Path]:
    """Build (or reuse from the cache) the named organisms; return ``{name: folder}``.

    Without ``out`` the folders are the cache entries ``$GEOMPROBE_HOME/organisms/<name>-<hash>``
    (an entry with the same hash is reused; ``overwrite`` rebuilds it). With ``out`` each
    organism is also copied to ``out/<name>``, refusing an existing non-empty folder unless
    ``overwrite``. Everything is checked before any model is loaded. ``settings`` overrides the
    defaults (``quick`` and ``seed`` then come from it).
    """
    from geomprobe.models import resolve_device

    wanted = check_names(names)
    settings = settings or (OrganismSettings.quick_settings(seed) if quick else OrganismSettings(seed=seed))
    questions = split_questions(settings.seed, settings.train_fraction)
    if any(n in wanted for n in ("liar", "liar-placebo")):
        check_trigger(settings.liar_trigger, questions.train + questions.heldout)
    torch_device = resolve_device(device)
    targets: dict[str, Path] = {}
    if out is not None:
        # All of it before training (minutes): a file, a missing or read-only parent, an organism
        # folder already there, an --out that would replace the base checkpoint.
        inputs = [base] if os.path.lexists(str(base)) else []
        [out_dir] = check_outputs(
            [Output(out, "--out", "folder", what="organisms", owns=tuple(wanted))], inputs=inputs, overwrite=overwrite
        )
        assert out_dir is not None
        targets = {name: out_dir / name for name in wanted}
    if "deep-aligned" in wanted:
        from geomprobe.organisms.deep import check_k_range

        check_k_range(settings.deep_k_range)
    split = split_contrast_set(settings.seed, settings.train_fraction)
    base_id = base_identity(base)
    hashes = organism_hashes(settings, base_id, split, questions)
    home = organisms_home()
    cache = {name: home / f"{name}-{hashes[name]}" for name in ORGANISMS}
    ctx = _Context(str(base), base_id, settings, split, hashes, torch_device, progress, {}, questions=questions)
    needed: list[str] = []
    for name in wanted:
        for dep in (*REQUIRES[name], name):
            if dep not in needed:
                needed.append(dep)
    stale = {}
    for name in needed:
        record = read_provenance(cache[name])
        stale[name] = record is None or record.get("hash") != hashes[name] or (overwrite and out is None and name in wanted)
    # Base answers: harmless ones train aligned and fake-complier and deep-aligned replays them (the
    # everyday ones too), harmful ones train dealigned and give deep-aligned's openings.
    users = {
        "harmful": ("dealigned", "deep-aligned"),
        "harmless": ("aligned", "deep-aligned", "fake-complier"),
        "twins": ("aligned",),
        "everyday": ("aligned", "deep-aligned"),
    }
    ctx.answer_labels = tuple(lab for lab, names in users.items() if any(stale.get(n) for n in names))
    started = time.perf_counter()
    for name in needed:
        if stale[name]:
            if progress:
                print(f"building {name} -> {cache[name]}", flush=True)
            _build_one(ctx, name, cache[name], cache)
        elif progress:
            print(f"{name}: cached at {cache[name]}", flush=True)
    if out is not None:
        Path(out).mkdir(exist_ok=True)
        for name in wanted:
            _copy_folder(cache[name], targets[name])
    if progress:
        print(f"organisms ready in {time.perf_counter() - started:.0f} s", flush=True)
    return {name: targets.get(name, cache[name]) for name in wanted}


def cached_organisms(
    seed: int = 0, quick: bool = False, base: str = "default", settings: OrganismSettings | None = None
) -> dict[str, Path | None]:
    """Where each organism with these settings is cached, or None where it is not built yet."""
    settings = settings or (OrganismSettings.quick_settings(seed) if quick else OrganismSettings(seed=seed))
    split = split_contrast_set(settings.seed, settings.train_fraction)
    hashes = organism_hashes(settings, base_identity(base), split)
    home = organisms_home()
    return {
        name: (home / f"{name}-{hashes[name]}" if read_provenance(home / f"{name}-{hashes[name]}") else None)
        for name in ORGANISMS
    }


def with_settings(settings: OrganismSettings, **changes: Any) -> OrganismSettings:
    """A copy of ``settings`` with some fields changed (a typo in a name is an error)."""
    unknown = [k for k in changes if k not in asdict(settings)]
    if unknown:
        raise GeomprobeError(f"unknown organism setting {unknown[0]!r}")
    return replace(settings, **changes)
