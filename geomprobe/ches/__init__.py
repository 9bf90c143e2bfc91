"""CHES: which preference pairs are likely to displace likelihood under DPO (Razin et al., ICLR 2025).

* :mod:`.data` - ``{prompt, chosen, rejected}`` rows: reading, one-line checks, rendering.
* :mod:`.scores` - ``ches_scores`` (per-pair CHES and its length-normalised variant from the
  model's own forward pass) and ``CHESResult`` (ranking, top-share flags, ``to_dict``).
* :mod:`.build` - ``build_preference_set``, which made the bundled ``preferences`` set.

See ``docs/ches.md`` for the formulas and conventions. This module only re-exports.
"""

from geomprobe.ches.build import (
    NEAR_DUPLICATES,
    REFUSALS,
    SKIP_TOPICS,
    build_preference_set,
    greedy_answers,
    write_preference_set,
)
from geomprobe.ches.data import (
    BUNDLED_PREFERENCES,
    PreferencePair,
    PreferenceSet,
    check_pair_row,
    load_preferences,
    pairs_from_rows,
    render_response,
)
from geomprobe.ches.scores import FINAL, FINAL_HOOK, CHESResult, ches_from_sums, ches_scores, resolve_layers

__all__ = [
    "BUNDLED_PREFERENCES",
    "CHESResult",
    "FINAL",
    "FINAL_HOOK",
    "NEAR_DUPLICATES",
    "PreferencePair",
    "PreferenceSet",
    "REFUSALS",
    "SKIP_TOPICS",
    "build_preference_set",
    "check_pair_row",
    "ches_from_sums",
    "ches_scores",
    "greedy_answers",
    "load_preferences",
    "pairs_from_rows",
    "render_response",
    "resolve_layers",
    "write_preference_set",
]
