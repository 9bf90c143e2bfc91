"""Linear deception probes: estimators, an all-layer sweep, honest evaluation and safe persistence.

>>> from geomprobe.probes import train_probes, save_probe, load_probe, evaluate_probes
>>> probes, result = train_probes("honesty.h5", "logistic")        # held-out metrics in result
>>> save_probe(probes, "probe/")
>>> evaluate_probes(load_probe("probe/"), "other.h5", control="control.h5").records
"""

from geomprobe.core.labels import choose_positive
from geomprobe.probes.builtin import LDAParams, LogisticParams, NoParams
from geomprobe.probes.control import (
    BUNDLED_CONTROL,
    bundled_control_activations,
    choose_control,
    control_name,
    probe_model_source,
)
from geomprobe.probes.estimators import (
    ESTIMATORS,
    LDAProbe,
    LogisticProbe,
    MeanDiffProbe,
    PCADiffProbe,
    ProbeEstimator,
    make_estimator,
)
from geomprobe.probes.kinds import (
    PROBE_KINDS,
    KindFit,
    ProbeData,
    ProbeKind,
    canonical_method,
    method_names,
    parse_param_args,
    probe_kind,
    register_probe_kind,
    unregister_probe_kind,
)
from geomprobe.probes.metrics import accuracy, auroc, balanced_accuracy, calibration_error, control_threshold, recall_at_threshold
from geomprobe.probes.persistence import ProbeSet, check_compatible, data_sha256, load_probe, probe_directions, save_probe
from geomprobe.probes.pipeline import (
    evaluate_probes,
    read_layers,
    response_scores,
    score_control,
    token_scores,
    train_probes,
    transfer_matrix,
)
from geomprobe.probes.results import (
    LayerMetrics,
    ProbeResult,
    TokenScores,
    TransferResult,
    layer_metrics,
    layer_records,
)
from geomprobe.probes.solvers import batched_logistic
from geomprobe.probes.splits import pair_groups, pair_kfold, pair_train_test_split
from geomprobe.probes.sweep import LayerFit, ProbeSweep, fit_layers

__all__ = [
    "BUNDLED_CONTROL",
    "bundled_control_activations",
    "choose_control",
    "control_name",
    "probe_model_source",
    "ESTIMATORS",
    "LDAProbe",
    "LogisticProbe",
    "MeanDiffProbe",
    "PCADiffProbe",
    "ProbeEstimator",
    "make_estimator",
    "PROBE_KINDS",
    "KindFit",
    "ProbeData",
    "ProbeKind",
    "method_names",
    "parse_param_args",
    "probe_kind",
    "register_probe_kind",
    "unregister_probe_kind",
    "LDAParams",
    "LogisticParams",
    "NoParams",
    "accuracy",
    "auroc",
    "balanced_accuracy",
    "calibration_error",
    "control_threshold",
    "recall_at_threshold",
    "ProbeSet",
    "check_compatible",
    "data_sha256",
    "load_probe",
    "probe_directions",
    "save_probe",
    "LayerMetrics",
    "ProbeResult",
    "TokenScores",
    "TransferResult",
    "choose_positive",
    "evaluate_probes",
    "layer_metrics",
    "layer_records",
    "read_layers",
    "response_scores",
    "score_control",
    "token_scores",
    "train_probes",
    "transfer_matrix",
    "pair_groups",
    "pair_kfold",
    "pair_train_test_split",
    "LayerFit",
    "ProbeSweep",
    "batched_logistic",
    "canonical_method",
    "fit_layers",
]
