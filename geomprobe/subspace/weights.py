"""Safety-subspace overlap in weight space (the projection experiment is in :mod:`geomprobe.subspace.projection`).

Inputs are two or three checkpoints of one architecture: ``base``, ``aligned`` and optionally
``finetuned`` (each a ``load_checkpoint`` argument, a :class:`~geomprobe.models.Checkpoint`,
a :class:`~geomprobe.models.LoadedModel` or a plain ``torch.nn.Module``). Per 2-D weight matrix:

* ``A = W_aligned - W_base`` (the alignment update), and
* ``B = W_finetuned - W_aligned`` (the fine-tuning update), or, with two checkpoints,
  ``B = W_base`` itself (does alignment write into the directions the base weight already uses?).

Convention: every matrix is taken as (out, in), the ``nn.Linear`` layout (GPT-2's ``Conv1D``
stores (in, out) and is transposed), so *left* singular vectors live in the module's output
space: for ``o_proj`` / ``down_proj`` / ``c_proj`` that is the residual stream the module
writes to. Bases are the top-k left singular vectors (k fixed, or enough to hold an energy
fraction). Embeddings and the LM head are skipped unless asked for; norms and biases
(1-D) never count; tied tensors are counted once.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from geomprobe.core.errors import GeomprobeError
from geomprobe.models.architecture import stores_transposed
from geomprobe.subspace.basis import _check_method, check_energy, check_k, top_left_singular

_LAYER = re.compile(r"\.(\d+)\.")


# -- loading -------------------------------------------------------------------------------------
@dataclass
class _Source:
    model: torch.nn.Module
    tokenizer: Any
    model_id: str
    loaded_here: bool


def _load(spec: Any, role: str, trust_remote_code: bool = False) -> _Source:
    from geomprobe.models import Checkpoint, LoadedModel, load_checkpoint

    if isinstance(spec, Checkpoint):
        return _Source(spec.hf_model, spec.tokenizer, spec.model_id, False)
    if isinstance(spec, LoadedModel):
        return _Source(spec.hf_model, spec.tokenizer, spec.model_id, False)
    if isinstance(spec, torch.nn.Module):
        return _Source(spec, None, getattr(getattr(spec, "config", None), "_name_or_path", "") or role, False)
    if isinstance(spec, (str, os.PathLike)):
        ckpt = load_checkpoint(spec, dtype="float32", device="cpu", trust_remote_code=trust_remote_code)
        return _Source(ckpt.hf_model, ckpt.tokenizer, ckpt.model_id, True)
    raise GeomprobeError(f"--{role} must be a model name, folder, .gguf file or loaded model; got {type(spec).__name__}")


# -- matrix inventory ----------------------------------------------------------------------------
@dataclass(frozen=True)
class WeightMatrix:
    """One 2-D weight of the model, as it is compared."""

    name: str  # state_dict key
    layer: int  # block index, -1 outside the blocks
    module: str  # module type (q_proj, down_proj, attn.c_proj, ...)
    shape: tuple[int, int]  # (out, in) after any transpose
    transposed: bool  # stored as (in, out) (GPT-2 Conv1D)


def _state(model: torch.nn.Module) -> dict[str, tuple[torch.Tensor, bool]]:
    """``{name: (tensor, is_conv1d)}`` with each storage once (tied weights and aliases dropped).

    Names are Hugging Face names; a TransformerLens bridge's ``_original_component`` wrappers
    are stripped so a :class:`~geomprobe.models.LoadedModel` compares with a plain checkpoint.
    """
    out: dict[str, tuple[torch.Tensor, bool]] = {}
    seen: set[int] = set()
    for raw, tensor in model.state_dict().items():
        ptr = tensor.data_ptr()
        if tensor.numel() and ptr in seen:
            continue
        seen.add(ptr)
        name = raw.replace("._original_component", "")
        if name in out:
            continue
        owner = model.get_submodule(raw.rsplit(".", 1)[0]) if "." in raw else model
        out[name] = (tensor, stores_transposed(owner))
    return out


def _embedding_ptrs(model: torch.nn.Module) -> set[int]:
    ptrs = {m.weight.data_ptr() for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    get_output = getattr(model, "get_output_embeddings", None)  # HF models only
    out_emb = get_output() if callable(get_output) else None
    weight = getattr(out_emb, "weight", None)
    if isinstance(weight, torch.Tensor):
        ptrs.add(weight.data_ptr())
    return ptrs


def weight_matrices(model: torch.nn.Module, include_embeddings: bool = False) -> list[WeightMatrix]:
    """The 2-D weights compared by :func:`weight_update_overlap`, in state_dict order."""
    skip = set() if include_embeddings else _embedding_ptrs(model)
    picked: list[tuple[str, int, str, tuple[int, int], bool]] = []
    for name, (tensor, conv1d) in _state(model).items():
        if tensor.ndim != 2 or not tensor.is_floating_point() or tensor.data_ptr() in skip:
            continue  # norms, biases, buffers; embeddings and LM head unless asked for
        rows, cols = tensor.shape
        shape = (cols, rows) if conv1d else (rows, cols)
        match = _LAYER.search(name)
        if match:
            layer = int(match.group(1))
            rest = name[match.end() :]
        else:
            layer, rest = -1, name
        rest = rest.removesuffix(".weight")
        picked.append((name, layer, rest, shape, conv1d))
    # Short module names (q_proj) unless two different paths share one (GPT-2 attn/mlp c_proj).
    by_short: dict[str, set[str]] = {}
    for _, _, rest, _, _ in picked:
        by_short.setdefault(rest.split(".")[-1], set()).add(rest)
    return [
        WeightMatrix(name, layer, rest.split(".")[-1] if len(by_short[rest.split(".")[-1]]) == 1 else rest, shape, tr)
        for name, layer, rest, shape, tr in picked
    ]


def _check_compatible(matrices: Sequence[WeightMatrix], ref: torch.nn.Module, other: torch.nn.Module, role: str) -> None:
    ref_state, other_state = _state(ref), _state(other)
    ref_2d = {n for n, (t, _) in ref_state.items() if t.ndim == 2}
    other_2d = {n for n, (t, _) in other_state.items() if t.ndim == 2}
    # An untied LM head (e.g. after baking an ablation into tied embeddings) is not another
    # architecture: embedding-like weights present on one side only are left out of the check.
    other_embeddings = {n for n, (t, _) in other_state.items() if t.data_ptr() in _embedding_ptrs(other)}
    extra = sorted(other_2d - ref_2d - other_embeddings)
    for m in matrices:
        if m.name not in other_state:
            raise GeomprobeError(
                f"the {role} checkpoint has no weight {m.name!r} that base has (different architectures); "
                "compare checkpoints of one architecture"
            )
        a, b = tuple(ref_state[m.name][0].shape), tuple(other_state[m.name][0].shape)
        if a != b:
            raise GeomprobeError(
                f"weight {m.name!r} is {a} in base but {b} in {role}; compare checkpoints of the same architecture and size"
            )
    if extra:
        raise GeomprobeError(
            f"the {role} checkpoint has weight {extra[0]!r} that base lacks (different architectures); "
            "compare checkpoints of one architecture"
        )


def _matrix(state: dict[str, tuple[torch.Tensor, bool]], m: WeightMatrix) -> torch.Tensor:
    t = state[m.name][0]
    return t.T if m.transposed else t


# -- results -------------------------------------------------------------------------------------
@dataclass
class MatrixOverlap:
    """Overlap of two update subspaces (left singular bases, output space) for one weight."""

    name: str
    layer: int
    module: str
    shape: tuple[int, int]  # (out, in)
    a: str  # what A is: "aligned-base"
    b: str  # what B is: "finetuned-aligned" or "base"
    status: str  # ok | a_zero | b_zero (a zero matrix has no subspace; overlap fields are NaN)
    energy_target: float | None
    k_requested: int | None
    k_a: int
    k_b: int
    rank_a: int
    rank_b: int
    energy_a: float  # fraction of ||A||^2 its own basis holds
    energy_b: float
    norm_a: float  # ||A||_F
    norm_b: float
    norm_base: float  # ||W_base||_F
    mso: float
    baseline: float  # max(k_a, k_b) / out
    cosines: np.ndarray = field(repr=False)
    energy_b_in_a: float  # ||Q_a Q_a^T B||^2 / ||B||^2
    energy_a_in_b: float
    energy_baseline_b_in_a: float  # k_a / out (a random B)
    energy_baseline_a_in_b: float
    svd_method: str
    dtype: str = "float64"

    def to_record(self) -> dict[str, Any]:
        record = asdict(self)
        record["shape"] = list(self.shape)
        record["cosines"] = [float(c) for c in np.asarray(self.cosines)]
        return record

    to_dict = to_record  # the stage convention's name


@dataclass
class GroupSummary:
    """Overlap summary over the matrices of one layer or one module type (status ok only)."""

    by: str
    key: Any
    n_matrices: int
    n_skipped: int
    mso_mean: float
    mso_median: float
    baseline_mean: float
    energy_b_in_a: float  # pooled: sum ||P_a B||^2 / sum ||B||^2
    energy_a_in_b: float
    energy_baseline_b_in_a: float  # mean k_a / out

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    to_dict = to_record  # the stage convention's name


def _rec(r: Any, key: str) -> Any:
    return r[key] if isinstance(r, dict) else getattr(r, key)


def grouped(records: Iterable[MatrixOverlap | dict], by: str = "layer") -> list[GroupSummary]:
    """Summaries per ``layer`` or per ``module`` type; pooled energies weight matrices by ||B||^2."""
    if by not in ("layer", "module"):
        raise GeomprobeError(f"group by 'layer' or 'module', not {by!r}")
    groups: dict[Any, list[Any]] = {}
    for r in records:
        groups.setdefault(_rec(r, by), []).append(r)
    keys = sorted(groups) if by == "layer" else list(groups)
    out = []
    for key in keys:
        ok = [r for r in groups[key] if _rec(r, "status") == "ok"]
        nan = float("nan")
        if ok:
            mso = np.array([_rec(r, "mso") for r in ok], dtype=float)
            nb2 = np.array([_rec(r, "norm_b") ** 2 for r in ok])
            na2 = np.array([_rec(r, "norm_a") ** 2 for r in ok])
            eb = np.array([_rec(r, "energy_b_in_a") for r in ok])
            ea = np.array([_rec(r, "energy_a_in_b") for r in ok])
            summary = GroupSummary(
                by,
                key,
                len(ok),
                len(groups[key]) - len(ok),
                float(mso.mean()),
                float(np.median(mso)),
                float(np.mean([_rec(r, "baseline") for r in ok])),
                float((eb * nb2).sum() / nb2.sum()),
                float((ea * na2).sum() / na2.sum()),
                float(np.mean([_rec(r, "energy_baseline_b_in_a") for r in ok])),
            )
        else:
            summary = GroupSummary(by, key, 0, len(groups[key]), nan, nan, nan, nan, nan, nan)
        out.append(summary)
    return out


# -- analysis ------------------------------------------------------------------------------------
def _settings(k: int | None, energy: float | None, method: str) -> tuple[int | None, float | None]:
    _check_method(method)
    if k is not None:
        return check_k(k), None
    return None, check_energy(energy)


def weight_update_overlap(
    base: Any,
    aligned: Any,
    finetuned: Any = None,
    *,
    k: int | None = None,
    energy: float | None = 0.9,
    include_embeddings: bool = False,
    method: str = "auto",
    device: Any = "auto",
    seed: int = 0,
    trust_remote_code: bool = False,
    progress: bool = False,
) -> list[MatrixOverlap]:
    """Per weight matrix: overlap between the alignment update and the fine-tuning update.

    ``k`` (fixed basis size, capped at each update's numerical rank) wins over ``energy``.
    With ``finetuned=None`` the alignment update is compared with the base weight's own top
    subspace. Mismatched architectures or shapes raise :class:`GeomprobeError`.
    """
    from geomprobe.core.device import resolve_device

    k, energy = _settings(k, energy, method)
    dev = resolve_device(device)
    src_base = _load(base, "base", trust_remote_code)
    src_al = _load(aligned, "aligned", trust_remote_code)
    src_ft = _load(finetuned, "finetuned", trust_remote_code) if finetuned is not None else None
    matrices = weight_matrices(src_base.model, include_embeddings)
    if not matrices:
        raise GeomprobeError("the base checkpoint has no 2-D weight matrices to compare")
    _check_compatible(matrices, src_base.model, src_al.model, "aligned")
    if src_ft is not None:
        _check_compatible(matrices, src_base.model, src_ft.model, "finetuned")
    sb, sa = _state(src_base.model), _state(src_al.model)
    sf = _state(src_ft.model) if src_ft is not None else None
    b_name = "finetuned-aligned" if sf is not None else "base"

    iterator: Iterable[WeightMatrix] = matrices
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(matrices, desc="weight matrices", unit="matrix")
    results = []
    with torch.no_grad():
        for m in iterator:
            w0, w1 = _matrix(sb, m), _matrix(sa, m)
            w2 = _matrix(sf, m) if sf is not None else None
            a_zero = torch.equal(w0, w1)
            b_zero = w2 is not None and torch.equal(w1, w2)
            if a_zero or b_zero:
                # An unchanged matrix has no update subspace: record it without any SVD.
                norm = lambda t: float(torch.linalg.vector_norm(t, dtype=torch.float64))  # noqa: E731
                na = 0.0 if a_zero else norm(w1.double() - w0.double())
                nb = 0.0 if b_zero else (norm(w2.double() - w1.double()) if w2 is not None else norm(w0))
                results.append(_skipped(m, na, nb, norm(w0), b_name, k, energy))
                continue
            W0 = w0.to(dev, torch.float64)
            W1 = w1.to(dev, torch.float64)
            A = W1 - W0
            B = (w2.to(dev, torch.float64) - W1) if w2 is not None else W0
            results.append(_compare(m, A, B, W0, b_name, k, energy, method, seed))
    return results


def _skipped(m: WeightMatrix, na: float, nb: float, nw: float, b_name: str, k: int | None, energy: float | None) -> MatrixOverlap:
    nan = float("nan")
    return MatrixOverlap(
        name=m.name,
        layer=m.layer,
        module=m.module,
        shape=m.shape,
        a="aligned-base",
        b=b_name,
        status="a_zero" if na == 0.0 else "b_zero",
        energy_target=energy,
        k_requested=k,
        k_a=0,
        k_b=0,
        rank_a=0,
        rank_b=0,
        energy_a=nan,
        energy_b=nan,
        norm_a=na,
        norm_b=nb,
        norm_base=nw,
        mso=nan,
        baseline=nan,
        cosines=np.zeros(0),
        energy_b_in_a=nan,
        energy_a_in_b=nan,
        energy_baseline_b_in_a=nan,
        energy_baseline_a_in_b=nan,
        svd_method="",
    )


def _compare(
    m: WeightMatrix,
    A: torch.Tensor,
    B: torch.Tensor,
    W0: torch.Tensor,
    b_name: str,
    k: int | None,
    energy: float | None,
    method: str,
    seed: int,
) -> MatrixOverlap:
    out = m.shape[0]
    na, nb, nw = float(torch.linalg.norm(A)), float(torch.linalg.norm(B)), float(torch.linalg.norm(W0))
    if na == 0.0 or nb == 0.0:
        return _skipped(m, na, nb, nw, b_name, k, energy)
    common: dict[str, Any] = dict(
        name=m.name,
        layer=m.layer,
        module=m.module,
        shape=m.shape,
        a="aligned-base",
        b=b_name,
        energy_target=energy,
        k_requested=k,
        norm_a=na,
        norm_b=nb,
        norm_base=nw,
    )
    ta = top_left_singular(A, k=k, energy=energy, method=method, seed=seed)
    tb = top_left_singular(B, k=k, energy=energy, method=method, seed=seed)
    Qa, Qb = ta.Q, tb.Q
    cross = Qa.T @ Qb
    ka, kb = Qa.shape[1], Qb.shape[1]
    cos = torch.linalg.svdvals(cross).clamp(0, 1)[: min(ka, kb)]
    pb = Qa.T @ B
    pa = Qb.T @ A
    return MatrixOverlap(
        **common,
        status="ok",
        k_a=ka,
        k_b=kb,
        rank_a=ta.rank,
        rank_b=tb.rank,
        energy_a=ta.energy,
        energy_b=tb.energy,
        mso=float((cross * cross).sum()) / min(ka, kb),
        baseline=max(ka, kb) / out,
        cosines=cos.cpu().numpy(),
        energy_b_in_a=float((pb * pb).sum()) / nb**2,
        energy_a_in_b=float((pa * pa).sum()) / na**2,
        energy_baseline_b_in_a=ka / out,
        energy_baseline_a_in_b=kb / out,
        svd_method=ta.method if ta.method == tb.method else f"{ta.method}/{tb.method}",
    )
