"""Safety-subspace overlap, in activation space and in weight space.

* :mod:`.basis` - orthonormal bases (energy fraction or fixed k), mode subspace overlap,
  principal cosines, analytic and empirical random baselines.
* :mod:`.activations` - per-layer overlap of two prompt classes' subspaces from a cache file.
* :mod:`.weights` - per-matrix overlap of alignment and fine-tuning updates, grouped summaries.
* :mod:`.projection` - the projection experiment that writes a new checkpoint.

See ``docs/subspace.md`` for the definitions and conventions.
"""

from geomprobe.subspace.activations import LayerOverlap, activation_overlap_by_layer, overlap_of_arrays
from geomprobe.subspace.basis import (
    Basis,
    RandomBaseline,
    check_energy,
    check_k,
    empirical_random_baseline,
    energy_in_subspace,
    mode_subspace_overlap,
    principal_cosines,
    random_baseline,
    subspace_basis,
    top_left_singular,
)
from geomprobe.subspace.projection import PROJECTION_MODES, ProjectionResult, project_finetune_update
from geomprobe.subspace.weights import (
    GroupSummary,
    MatrixOverlap,
    WeightMatrix,
    grouped,
    weight_matrices,
    weight_update_overlap,
)

__all__ = [
    "Basis",
    "GroupSummary",
    "LayerOverlap",
    "MatrixOverlap",
    "PROJECTION_MODES",
    "ProjectionResult",
    "RandomBaseline",
    "WeightMatrix",
    "activation_overlap_by_layer",
    "check_energy",
    "check_k",
    "empirical_random_baseline",
    "energy_in_subspace",
    "grouped",
    "mode_subspace_overlap",
    "overlap_of_arrays",
    "principal_cosines",
    "project_finetune_update",
    "random_baseline",
    "subspace_basis",
    "top_left_singular",
    "weight_matrices",
    "weight_update_overlap",
]
