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
    fault: str = ""  # "erofs" / "enospc": every rename into the corpus folder fails so (a read-only or full disk)
    hold_lock: str = ""  # an output whose parts lock another run holds while the case runs


def C(id: str, argv: str | list[str], expect: str, **kw) -> Case:
    tokens = argv.split() if isinstance(argv, str) else argv
    return Case(id, tuple(tokens), expect, **kw)


M = "--model {model} --device cpu"

CASES: list[Case] = [
    # -- cache: datasets ------------------------------------------------------------------------
    C(
        "cache-malformed-jsonl",
        f"cache {M} --dataset {{malformed_jsonl}} --out {{root}}/new.h5",
        "not valid JSON",
        outputs=("{root}/new.h5",),
    ),
    C("cache-latin1", f"cache {M} --dataset {{latin1_jsonl}} --out {{root}}/new.h5", "not UTF-8"),
    C("cache-empty-jsonl", f"cache {M} --dataset {{empty_jsonl}} --out {{root}}/new.h5", "has no rows"),
    C("cache-empty-csv", f"cache {M} --dataset {{empty_csv}} --out {{root}}/new.h5", "is empty"),
    C("cache-csv-no-text-column", f"cache {M} --dataset {{no_text_column_csv}} --out {{root}}/new.h5", "needs 'text'"),
    C("cache-missing-label", f"cache {M} --dataset {{missing_label_jsonl}} --out {{root}}/new.h5", "no 'label'"),
    C("cache-row-not-object", f"cache {M} --dataset {{not_object_jsonl}} --out {{root}}/new.h5", "expected a JSON object"),
    C("cache-list-label", f"cache {M} --dataset {{list_label_jsonl}} --out {{root}}/new.h5", "'label' must be"),
    C("cache-txt-dataset", f"cache {M} --dataset {{prompts_txt}} --out {{root}}/new.h5", "must be .jsonl or .csv"),
    C("cache-dataset-is-dir", f"cache {M} --dataset {{empty_dir}} --out {{root}}/new.h5", "is a directory"),
    C(
        "cache-dataset-unicode-missing",
        ["cache", *M.split(), "--dataset", "{spaced_missing}", "--out", "{root}/new.h5"],
        "nöt thére.h5",
    ),
    # -- cache: outputs and settings ---------------------------------------------------------------
    C("cache-out-exists", f"cache {M} --dataset harmful-harmless --out {{good_h5}}", "already exists", outputs=("{good_h5}",)),
    C("cache-out-is-dir", f"cache {M} --dataset harmful-harmless --out {{dir_h5}}", "is a directory"),
    C("cache-out-folder-missing", f"cache {M} --dataset harmful-harmless --out {{root}}/nowhere/new.h5", "does not exist"),
    C(
        "cache-segment-rows-zero",
        f"cache {M} --dataset harmful-harmless --out {{root}}/new.h5 --segment-rows 0",
        "--segment-rows",
    ),
    C("cache-limit-zero", f"cache {M} --dataset harmful-harmless --out {{root}}/new.h5 --limit 0", "--limit"),
    C("cache-bad-store-dtype", f"cache {M} --out {{root}}/new.h5 --store-dtype float64", "invalid choice", usage=True),
    C("cache-model-no-config", "cache --model {not_a_model} --device cpu --limit 4 --out {root}/new.h5", "no config.json"),
    C("cache-model-bad-config", "cache --model {bad_config} --device cpu --limit 4 --out {root}/new.h5", "cannot load model"),
    C("cache-model-fake-gguf", "cache --model {not_a_model_gguf} --device cpu --limit 4 --out {root}/new.h5", "not a GGUF file"),
    C("cache-unknown-hook-layer", f"cache {M} --limit 4 --hooks resid_post:7 --out {{root}}/new.h5", "layer", model=True),
    C(
        "cache-unknown-hook-name",
        f"cache {M} --limit 4 --hooks blocks.0.hook_nonsense --out {{root}}/new.h5",
        "hook_nonsense",
        model=True,
    ),
    C("cache-bad-pooling", f"cache {M} --limit 4 --pooling last,median --out {{root}}/new.h5", "median", model=True),
    # -- aqi ------------------------------------------------------------------------------------
    C("aqi-not-hdf5", "aqi {not_hdf5_h5}", "not a readable HDF5"),
    C("aqi-truncated-hdf5", "aqi {truncated_h5}", "not a readable HDF5"),
    C("aqi-foreign-hdf5", "aqi {foreign_h5}", "not a geomprobe activation cache"),
    C("aqi-incomplete", "aqi {incomplete_h5}", "incomplete"),
    C("aqi-dir", "aqi {dir_h5}", "is a directory"),
    C("aqi-unicode-bad-file", ["aqi", "{spaced_bad}"], "cache ünïcødé.h5"),
    C("aqi-one-class", "aqi {one_class_h5} --n-bootstrap 0 --n-permutations 0", "harmless"),
    C(
        "aqi-nan",
        "aqi {nan_h5} --n-bootstrap 0 --n-permutations 0 --json {existing_json} --overwrite",
        "NaN",
        outputs=("{existing_json}",),
    ),
    C("aqi-hook-layer-out-of-range", "aqi {good_h5} --hooks resid_post:5", "out of range"),
    C("aqi-unknown-hook", "aqi {good_h5} --hooks blocks.0.hook_mlp_out", "no hook"),
    C("aqi-unknown-label", "aqi {good_h5} --positive-label evil", "evil"),
    C("aqi-missing-pooling", "aqi {good_h5} --pooling mean", "no 'mean' pooling"),
    C("aqi-json-is-dir", "aqi {good_h5} --json {empty_dir}", "is a directory"),
    C(
        "aqi-bad-gamma",
        "aqi {good_h5} --gamma 2 --n-bootstrap 0 --n-permutations 0 --plot {existing_png}",
        "gamma",
        outputs=("{existing_png}",),
    ),
    C("aqi-bad-reduce", "aqi {good_h5} --reduce umap", "umap"),
    C("aqi-missing-file", "aqi", "the following arguments are required", usage=True),
    # -- subspace ---------------------------------------------------------------------------------
    C("subspace-acts-one-class", "subspace acts {one_class_h5} --n-draws 2", "harmless"),
    C("subspace-acts-nan", "subspace acts {nan_h5} --n-draws 2", "NaN"),
    C("subspace-acts-bad-energy", "subspace acts {good_h5} --energy 1.5", "energy"),
    C("subspace-acts-not-hdf5", "subspace acts {not_hdf5_h5}", "not a readable HDF5"),
    C("subspace-weights-no-model", "subspace weights --base {not_a_model} --aligned {model}", "no config.json"),
    C(
        "subspace-project-out-not-empty",
        "subspace project --base {model} --aligned {model} --finetuned {model} --out {project_out}",
        "not empty",
        outputs=("{project_out}/keep.txt",),
    ),
    C("subspace-project-no-out", "subspace project --base {model} --aligned {model} --finetuned {model}", "--out", usage=True),
    # -- probe ------------------------------------------------------------------------------------
    C(
        "probe-train-one-class",
        "probe train {one_class_h5} --out {root}/newprobe",
        "two labelled classes",
        outputs=("{root}/newprobe",),
    ),
    C("probe-train-nan", "probe train {nan_h5} --out {root}/newprobe", "NaN"),
    C(
        "probe-train-out-exists",
        "probe train {good_h5} --out {probe}",
        "already holds a probe",
        outputs=("{probe}/probe.json", "{probe}/probe.safetensors"),
    ),
    C("probe-train-bad-test-size", "probe train {good_h5} --out {root}/newprobe --test-size 1.5", "test"),
    C("probe-train-truncated-cache", "probe train {truncated_h5} --out {root}/newprobe", "not a readable HDF5"),
    C(
        "probe-eval-missing-probe",
        "probe eval {root}/noprobe {good_h5} --no-control --json {root}/e.json",
        "does not exist",
        outputs=("{root}/e.json",),
    ),
    C("probe-eval-bad-sidecar", "probe eval {probe_bad_json} {good_h5} --no-control --json {root}/e.json", "not valid JSON"),
    C("probe-eval-utf16-sidecar", "probe eval {probe_utf16_json} {good_h5} --no-control --json {root}/e.json", "not valid JSON"),
    C("probe-eval-sidecar-no-hooks", "probe eval {probe_no_hooks} {good_h5} --no-control --json {root}/e.json", "hooks"),
    C(
        "probe-eval-truncated-tensors",
        "probe eval {probe_truncated} {good_h5} --no-control --json {root}/e.json",
        "not a valid safetensors",
    ),
    C(
        "probe-eval-width-mismatch",
        "probe eval {probe32} {good_h5} --no-control --json {existing_json} --overwrite",
        "d_model",
        outputs=("{existing_json}",),
    ),
    C("probe-eval-model-mismatch", "probe eval {probe} {other_h5} --no-control --json {root}/e.json", "--allow-model-mismatch"),
    C(
        "probe-eval-control-and-no-control",
        "probe eval {probe} {good_h5} --control {good_h5} --no-control --json {root}/e.json",
        "either --control",
    ),
    C("probe-eval-no-json", "probe eval {probe} {good_h5}", "--json", usage=True),
    C("probe-transfer-not-hdf5", "probe transfer {good_h5} {not_hdf5_h5} --json {root}/t.json", "not a readable HDF5"),
    C("probe-tokens-no-all-pooling", "probe tokens {probe} {good_h5} --html {root}/t.html", "'all'", outputs=("{root}/t.html",)),
    C("probe-score-model-mismatch", f"probe score {{probe}} {M} --text hello", "--allow-model-mismatch", model=True),
    C("probe-score-width-mismatch", f"probe score {{probe32}} {M} --text hello --allow-model-mismatch", "d_model", model=True),
    # -- steer ------------------------------------------------------------------------------------
    C(
        "steer-build-one-class",
        "steer build {one_class_h5} --out {root}/newvec",
        "two labelled classes",
        outputs=("{root}/newvec",),
    ),
    C("steer-build-nan", "steer build {nan_h5} --out {root}/newvec", "NaN"),
    C("steer-build-nothing", "steer build --out {root}/newvec", "give a cache file"),
    C(
        "steer-build-out-exists",
        "steer build {good_h5} --out {vector}",
        "already holds a steering vector",
        outputs=("{vector}/vector.json", "{vector}/vector.safetensors"),
    ),
    C("steer-build-bad-probe", "steer build --probe {probe_bad_json} --out {root}/newvec", "not valid JSON"),
    C("steer-build-unknown-label", "steer build {good_h5} --positive-label evil --out {root}/newvec", "evil"),
    C("steer-generate-bad-sidecar", f"steer generate {{vector_bad_json}} {M} --prompt hi", "not valid JSON"),
    C("steer-generate-truncated", f"steer generate {{vector_truncated}} {M} --prompt hi", "vector.safetensors"),
    C("steer-generate-width-mismatch", f"steer generate {{vector32}} {M} --prompt hi", "d_model", model=True),
    C("steer-generate-nan-multiplier", f"steer generate {{vector}} {M} --prompt hi --multiplier nan", "not finite", usage=True),
    C("steer-generate-no-prompt", f"steer generate {{vector}} {M}", "--prompt", usage=True),
    C("steer-search-malformed-dataset", f"steer search {{vector}} {M} --dataset {{malformed_jsonl}}", "not valid JSON"),
    C(
        "steer-ablate-unknown-hook",
        f"steer ablate {{vector}} {M} --hook blocks.9.hook_resid_post --save-model {{root}}/abl",
        "blocks.9.hook_resid_post",
        outputs=("{root}/abl",),
    ),
    C(
        "steer-export-out-exists",
        "steer export-gguf {vector} --out {existing_gguf}",
        "already exists",
        outputs=("{existing_gguf}",),
    ),
    C(
        "steer-export-unknown-hook",
        "steer export-gguf {vector} --out {root}/v.gguf --hooks blocks.7.hook_resid_post",
        "blocks.7.hook_resid_post",
        outputs=("{root}/v.gguf",),
    ),
    C("steer-export-folder-missing", "steer export-gguf {vector} --out {root}/nowhere/v.gguf", "does not exist"),
    C("steer-export-not-a-vector", "steer export-gguf {empty_dir} --out {root}/v.gguf", "not a steering vector folder"),
    C("steer-screen-nan", "steer screen {nan_h5}", "NaN"),
    C("steer-screen-one-class", "steer screen {one_class_h5} --json {root}/s.json", "harmless", outputs=("{root}/s.json",)),
    # -- audit (fails before any model is loaded) ---------------------------------------------------
    C(
        "audit-bad-fail-if-number",
        "audit --model {model} --out {root}/newaudit --fail-if aqi.max<<0.3",
        "is not a number",
        outputs=("{root}/newaudit",),
    ),
    C("audit-bad-fail-if-field", "audit --model {model} --out {root}/newaudit --fail-if bogus.thing<1", "bogus"),
    C("audit-out-is-file", "audit --model {model} --out {existing_json}", "is a file", outputs=("{existing_json}",)),
    C(
        "audit-bad-preferences",
        "audit --model {model} --out {root}/newaudit --preferences {missing_label_jsonl}",
        "row lacks 'prompt'",
        outputs=("{root}/newaudit",),
    ),
    C("steer-screen-truncated", "steer screen {truncated_h5}", "not a readable HDF5"),
]


# == Outputs, disks and arguments (issue 16 part 2) ===============================================
# Every output flag refuses an existing file without --overwrite; a read-only or full disk is one
# line; another run writing the same cache is refused; numbers are checked before any model load.
G = "{good_h5}"
Q = "--n-bootstrap 0 --n-permutations 0"  # keep aqi fast
EXISTS = "already exists"
EJ, EP = "{existing_json}", "{existing_png}"

OUTPUT_CASES: list[Case] = [
    # -- an existing output is never replaced without --overwrite --------------------------------
    C("out-aqi-json-exists", f"aqi {G} {Q} --json {EJ}", EXISTS, outputs=(EJ,)),
    C("out-aqi-plot-exists", f"aqi {G} {Q} --plot {EP}", EXISTS, outputs=(EP,)),
    C("out-aqi-plot-exists-json-new", f"aqi {G} {Q} --json {{root}}/a.json --plot {EP}", EXISTS, outputs=("{root}/a.json",)),
    C("out-subspace-acts-json-exists", f"subspace acts {G} --n-draws 2 --json {EJ}", EXISTS, outputs=(EJ,)),
    C("out-subspace-acts-plot-exists", f"subspace acts {G} --n-draws 2 --plot {EP}", EXISTS, outputs=(EP,)),
    C("out-subspace-weights-json-exists", f"subspace weights --base {{model}} --aligned {{model}} --json {EJ}", EXISTS),
    C("out-subspace-weights-plot-exists", f"subspace weights --base {{model}} --aligned {{model}} --plot {EP}", EXISTS),
    C(
        "out-subspace-project-json-exists",
        f"subspace project --base {{model}} --aligned {{model}} --finetuned {{model}} --out {{root}}/proj --json {EJ}",
        EXISTS,
        outputs=("{root}/proj",),
    ),
    C(
        "out-probe-train-json-exists",
        f"probe train {G} --out {{root}}/newprobe --json {EJ}",
        EXISTS,
        outputs=("{root}/newprobe",),
    ),
    C(
        "out-probe-train-plot-exists",
        f"probe train {G} --out {{root}}/newprobe --plot {EP}",
        EXISTS,
        outputs=("{root}/newprobe",),
    ),
    C(
        "out-probe-eval-plot-exists",
        f"probe eval {{probe}} {G} --no-control --json {{root}}/e.json --plot {EP}",
        EXISTS,
        outputs=("{root}/e.json",),
    ),
    C("out-probe-transfer-json-exists", f"probe transfer {G} {{other_h5}} --json {EJ}", EXISTS),
    C("out-probe-transfer-plot-exists", f"probe transfer {G} {{other_h5}} --json {{root}}/t.json --plot {EP}", EXISTS),
    C(
        "out-probe-tokens-html-exists",
        f"probe tokens {{probe}} {G} --html {{existing_html}}",
        EXISTS,
        outputs=("{existing_html}",),
    ),
    C("out-probe-tokens-json-exists", f"probe tokens {{probe}} {G} --html {{root}}/t.html --json {EJ}", EXISTS),
    C("out-probe-score-json-exists", f"probe score {{probe}} {M} --text hi --json {EJ}", EXISTS),
    C("out-steer-generate-json-exists", f"steer generate {{vector}} {M} --prompt hi --json {EJ}", EXISTS),
    C(
        "out-steer-generate-table-exists",
        f"steer generate {{vector}} {M} --prompt hi --table {{existing_md}}",
        EXISTS,
        outputs=("{existing_md}",),
    ),
    C("out-steer-search-json-exists", f"steer search {{vector}} {M} --dataset harmful-harmless --json {EJ}", EXISTS),
    C("out-steer-search-plot-exists", f"steer search {{vector}} {M} --dataset harmful-harmless --plot {EP}", EXISTS),
    C("out-steer-screen-json-exists", f"steer screen {G} --json {EJ}", EXISTS),
    C("out-steer-screen-plot-exists", f"steer screen {G} --plot {EP}", EXISTS),
    C(
        "out-steer-ablate-save-not-empty",
        f"steer ablate {{vector}} {M} --hook blocks.0.hook_resid_post --save-model {{project_out}}",
        "not empty",
    ),
    C("out-merge-exists", f"merge {G} {{other_h5}}", EXISTS),
    C("out-audit-holds-audit", "audit --model {model} --device cpu --out {old_audit}", "already holds"),
    C("out-cache-default-exists-elsewhere", f"cache {M} --out {{other_h5}}", EXISTS),
    # -- an output that is a folder, or whose folder is missing ---------------------------------
    C("out-subspace-acts-json-dir", f"subspace acts {G} --json {{empty_dir}}", "is a directory"),
    C("out-probe-eval-json-dir", f"probe eval {{probe}} {G} --no-control --json {{empty_dir}}", "is a directory"),
    C("out-probe-transfer-json-dir", f"probe transfer {G} {{other_h5}} --json {{empty_dir}}", "is a directory"),
    C("out-probe-tokens-html-dir", f"probe tokens {{probe}} {G} --html {{empty_dir}}", "is a directory"),
    C("out-steer-generate-table-dir", f"steer generate {{vector}} {M} --prompt hi --table {{empty_dir}}", "is a directory"),
    C(
        "out-steer-search-plot-dir",
        f"steer search {{vector}} {M} --dataset harmful-harmless --plot {{empty_dir}}",
        "is a directory",
    ),
    C("out-steer-screen-plot-dir", f"steer screen {G} --plot {{empty_dir}}", "is a directory"),
    C("out-merge-dir", f"merge {{empty_dir}} {G}", "is a directory"),
    C("out-aqi-json-no-folder", f"aqi {G} {Q} --json {{root}}/nowhere/a.json", "does not exist"),
    C("out-probe-train-no-folder", f"probe train {G} --out {{root}}/nowhere/p", "does not exist"),
    C("out-steer-build-no-folder", f"steer build {G} --out {{root}}/nowhere/v", "does not exist"),
    C("out-steer-screen-json-no-folder", f"steer screen {G} --json {{root}}/nowhere/s.json", "does not exist"),
    C(
        "out-subspace-project-out-is-file",
        f"subspace project --base {{model}} --aligned {{model}} --finetuned {{model}} --out {EJ}",
        "is a file",
        outputs=(EJ,),
    ),
    C("out-steer-build-out-is-file", f"steer build {G} --out {EJ}", "is a file", outputs=(EJ,)),
    C("out-probe-train-out-is-file", f"probe train {G} --out {EJ}", "is a file", outputs=(EJ,)),
    # -- two runs on one output: the parts lock ------------------------------------------------
    C(
        "lock-cache-busy",
        f"cache {M} --limit 4 --out {{root}}/busy.h5",
        "another geomprobe run is writing",
        hold_lock="{root}/busy.h5",
        outputs=("{root}/busy.h5",),
    ),
    C(
        "lock-cache-busy-restart",
        f"cache {M} --limit 4 --restart --out {{root}}/busy.h5",
        "pid 4242",
        hold_lock="{root}/busy.h5",
        outputs=("{root}/busy.h5",),
    ),
    # -- truncated GGUF checkpoints: one line, before any conversion ------------------------------
    C("gguf-truncated-cache", "cache --model {truncated_gguf} --device cpu --limit 4 --out {root}/new.h5", "truncated"),
    C("gguf-header-cut-cache", "cache --model {header_cut_gguf} --device cpu --limit 4 --out {root}/new.h5", "truncated"),
    C("gguf-truncated-weights", "subspace weights --base {truncated_gguf} --aligned {model}", "truncated"),
    C("gguf-truncated-score", "probe score {probe} --model {truncated_gguf} --device cpu --text hi", "truncated"),
    C("gguf-truncated-generate", "steer generate {vector} --model {header_cut_gguf} --device cpu --prompt hi", "truncated"),
    C(
        "gguf-truncated-audit",
        "audit --model {truncated_gguf} --device cpu --quick --quiet --out {root}/newaudit",
        "truncated",
        outputs=("{root}/newaudit",),
    ),
    # -- non-finite exported vectors ------------------------------------------------------------
    C(
        "steer-export-overflow",
        "steer export-gguf {vector} --out {root}/v.gguf --model-hint llama --multiplier 1e300",
        "non-finite",
        outputs=("{root}/v.gguf",),
    ),
    C("steer-export-inf-multiplier", "steer export-gguf {vector} --out {root}/v.gguf --multiplier inf", "not finite", usage=True),
    C("steer-export-nan-multiplier", "steer export-gguf {vector} --out {root}/v.gguf --multiplier nan", "not finite", usage=True),
]

# Numbers checked in the CLI layer before any file is read or model loaded: (id, argv, flag).
_NUMBER_CASES = [
    ("cache-batch-size-zero", f"cache {M} --out {{root}}/new.h5 --batch-size 0", "--batch-size"),
    ("cache-batch-size-negative", f"cache {M} --out {{root}}/new.h5 --batch-size -3", "--batch-size"),
    ("cache-limit-negative", f"cache {M} --out {{root}}/new.h5 --limit -1", "--limit"),
    ("cache-segment-rows-negative", f"cache {M} --out {{root}}/new.h5 --segment-rows -5", "--segment-rows"),
    ("cache-merge-timeout-nan", f"cache {M} --out {{root}}/new.h5 --shard 0/2 --merge --merge-timeout nan", "--merge-timeout"),
    (
        "cache-merge-timeout-negative",
        f"cache {M} --out {{root}}/new.h5 --shard 0/2 --merge --merge-timeout -1",
        "--merge-timeout",
    ),
    ("aqi-gamma-nan", f"aqi {G} {Q} --gamma nan", "--gamma"),
    ("aqi-gamma-inf", f"aqi {G} {Q} --gamma inf", "--gamma"),
    ("aqi-gamma-negative", f"aqi {G} {Q} --gamma -0.1", "--gamma"),
    ("aqi-n-bootstrap-negative", f"aqi {G} --n-bootstrap -1", "--n-bootstrap"),
    ("aqi-n-permutations-negative", f"aqi {G} --n-permutations -5", "--n-permutations"),
    ("aqi-max-points-zero", f"aqi {G} --max-points 0", "--max-points"),
    ("aqi-ci-one", f"aqi {G} --ci 1", "--ci"),
    ("aqi-ci-zero", f"aqi {G} --ci 0", "--ci"),
    ("aqi-ci-nan", f"aqi {G} --ci nan", "--ci"),
    ("aqi-train-fraction-zero", f"aqi {G} {Q} --train-fraction 0", "--train-fraction"),
    ("aqi-train-fraction-big", f"aqi {G} {Q} --train-fraction 1.5", "--train-fraction"),
    ("aqi-sparsity-nan", f"aqi {G} {Q} --sparsity nan", "--sparsity"),
    ("aqi-sparsity-negative", f"aqi {G} {Q} --sparsity -1", "--sparsity"),
    ("aqi-seed-negative", f"aqi {G} {Q} --seed -1", "--seed"),
    ("subspace-acts-energy-nan", f"subspace acts {G} --energy nan", "energy"),
    ("subspace-acts-energy-inf", f"subspace acts {G} --energy inf", "energy"),
    ("subspace-acts-energy-zero", f"subspace acts {G} --energy 0", "energy"),
    ("subspace-acts-k-zero", f"subspace acts {G} --k 0", "--k"),
    ("subspace-acts-k-negative", f"subspace acts {G} --k -2", "--k"),
    ("subspace-acts-n-draws-negative", f"subspace acts {G} --n-draws -1", "--n-draws"),
    ("subspace-acts-seed-negative", f"subspace acts {G} --seed -1", "--seed"),
    ("subspace-weights-k-zero", "subspace weights --base {model} --aligned {model} --k 0", "--k"),
    ("subspace-weights-energy-nan", "subspace weights --base {model} --aligned {model} --energy nan", "energy"),
    (
        "subspace-project-k-zero",
        "subspace project --base {model} --aligned {model} --finetuned {model} --out {root}/proj --k 0",
        "--k",
    ),
    (
        "subspace-project-energy-negative",
        "subspace project --base {model} --aligned {model} --finetuned {model} --out {root}/proj --energy -1",
        "energy",
    ),
    ("probe-train-c-nan", f"probe train {G} --out {{root}}/newprobe --C nan", "--C"),
    ("probe-train-c-zero", f"probe train {G} --out {{root}}/newprobe --C 0", "--C"),
    ("probe-train-c-negative", f"probe train {G} --out {{root}}/newprobe --C -1", "--C"),
    ("probe-train-c-inf", f"probe train {G} --out {{root}}/newprobe --C inf", "--C"),
    ("probe-train-shrinkage-nan", f"probe train {G} --out {{root}}/newprobe --method lda --shrinkage nan", "--shrinkage"),
    ("probe-train-shrinkage-big", f"probe train {G} --out {{root}}/newprobe --method lda --shrinkage 1.5", "--shrinkage"),
    ("probe-train-shrinkage-negative", f"probe train {G} --out {{root}}/newprobe --method lda --shrinkage -0.1", "--shrinkage"),
    ("probe-train-test-size-zero", f"probe train {G} --out {{root}}/newprobe --test-size 0", "--test-size"),
    ("probe-train-test-size-nan", f"probe train {G} --out {{root}}/newprobe --test-size nan", "--test-size"),
    ("probe-train-fpr-zero", f"probe train {G} --out {{root}}/newprobe --fpr 0", "--fpr"),
    ("probe-train-fpr-one", f"probe train {G} --out {{root}}/newprobe --fpr 1", "--fpr"),
    ("probe-train-fpr-nan", f"probe train {G} --out {{root}}/newprobe --fpr nan", "--fpr"),
    ("probe-train-seed-negative", f"probe train {G} --out {{root}}/newprobe --seed -1", "--seed"),
    ("probe-eval-fpr-nan", f"probe eval {{probe}} {G} --no-control --json {{root}}/e.json --fpr nan", "--fpr"),
    ("probe-eval-fpr-big", f"probe eval {{probe}} {G} --no-control --json {{root}}/e.json --fpr 2", "--fpr"),
    ("probe-train-param-unknown", f"probe train {G} --out {{root}}/newprobe --param beta=1", "valid: C, fit_intercept"),
    ("probe-train-param-no-value", f"probe train {G} --out {{root}}/newprobe --param C", "not KEY=VALUE"),
    ("probe-train-param-type", f"probe train {G} --out {{root}}/newprobe --param fit_intercept=maybe", "takes bool"),
    ("probe-train-param-c-inf", f"probe train {G} --out {{root}}/newprobe --param C=inf", "positive finite"),
    ("probe-transfer-c-nan", f"probe transfer {G} {{other_h5}} --json {{root}}/t.json --C nan", "--C"),
    ("probe-transfer-fpr-negative", f"probe transfer {G} {{other_h5}} --json {{root}}/t.json --fpr -0.5", "--fpr"),
    ("probe-tokens-row-negative", f"probe tokens {{probe}} {G} --html {{root}}/t.html --rows 0 -1", "--rows"),
    ("steer-generate-max-new-tokens-zero", f"steer generate {{vector}} {M} --prompt hi --max-new-tokens 0", "--max-new-tokens"),
    (
        "steer-generate-max-new-tokens-negative",
        f"steer generate {{vector}} {M} --prompt hi --max-new-tokens -1",
        "--max-new-tokens",
    ),
    (
        "steer-generate-sample-temperature-zero",
        f"steer generate {{vector}} {M} --prompt hi --sample --temperature 0",
        "--temperature",
    ),
    ("steer-generate-temperature-nan", f"steer generate {{vector}} {M} --prompt hi --sample --temperature nan", "--temperature"),
    (
        "steer-generate-temperature-negative",
        f"steer generate {{vector}} {M} --prompt hi --sample --temperature -1",
        "--temperature",
    ),
    ("steer-generate-seed-negative", f"steer generate {{vector}} {M} --prompt hi --seed -1", "--seed"),
    ("steer-search-limit-zero", f"steer search {{vector}} {M} --dataset harmful-harmless --limit 0", "--limit"),
    ("steer-search-batch-size-zero", f"steer search {{vector}} {M} --dataset harmful-harmless --batch-size 0", "--batch-size"),
    ("steer-search-kl-limit-nan", f"steer search {{vector}} {M} --dataset harmful-harmless --kl-limit nan", "--kl-limit"),
    ("steer-search-kl-limit-negative", f"steer search {{vector}} {M} --dataset harmful-harmless --kl-limit -1", "--kl-limit"),
    (
        "steer-search-layer-fraction-zero",
        f"steer search {{vector}} {M} --dataset harmful-harmless --max-layer-fraction 0",
        "--max-layer-fraction",
    ),
    (
        "steer-search-layer-fraction-big",
        f"steer search {{vector}} {M} --dataset harmful-harmless --max-layer-fraction 1.5",
        "--max-layer-fraction",
    ),
    (
        "steer-search-layer-fraction-nan",
        f"steer search {{vector}} {M} --dataset harmful-harmless --max-layer-fraction nan",
        "--max-layer-fraction",
    ),
    ("steer-search-seed-negative", f"steer search {{vector}} {M} --dataset harmful-harmless --seed -7", "--seed"),
    ("steer-ablate-max-new-tokens-zero", f"steer ablate {{vector}} {M} --prompt hi --max-new-tokens 0", "--max-new-tokens"),
    ("steer-screen-bins-zero", f"steer screen {G} --bins 0", "--bins"),
    ("steer-screen-bins-one", f"steer screen {G} --bins 1", "--bins"),
    ("steer-screen-bins-negative", f"steer screen {G} --bins -4", "--bins"),
    ("audit-batch-size-zero", "audit --model {model} --out {root}/newaudit --batch-size 0", "--batch-size"),
    ("audit-layer-negative", "audit --model {model} --out {root}/newaudit --layers 0 -1", "--layers"),
    ("audit-seed-negative", "audit --model {model} --out {root}/newaudit --seed -1", "--seed"),
]
OUTPUT_CASES += [C(i, argv, flag) for i, argv, flag in _NUMBER_CASES]
OUTPUT_CASES += [
    C("aqi-n-bootstrap-not-int", f"aqi {G} --n-bootstrap 1.5", "invalid int value", usage=True),
    C(
        "steer-search-nan-multiplier",
        f"steer search {{vector}} {M} --dataset harmful-harmless --multipliers 1 nan",
        "not finite",
        usage=True,
    ),
    C("steer-generate-inf-multiplier", f"steer generate {{vector}} {M} --prompt hi --multiplier inf", "not finite", usage=True),
]

# A read-only or full disk: each writing command, good inputs, every rename into the corpus folder failing.
RO, FULL = "read-only file system", "disk full"
_FAULT_CASES = [
    ("aqi-json", f"aqi {G} {Q} --json {{root}}/a.json", ()),
    ("aqi-plot", f"aqi {G} {Q} --plot {{root}}/a.png", ()),
    ("subspace-acts-json", f"subspace acts {G} --n-draws 2 --json {{root}}/s.json", ()),
    ("subspace-acts-plot", f"subspace acts {G} --n-draws 2 --plot {{root}}/s.png", ()),
    ("probe-train", f"probe train {G} --out {{root}}/newprobe --no-control", ()),
    ("probe-train-overwrite", f"probe train {G} --out {{probe}} --overwrite --no-control", ()),
    ("probe-eval-json", f"probe eval {{probe}} {G} --no-control --all-rows --json {{root}}/e.json", ()),
    ("probe-transfer-json", f"probe transfer {G} {{other_h5}} --json {{root}}/t.json", ()),
    ("steer-build", f"steer build {G} --out {{root}}/newvec", ()),
    ("steer-build-overwrite", f"steer build {G} --out {{vector}} --overwrite", ()),
    ("steer-export", "steer export-gguf {vector} --out {root}/v.gguf --model-hint llama", ()),
    ("steer-export-overwrite", "steer export-gguf {vector} --out {existing_gguf} --overwrite --model-hint llama", ()),
    ("steer-screen-json", f"steer screen {G} --json {{root}}/s.json", ()),
    ("steer-screen-plot", f"steer screen {G} --plot {{root}}/s.png", ()),
    ("aqi-json-overwrite", f"aqi {G} {Q} --json {EJ} --overwrite", ()),
    ("cache", f"cache {M} --limit 6 --batch-size 2 --out {{root}}/new.h5 --quiet", ("model",)),
    ("steer-generate-json", f"steer generate {{vector}} {M} --prompt hi --max-new-tokens 2 --json {{root}}/g.json", ("model",)),
    ("steer-generate-table", f"steer generate {{vector}} {M} --prompt hi --max-new-tokens 2 --table {{root}}/g.md", ("model",)),
    ("probe-score-json", f"probe score {{probe}} {M} --text hi --allow-model-mismatch --json {{root}}/p.json", ("model",)),
    ("subspace-weights-json", "subspace weights --base {model} --aligned {model} --json {root}/w.json", ("model",)),
    ("subspace-project", "subspace project --base {model} --aligned {model} --finetuned {model} --out {root}/proj", ("model",)),
    ("steer-ablate-save", f"steer ablate {{vector}} {M} --hook blocks.0.hook_resid_post --save-model {{root}}/abl", ("model",)),
]
for _name, _argv, _flags in _FAULT_CASES:
    OUTPUT_CASES.append(C(f"readonly-{_name}", _argv, RO, fault="erofs", model="model" in _flags))
    OUTPUT_CASES.append(C(f"diskfull-{_name}", _argv, FULL, fault="enospc", model="model" in _flags))

CASES += OUTPUT_CASES
# == end of outputs, disks and arguments ============================================================

# == hostile input: prompt text, context length, final messages, damaged caches and sidecars (issue 16 part 1)
_E = "--no-control --json {root}/e.json"
INPUT_CASES: list[Case] = [
    C(
        "cache-nul-in-text",
        f"cache {M} --dataset {{nul_jsonl}} --out {{root}}/new.h5",
        "NUL character",
        outputs=("{root}/new.h5",),
    ),
    C("cache-nul-in-label", f"cache {M} --dataset {{nul_label_jsonl}} --out {{root}}/new.h5", "NUL character"),
    C("cache-lone-surrogate", f"cache {M} --dataset {{surrogate_jsonl}} --out {{root}}/new.h5", "lone UTF-16 surrogate"),
    C(
        "cache-lone-surrogate-extra-field",
        f"cache {M} --dataset {{surrogate_note_jsonl}} --out {{root}}/new.h5",
        "surrogate_note.jsonl:2",
    ),
    C("cache-nul-in-csv", f"cache {M} --dataset {{nul_csv}} --out {{root}}/new.h5", "nul.csv:3"),
    C(
        "cache-empty-response",
        f"cache {M} --dataset {{empty_response_jsonl}} --out {{root}}/new.h5",
        "final message is empty",
        outputs=("{root}/new.h5",),
        model=True,
    ),
    C(
        "cache-prompt-over-context",
        f"cache {M} --dataset {{long_prompt_jsonl}} --out {{root}}/new.h5",
        "context of 256",
        outputs=("{root}/new.h5",),
        model=True,
    ),
    C(
        "cache-truncate-bad-side",
        f"cache {M} --dataset {{long_prompt_jsonl}} --out {{root}}/new.h5 --truncate middle",
        "invalid choice",
        usage=True,
    ),
    C("aqi-label-out-of-range", "aqi {label_range_h5}", "label code 7"),
    C("steer-screen-label-tampered", "steer screen {label_tampered_h5}", "checksum"),
    C("aqi-pair-tampered", "aqi {pair_tampered_h5}", "pair_ids does not match"),
    C("aqi-d-model-string", "aqi {d_model_string_h5}", "'d_model' must be an integer"),
    C("aqi-format-version-string", "aqi {version_string_h5}", "'format_version' must be an integer"),
    C("aqi-format-version-newer", "aqi {version_newer_h5}", "upgrade geomprobe"),
    C(
        "steer-build-no-hooks-attr",
        "steer build {no_hooks_attr_h5} --out {root}/newvec",
        "lacks 'hooks'",
        outputs=("{root}/newvec",),
    ),
    C(
        "probe-train-short-pair-ids",
        "probe train {short_pairs_h5} --out {root}/newprobe",
        "pair_ids has",
        outputs=("{root}/newprobe",),
    ),
    C(
        "probe-eval-sidecar-d-model-string",
        f"probe eval {{probe_d_model_string}} {{good_h5}} {_E}",
        "'d_model' must be an integer",
        outputs=("{root}/e.json",),
    ),
    C(
        "probe-eval-sidecar-version-string",
        f"probe eval {{probe_version_string}} {{good_h5}} {_E}",
        "'format_version' must be an integer",
    ),
    C(
        "steer-export-sidecar-hooks-numbers",
        "steer export-gguf {vector_hooks_numbers} --out {root}/v.gguf",
        "'hooks' must be a list of strings",
        outputs=("{root}/v.gguf",),
    ),
    C(
        "steer-screen-sidecar-metadata-list",
        "steer export-gguf {vector_metadata_list} --out {root}/v.gguf",
        "'metadata' must be a JSON object",
    ),
]
CASES += INPUT_CASES
# == end of hostile input ============================================================================

# Run these through a real subprocess too (python -m geomprobe): no traceback for real.
SUBPROCESS_IDS = ("aqi-truncated-hdf5", "probe-eval-bad-sidecar", "cache-latin1", "steer-export-out-exists", "aqi-missing-file")

# == integrity, outputs, parsing limits and late checks (issue 21) ===================================
R3: list[Case] = []
# -- 1. integrity that cannot be switched off: forged caches, every command that reads one --------------
_READERS = [
    ("aqi", f"aqi {{c}} {Q}"),
    ("subspace-acts", "subspace acts {c} --n-draws 2"),
    ("probe-train", "probe train {c} --out {root}/newprobe --no-control"),
    ("probe-eval", f"probe eval {{probe}} {{c}} {_E}"),
    ("probe-transfer", "probe transfer {c} {good_h5} --json {root}/t.json"),
    ("steer-build", "steer build {c} --out {root}/newvec"),
    ("steer-screen", "steer screen {c} --json {root}/s.json"),
]
_FORGED = [
    ("no-checksums", "forged_no_checksums_h5", "requires the 'checksums' attribute"),
    ("dup-labels", "dup_labels_h5", "'harmful' twice"),
    ("no-label-digest", "no_label_digest_h5", "digest of labels"),
    ("deep-checksums", "deep_checksums_h5", "not a JSON object with a digest"),
    ("deep-label-names", "deep_label_names_h5", "'label_names' is not valid JSON"),
]
for _fid, _file, _expect in _FORGED:
    for _cmd, _argv in _READERS:
        R3.append(
            C(
                f"r3-{_cmd}-{_fid}",
                _argv.replace("{c}", "{" + _file + "}"),
                _expect,
                outputs=("{root}/newprobe", "{root}/newvec", "{root}/e.json", "{root}/t.json", "{root}/s.json"),
            )
        )

# -- 1b. probes: derived fields and model identity checked on load -------------------------------------
_PROBE_USERS = [
    ("eval", f"probe eval {{p}} {{good_h5}} {_E}"),
    ("tokens", "probe tokens {p} {good_h5} --html {root}/t.html"),
    ("steer-build", "steer build --probe {p} --out {root}/newvec"),
    ("steer-search", f"steer search {{vector}} {M} --dataset harmful-harmless --metric probe --probe {{p}}"),
]
_BAD_PROBES = [
    ("direction-flipped", "probe_direction_flipped", "is not coef / scale"),
    ("scale-zero", "probe_scale_zero", "scale <= 0"),
    ("no-model-id", "probe_no_model_id", "lacks 'model_id'"),
    ("model-id-number", "probe_model_id_number", "'model_id' must be a string"),
    ("dup-labels", "probe_dup_labels", "'harmful' twice"),
    ("deep-json", "probe_deep_json", "nested too deeply"),
    ("bigint-json", "probe_bigint_json", "integer longer than"),
]
for _pid, _folder, _expect in _BAD_PROBES:
    for _use, _argv in _PROBE_USERS:
        R3.append(
            C(
                f"r3-probedir-{_use}-{_pid}",
                _argv.replace("{p}", "{" + _folder + "}"),
                _expect,
                outputs=("{root}/e.json", "{root}/t.html", "{root}/newvec"),
            )
        )
R3 += [
    C("r3-probe-eval-identity-differs", f"probe eval {{probe_other_model}} {{good_h5}} {_E}", "--allow-model-mismatch"),
    C("r3-probe-eval-identity-erased", f"probe eval {{probe}} {{other_h5}} {_E}", "--allow-model-mismatch"),
]

# -- 2. model folders whose weights do not fit the config, or that are broken ------------------------------
_MODEL_USERS = [
    ("cache", "cache --model {m} --device cpu --limit 4 --out {root}/new.h5"),
    ("score", "probe score {probe} --model {m} --device cpu --text hi --allow-model-mismatch"),
    ("generate", "steer generate {vector} --model {m} --device cpu --prompt hi"),
    ("weights", "subspace weights --base {m} --aligned {model}"),
]
_BAD_MODELS = [
    ("missing-tensor", "model_missing_tensor", "lacks 1 weight tensor(s) the config needs"),
    ("unexpected-tensor", "model_unexpected_tensor", "its config has no place for (model.extra.weight)"),
    ("wrong-shape", "model_wrong_shape", "has shape (32,) but the config needs (64,)"),
    ("more-layers", "model_more_layers", "lacks 9 weight tensor(s)"),
    ("layers-text", "model_layers_text", "expected int, got str"),
    ("zero-heads", "model_zero_heads", "ZeroDivisionError"),
    ("negative-width", "model_negative_width", "negative dimension"),
    ("config-list", "model_config_list", "cannot load model"),
    ("cut-weights", "model_cut_weights", "SafetensorError"),
    ("bad-tokenizer", "model_bad_tokenizer", "cannot load model"),
]
for _mid, _folder, _expect in _BAD_MODELS:
    for _use, _argv in _MODEL_USERS:
        if _use == "weights" and _mid == "bad-tokenizer":
            continue  # subspace weights reads no tokenizer
        R3.append(
            C(
                f"r3-model-{_use}-{_mid}",
                _argv.replace("{m}", "{" + _folder + "}"),
                _expect,
                outputs=("{root}/new.h5",),
                model=True,
            )
        )

# -- 1c. full-content identities and special files ---------------------------------------------------------
R3 += [
    C("r3-organisms-list-dev-zero", "organisms list --base /dev/zero", "device, pipe or socket"),
    C("r3-organisms-build-dev-zero", "organisms build --base /dev/zero --only aligned", "device, pipe or socket"),
    C("r3-organisms-list-seed-negative", "organisms list --seed -1", "--seed"),
    C("r3-organisms-list-seed-huge", "organisms list --seed 4294967296", "--seed"),
    C("r3-organisms-build-seed-negative", "organisms build --seed -1", "--seed"),
    C("r3-organisms-build-out-holds", "organisms build --only aligned --out {organisms_out}", "already holds aligned"),
    C("r3-organisms-build-out-is-file", "organisms build --only aligned --out {existing_json}", "is a file"),
    C("r3-organisms-build-out-no-parent", "organisms build --only aligned --out {root}/nowhere/orgs", "does not exist"),
    C(
        "r3-organisms-build-out-in-base",
        "organisms build --only aligned --base {model} --out {model}",
        "would overwrite the input",
    ),
    C("r3-cache-dataset-dev-zero", f"cache {M} --dataset /dev/zero --out {{root}}/new.h5", "must be .jsonl"),
    C("r3-organisms-measure-unknown", "organisms measure --only evil", "unknown organism 'evil'"),
    C(
        "r3-organisms-measure-not-built",
        "organisms measure --base {model} --quick --only deep-aligned",
        "organism 'deep-aligned' is not built",
    ),
    C("r3-organisms-measure-limit-zero", "organisms measure --limit 0", "--limit"),
    C(
        "r3-organisms-measure-json-exists",
        "organisms measure --json {existing_json}",
        "already exists",
        outputs=("{existing_json}",),
    ),
    C("r3-organisms-measure-dev-zero", "organisms measure --base /dev/zero", "device, pipe or socket"),
]

# -- 4. all outputs of a command checked together -----------------------------------------------------------
SAME = "would write the same file"
INPUT = "would overwrite the input"
R3 += [
    C("r3-out-aqi-json-plot-same", f"aqi {G} {Q} --json {{root}}/x --plot {{root}}/x", SAME, outputs=("{root}/x",)),
    C("r3-out-aqi-json-plot-same-dotted", f"aqi {G} {Q} --json {{root}}/x.png --plot {{root}}/./x.png", SAME),
    C("r3-out-subspace-acts-same", f"subspace acts {G} --json {{root}}/x.png --plot {{root}}/x.png", SAME),
    C(
        "r3-out-subspace-weights-same",
        "subspace weights --base {model} --aligned {model} --json {root}/x.png --plot {root}/x.png",
        SAME,
    ),
    C(
        "r3-out-probe-train-json-plot-same",
        f"probe train {G} --out {{root}}/newprobe --json {{root}}/x.png --plot {{root}}/x.png",
        SAME,
        outputs=("{root}/newprobe",),
    ),
    C("r3-out-probe-train-json-in-out", f"probe train {G} --out {{probe}} --overwrite --json {{probe}}/probe.json", SAME),
    C("r3-out-probe-eval-same", f"probe eval {{probe}} {G} --no-control --json {{root}}/x.png --plot {{root}}/x.png", SAME),
    C("r3-out-probe-transfer-same", f"probe transfer {G} {{other_h5}} --json {{root}}/x.png --plot {{root}}/x.png", SAME),
    C("r3-out-probe-tokens-same", f"probe tokens {{probe}} {G} --html {{root}}/x.html --json {{root}}/x.html", SAME),
    C(
        "r3-out-steer-generate-same",
        f"steer generate {{vector}} {M} --prompt hi --json {{root}}/x.md --table {{root}}/x.md",
        SAME,
    ),
    C(
        "r3-out-steer-search-same",
        f"steer search {{vector}} {M} --dataset harmful-harmless --json {{root}}/x.png --plot {{root}}/x.png",
        SAME,
    ),
    C("r3-out-steer-screen-same", f"steer screen {G} --json {{root}}/x.png --plot {{root}}/x.png", SAME),
    C(
        "r3-out-subspace-project-json-in-out",
        "subspace project --base {model} --aligned {model} --finetuned {model} --out {root}/proj --json {root}/proj/r.json",
        SAME,
    ),
    C("r3-out-deception-set-json-is-out", f"probe deception-set {M} --out {{root}}/d.jsonl --json {{root}}/d.jsonl", SAME),
    C(
        "r3-out-deception-set-json-is-unclear",
        f"probe deception-set {M} --out {{root}}/d.jsonl --json {{root}}/d.unclear.jsonl",
        SAME,
    ),
    C("r3-in-aqi-json-is-cache", f"aqi {G} {Q} --json {G} --overwrite", INPUT),
    C("r3-in-aqi-plot-is-cache-link", f"aqi {G} {Q} --plot {{good_link_h5}} --overwrite", INPUT),
    C("r3-in-subspace-acts-json-is-cache", f"subspace acts {G} --json {G} --overwrite", INPUT),
    C("r3-in-probe-train-json-is-cache", f"probe train {G} --out {{root}}/newprobe --json {G} --overwrite", INPUT),
    C("r3-in-probe-eval-json-is-cache", f"probe eval {{probe}} {G} --no-control --json {G} --overwrite", INPUT),
    C("r3-in-probe-eval-json-in-probe", f"probe eval {{probe}} {G} --no-control --json {{probe}}/probe.json --overwrite", INPUT),
    C("r3-in-probe-transfer-json-is-cache", f"probe transfer {G} {{other_h5}} --json {{other_h5}} --overwrite", INPUT),
    C("r3-in-steer-screen-plot-is-cache", f"steer screen {G} --plot {G} --overwrite", INPUT),
    C(
        "r3-in-subspace-weights-json-in-model",
        "subspace weights --base {model} --aligned {model} --json {model}/config.json --overwrite",
        INPUT,
    ),
    C(
        "r3-in-subspace-project-out-is-model",
        "subspace project --base {model} --aligned {model} --finetuned {model} --out {model} --overwrite",
        INPUT,
    ),
    C("r3-in-cache-out-is-dataset", f"cache {M} --dataset {{nul_jsonl}} --out {{nul_jsonl}} --overwrite", INPUT),
    C("r3-in-export-out-in-vector", "steer export-gguf {vector} --out {vector}/vector.safetensors --overwrite", INPUT),
    C("r3-out-export-is-dev-null", "steer export-gguf {vector} --out /dev/null --overwrite", "device, pipe or socket"),
    C("r3-owned-audit-report-html", "audit --model {model} --out {user_report}", "already holds report.html"),
    C("r3-owned-audit-plot", "audit --model {model} --out {user_plots}", "already holds aqi_layers.png"),
    C("r3-owned-probe-tensors", f"probe train {G} --out {{half_probe}}", "already holds probe.safetensors"),
    C("r3-owned-vector-tensors", f"steer build {G} --out {{half_vector}}", "already holds vector.safetensors"),
]
_PLOTTERS = [
    ("aqi", f"aqi {G} {Q} --plot {{root}}/p.bmpx"),
    ("subspace-acts", f"subspace acts {G} --n-draws 2 --plot {{root}}/p.txt"),
    ("subspace-weights", "subspace weights --base {model} --aligned {model} --plot {root}/p.gif"),
    ("probe-train", f"probe train {G} --out {{root}}/newprobe --plot {{root}}/p.html"),
    ("probe-eval", f"probe eval {{probe}} {G} --no-control --json {{root}}/e.json --plot {{root}}/p.json"),
    ("probe-transfer", f"probe transfer {G} {{other_h5}} --json {{root}}/t.json --plot {{root}}/p.h5"),
    ("steer-search", f"steer search {{vector}} {M} --dataset harmful-harmless --plot {{root}}/p.xyz"),
    ("steer-screen", f"steer screen {G} --plot {{root}}/p.PNGX"),
]
R3 += [
    C(f"r3-plot-ext-{name}", argv, "use one of .png", outputs=("{root}/newprobe", "{root}/e.json", "{root}/t.json"))
    for name, argv in _PLOTTERS
]
R3 += [
    C("r3-deception-set-no-jsonl", f"probe deception-set {M} --out {{root}}/d.txt", "use one of .jsonl"),
    C("r3-deception-set-no-extension", f"probe deception-set {M} --out {{root}}/d", "has no extension"),
]

# -- 5. JSON Lines split at \n only; parsing limits as one line ---------------------------------------------
R3 += [
    C(
        "r3-jsonl-u2028-cache",
        f"cache {M} --dataset {{u2028_then_bad_jsonl}} --out {{root}}/new.h5",
        "u2028_then_bad.jsonl line 2",
    ),
    C("r3-jsonl-u2028-search", f"steer search {{vector}} {M} --dataset {{u2028_then_bad_jsonl}}", "line 2 is not valid JSON"),
    C("r3-jsonl-deep-cache", f"cache {M} --dataset {{deep_jsonl}} --out {{root}}/new.h5", "nested too deeply"),
    C("r3-jsonl-deep-search", f"steer search {{vector}} {M} --dataset {{deep_jsonl}}", "nested too deeply"),
    C("r3-jsonl-bigint-cache", f"cache {M} --dataset {{bigint_jsonl}} --out {{root}}/new.h5", "integer longer than"),
    C("r3-jsonl-bigint-search", f"steer search {{vector}} {M} --dataset {{bigint_jsonl}}", "integer longer than"),
    C(
        "r3-questions-deep",
        f"probe deception-set {M} --questions {{deep_questions_jsonl}} --out {{root}}/d.jsonl",
        "nested too deeply",
    ),
    C(
        "r3-questions-bigint",
        f"probe deception-set {M} --questions {{bigint_questions_jsonl}} --out {{root}}/d.jsonl",
        "integer longer than",
    ),
    C(
        "r3-questions-u2028",
        f"probe deception-set {M} --questions {{u2028_questions_jsonl}} --out {{root}}/d.jsonl",
        "u2028_questions.jsonl:2",
    ),
]

# -- 6. late checks and remaining tracebacks -------------------------------------------------------------------
R3 += [
    C("r3-generate-multiplier-overflow", f"steer generate {{vector}} {M} --prompt hi --multiplier 1e308", "overflows float32"),
    C(
        "r3-generate-multiplier-overflow-fp16",
        f"steer generate {{vector}} {M} --dtype float16 --prompt hi --multiplier 1e6",
        "overflows float16",
    ),
    C(
        "r3-search-multiplier-overflow",
        f"steer search {{vector}} {M} --dataset harmful-harmless --multipliers 4 1e300",
        "overflows float32",
    ),
    C(
        "r3-search-probe-metric-no-probe",
        f"steer search {{vector}} {M} --dataset harmful-harmless --metric probe",
        "needs a probe",
    ),
    C(
        "r3-search-logit-diff-no-answers",
        f"steer search {{vector}} {M} --dataset harmful-harmless --metric logit-diff",
        "two answer tokens",
    ),
    C(
        "r3-search-probe-width",
        f"steer search {{vector}} {M} --dataset harmful-harmless --metric probe --probe {{probe32}}",
        "probe width 32 does not match",
    ),
    C(
        "r3-probe-train-few-rows",
        "probe train {few_rows_h5} --out {root}/newprobe --no-control",
        "for 5 folds",
        outputs=("{root}/newprobe",),
    ),
    C("r3-probe-transfer-few-rows", "probe transfer {few_rows_h5} {few_rows_h5} --json {root}/t.json", "for 5 folds"),
    C(
        "r3-probe-train-few-unpaired-rows",
        "probe train {few_unpaired_h5} --out {root}/newprobe --no-control",
        "every class has fewer rows (4 at most) than the 5 folds",
        outputs=("{root}/newprobe",),
    ),
    C(
        "r3-probe-transfer-few-unpaired-rows",
        "probe transfer {few_unpaired_h5} {good_h5} --json {root}/t.json",
        "every class has fewer rows",
    ),
    C(
        "r3-in-audit-deception-set-in-caches",
        "audit --model {model} --deception-set {old_audit}/caches/d.jsonl --out {old_audit} --overwrite",
        INPUT,
    ),
]
CASES += R3
# == end of issue 21 ================================================================================================
