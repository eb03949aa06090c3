"""ViLaMP for transformers: importing this package registers the classes with the Auto factories."""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor, AutoVideoProcessor

from processing import ViLaMPProcessor, ViLaMPVideoProcessor

from .configuration_vilamp import ViLaMPConfig
from .feature_merger import ViLaMPDifferentialFeatureMerger, reference_frame_indices
from .modeling_vilamp import (
    ViLaMPForConditionalGeneration,
    ViLaMPModel,
    ViLaMPMultiModalProjector,
    ViLaMPPreTrainedModel,
)

AutoConfig.register("vilamp", ViLaMPConfig)
# `AutoModel.from_pretrained(...).generate(...)` is how the long-video releases are used: resolve to the generating model
AutoModel.register(ViLaMPConfig, ViLaMPForConditionalGeneration)
AutoModelForImageTextToText.register(ViLaMPConfig, ViLaMPForConditionalGeneration)
# the package is the one place that knows both halves; the model modules themselves never import the processor
AutoProcessor.register(ViLaMPConfig, ViLaMPProcessor)
AutoVideoProcessor.register(ViLaMPConfig, ViLaMPVideoProcessor)

__all__ = [
    "ViLaMPConfig",
    "ViLaMPDifferentialFeatureMerger",
    "ViLaMPForConditionalGeneration",
    "ViLaMPModel",
    "ViLaMPMultiModalProjector",
    "ViLaMPPreTrainedModel",
    "reference_frame_indices",
]
