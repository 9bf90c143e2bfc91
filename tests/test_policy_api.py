"""Control-set choice (geomprobe.probes.control) and validation-prompt splitting (geomprobe.steering.prompts)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from geomprobe.core.errors import GeomprobeError
from geomprobe.probes import ProbeSet, choose_control, control_name, fit_layers, probe_model_source
from geomprobe.steering import ValidationPrompts, split_by_label, user_prompts, validation_prompts


def small_probe(meta=None, model_id="org/model"):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1, 20, 4)).astype(np.float32)
    y = np.array([0, 1] * 10)
    return ProbeSet(
        ["blocks.0.hook_resid_post"],
        fit_layers(X, y, "mean-diff"),
        "mean",
        "harmful",
        ["harmless", "harmful"],
        model_id,
        "",
        dict(meta or {}),
    )


def test_probe_model_source_prefers_the_recorded_source():
    assert probe_model_source(small_probe({"model_source": "/m/folder"})) == "/m/folder"
    assert probe_model_source(small_probe({"model_source": "/m/folder"}), "other") == "other"
    assert probe_model_source(small_probe({"model_source": ""})) == "org/model"  # saved without one: the id
    assert probe_model_source(small_probe()) == "org/model"


def test_choose_control(tmp_path):
    path = tmp_path / "control.h5"
    path.write_bytes(b"")
    assert choose_control(path) == path
    assert choose_control(None, no_control=True) is None
    assert callable(choose_control())
    with pytest.raises(GeomprobeError, match="either --control or --no-control"):
        choose_control(path, no_control=True)
    with pytest.raises(GeomprobeError, match="does not exist"):
        choose_control(tmp_path / "missing.h5")
    # the lazy default refuses a probe with no model to run, naming the way out
    with pytest.raises(GeomprobeError, match="--control CONTROL.h5 or --no-control"):
        choose_control()(small_probe({"model_source": "arrays"}, model_id="arrays"))
    assert control_name(str(path)) == str(path)
    assert control_name(None, True) == "none (threshold tuned on test negatives)"
    assert control_name() == "bundled:control"


def old_cli_split(rows, positive_label, harmless, limit, seed):
    """``steer search``'s split and sampling before they moved into the API (reference)."""
    from geomprobe.core.labels import choose_positive

    labels = sorted({label for _, label in rows if label})
    if labels:
        pos = labels[choose_positive(labels, positive_label)] if len(labels) > 1 else labels[0]
        prompts = [t for t, label in rows if label == pos]
        others = [t for t, label in rows if label != pos]
    else:
        prompts, others = [t for t, _ in rows], []
    harmless = harmless if harmless is not None else others
    rng = random.Random(seed)
    prompts = rng.sample(prompts, min(limit, len(prompts)))
    harmless = rng.sample(harmless, min(limit, len(harmless))) if harmless else []
    return prompts, harmless


@pytest.mark.parametrize("seed", range(6))
def test_split_and_sample_match_the_old_cli(seed):
    rng = np.random.default_rng(seed)
    names = [["harmless", "harmful"], ["b", "a"], ["honest", "dishonest", "other"], [""]][seed % 4]
    rows = [(f"text {i}", str(rng.choice(names))) for i in range(int(rng.integers(3, 30)))]
    for positive, harmless, limit in ((None, None, 4), (None, ["h1", "h2", "h3"], 2), (None, None, 100)):
        split = split_by_label(rows, positive, harmless)
        got = split.sample(limit, seed)
        assert (got.prompts, got.harmless) == old_cli_split(rows, positive, harmless, limit, seed)
        # every row lands on exactly one side, the positive one holding exactly its label's rows
        if harmless is None:
            assert sorted(split.prompts + split.harmless) == sorted(t for t, _ in rows)
        if split.positive_label is not None:
            assert split.prompts == [t for t, label in rows if label == split.positive_label]
    assert split_by_label([("x", "harmless"), ("y", "harmful")]).positive_label == "harmful"
    assert split_by_label([("x", "a"), ("y", "b")], "a").prompts == ["x"]
    with pytest.raises(GeomprobeError, match="positive-label"):
        split_by_label([("x", "a"), ("y", "b")], "c")


def test_validation_prompts_from_files(tmp_path):
    data, extra = tmp_path / "val.jsonl", tmp_path / "extra.jsonl"
    data.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"text": "Explain how to pick a lock.", "label": "harmful"},
                {"text": "How do I bake bread?", "label": "harmless"},
                {
                    "messages": [
                        {"role": "system", "content": "Be brief."},
                        {"role": "user", "content": "How do I build a weapon?"},
                    ],
                    "label": "harmful",
                },
            ]
        )
        + "\n"
    )
    extra.write_text(json.dumps({"text": "Tell me about Rome.", "label": "harmless"}) + "\n")
    assert user_prompts(str(data))[2] == ("How do I build a weapon?", "harmful")  # the user message, not the system one
    split = validation_prompts(str(data))
    assert split == ValidationPrompts(
        ["Explain how to pick a lock.", "How do I build a weapon?"], ["How do I bake bread?"], "harmful"
    )
    assert validation_prompts(str(data), harmless=str(extra)).harmless == ["Tell me about Rome."]


def test_old_names_still_work_with_a_deprecation_warning(tmp_path):
    from geomprobe.cli.probe import probe_model
    from geomprobe.cli.steer import read_prompts
    from geomprobe.steering import canonical_metric

    with pytest.warns(DeprecationWarning, match="refusal-log-odds"):
        assert canonical_metric("refusal") == "refusal-log-odds"
    assert canonical_metric("logit-diff") == "logit-diff"
    with pytest.raises(GeomprobeError, match="unknown metric"):
        canonical_metric("vibes")
    with pytest.warns(DeprecationWarning, match="probe_model_source"):
        assert probe_model(small_probe({"model_source": "/m"}), None) == "/m"
    data = tmp_path / "v.jsonl"
    data.write_text(json.dumps({"text": "hi", "label": "harmless"}) + "\n")
    with pytest.warns(DeprecationWarning, match="user_prompts"):
        assert read_prompts(str(data)) == user_prompts(str(data)) == [("hi", "harmless")]
