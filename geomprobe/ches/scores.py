"""CHES: centered hidden embedding similarity of a preference pair (Razin et al., ICLR 2025, Definition 2).

For a prompt x, a preferred response y+ and a dispreferred response y-, with h_{x,y<k} the
hidden embedding (the input to the unembedding) at the position that predicts the k-th token:

    CHES_x(y+, y-) = < sum_k h_{x,y+<k}, sum_k' h_{x,y-<k'} > - || sum_k h_{x,y+<k} ||^2

and the length-normalised variant divides each sum by its number of terms:

    LN-CHES_x(y+, y-) = < (1/|y+|) sum_k h_{x,y+<k}, (1/|y-|) sum_k' h_{x,y-<k'} > - || (1/|y+|) sum_k h_{x,y+<k} ||^2

Positions: the response's k-th token is predicted by the state at the token before it, so the
terms are the states from the prompt's last token (generation prompt included) to the response's
second-to-last token; with ``include_end`` (the default) the response also counts its end-of-turn
token, whose predicting state is the response's last token. The paper's responses end with EOS and
its reference script keeps exactly these positions; the text fed to the model ends at the
response, and the states before it do not depend on what follows.

Layer: by default ``final``, the last hidden layer after the final norm, i.e. the vectors the
unembedding multiplies (read at the bridge's ``ln_final.hook_out``; this equals Hugging Face's
``hidden_states[-1]``). Other layers are block outputs ``blocks.{l}.hook_resid_post`` (before any
final norm). Sums and products are float64 whatever the model's dtype.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from geomprobe.activations.collect import context_limit
from geomprobe.activations.datasets import Rendered, fit_to_context
from geomprobe.ches.data import PreferenceSet, pairs_from_rows, render_response
from geomprobe.core.errors import GeomprobeError
from geomprobe.core.hooks import hook_name

FINAL = "final"
FINAL_HOOK = "ln_final.hook_out"  # the final norm's output: what the unembedding reads
SCORES = ("ches", "ln_ches")


def resolve_layers(layers: Sequence[int | str] | int | str | None, n_layers: int) -> list[tuple[str, str]]:
    """``[(label, hook)]`` for ``final`` and block indices (negative counts from the end); default ``final``."""
    if layers is None:
        layers = [FINAL]
    elif isinstance(layers, (int, str)):
        layers = [layers]
    out: list[tuple[str, str]] = []
    for item in layers:
        for part in str(item).replace(",", " ").split():
            if part == FINAL:
                chosen = (FINAL, FINAL_HOOK)
            else:
                try:
                    layer = int(part)
                except ValueError:
                    raise GeomprobeError(f"unknown layer {part!r}; use 'final' or a block index such as 6 or -1") from None
                index = layer + n_layers if layer < 0 else layer
                if not 0 <= index < n_layers:
                    raise GeomprobeError(f"layer {layer} is out of range; this model has blocks 0..{n_layers - 1} (or 'final')")
                chosen = (str(index), hook_name(index))
            if chosen not in out:
                out.append(chosen)
    if not out:
        raise GeomprobeError("no layer given; use 'final' or block indices such as 6 or -1")
    return out


def ches_from_sums(sum_chosen: np.ndarray, sum_rejected: np.ndarray, n_chosen: np.ndarray, n_rejected: np.ndarray):
    """``(ches, ln_ches)`` from the per-pair sums of hidden embeddings ``(..., d)`` and their term counts."""
    a = np.asarray(sum_chosen, dtype=np.float64)
    b = np.asarray(sum_rejected, dtype=np.float64)
    ches = np.einsum("...d,...d->...", a, b) - np.einsum("...d,...d->...", a, a)
    ma = a / np.asarray(n_chosen, dtype=np.float64)[..., None]
    mb = b / np.asarray(n_rejected, dtype=np.float64)[..., None]
    ln_ches = np.einsum("...d,...d->...", ma, mb) - np.einsum("...d,...d->...", ma, ma)
    return ches, ln_ches


@dataclass
class CHESResult:
    """Per-pair CHES and length-normalised CHES, one row per layer (``ches[layer_index, pair]``)."""

    ches: np.ndarray  # (n_layers, n_pairs) float64
    ln_ches: np.ndarray  # (n_layers, n_pairs) float64
    n_chosen: np.ndarray  # terms in each chosen sum (response tokens, end-of-turn included if include_end)
    n_rejected: np.ndarray
    layers: list[str]  # "final" or block indices as text
    hooks: list[str]
    prompts: list[str]
    model_id: str = ""
    model_dtype: str = ""
    math_dtype: str = "float64"
    include_end: bool = True
    chat_template_applied: bool = True
    dataset: str = ""
    dataset_sha256: str = ""
    sources: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.ches.shape[1])

    def scores(self, by: str = "ches", layer: str | int | None = None) -> np.ndarray:
        """The ``by`` scores (``ches`` or ``ln_ches``) at ``layer`` (default: the first layer asked for)."""
        if by not in SCORES:
            raise GeomprobeError(f"unknown score {by!r}; rank by one of {', '.join(SCORES)}")
        row = 0 if layer is None else self._layer_row(layer)
        return (self.ches if by == "ches" else self.ln_ches)[row]

    def _layer_row(self, layer: str | int) -> int:
        label = str(layer)
        if label not in self.layers:
            raise GeomprobeError(f"layer {label!r} was not scored; scored layers: {', '.join(self.layers)}")
        return self.layers.index(label)

    def rank(self, by: str = "ches", layer: str | int | None = None) -> np.ndarray:
        """Pair indices from the highest score to the lowest (ties keep file order)."""
        return np.argsort(-self.scores(by, layer), kind="stable")

    def flag_top(self, share: float, by: str = "ches", layer: str | int | None = None) -> np.ndarray:
        """Boolean mask of the top ``share`` of pairs by score: ``ceil(share * n)`` pairs."""
        if not (isinstance(share, (int, float)) and 0 < share <= 1):
            raise GeomprobeError(f"top share must be in (0, 1], got {share!r}; pass e.g. 0.33")
        n_top = math.ceil(share * len(self) - 1e-9)  # 0.33 * 100 is 33, not 34, despite rounding
        mask = np.zeros(len(self), dtype=bool)
        mask[self.rank(by, layer)[:n_top]] = True
        return mask

    def to_dict(self, top: float | None = None, by: str = "ches") -> dict[str, Any]:
        order = self.rank(by)
        rank_of = np.empty(len(self), dtype=np.int64)
        rank_of[order] = np.arange(1, len(self) + 1)
        flagged = self.flag_top(top, by) if top is not None else np.zeros(len(self), dtype=bool)
        pairs = []
        for i in range(len(self)):
            pairs.append(
                {
                    "index": i,
                    "prompt": self.prompts[i],
                    "ches": {layer: float(self.ches[j, i]) for j, layer in enumerate(self.layers)},
                    "ln_ches": {layer: float(self.ln_ches[j, i]) for j, layer in enumerate(self.layers)},
                    "n_chosen_terms": int(self.n_chosen[i]),
                    "n_rejected_terms": int(self.n_rejected[i]),
                    "rank": int(rank_of[i]),
                    "flagged": bool(flagged[i]),
                    **({"source": self.sources[i]} if self.sources and self.sources[i] else {}),
                }
            )
        return {
            "score": "CHES (Razin et al. 2025, Definition 2) and its length-normalised variant",
            "model_id": self.model_id,
            "model_dtype": self.model_dtype,
            "math_dtype": self.math_dtype,
            "layers": self.layers,
            "hooks": self.hooks,
            "pooling": "sum over the positions that predict each response token"
            + (" (end-of-turn included)" if self.include_end else ""),
            "include_end": self.include_end,
            "chat_template_applied": self.chat_template_applied,
            "dataset": self.dataset,
            "dataset_sha256": self.dataset_sha256,
            "ranked_by": by,
            "ranked_layer": self.layers[0],
            "top_share": top,
            "n_pairs": len(self),
            "n_flagged": int(flagged.sum()),
            "pairs": pairs,
        }

    def to_csv(self, top: float | None = None, by: str = "ches") -> str:
        """One line per pair (file order): index, rank, flagged, token counts, then CHES and LN-CHES per layer."""
        record = self.to_dict(top, by)
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(
            [
                "index",
                "rank",
                "flagged",
                "n_chosen_terms",
                "n_rejected_terms",
                *(f"ches_{layer}" for layer in self.layers),
                *(f"ln_ches_{layer}" for layer in self.layers),
                "prompt",
            ]
        )
        for pair in record["pairs"]:
            writer.writerow(
                [
                    pair["index"],
                    pair["rank"],
                    int(pair["flagged"]),
                    pair["n_chosen_terms"],
                    pair["n_rejected_terms"],
                    *(repr(pair["ches"][layer]) for layer in self.layers),
                    *(repr(pair["ln_ches"][layer]) for layer in self.layers),
                    pair["prompt"],
                ]
            )
        return buffer.getvalue()

    def table(self, top: float | None = None, by: str = "ches", rows: int = 10, width: int = 60) -> str:
        """A short text table: what was measured, then the ``rows`` highest-ranked pairs."""
        flagged = self.flag_top(top, by) if top is not None else np.zeros(len(self), dtype=bool)
        layer = self.layers[0]
        lines = [
            f"CHES of {len(self)} pairs under {self.model_id or 'the model'} ({self.model_dtype}; sums in {self.math_dtype})",
            f"layer {layer} ({self.hooks[0]}); pooling: sum over the positions predicting each response token"
            + (" incl. end-of-turn" if self.include_end else "")
            + ("; chat template applied" if self.chat_template_applied else "; no chat template (prompt\\nresponse)")
            + f"; ranked by {by}",
            f"{'rank':>4} {'pair':>5} {'ches':>12} {'ln_ches':>10} {'n+':>4} {'n-':>4} {'top':>3}  prompt",
        ]
        for rank, i in enumerate(self.rank(by)[:rows], start=1):
            prompt = " ".join(self.prompts[i].split())
            prompt = prompt if len(prompt) <= width else prompt[: width - 1] + "…"
            lines.append(
                f"{rank:>4} {i:>5} {self.ches[0, i]:12.2f} {self.ln_ches[0, i]:10.3f} {self.n_chosen[i]:>4} "
                f"{self.n_rejected[i]:>4} {'*' if flagged[i] else '':>3}  {prompt}"
            )
        if top is not None:
            lines.append(f"flagged {int(flagged.sum())} of {len(self)} pairs: the top {top:g} by {by} at layer {layer}")
        return "\n".join(lines)


def _render_all(model: Any, prefs: PreferenceSet, chat: bool) -> list[Rendered]:
    """Chosen and rejected of every pair, interleaved (2i chosen, 2i+1 rejected), fitted to the context."""
    rendered, where = [], []
    for pair in prefs.pairs:
        for side in ("chosen", "rejected"):
            place = f"{pair.where or 'a pair'} ({side})"
            rendered.append(render_response(pair.prompt, getattr(pair, side), model.tokenizer, chat, place))
            where.append(place)
    return fit_to_context(rendered, context_limit(model), None, lambda i: where[i]).rendered


def _response_weights(batch: Sequence[Rendered], width: int, include_end: bool) -> torch.Tensor:
    """(b, width) float64: 1 at the positions whose states predict a response token, else 0."""
    weights = torch.zeros((len(batch), width), dtype=torch.float64)
    for j, r in enumerate(batch):
        start, end = r.span
        weights[j, start - 1 : end if include_end else end - 1] = 1.0
    return weights


def ches_scores(
    model: Any,
    rows: PreferenceSet | Sequence[dict[str, Any]],
    *,
    layers: Sequence[int | str] | int | str | None = None,
    batch_size: int = 8,
    chat: bool = True,
    include_end: bool = True,
) -> CHESResult:
    """CHES and length-normalised CHES of every preference pair in ``rows`` under ``model`` (a LoadedModel).

    Each (prompt, response) is teacher-forced as a user turn and an assistant turn (``chat``; else
    ``prompt\\nresponse``) in right-padded batches of ``batch_size`` sequences; the states are read
    at ``layers`` through the model's own forward pass; see the module docs for the formula.
    """
    if batch_size < 1:
        raise GeomprobeError(f"batch_size must be at least 1, got {batch_size}")
    prefs = rows if isinstance(rows, PreferenceSet) else pairs_from_rows(list(rows))
    chosen_layers = resolve_layers(layers, model.n_layers)
    labels, hooks = [lab for lab, _ in chosen_layers], [h for _, h in chosen_layers]
    missing = [h for h in hooks if h not in model.bridge.hook_dict]
    if missing:
        raise GeomprobeError(f"the model has no hook {missing[0]!r}; pass block indices instead")
    rendered = _render_all(model, prefs, chat)
    for i, r in enumerate(rendered):
        if r.span[0] < 1:  # only without a template and BOS: nothing before the response predicts it
            raise GeomprobeError(f"{prefs.pairs[i // 2].where}: no token precedes the response, so no state predicts it")
    n_terms = np.array([r.span[1] - r.span[0] + int(include_end) for r in rendered], dtype=np.int64)
    sums = np.zeros((len(hooks), len(rendered), model.d_model), dtype=np.float64)
    pad_id = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    captured: dict[str, torch.Tensor] = {}
    weights = torch.zeros(0)

    def capture(name: str):
        def fn(x: torch.Tensor, hook: Any = None) -> torch.Tensor:
            w = weights.to(x.device)
            captured[name] = torch.einsum("bt,btd->bd", w, x.to(torch.float64))
            return x

        return fn

    base = model.hf_model.base_model  # the decoder stack without the LM head
    with torch.inference_mode(), model.bridge.hooks(fwd_hooks=[(h, capture(h)) for h in hooks]):
        for start in range(0, len(rendered), batch_size):
            batch = rendered[start : start + batch_size]
            width = max(len(r.token_ids) for r in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for j, r in enumerate(batch):
                ids[j, : len(r.token_ids)] = torch.tensor(r.token_ids, dtype=torch.long)
                mask[j, : len(r.token_ids)] = 1
            weights = _response_weights(batch, width, include_end)
            captured.clear()
            base(input_ids=ids.to(model.device), attention_mask=mask.to(model.device), use_cache=False)
            for k, h in enumerate(hooks):
                sums[k, start : start + len(batch)] = captured[h].cpu().numpy()
    ches, ln_ches = ches_from_sums(sums[:, 0::2], sums[:, 1::2], n_terms[0::2], n_terms[1::2])
    template = bool(chat and getattr(model.tokenizer, "chat_template", None))
    return CHESResult(
        ches=ches,
        ln_ches=ln_ches,
        n_chosen=n_terms[0::2],
        n_rejected=n_terms[1::2],
        layers=labels,
        hooks=hooks,
        prompts=[p.prompt for p in prefs.pairs],
        model_id=str(getattr(model, "model_id", "")),
        model_dtype=str(getattr(model, "dtype", "")).removeprefix("torch."),
        include_end=include_end,
        chat_template_applied=template,
        dataset=prefs.name,
        dataset_sha256=prefs.sha256,
        sources=[dict(p.source) for p in prefs.pairs],
    )
