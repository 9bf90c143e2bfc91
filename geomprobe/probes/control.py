"""Where a probe's recall threshold comes from: a control cache, nothing, or the bundled control set.

The bundled ``control`` prompts (ordinary harmless requests) are run through the model the probe's
training cache was made from. That model is named by the cache's recorded ``model_source`` (a
folder, a .gguf file such as the embedded default model, or a hub name), carried into the probe's
metadata, not by its ``model_id``: the default model's id is a hub name that an offline machine
cannot resolve, while its source is the embedded GGUF file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from geomprobe.core.errors import GeomprobeError
from geomprobe.probes.persistence import ProbeSet
from geomprobe.probes.pipeline import ControlSource

BUNDLED_CONTROL = "bundled:control"


def probe_model_source(probes: ProbeSet, model: str | None = None) -> str:
    """The model to run for ``probes``: ``model`` if given, else the recorded source of the probe's
    training cache, else (a probe saved without one) its model id."""
    return model or str(probes.meta.get("model_source") or "") or probes.model_id


def bundled_control_activations(probes: ProbeSet, model: str | None = None, device: str = "auto") -> dict[str, Any]:
    """``{hook: (M, d)}`` activations of the bundled 'control' prompts, run through the probe's model
    (:func:`probe_model_source`)."""
    target = probe_model_source(probes, model)
    if not target or target == "arrays":
        raise GeomprobeError(
            "no model to build the bundled control set with (the probe's cache came from arrays); "
            "pass --control CONTROL.h5 or --no-control"
        )
    try:
        from geomprobe.activations.collect import pooled_activations
        from geomprobe.activations.datasets import load_prompt_set
        from geomprobe.models import load_model
    except ImportError:
        raise GeomprobeError("this geomprobe cannot build the bundled control set; pass --control CONTROL.h5") from None
    try:
        loaded = load_model(target, device=device)
    except (GeomprobeError, OSError, ValueError) as exc:
        raise GeomprobeError(
            f"cannot load model {target!r} to run the bundled control set ({str(exc)[:120]}); "
            "pass --control CONTROL.h5 (geomprobe cache --dataset control) or --no-control"
        ) from None
    acts = pooled_activations(loaded, load_prompt_set("control"), probes.hooks, [probes.pooling])
    return {h: acts[h][probes.pooling] for h in probes.hooks}


def choose_control(
    control: str | Path | None = None, no_control: bool = False, *, model: str | None = None, device: str = "auto"
) -> ControlSource | None:
    """The control source for training or evaluating probes: the cache file ``control``, None
    (``no_control``: the threshold is tuned on the test negatives), or by default the bundled control
    prompts, run lazily (after the probes are fitted or loaded, so bad data is reported before a
    slow model load) through ``model`` or the probe's recorded model source."""
    if control is not None and no_control:
        raise GeomprobeError("pass either --control or --no-control, not both")
    if control is not None:
        if not Path(control).exists():
            raise GeomprobeError(
                f"control cache {str(control)!r} does not exist; build it with geomprobe cache --dataset control"
            )
        return control
    if no_control:
        return None
    return lambda probes: bundled_control_activations(probes, model, device)


def control_name(control: str | Path | None = None, no_control: bool = False) -> str:
    """What the recall threshold was set on, as the JSON outputs report it."""
    if control:
        return str(control)
    return "none (threshold tuned on test negatives)" if no_control else BUNDLED_CONTROL
