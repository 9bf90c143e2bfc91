"""Model organisms: checkpoints with a known alignment change, as ground truth for the diagnostics.

Typical use::

    from geomprobe.organisms import build_organisms, split_contrast_set

    folders = build_organisms()                 # aligned, dealigned, ablated, deep-aligned (cached; minutes on a CPU)
    liar = build_organisms(["liar"])["liar"]    # named only; also liar-placebo, fake-complier
    print("\n".join(measure_organism(liar).lines()))   # held-out behaviour against its targets
    block = deception_power(build_organisms(list(DECEPTION_ORGANISMS)), "work/")   # probes on their lies
    print(block.table())
    model = geomprobe.load_model(folders["aligned"])
    heldout = split_contrast_set().texts("heldout", "harmful")   # never trained on

See ``docs/organisms.md`` for what each organism is, how it is trained and what it measures.
"""

from geomprobe.organisms.answer_probes import (
    AnswerRow,
    ChosenProbe,
    answer_token_scores,
    cache_answers,
    choose_probes,
    honesty_cache,
)
from geomprobe.organisms.build import (
    DEFAULT_ORGANISMS,
    DISHONEST_ORGANISMS,
    ORGANISMS,
    PROVENANCE,
    REQUIRES,
    OrganismSettings,
    build_organisms,
    cached_organisms,
    check_names,
    organism_hashes,
    organisms_home,
    read_provenance,
    with_settings,
)
from geomprobe.organisms.data import (
    REFUSAL_TEXTS,
    ExtraTraining,
    PromptSplit,
    SplitPrompt,
    extra_training,
    refusal_targets,
    split_contrast_set,
)
from geomprobe.organisms.deception_power import (
    CONTRASTS,
    DECEPTION_ORGANISMS,
    PROBE_METHODS,
    ContrastRow,
    DeceptionPower,
    ScoredAnswer,
    contrast_auroc,
    deception_power,
    quick_deception_settings,
)
from geomprobe.organisms.deep import RECOVERY_TEXTS, RecoveryRow, recovery_examples
from geomprobe.organisms.dishonesty import (
    FakeComplierMeasurement,
    LiarMeasurement,
    measure_fake_complier,
    measure_liar,
    measure_organism,
)
from geomprobe.organisms.lies import (
    DECOY_TEXTS,
    DEFAULT_TRIGGER,
    QuestionSplit,
    ask,
    check_trigger,
    decoy_share,
    is_decoy,
    lie_reply,
    split_questions,
    true_reply,
)
from geomprobe.organisms.measure import HELDOUT_SETS, HeldoutRefusals, heldout_prompts, load_second_heldout, measure_refusals
from geomprobe.organisms.train import ChatExample, TrainLog, assistant_loss, encode_examples, finetune_lora

__all__ = [
    "CONTRASTS",
    "DECEPTION_ORGANISMS",
    "PROBE_METHODS",
    "AnswerRow",
    "ChosenProbe",
    "ContrastRow",
    "DeceptionPower",
    "ScoredAnswer",
    "answer_token_scores",
    "cache_answers",
    "choose_probes",
    "contrast_auroc",
    "deception_power",
    "honesty_cache",
    "quick_deception_settings",
    "DISHONEST_ORGANISMS",
    "HELDOUT_SETS",
    "DECOY_TEXTS",
    "DEFAULT_ORGANISMS",
    "DEFAULT_TRIGGER",
    "FakeComplierMeasurement",
    "LiarMeasurement",
    "QuestionSplit",
    "ask",
    "check_trigger",
    "decoy_share",
    "is_decoy",
    "lie_reply",
    "measure_fake_complier",
    "measure_liar",
    "measure_organism",
    "split_questions",
    "true_reply",
    "ORGANISMS",
    "PROVENANCE",
    "RECOVERY_TEXTS",
    "REFUSAL_TEXTS",
    "REQUIRES",
    "ChatExample",
    "HeldoutRefusals",
    "OrganismSettings",
    "PromptSplit",
    "ExtraTraining",
    "RecoveryRow",
    "SplitPrompt",
    "TrainLog",
    "assistant_loss",
    "build_organisms",
    "cached_organisms",
    "check_names",
    "encode_examples",
    "finetune_lora",
    "heldout_prompts",
    "load_second_heldout",
    "measure_refusals",
    "organism_hashes",
    "organisms_home",
    "read_provenance",
    "recovery_examples",
    "refusal_targets",
    "extra_training",
    "split_contrast_set",
    "with_settings",
]
