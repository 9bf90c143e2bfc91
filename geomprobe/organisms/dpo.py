"""DPO with LoRA on preference pairs, and the log-probabilities it moves (the CHES experiment of docs/ches.md).

Razin et al. (ICLR 2025) predict that DPO on pairs with a high CHES score displaces likelihood: the
preferred response's log-probability falls, or rises less, than on pairs with a low score.
``benchmarks/ches_dpo.py`` tests that on the bundled preference set; this module holds its parts.

* :func:`encode_pairs` - each pair's token ids as CHES renders them: the prompt (chat template and
  generation prompt), then each response followed by the end-of-turn (eos) token. The response
  tokens are exactly the ones whose predicting states CHES sums (``include_end=True``).
* :func:`sequence_logprobs` - ``log p(response | prompt)`` summed over those tokens, from the
  model's own forward pass, in float64.
* :func:`train_dpo` - trl's ``DPOTrainer`` (sigmoid loss; the reference is the model with the
  LoRA adapter switched off) on exactly those token ids, the adapter merged into the weights.
* :func:`split_thirds`, :func:`mean_interval`, :func:`difference_interval` - the split by score and
  the bootstrap intervals (drawn through :mod:`geomprobe.core.stats`).
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from geomprobe.ches.data import PreferenceSet, render_response
from geomprobe.core.errors import GeomprobeError
from geomprobe.core.stats import bootstrap
from geomprobe.organisms.train import _plain_head, lora_targets


@dataclass(frozen=True)
class EncodedPair:
    """One pair as token ids: the shared prompt, then each response with its end-of-turn token."""

    prompt_ids: tuple[int, ...]
    chosen_ids: tuple[int, ...]
    rejected_ids: tuple[int, ...]
    where: str = ""


def encode_pairs(tokenizer: Any, prefs: PreferenceSet, chat: bool = True) -> list[EncodedPair]:
    """Token ids of every pair, rendered as :func:`geomprobe.ches.ches_scores` renders them.

    The response tokens are those of the response's span followed by ``tokenizer.eos_token_id``
    (the end-of-turn of a ChatML template), so ``len(chosen_ids)`` is CHES's number of chosen terms.
    A pair whose two renderings disagree before the response (a token straddling the response's
    first character) is refused: DPO needs one prompt for both responses.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise GeomprobeError("the tokenizer has no end-of-sequence token; DPO responses end with one, so give it an eos_token")
    out = []
    for pair in prefs.pairs:
        where = pair.where or "a pair"
        parts = {}
        for side in ("chosen", "rejected"):
            r = render_response(pair.prompt, getattr(pair, side), tokenizer, chat, f"{where} ({side})")
            start, end = r.span
            if start < 1:
                raise GeomprobeError(f"{where} ({side}): no token precedes the response, so nothing predicts its first token")
            parts[side] = (tuple(r.token_ids[:start]), tuple(r.token_ids[start:end]) + (int(eos),))
        if parts["chosen"][0] != parts["rejected"][0]:
            raise GeomprobeError(
                f"{where}: the prompt tokenises differently before the chosen and the rejected response (a token spans the "
                "response's first character); start both responses with a letter or a space"
            )
        out.append(EncodedPair(parts["chosen"][0], parts["chosen"][1], parts["rejected"][1], where))
    return out


@torch.inference_mode()
def sequence_logprobs(hf_model: Any, pairs: Sequence[EncodedPair], *, batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """``(chosen, rejected)``: per pair, the summed log-probability of each response's tokens given the prompt.

    Right-padded batches of ``batch_size`` sequences (real tokens come first and never attend to the
    padding, so the batch does not change the sums beyond float rounding). The unembedding runs only
    at the positions that predict response tokens (when the logits are plain ``lm_head(hidden)``),
    and the log-softmax there is float64.
    """
    if batch_size < 1:
        raise GeomprobeError(f"batch_size must be at least 1, got {batch_size}")
    rows = [(p.prompt_ids, p.chosen_ids) for p in pairs] + [(p.prompt_ids, p.rejected_ids) for p in pairs]
    device = next(hf_model.parameters()).device
    plain = _plain_head(hf_model)
    was_training = hf_model.training
    hf_model.eval()
    sums = np.zeros(len(rows), dtype=np.float64)
    try:
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            width = max(len(p) + len(r) for p, r in batch)
            ids = torch.zeros((len(batch), width), dtype=torch.long)  # the pad id is never attended to
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for j, (p, r) in enumerate(batch):
                ids[j, : len(p) + len(r)] = torch.tensor(p + r, dtype=torch.long)
                mask[j, : len(p) + len(r)] = 1
            ids, mask = ids.to(device), mask.to(device)
            if plain:
                states = hf_model.base_model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
            else:
                logits = hf_model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            for j, (p, r) in enumerate(batch):
                at = slice(len(p) - 1, len(p) + len(r) - 1)  # the states that predict the response's tokens
                scores = hf_model.get_output_embeddings()(states[j, at]) if plain else logits[j, at]
                targets = torch.tensor(r, dtype=torch.long, device=scores.device)[:, None]
                sums[start + j] = float(torch.log_softmax(scores.to(torch.float64), dim=-1).gather(-1, targets).sum())
    finally:
        hf_model.train(was_training)
    return sums[: len(pairs)], sums[len(pairs) :]


@dataclass(frozen=True)
class DPOSettings:
    """Everything that decides a DPO run; two runs with equal settings differ only in their pairs."""

    steps: int = 40  # optimiser steps
    batch_size: int = 4  # pairs per step
    lr: float = 1e-4  # peak learning rate (AdamW, linear warm-up over a tenth of the steps, then cosine decay)
    beta: float = 0.1  # DPO's beta: the strength of the pull towards the reference
    lora_rank: int = 16
    lora_alpha: float = 32.0
    seed: int = 0  # LoRA initialisation and the order of the batches

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "lora_rank"):
            if getattr(self, name) < 1:
                raise GeomprobeError(f"DPO {name} must be at least 1; got {getattr(self, name)}")
        for name in ("lr", "beta", "lora_alpha"):
            if not getattr(self, name) > 0:
                raise GeomprobeError(f"DPO {name} must be positive; got {getattr(self, name)}")


@dataclass
class DPOLog:
    """What one DPO run did: per-step loss and reward margin as trl logged them, and the time it took."""

    steps: int
    n_pairs: int
    losses: list[float]
    margins: list[float]  # beta * (chosen log-ratio - rejected log-ratio), mean over the step's pairs
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)
    trl_version: str = ""
    trl_tokens_agree: int = 0  # pairs that trl's own tokenisation would have encoded the same way

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "n_pairs": self.n_pairs,
            "loss_first": self.losses[0] if self.losses else None,
            "loss_last": self.losses[-1] if self.losses else None,
            "losses": [round(x, 4) for x in self.losses],
            "margins": [round(x, 4) for x in self.margins],
            "seconds": round(self.seconds, 1),
            "settings": self.settings,
            "trl_version": self.trl_version,
            "trl_tokens_agree": self.trl_tokens_agree,
        }


@contextlib.contextmanager
def _quiet_and_offline() -> Iterator[None]:
    """No telemetry ping from trl's trainer (geomprobe sends nothing anywhere) and no dataset progress bars."""
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from huggingface_hub import constants

    bars_were_off = are_progress_bars_disabled()
    telemetry_was_off = constants.HF_HUB_DISABLE_TELEMETRY
    constants.HF_HUB_DISABLE_TELEMETRY = True
    disable_progress_bars()
    try:
        yield
    finally:
        constants.HF_HUB_DISABLE_TELEMETRY = telemetry_was_off
        if not bars_were_off:
            enable_progress_bars()


def _progress_callback(steps: int, desc: str) -> Any:
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    class Bar(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.bar = tqdm(total=steps, desc=desc, unit="step", leave=False)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.bar.update(1)
                self.bar.set_postfix(loss=f"{logs['loss']:.3f}")

        def on_train_end(self, args, state, control, **kwargs):
            self.bar.close()

    return Bar()


def train_dpo(
    hf_model: Any,
    tokenizer: Any,
    pairs: Sequence[EncodedPair],
    settings: DPOSettings | None = None,
    *,
    reference: tuple[Sequence[float], Sequence[float]] | None = None,
    progress: bool = False,
    desc: str = "DPO",
) -> tuple[Any, DPOLog]:
    """DPO with a LoRA adapter (on :func:`~geomprobe.organisms.train.lora_targets` of every layer) for
    ``settings.steps`` steps on ``pairs``; the adapter is merged and the plain model returned in eval mode.

    ``hf_model`` is changed in place. It trains where it lies (CPU or CUDA). trl tokenises its dataset
    when the trainer is built; the trainer then gets :func:`encode_pairs`'s ids instead, so DPO trains on
    the tokens CHES scored and :func:`sequence_logprobs` measures (``trl_tokens_agree`` in the log says
    how many pairs trl's own tokenisation would have left unchanged).

    ``reference``: ``sequence_logprobs(hf_model, pairs)`` measured before training. DPO's reference
    is the untrained model (the adapter switched off), so these are its reference log-probabilities;
    given, trl reads them from the batch instead of running a second forward pass every step.
    """
    import datasets
    import trl
    from peft import LoraConfig
    from transformers import PrinterCallback, ProgressCallback, set_seed

    if not pairs:
        raise GeomprobeError("no preference pairs to train on; pass at least one")
    settings = settings or DPOSettings()
    device = next(hf_model.parameters()).device
    encoded: dict[str, list[Any]] = {
        "prompt_ids": [list(p.prompt_ids) for p in pairs],
        "chosen_ids": [list(p.chosen_ids) for p in pairs],
        "rejected_ids": [list(p.rejected_ids) for p in pairs],
    }
    if reference is not None:
        if not len(reference[0]) == len(reference[1]) == len(pairs):
            raise GeomprobeError(f"reference log-probabilities for {len(reference[0])} pairs, but {len(pairs)} pairs to train on")
        encoded["ref_chosen_logps"] = [float(x) for x in reference[0]]
        encoded["ref_rejected_logps"] = [float(x) for x in reference[1]]
    texts = datasets.Dataset.from_dict(
        {
            "prompt": [tokenizer.decode(p.prompt_ids) for p in pairs],
            "chosen": [tokenizer.decode(p.chosen_ids) for p in pairs],
            "rejected": [tokenizer.decode(p.rejected_ids) for p in pairs],
        }
    )
    lora = LoraConfig(
        r=settings.lora_rank,
        lora_alpha=settings.lora_alpha,  # type: ignore[arg-type]  # peft scales by alpha / r; a float is fine
        lora_dropout=0.0,
        bias="none",
        target_modules=list(lora_targets(hf_model) or []) or None,
        task_type="CAUSAL_LM",
    )
    with tempfile.TemporaryDirectory(prefix="geomprobe-dpo-") as scratch, _quiet_and_offline():
        config = trl.DPOConfig(
            output_dir=scratch,  # nothing is saved there (save_strategy "no"); the trainer wants a folder
            max_steps=settings.steps,
            per_device_train_batch_size=settings.batch_size,
            learning_rate=settings.lr,
            lr_scheduler_type="cosine",
            warmup_steps=max(1, settings.steps // 10),
            weight_decay=0.0,
            max_grad_norm=1.0,
            beta=settings.beta,
            loss_type=["sigmoid"],
            max_length=None,  # pairs are short; no truncation, so every response token counts
            gradient_checkpointing=False,  # a small model: recomputing activations costs more than it saves
            bf16=False,
            fp16=False,
            use_cpu=device.type == "cpu",
            seed=settings.seed,
            data_seed=settings.seed,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        set_seed(settings.seed)  # the LoRA matrices are drawn when the trainer wraps the model
        trainer = trl.DPOTrainer(model=hf_model, args=config, train_dataset=texts, processing_class=tokenizer, peft_config=lora)
        own = trainer.train_dataset  # trl's tokenisation, kept only to count the pairs it would have changed
        agree = sum(
            all(own[i][key] == encoded[key][i] for key in ("prompt_ids", "chosen_ids", "rejected_ids"))  # type: ignore[index]
            for i in range(min(len(own), len(pairs)))  # type: ignore[arg-type]
        )
        trainer.train_dataset = datasets.Dataset.from_dict(encoded)
        # trl's switch for reading the reference from the batch (set at init from precompute_ref_log_probs,
        # which would have run its own reference pass over trl's tokens).
        trainer.precompute_ref_logps = reference is not None
        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
        if progress:
            trainer.add_callback(_progress_callback(settings.steps, desc))
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        history = [h for h in trainer.state.log_history if "loss" in h]
        merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
    merged.eval()
    log = DPOLog(
        steps=settings.steps,
        n_pairs=len(pairs),
        losses=[float(h["loss"]) for h in history],
        margins=[float(h.get("rewards/margins", float("nan"))) for h in history],
        seconds=seconds,
        settings={
            **asdict(settings),
            "targets": sorted(lora.target_modules or []),
            "loss": "sigmoid",
            "reference": "precomputed" if reference is not None else "forward pass with the adapter off",
        },
        trl_version=str(trl.__version__),
        trl_tokens_agree=int(agree),
    )
    return merged, log


def split_thirds(scores: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(high, low)``: the ``n // 3`` pairs with the highest scores and the ``n // 3`` with the lowest,
    each in rank order (highest first; ties keep file order, as ``CHESResult.rank`` orders them)."""
    values = np.asarray(scores, dtype=np.float64)
    third = len(values) // 3
    if third < 1:
        raise GeomprobeError(f"splitting into thirds needs at least 3 pairs; got {len(values)}")
    order = np.argsort(-values, kind="stable")
    return order[:third], order[len(values) - third :]


@dataclass(frozen=True)
class Interval:
    """A statistic and its percentile-bootstrap interval."""

    estimate: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "ci_low": self.low, "ci_high": self.high}


def mean_interval(values: Sequence[float] | np.ndarray, *, n_bootstrap: int = 2000, seed: int = 0) -> Interval:
    """The mean of ``values`` with a 95% percentile-bootstrap interval over the rows."""
    x = np.asarray(values, dtype=np.float64)
    res = bootstrap(lambda rows: x[rows].mean(), len(x), n_bootstrap=n_bootstrap, seed=seed)
    return Interval(float(res.estimate), float(res.low), float(res.high))


def difference_interval(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *, n_bootstrap: int = 2000, seed: int = 0
) -> Interval:
    """``mean(a) - mean(b)`` of two independent samples, each resampled within itself (a stratified
    bootstrap with a and b as the strata), with its 95% percentile interval."""
    x = np.concatenate([np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)])
    n_a = len(a)
    res = bootstrap(
        lambda rows: x[rows[rows < n_a]].mean() - x[rows[rows >= n_a]].mean(),
        [np.arange(n_a), np.arange(n_a, len(x))],
        n_bootstrap=n_bootstrap,
        seed=seed,
    )
    return Interval(float(res.estimate), float(res.low), float(res.high))
