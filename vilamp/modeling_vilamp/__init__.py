"""The ViLaMP model: its config, the DFM and the model classes (the files copied next to converted checkpoints)."""

from .configuration_vilamp import ViLaMPConfig
from .feature_merger import ViLaMPDifferentialFeatureMerger, reference_frame_indices
from .modeling_vilamp import (
    ViLaMPForConditionalGeneration,
    ViLaMPModel,
    ViLaMPMultiModalProjector,
    ViLaMPPreTrainedModel,
)

__all__ = [
    "ViLaMPConfig",
    "ViLaMPDifferentialFeatureMerger",
    "ViLaMPForConditionalGeneration",
    "ViLaMPModel",
    "ViLaMPMultiModalProjector",
    "ViLaMPPreTrainedModel",
    "reference_frame_indices",
]
