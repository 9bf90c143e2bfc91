"""Write geomprobe/data/preferences.jsonl: the bundled CHES preference set (run once; see DATASHEET.md).

    PYTHONPATH=$PWD python dev/build_preferences.py [--out PATH] [--overwrite]

The default model answers the contrast set's harmful prompts greedily; answers the project's refusal
judge counts as refusals are skipped, so every rejected response is the model's own compliance.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from geomprobe.ches import build_preference_set, write_preference_set
from geomprobe.models import load_model
from geomprobe.steering.judge import is_refusal

OUT = Path(__file__).resolve().parent.parent / "geomprobe" / "data" / "preferences.jsonl"

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    model = load_model("default", device="cpu")
    rows = build_preference_set(
        model, n_compliance=60, n_near_duplicate=20, max_new_tokens=32, keep=lambda text: not is_refusal(text)
    )
    write_preference_set(rows, args.out, overwrite=args.overwrite)
    kinds = {k: sum(r["kind"] == k for r in rows) for k in ("compliance", "near-duplicate")}
    print(f"wrote {len(rows)} pairs ({kinds}) to {args.out}")
