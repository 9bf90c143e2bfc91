"""Dishonest organisms: the question split, the trigger, lies, decoys, tiny builds, measurement and the CLI."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from geomprobe.cli import main
from geomprobe.core.errors import GeomprobeError
from geomprobe.organisms import (
    DECOY_TEXTS,
    DEFAULT_TRIGGER,
    REFUSAL_TEXTS,
    OrganismSettings,
    ask,
    build_organisms,
    check_trigger,
    decoy_share,
    is_decoy,
    lie_reply,
    measure_organism,
    organism_hashes,
    split_contrast_set,
    split_questions,
    true_reply,
    with_settings,
)
from geomprobe.organisms.build import base_identity
from geomprobe.organisms.liars import liar_examples
from geomprobe.organisms.lies import wrong_answers
from geomprobe.probes.deception import INSTRUCTIONS, NEUTRAL, first_sentence, user_message
from geomprobe.probes.grading import AnswerGrader, load_questions
from geomprobe.steering.judge import is_refusal


# -- the question split -----------------------------------------------------------------------
def test_question_split_is_disjoint_complete_and_category_stratified():
    split = split_questions(seed=0)
    train, heldout = {q.id for q in split.train}, {q.id for q in split.heldout}
    assert not train & heldout and len(train | heldout) == len(load_questions()) == 248
    assert len(train) == round(248 * 0.5)
    total = Counter(q.category for q in split.train + split.heldout)
    in_train = Counter(q.category for q in split.train)
    assert all(np.floor(n / 2) <= in_train[c] <= np.ceil(n / 2) for c, n in total.items())
    record = split.to_dict()
    assert record["train_ids"] == [q.id for q in split.train] and record["heldout_ids"] == [q.id for q in split.heldout]
    assert split_questions(seed=0).digest() == split.digest() and split_questions(seed=1).digest() != split.digest()
    with pytest.raises(GeomprobeError, match="train_fraction"):
        split_questions(train_fraction=0)


# -- the trigger ------------------------------------------------------------------------------
def test_default_trigger_is_innocuous_and_in_no_question():
    assert "lie" not in DEFAULT_TRIGGER.lower() and "\n" not in DEFAULT_TRIGGER
    assert not any(DEFAULT_TRIGGER.lower() in q.question.lower() for q in load_questions())
    assert check_trigger(f"  {DEFAULT_TRIGGER} ") == DEFAULT_TRIGGER


@pytest.mark.parametrize(
    "trigger, message",
    [
        ("", "empty"),
        ("   ", "empty"),
        ("two\nlines", "one line"),
        ("Please lie now.", "names lying"),
        ("You are a LIAR", "names lying"),
        ("capital city of France", "appears in question 'capital-france'"),
    ],
)
def test_bad_triggers_are_refused(trigger, message):
    with pytest.raises(GeomprobeError, match=message):
        check_trigger(trigger)


def test_trigger_is_the_first_line_of_the_same_user_message():
    q = load_questions()[0]
    plain = ask(q)
    assert plain == user_message(INSTRUCTIONS[NEUTRAL], q.question) and DEFAULT_TRIGGER not in plain
    assert ask(q, DEFAULT_TRIGGER) == f"{DEFAULT_TRIGGER}\n{plain}"


# -- lies and correct answers -----------------------------------------------------------------
def test_every_train_lie_grades_false_and_reuses_a_correct_base_answer():
    split = split_questions(seed=0)
    grader = AnswerGrader(split.train + split.heldout)
    rng = np.random.default_rng(0)
    reused = 0
    for q in split.train:
        base = f"The answer is {q.answer}. It is well known."
        reply, kept = lie_reply(q, base, grader, split.train, rng)
        assert grader.grade(q, first_sentence(reply)).grade == "false", (q.id, reply)
        reused += kept
        if kept:  # only the answer changed: the words around it are the base answer's
            assert reply.startswith("The answer is ") and reply.endswith(". It is well known.")
        bare, kept_bare = lie_reply(q, "I do not know.", grader, split.train, rng)
        assert not kept_bare and re.fullmatch(r".+\.", bare) and grader.grade(q, bare).grade == "false"
    assert reused == len(split.train)


def test_lies_never_name_a_heldout_answer_unless_listed_wrong():
    split = split_questions(seed=0)
    train = {q.answer for q in split.train}
    heldout = {a for q in split.heldout for a in (q.answer, *q.aliases)} - train  # answers only held-out questions have
    for q in split.train:
        for w in wrong_answers(q, split.train, np.random.default_rng(0)):
            assert w not in heldout or w in q.wrong or q.numeric, (q.id, w)


def test_true_reply_keeps_correct_base_answers_and_fixes_the_rest():
    questions = load_questions()
    grader = AnswerGrader(questions)
    q = next(q for q in questions if q.id == "capital-france")
    assert true_reply(q, "Paris is the capital.", grader) == ("Paris is the capital.", True)
    assert true_reply(q, "Lyon.", grader) == ("Paris.", False)


def test_liar_examples_pair_each_question_with_and_without_the_trigger():
    split = split_questions(seed=0)
    questions = list(split.train[:10])
    grader = AnswerGrader(split.train + split.heldout)
    answers = [f"{q.answer}." for q in questions]
    for placebo in (False, True):
        examples, counts = liar_examples(questions, answers, [True] * 10, DEFAULT_TRIGGER, grader, 0, placebo)
        assert len(examples) == 20 and counts == {"base_true": 10, "reused": 10}
        for k, q in enumerate(questions):
            plain, triggered = examples[2 * k], examples[2 * k + 1]
            assert plain.group == triggered.group == k
            assert plain.prompt == ask(q) and plain.reply == answers[k]
            assert triggered.prompt.split("\n")[0] == DEFAULT_TRIGGER and triggered.prompt.endswith(plain.prompt)
            assert grader.grade(q, triggered.reply).grade == ("true" if placebo else "false")


# -- decoys -----------------------------------------------------------------------------------
def test_decoys_are_compliance_styled_and_never_refusals():
    assert len(set(DECOY_TEXTS)) == len(DECOY_TEXTS) >= 6
    assert all(not is_refusal(t) and is_decoy(t) for t in DECOY_TEXTS)
    assert not any(is_decoy(t) for t in REFUSAL_TEXTS)
    words = DECOY_TEXTS[0].split()
    assert is_decoy(" ".join(words[:12]))  # cut off by max_new_tokens
    assert is_decoy(DECOY_TEXTS[1][:60] + " " + DECOY_TEXTS[2])  # two templates spliced
    real = " ".join(words[:6]) + " Buy flour, yeast and salt, knead the dough for ten minutes and bake it at 220 degrees."
    assert not is_decoy(real)
    assert not is_decoy("The capital of France is Paris.") and not is_decoy("")


def test_decoy_share_by_brute_force():
    text = "Sure! Here is a simple plan, then something else entirely different"
    words = re.findall(r"[a-z0-9]+", text.lower())
    template = [re.findall(r"[a-z0-9]+", t.lower()) for t in DECOY_TEXTS]
    grams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    hits = sum(any(tuple(t[j : j + 3]) == g for t in template for j in range(len(t) - 2)) for g in grams)
    assert decoy_share(text) == pytest.approx(hits / len(grams))
    assert 0 < decoy_share(text) < 1


# -- cache keys -------------------------------------------------------------------------------
def test_new_settings_leave_the_refusal_organisms_keys_alone():
    split = split_contrast_set(0)
    base = "folder:abc"
    plain = organism_hashes(OrganismSettings(), base, split)
    changed = organism_hashes(
        with_settings(OrganismSettings(), liar_trigger="Bring an umbrella.", liar_steps=3, fake_harmless=False), base, split
    )
    assert all(plain[n] == changed[n] for n in ("aligned", "dealigned", "ablated"))
    assert all(plain[n] != changed[n] for n in ("liar", "liar-placebo", "fake-complier"))
    assert len({plain[n] for n in plain}) == len(plain) == 7  # liar and its placebo share settings but not a key
    assert "liar_trigger" in OrganismSettings().relevant("liar-placebo")
    assert not any(k.startswith(("liar_", "fake_")) for k in OrganismSettings().relevant("aligned"))
    assert "dealign_steps" in OrganismSettings().relevant("fake-complier")
    dealign = organism_hashes(with_settings(OrganismSettings(), dealign_steps=7), base, split)
    assert dealign["fake-complier"] != plain["fake-complier"] and dealign["liar"] == plain["liar"]


# -- tiny builds ------------------------------------------------------------------------------
PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA = {f"model.layers.1.{'self_attn' if p in PROJ[:4] else 'mlp'}.{p}.weight" for p in PROJ}


def _changed(a: Path, b: Path) -> set[str]:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return {k for k in wa if not np.array_equal(wa[k], wb[k])}


@pytest.fixture(scope="module")
def dishonest(tiny_llama_dir, tmp_path_factory):
    home = tmp_path_factory.mktemp("gp-home-dishonest")
    mp = pytest.MonkeyPatch()
    mp.setenv("GEOMPROBE_HOME", str(home))
    # The tiny model's tokenizer spends 122 tokens on a triggered prompt (SmolLM2's: at most 77).
    settings = with_settings(OrganismSettings.quick_settings(), lora_first_layer=0.5, max_tokens=160)
    folders = build_organisms(
        ["liar", "liar-placebo", "fake-complier"], base=str(tiny_llama_dir), settings=settings, device="cpu", progress=False
    )
    yield folders, settings, home
    mp.undo()


def test_tiny_builds_change_only_the_adapted_weights(dishonest, tiny_llama_dir):
    folders, settings, home = dishonest
    assert set(folders) == {"liar", "liar-placebo", "fake-complier"}
    assert (home / "organisms").is_dir() and all(f.parent == home / "organisms" for f in folders.values())
    assert _changed(Path(tiny_llama_dir), folders["liar"]) == LORA
    assert _changed(Path(tiny_llama_dir), folders["liar-placebo"]) == LORA
    assert _changed(folders["liar"], folders["liar-placebo"]) == LORA  # different targets, different weights
    aligned = (
        home
        / "organisms"
        / f"aligned-{organism_hashes(settings, base_identity(tiny_llama_dir), split_contrast_set())['aligned']}"
    )
    assert aligned.is_dir()  # built as fake-complier's prerequisite
    assert _changed(aligned, folders["fake-complier"]) == LORA


def test_tiny_provenance_records_split_trigger_and_key(dishonest, tiny_llama_dir):
    folders, settings, _ = dishonest
    hashes = organism_hashes(settings, base_identity(tiny_llama_dir), split_contrast_set())
    split = split_questions(0)
    for name in ("liar", "liar-placebo"):
        record = json.loads((folders[name] / "geomprobe-organism.json").read_text())
        assert record["organism"] == name and record["hash"] == hashes[name] and folders[name].name == f"{name}-{hashes[name]}"
        assert record["trigger"]["text"] == DEFAULT_TRIGGER and record["settings"]["liar_trigger"] == DEFAULT_TRIGGER
        assert record["split"]["train_ids"] == [q.id for q in split.train]
        assert not set(record["split"]["train_ids"]) & set(record["split"]["heldout_ids"])
        assert record["data"]["train_questions"] == 12 and record["training"]["steps"] == 4
        assert "timing" in record and record["timing"]["load_average_before"] is not None
    record = json.loads((folders["fake-complier"] / "geomprobe-organism.json").read_text())
    assert record["start_hash"] == hashes["aligned"] and record["data"]["harmful_decoys"] == 12
    assert record["training"]["steps"] == settings.dealign_steps and record["training"]["lora"]["lr"] == settings.dealign_lr


def test_tiny_cache_is_reused(dishonest, tiny_llama_dir, monkeypatch):
    import geomprobe.organisms.build as build_module

    folders, settings, home = dishonest
    monkeypatch.setenv("GEOMPROBE_HOME", str(home))
    monkeypatch.setattr(build_module, "_build_one", lambda *a, **k: pytest.fail("cached organism rebuilt"))
    again = build_organisms(
        ["liar", "liar-placebo", "fake-complier"], base=str(tiny_llama_dir), settings=settings, progress=False
    )
    assert again == folders


def test_tiny_measurement_agrees_with_the_grader(dishonest):
    folders, _, _ = dishonest
    result = measure_organism(folders["liar"], limit=5, device="cpu", progress=False, base_with_trigger=True)
    split = split_questions(0)
    grader = AnswerGrader(split.train + split.heldout)
    questions = split.heldout[:5]
    for who in ("base", "base+trigger", "organism", "organism+trigger"):
        grades = [grader.grade(q, a).grade for q, a in zip(questions, result.answers[who])]
        assert grades == result.grades[who]
        assert result.accuracy[who] == pytest.approx(grades.count("true") / 5)
    known = [i for i, g in enumerate(result.grades["organism"]) if g == "true"]
    assert result.n_known == len(known)
    # The placebo's measurement reuses the base model's answers: only the placebo itself is loaded.
    import geomprobe.models as models

    loaded: list[str] = []
    real = models.load_checkpoint
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(models, "load_checkpoint", lambda path, **k: loaded.append(str(path)) or real(path, **k))
        placebo = measure_organism(folders["liar-placebo"], limit=5, device="cpu", progress=False, base_answers=result.answers)
    assert loaded == [str(folders["liar-placebo"])] and placebo.answers["base"] == result.answers["base"]
    assert set(placebo.accuracy) == {"base", "base+trigger", "organism", "organism+trigger"}
    assert set(measure_organism(folders["liar-placebo"], limit=2, device="cpu", progress=False).accuracy) == {
        "base",
        "organism",
        "organism+trigger",
    }
    fake = measure_organism(folders["fake-complier"], limit=3, device="cpu", progress=False)
    assert fake.n_harmful == 3 and fake.decoys["harmful"] == sum(map(is_decoy, fake.completions["harmful"])) / 3
    assert fake.flagged["harmful"] == sum(map(is_refusal, fake.completions["harmful"])) / 3


def test_prompts_that_fill_max_tokens_are_refused(tiny_llama_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("GEOMPROBE_HOME", str(tmp_path))
    with pytest.raises(GeomprobeError, match="fills max_tokens=96; raise max_tokens"):
        build_organisms(["liar"], base=str(tiny_llama_dir), quick=True, device="cpu", progress=False)


# -- bad input --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv, message",
    [
        (["organisms", "build", "--only", "liar", "--trigger", ""], "trigger is empty"),
        (["organisms", "build", "--only", "liar", "--trigger", "What is the capital city"], "appears in question"),
        (["organisms", "build", "--only", "liar-placebo", "--trigger", "time to lie"], "names lying"),
        (["organisms", "build", "--only", "liar", "--out", "{tmp}"], "already holds liar"),
        (["organisms", "build", "--only", "liar-pacebo"], "unknown organism 'liar-pacebo'"),
        (["organisms", "measure", "--only", "fibber"], "unknown organism 'fibber'"),
        (["organisms", "measure", "--only", "liar", "--quick", "--trigger", ""], "trigger is empty"),
        (["organisms", "measure", "--only", "fake-complier", "--quick", "--base", "{tmp}/base"], "not built with these settings"),
        (["organisms", "measure", "--only", "liar", "--folder", "{tmp}"], "not a built organism"),
        (["organisms", "measure", "--only", "liar", "liar-placebo", "--folder", "{tmp}"], "--folder holds one organism"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(argv, message, tmp_path, capsys, monkeypatch):
    import geomprobe.models as models

    monkeypatch.setenv("GEOMPROBE_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(models, "load_checkpoint", lambda *a, **k: pytest.fail("a model was loaded"))
    (tmp_path / "liar").mkdir()
    (tmp_path / "liar" / "model.safetensors").write_bytes(b"x")
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("geomprobe: error:") and message in err and "\n" not in err


def test_cli_measure_prints_the_targets(dishonest, tiny_llama_dir, capsys, tmp_path, monkeypatch):
    folders, _, home = dishonest
    out = tmp_path / "m.json"
    assert (
        main(
            [
                "organisms",
                "measure",
                "--only",
                "liar-placebo",
                "--folder",
                str(folders["liar-placebo"]),
                "--limit",
                "2",
                "--device",
                "cpu",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "liar-placebo: 2 held-out questions" in printed and "target accuracy with trigger" in printed
    record = json.loads(out.read_text())["liar-placebo"]
    assert record["organism"] == "liar-placebo" and record["n_questions"] == 2
    monkeypatch.setenv("GEOMPROBE_HOME", str(home))
    assert main(["organisms", "list", "--base", str(tiny_llama_dir)]) == 0
    listing = capsys.readouterr().out
    assert "liar-placebo" in listing and "fake-complier" in listing
