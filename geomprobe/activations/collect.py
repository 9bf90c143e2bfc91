"""Stage 1: run a model over a prompt set and stream pooled hidden states to HDF5.

Pooling happens inside the hooks, on the model's device, so only ``(batch, d)`` tensors (or the
unpadded tokens for ``all``) ever leave the forward pass; a background thread writes them while
the next batch runs. Prompts are right-padded, so real tokens never attend to padding and their
positions match a one-prompt run; every pooled value reads real tokens only.

- ``last``: the last token of the rendered text (for a chat prompt: the generation prompt's end).
- ``mean``: the mean over the final message's content tokens (padding and template excluded).
- ``all``: every token of the rendered text, stored ragged (see ``/prompts/token_offsets``).

Every prompt is tokenized and checked against the model's context (``max_position_embeddings``)
before the first forward pass: a longer one is an error naming the row, unless ``truncate`` is
``"left"`` or ``"right"`` (:func:`geomprobe.activations.datasets.fit_to_context`); the file then
records ``truncate``, ``truncated_rows`` and ``truncated_tokens``, and ``/prompts/text`` keeps the
whole rendered text while ``/prompts/token_ids`` holds the tokens the model saw.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geomprobe.activations.background import BackgroundWriter
from geomprobe.activations.datasets import ContextFit, PromptSet, Rendered, fit_to_context, load_prompt_set
from geomprobe.activations.format import FORMAT_VERSION, POOLINGS
from geomprobe.activations.segments import ResumableWriter, segment_rows_for
from geomprobe.activations.writer import CACHE_EXAMPLE_NAME
from geomprobe.core.errors import GeomprobeError
from geomprobe.core.hooks import hook_layer, resolve_hooks
from geomprobe.core.io import check_output_file
from geomprobe.models import LoadedModel

DEFAULT_POOLINGS = ("last", "mean")


class _StopForward(Exception):
    """Raised by the deepest hook so layers nobody asked for are not computed."""


@dataclass
class LayerSummary:
    hook: str
    layer: int
    pooling: str
    mean_norm: float
    centroid_distance: float | None  # between the first two label centroids, if labelled

    def line(self) -> str:
        text = f"{self.hook:<28} {self.pooling:<5} mean |x| = {self.mean_norm:9.3f}"
        if self.centroid_distance is not None:
            text += f"   class-centroid distance = {self.centroid_distance:8.3f}"
        return text


@dataclass
class CacheResult:
    path: Path
    n_prompts: int
    n_tokens: int
    n_bytes: int
    seconds: float
    hooks: list[str]
    poolings: list[str]
    summaries: list[LayerSummary] = field(default_factory=list)
    resumed_from: int = 0

    def closing_line(self) -> str:
        resumed = f" (resumed after {self.resumed_from})" if self.resumed_from else ""
        return (
            f"wrote {self.n_prompts} prompts, {self.n_tokens} tokens, {_human_bytes(self.n_bytes)} "
            f"to {self.path} in {self.seconds:.1f} s{resumed}"
        )


def _human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{n} B"


def _check_poolings(poolings: Sequence[str] | str) -> list[str]:
    if isinstance(poolings, str):
        poolings = [p for p in poolings.replace(",", " ").split() if p]
    chosen = list(dict.fromkeys(poolings))
    for pooling in chosen:
        if pooling not in POOLINGS:
            raise GeomprobeError(f"unknown pooling {pooling!r}; use any of {', '.join(POOLINGS)} (e.g. last,mean)")
    if not chosen:
        raise GeomprobeError("no pooling given; use any of last, mean, all")
    return chosen


class _Pooler:
    """Per-batch state shared by the hooks: where each prompt's last token and final message are."""

    def __init__(self, hooks: Sequence[str], poolings: Sequence[str], stop_hook: str | None) -> None:
        self.hooks = list(hooks)
        self.poolings = list(poolings)
        self.stop_hook = stop_hook
        self.results: dict[str, dict[str, torch.Tensor]] = {}

    def start_batch(self, mask: torch.Tensor, spans: torch.Tensor) -> None:
        self.by_device: dict[torch.device, tuple] = {}
        b, t = mask.shape
        self.rows = torch.arange(b, device=mask.device)
        self.last = mask.sum(1) - 1
        positions = torch.arange(t, device=mask.device)
        inside = (positions[None, :] >= spans[:, :1]) & (positions[None, :] < spans[:, 1:])
        self.mean_weights = (inside.float() / inside.sum(1, keepdim=True).clamp_min(1)).unsqueeze(1)
        self.token_mask = mask.bool()
        self.results = {}

    def _index(self, device: torch.device) -> tuple:
        # A model split over devices (--device-map) hands each hook its layer's device.
        if device == self.rows.device:
            return self.rows, self.last, self.mean_weights, self.token_mask
        if device not in self.by_device:
            self.by_device[device] = tuple(t.to(device) for t in (self.rows, self.last, self.mean_weights, self.token_mask))
        return self.by_device[device]

    def hook_fn(self, name: str) -> Callable[..., torch.Tensor]:
        def fn(x: torch.Tensor, hook=None) -> torch.Tensor:
            pooled: dict[str, torch.Tensor] = {}
            rows, last, mean_weights, token_mask = self._index(x.device)
            for pooling in self.poolings:
                if pooling == "last":
                    pooled[pooling] = x[rows, last].float()
                elif pooling == "mean":
                    pooled[pooling] = torch.bmm(mean_weights, x.float()).squeeze(1)
                else:
                    pooled[pooling] = x[token_mask].float()
            self.results[name] = pooled
            if name == self.stop_hook:
                raise _StopForward
            return x

        return fn


def _batches(rendered: Sequence[Rendered], batch_size: int, first: int = 0) -> Iterator[range]:
    for start in range(first, len(rendered), batch_size):
        yield range(start, min(start + batch_size, len(rendered)))


def _encode_batch(
    rendered: Sequence[Rendered], rows: range, pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    items = [rendered[i] for i in rows]
    width = max(len(r.token_ids) for r in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for j, r in enumerate(items):
        ids[j, : len(r.token_ids)] = torch.tensor(r.token_ids, dtype=torch.long)
        mask[j, : len(r.token_ids)] = 1
    spans = torch.tensor([r.span for r in items], dtype=torch.long)
    return ids.to(device), mask.to(device), spans.to(device)


def _run_pooled(
    model: LoadedModel,
    rendered: Sequence[Rendered],
    hooks: Sequence[str],
    poolings: Sequence[str],
    batch_size: int,
    progress: bool = False,
    first: int = 0,
) -> Iterator[tuple[range, dict[str, dict[str, np.ndarray]]]]:
    """Yield ``(rows, {hook: {pooling: float32 array}})`` batch by batch."""
    if batch_size < 1:
        raise GeomprobeError(f"--batch-size must be at least 1, got {batch_size}")
    from tqdm.auto import tqdm

    # Only the deepest hook's layer needs computing; the rest of the stack is skipped.
    deepest = max(hooks, key=lambda h: (hook_layer(h), _HOOK_ORDER.get(h.rsplit("hook_", 1)[-1], 9)))
    stop_hook = deepest if model.extra.get("early_stop", True) else None
    pooler = _Pooler(hooks, poolings, stop_hook)
    pad_id = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    base = model.hf_model.base_model  # the decoder stack without the LM head: no vocab-sized logits
    device = model.device
    fwd_hooks = [(h, pooler.hook_fn(h)) for h in hooks]
    bar = tqdm(total=len(rendered), initial=first, unit="prompt", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    try:
        with torch.inference_mode(), model.bridge.hooks(fwd_hooks=fwd_hooks):
            for rows in _batches(rendered, batch_size, first):
                ids, mask, spans = _encode_batch(rendered, rows, pad_id, device)
                pooler.start_batch(mask, spans)
                try:
                    base(input_ids=ids, attention_mask=mask, use_cache=False)
                except _StopForward:
                    pass
                out = {h: {p: t.cpu().numpy() for p, t in pooler.results[h].items()} for h in hooks}
                bar.update(len(rows))
                yield rows, out
    finally:
        bar.close()


_HOOK_ORDER = {"resid_pre": 0, "attn_out": 1, "resid_mid": 2, "mlp_out": 3, "resid_post": 4}


def context_limit(model: LoadedModel) -> int | None:
    """The most tokens ``model`` takes in one sequence (None where its config does not say)."""
    config = getattr(model.hf_model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def render_for_model(
    model: LoadedModel, prompts: PromptSet, chat_template: bool = True, truncate: str | None = None
) -> ContextFit:
    """Tokenize every prompt and fit it to the model's context, all before the model runs."""
    rendered = prompts.render(model.tokenizer, chat_template)
    return fit_to_context(rendered, context_limit(model), truncate, prompts.where)


def pooled_activations(
    model: LoadedModel,
    prompts: PromptSet | Sequence[str],
    hooks: str | Sequence[str] | None = None,
    poolings: Sequence[str] | str = ("last",),
    *,
    batch_size: int = 16,
    chat_template: bool = True,
    truncate: str | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Pooled activations held in memory: ``result[hook][pooling]`` is ``(N, d)`` float32.

    ``truncate``: None (a prompt longer than the context is an error), ``"left"`` or ``"right"``.
    """
    from geomprobe.activations.datasets import prompts_from_texts

    if not isinstance(prompts, PromptSet):
        prompts = prompts_from_texts(list(prompts))
    hook_list = resolve_hooks(hooks, model.n_layers, model.bridge.hook_dict)
    pooling_list = _check_poolings(poolings)
    rendered = render_for_model(model, prompts, chat_template, truncate).rendered
    parts: dict[str, dict[str, list[np.ndarray]]] = {h: {p: [] for p in pooling_list} for h in hook_list}
    for _, batch in _run_pooled(model, rendered, hook_list, pooling_list, batch_size):
        for h in hook_list:
            for p in pooling_list:
                parts[h][p].append(batch[h][p])
    return {h: {p: np.concatenate(v) for p, v in d.items()} for h, d in parts.items()}


def cache_activations(
    model: LoadedModel,
    dataset: PromptSet | str | Path,
    out: str | Path,
    *,
    hooks: str | Sequence[str] | None = None,
    poolings: Sequence[str] | str = DEFAULT_POOLINGS,
    batch_size: int = 16,
    store_dtype: str = "float32",
    chat_template: bool = True,
    limit: int | None = None,
    overwrite: bool = False,
    restart: bool = False,
    progress: bool = False,
    segment_rows: int | None = None,
    shard: tuple[int, int] | None = None,
    truncate: str | None = None,
) -> CacheResult:
    """Cache ``model``'s activations on ``dataset`` into the HDF5 file ``out``; see module docs.

    An interrupted run leaves finished segments beside ``out``; calling again with the same
    settings resumes (bit-identical result), ``restart=True`` discards them.

    ``shard=(rank, world)`` caches only that rank's contiguous rows (whole batches, see
    :mod:`geomprobe.activations.distributed`) into ``out``, a complete cache file recording the shard
    (attributes ``shard_rank``, ``shard_world``, ``shard_rows_start``, ``shard_rows_stop``,
    ``n_rows_total``); ``geomprobe merge`` joins the shards in order.

    ``truncate``: None refuses a prompt longer than the model's context (checked before the model
    runs); ``"left"``/``"right"`` shorten it and record how many rows and tokens were cut.
    """
    started = time.perf_counter()
    prompts = dataset if isinstance(dataset, PromptSet) else load_prompt_set(dataset, limit=limit)
    if isinstance(dataset, PromptSet) and limit is not None:
        prompts = prompts.subset(limit)
    shard_attrs: dict[str, int | str] = {}
    if shard is not None:
        from geomprobe.activations.distributed import shard_rows

        rank, world = (int(v) for v in shard)
        span = shard_rows(len(prompts), rank, world, batch_size)
        shard_attrs = {
            "shard_rank": rank,
            "shard_world": world,
            "shard_rows_start": span.start,
            "shard_rows_stop": span.stop,
            "n_rows_total": len(prompts),
            "host": platform.node(),
        }
        # The dataset identity (name, sha256) stays the whole set's, so merge can check shards match.
        prompts = PromptSet(
            prompts.name, prompts.prompts[span.start : span.stop], prompts.label_names, prompts.sha256, prompts.path
        )
    hook_list = resolve_hooks(hooks, model.n_layers, model.bridge.hook_dict)
    pooling_list = _check_poolings(poolings)
    out = check_output_file(out, overwrite=overwrite, example_name=CACHE_EXAMPLE_NAME)
    template_used = bool(chat_template and getattr(model.tokenizer, "chat_template", None))
    fitted = render_for_model(model, prompts, chat_template, truncate)
    rendered = fitted.rendered
    attrs: dict[str, Any] = dict(model.provenance())
    attrs.update(
        {
            "n_layers": model.n_layers,
            "dataset": prompts.name,
            "dataset_path": prompts.path,
            "dataset_sha256": prompts.sha256,
            "chat_template_applied": template_used,
            "chat_template": (model.tokenizer.chat_template or "") if template_used else "",
            "padding_side": "right",
            "batch_size": batch_size,
            "pooling_last": "last token of the rendered text",
            "pooling_mean": "mean over the final message's content tokens, padding excluded",
            "torch_version": torch.__version__,
            "python_version": platform.python_version(),
            **fitted.provenance(),
        }
    )
    attrs.update(shard_attrs)
    try:
        import transformer_lens
        import transformers

        attrs["transformers_version"] = transformers.__version__
        attrs["transformer_lens_version"] = getattr(transformer_lens, "__version__", "")
    except Exception:  # provenance only
        pass
    n_tokens = sum(len(r.token_ids) for r in rendered)
    writer_kwargs = dict(
        hooks=hook_list,
        poolings=pooling_list,
        d_model=model.d_model,
        label_names=prompts.label_names,
        store_dtype=store_dtype,
        attrs=attrs,
        expected_rows=len(rendered),
        expected_tokens=n_tokens,
    )
    settings = {
        "format_version": FORMAT_VERSION,
        "model_id": model.model_id,
        "model_revision": model.revision,
        "model_dtype": attrs["model_dtype"],
        "device": model.device.type,
        "hooks": hook_list,
        "poolings": pooling_list,
        "store_dtype": store_dtype,
        "batch_size": batch_size,
        "chat_template_applied": template_used,
        "rows_sha256": _rows_digest(rendered, prompts),
    }
    if shard_attrs:
        settings["shard"] = [shard_attrs["shard_rank"], shard_attrs["shard_world"]]
    bytes_per_row = (
        model.d_model
        * len(hook_list)
        * (sum(p != "all" for p in pooling_list) + ("all" in pooling_list) * n_tokens / max(len(rendered), 1))
        * (4 if store_dtype == "float32" else 2)
    )
    resumable = ResumableWriter(
        out,
        n_rows=len(rendered),
        segment_rows=segment_rows or segment_rows_for(batch_size, bytes_per_row),
        settings=settings,
        writer_kwargs=writer_kwargs,
        overwrite=overwrite,
        restart=restart,
    )
    resumed_from = resumable.start_row
    if resumed_from and progress:
        print(f"resuming {out}: {resumed_from} of {len(rendered)} prompts already written", file=sys.stderr)
    labels = prompts.labels
    pairs = prompts.pair_ids
    background = BackgroundWriter(resumable.append)
    try:
        for rows, batch in _run_pooled(model, rendered, hook_list, pooling_list, batch_size, progress, resumed_from):
            background.put(
                rows=rows,
                activations=batch,
                labels=labels[rows.start : rows.stop],
                pair_ids=pairs[rows.start : rows.stop],
                texts=[rendered[i].text for i in rows],
                sources=[_json(prompts.prompts[i].source) for i in rows],
                token_ids=[rendered[i].token_ids for i in rows],
                response_start=[rendered[i].span[0] for i in rows],
                response_end=[rendered[i].span[1] for i in rows],
            )
        background.close()
        summary = _Summary(hook_list, [p for p in pooling_list if p != "all"], len(prompts.label_names))
        resumable.finish(observe=summary.observe)
        n_bytes = out.stat().st_size
    except BaseException:
        try:
            background.close()
        except BaseException:
            pass
        resumable.abort()
        raise
    return CacheResult(
        out,
        len(rendered),
        n_tokens,
        n_bytes,
        time.perf_counter() - started,
        hook_list,
        pooling_list,
        summary.summaries(),
        resumed_from,
    )


def _rows_digest(rendered: Sequence[Rendered], prompts: PromptSet) -> str:
    """Identity of exactly what is fed to the model and stored per row."""
    digest = hashlib.sha256()
    for r, p in zip(rendered, prompts.prompts):
        digest.update(json.dumps([r.token_ids, r.span, p.label, p.pair]).encode())
    digest.update(json.dumps(prompts.label_names).encode())
    return digest.hexdigest()


class _Summary:
    """One line per hook and pooling: mean norm, and distance between the first two class centroids."""

    def __init__(self, hooks: Sequence[str], poolings: Sequence[str], n_labels: int) -> None:
        self.keys = [(h, p) for h in hooks for p in poolings]
        self.n_labels = max(n_labels, 1)
        self.norms = dict.fromkeys(self.keys, 0.0)
        self.sums: dict[tuple[str, str], np.ndarray] = {}
        self.counts = np.zeros(self.n_labels)
        self.rows = 0

    def observe(self, part) -> None:
        labels = part.labels
        known = labels >= 0
        self.counts += np.bincount(labels[known], minlength=self.n_labels)[: self.n_labels]
        self.rows += len(labels)
        for key in self.keys:
            values = part.read(*key).astype(np.float64)
            self.norms[key] += float(np.linalg.norm(values, axis=1).sum())
            sums = self.sums.setdefault(key, np.zeros((self.n_labels, values.shape[1])))
            np.add.at(sums, labels[known], values[known])

    def summaries(self) -> list[LayerSummary]:
        out = []
        for key in self.keys:
            distance = None
            if self.n_labels >= 2 and self.counts[0] > 0 and self.counts[1] > 0:
                centroids = self.sums[key][:2] / self.counts[:2, None]
                distance = float(np.linalg.norm(centroids[0] - centroids[1]))
            out.append(LayerSummary(key[0], hook_layer(key[0]), key[1], self.norms[key] / max(self.rows, 1), distance))
        return out


def _json(value) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)
