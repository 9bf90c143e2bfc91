"""The bad-input corpus: every case must fail with one ``geomprobe: error: ...`` line and exit code 2.

``argv`` tokens may hold ``{placeholders}`` filled from :func:`build.build_corpus_root` (a file
``good.h5`` in the corpus folder is ``{good_h5}``; ``{model}`` is the tiny model folder).
``expect`` is a substring (case-insensitive) the error line must contain. ``usage=True`` marks
argparse errors (usage text, then a ``geomprobe ...: error:`` line). ``outputs`` names the output
paths the case points at; the runner checks none of them appears or changes (it also checks the
whole corpus folder is byte-identical afterwards). ``model=True`` cases load the tiny model.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    expect: str
    usage: bool = False
    outputs: tuple[str, ...] = ()
    model: bool = False
    xfail: str = ""  # a known bug whose fix lies outside the corpus owner's files


def C(id: str, argv: str | list[str], expect: str, **kw) -> Case:
    tokens = argv.split() if isinstance(argv, str) else argv
    return Case(id, tuple(tokens), expect, **kw)


M = "--model {model} --device cpu"

CASES: list[Case] = [
    # -- cache: datasets ------------------------------------------------------------------------
    C("cache-malformed-jsonl", f"cache {M} --dataset {{malformed_jsonl}} --out {{root}}/new.h5", "not valid JSON",
      outputs=("{root}/new.h5",)),
    C("cache-latin1", f"cache {M} --dataset {{latin1_jsonl}} --out {{root}}/new.h5", "not UTF-8"),
    C("cache-empty-jsonl", f"cache {M} --dataset {{empty_jsonl}} --out {{root}}/new.h5", "has no rows"),
    C("cache-empty-csv", f"cache {M} --dataset {{empty_csv}} --out {{root}}/new.h5", "is empty"),
    C("cache-csv-no-text-column", f"cache {M} --dataset {{no_text_column_csv}} --out {{root}}/new.h5", "needs 'text'"),
    C("cache-missing-label", f"cache {M} --dataset {{missing_label_jsonl}} --out {{root}}/new.h5", "no 'label'"),
    C("cache-row-not-object", f"cache {M} --dataset {{not_object_jsonl}} --out {{root}}/new.h5", "expected a JSON object"),
    C("cache-list-label", f"cache {M} --dataset {{list_label_jsonl}} --out {{root}}/new.h5", "'label' must be"),
    C("cache-txt-dataset", f"cache {M} --dataset {{prompts_txt}} --out {{root}}/new.h5", "must be .jsonl or .csv"),
    C("cache-dataset-is-dir", f"cache {M} --dataset {{empty_dir}} --out {{root}}/new.h5", "is a directory"),
    C("cache-dataset-unicode-missing", ["cache", *M.split(), "--dataset", "{spaced_missing}", "--out", "{root}/new.h5"],
      "nöt thére.h5"),
    # -- cache: outputs and settings ---------------------------------------------------------------
    C("cache-out-exists", f"cache {M} --dataset harmful-harmless --out {{good_h5}}", "already exists", outputs=("{good_h5}",)),
    C("cache-out-is-dir", f"cache {M} --dataset harmful-harmless --out {{dir_h5}}", "is a directory"),
    C("cache-out-folder-missing", f"cache {M} --dataset harmful-harmless --out {{root}}/nowhere/new.h5", "does not exist"),
    C("cache-segment-rows-zero", f"cache {M} --dataset harmful-harmless --out {{root}}/new.h5 --segment-rows 0", "--segment-rows"),
    C("cache-limit-zero", f"cache {M} --dataset harmful-harmless --out {{root}}/new.h5 --limit 0", "--limit"),
    C("cache-bad-store-dtype", f"cache {M} --out {{root}}/new.h5 --store-dtype float64", "invalid choice", usage=True),
    C("cache-model-no-config", "cache --model {not_a_model} --device cpu --limit 4 --out {root}/new.h5", "no config.json"),
    C("cache-model-bad-config", "cache --model {bad_config} --device cpu --limit 4 --out {root}/new.h5", "cannot load model"),
    C("cache-model-fake-gguf", "cache --model {not_a_model_gguf} --device cpu --limit 4 --out {root}/new.h5", "not a GGUF file"),
    C("cache-unknown-hook-layer", f"cache {M} --limit 4 --hooks resid_post:7 --out {{root}}/new.h5", "layer", model=True),
    C("cache-unknown-hook-name", f"cache {M} --limit 4 --hooks blocks.0.hook_nonsense --out {{root}}/new.h5", "hook_nonsense", model=True),
    C("cache-bad-pooling", f"cache {M} --limit 4 --pooling last,median --out {{root}}/new.h5", "median", model=True),
    # -- aqi ------------------------------------------------------------------------------------
    C("aqi-not-hdf5", "aqi {not_hdf5_h5}", "not a readable HDF5"),
    C("aqi-truncated-hdf5", "aqi {truncated_h5}", "not a readable HDF5"),
    C("aqi-foreign-hdf5", "aqi {foreign_h5}", "not a geomprobe activation cache"),
    C("aqi-incomplete", "aqi {incomplete_h5}", "incomplete"),
    C("aqi-dir", "aqi {dir_h5}", "is a directory"),
    C("aqi-unicode-bad-file", ["aqi", "{spaced_bad}"], "cache ünïcødé.h5"),
    C("aqi-one-class", "aqi {one_class_h5} --n-bootstrap 0 --n-permutations 0", "harmless"),
    C("aqi-nan", "aqi {nan_h5} --n-bootstrap 0 --n-permutations 0 --json {existing_json}", "NaN",
      outputs=("{existing_json}",)),
    C("aqi-hook-layer-out-of-range", "aqi {good_h5} --hooks resid_post:5", "out of range"),
    C("aqi-unknown-hook", "aqi {good_h5} --hooks blocks.0.hook_mlp_out", "no hook"),
    C("aqi-unknown-label", "aqi {good_h5} --positive-label evil", "evil"),
    C("aqi-missing-pooling", "aqi {good_h5} --pooling mean", "no 'mean' pooling"),
    C("aqi-json-is-dir", "aqi {good_h5} --json {empty_dir}", "is a directory"),
    C("aqi-bad-gamma", "aqi {good_h5} --gamma 2 --n-bootstrap 0 --n-permutations 0 --plot {existing_png}", "gamma",
      outputs=("{existing_png}",)),
    C("aqi-bad-reduce", "aqi {good_h5} --reduce umap", "umap"),
    C("aqi-missing-file", "aqi", "the following arguments are required", usage=True),
    # -- subspace ---------------------------------------------------------------------------------
    C("subspace-acts-one-class", "subspace acts {one_class_h5} --n-draws 2", "harmless"),
    C("subspace-acts-nan", "subspace acts {nan_h5} --n-draws 2", "NaN"),
    C("subspace-acts-bad-energy", "subspace acts {good_h5} --energy 1.5", "energy"),
    C("subspace-acts-not-hdf5", "subspace acts {not_hdf5_h5}", "not a readable HDF5"),
    C("subspace-weights-no-model", "subspace weights --base {not_a_model} --aligned {model}", "no config.json"),
    C("subspace-project-out-not-empty",
      "subspace project --base {model} --aligned {model} --finetuned {model} --out {project_out}", "not empty",
      outputs=("{project_out}/keep.txt",)),
    C("subspace-project-no-out", "subspace project --base {model} --aligned {model} --finetuned {model}",
      "--out", usage=True),
    # -- probe ------------------------------------------------------------------------------------
    C("probe-train-one-class", "probe train {one_class_h5} --out {root}/newprobe", "two labelled classes",
      outputs=("{root}/newprobe",)),
    C("probe-train-nan", "probe train {nan_h5} --out {root}/newprobe", "NaN"),
    C("probe-train-out-exists", "probe train {good_h5} --out {probe}", "already holds a probe",
      outputs=("{probe}/probe.json", "{probe}/probe.safetensors")),
    C("probe-train-bad-test-size", "probe train {good_h5} --out {root}/newprobe --test-size 1.5", "test"),
    C("probe-train-truncated-cache", "probe train {truncated_h5} --out {root}/newprobe", "not a readable HDF5"),
    C("probe-eval-missing-probe", "probe eval {root}/noprobe {good_h5} --no-control --json {root}/e.json", "does not exist",
      outputs=("{root}/e.json",)),
    C("probe-eval-bad-sidecar", "probe eval {probe_bad_json} {good_h5} --no-control --json {root}/e.json", "not valid JSON"),
    C("probe-eval-utf16-sidecar", "probe eval {probe_utf16_json} {good_h5} --no-control --json {root}/e.json", "not valid JSON"),
    C("probe-eval-sidecar-no-hooks", "probe eval {probe_no_hooks} {good_h5} --no-control --json {root}/e.json", "hooks"),
    C("probe-eval-truncated-tensors", "probe eval {probe_truncated} {good_h5} --no-control --json {root}/e.json",
      "not a valid safetensors"),
    C("probe-eval-width-mismatch", "probe eval {probe32} {good_h5} --no-control --json {existing_json}", "d_model",
      outputs=("{existing_json}",)),
    C("probe-eval-model-mismatch", "probe eval {probe} {other_h5} --no-control --json {root}/e.json", "--allow-model-mismatch"),
    C("probe-eval-control-and-no-control",
      "probe eval {probe} {good_h5} --control {good_h5} --no-control --json {root}/e.json", "either --control"),
    C("probe-eval-no-json", "probe eval {probe} {good_h5}", "--json", usage=True),
    C("probe-transfer-not-hdf5", "probe transfer {good_h5} {not_hdf5_h5} --json {root}/t.json", "not a readable HDF5"),
    C("probe-tokens-no-all-pooling", "probe tokens {probe} {good_h5} --html {root}/t.html", "'all'",
      outputs=("{root}/t.html",)),
    C("probe-score-model-mismatch", f"probe score {{probe}} {M} --text hello", "--allow-model-mismatch", model=True),
    C("probe-score-width-mismatch", f"probe score {{probe32}} {M} --text hello --allow-model-mismatch", "d_model", model=True),
    # -- steer ------------------------------------------------------------------------------------
    C("steer-build-one-class", "steer build {one_class_h5} --out {root}/newvec", "two labelled classes",
      outputs=("{root}/newvec",)),
    C("steer-build-nan", "steer build {nan_h5} --out {root}/newvec", "NaN"),
    C("steer-build-nothing", "steer build --out {root}/newvec", "give a cache file"),
    C("steer-build-out-exists", "steer build {good_h5} --out {vector}", "already holds a steering vector",
      outputs=("{vector}/vector.json", "{vector}/vector.safetensors")),
    C("steer-build-bad-probe", "steer build --probe {probe_bad_json} --out {root}/newvec", "not valid JSON"),
    C("steer-build-unknown-label", "steer build {good_h5} --positive-label evil --out {root}/newvec", "evil"),
    C("steer-generate-bad-sidecar", f"steer generate {{vector_bad_json}} {M} --prompt hi", "not valid JSON"),
    C("steer-generate-truncated", f"steer generate {{vector_truncated}} {M} --prompt hi", "vector.safetensors"),
    C("steer-generate-width-mismatch", f"steer generate {{vector32}} {M} --prompt hi", "d_model", model=True),
    C("steer-generate-nan-multiplier", f"steer generate {{vector}} {M} --prompt hi --multiplier nan", "not finite", usage=True),
    C("steer-generate-no-prompt", f"steer generate {{vector}} {M}", "--prompt", usage=True),
    C("steer-search-malformed-dataset", f"steer search {{vector}} {M} --dataset {{malformed_jsonl}}", "not valid JSON"),
    C("steer-ablate-unknown-hook", f"steer ablate {{vector}} {M} --hook blocks.9.hook_resid_post --save-model {{root}}/abl",
      "blocks.9.hook_resid_post", outputs=("{root}/abl",)),
    C("steer-export-out-exists", "steer export-gguf {vector} --out {existing_gguf}", "already exists",
      outputs=("{existing_gguf}",)),
    C("steer-export-unknown-hook", "steer export-gguf {vector} --out {root}/v.gguf --hooks blocks.7.hook_resid_post",
      "blocks.7.hook_resid_post", outputs=("{root}/v.gguf",)),
    C("steer-export-folder-missing", "steer export-gguf {vector} --out {root}/nowhere/v.gguf", "does not exist"),
    C("steer-export-not-a-vector", "steer export-gguf {empty_dir} --out {root}/v.gguf", "not a steering vector folder"),
    C("steer-screen-nan", "steer screen {nan_h5}", "NaN"),
    C("steer-screen-one-class", "steer screen {one_class_h5} --json {root}/s.json", "harmless", outputs=("{root}/s.json",)),
    # -- audit (fails before any model is loaded) ---------------------------------------------------
    C("audit-bad-fail-if-number", "audit --model {model} --out {root}/newaudit --fail-if aqi.max<<0.3", "is not a number",
      outputs=("{root}/newaudit",)),
    C("audit-bad-fail-if-field", "audit --model {model} --out {root}/newaudit --fail-if bogus.thing<1", "bogus"),
    C("audit-out-is-file", "audit --model {model} --out {existing_json}", "is a file", outputs=("{existing_json}",)),
    C("steer-screen-truncated", "steer screen {truncated_h5}", "not a readable HDF5"),
]

# Run these through a real subprocess too (python -m geomprobe): no traceback for real.
SUBPROCESS_IDS = ("aqi-truncated-hdf5", "probe-eval-bad-sidecar", "cache-latin1", "steer-export-out-exists",
                  "aqi-missing-file")
