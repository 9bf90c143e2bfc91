"""Hook-name parsing: the names resolve_hooks produces parse back to their layer and short name."""

from __future__ import annotations

from geomprobe.core.hooks import SHORT_HOOKS, hook_name, parse_hook_name, resolve_hooks


def test_parse_hook_name_round_trips_resolved_names():
    for short in SHORT_HOOKS:
        names = resolve_hooks(f"{short}:0,2,-1", n_layers=12)
        assert [parse_hook_name(n) for n in names] == [(0, short), (2, short), (11, short)]
        assert names == [hook_name(layer, short) for layer in (0, 2, 11)]


def test_parse_hook_name_rejects_other_hooks():
    for name in (
        "blocks.3.ln1.hook_in",
        "blocks.3.hook_in",
        "blocks.x.hook_resid_post",
        "hook_embed",
        "blocks.3.hook_resid_post.extra",
        "resid_post:3",
    ):
        assert parse_hook_name(name) is None
