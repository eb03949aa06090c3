"""ViLaMP for transformers: importing `vilamp` registers its classes with the Auto factories."""

import logging


class _TorchaoPytreeNotice(logging.Filter):
    """Drops torch's notice, logged once per enum at import, that torchao registers enums as pytree constants the
    deprecated way: transformers imports torchao whenever it is installed, and the two lines would come before every
    command's output and every one-line error, about nothing the user did."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "is an Enum subclass and is now natively supported" not in record.getMessage()


logging.getLogger("torch.utils._pytree").addFilter(_TorchaoPytreeNotice())

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor, AutoVideoProcessor

from .modeling_vilamp import (
    ViLaMPConfig,
    ViLaMPDifferentialFeatureMerger,
    ViLaMPForConditionalGeneration,
    ViLaMPModel,
    ViLaMPMultiModalProjector,
    ViLaMPPreTrainedModel,
)
from .processing import KeyframeSelector, VideoCache, ViLaMPProcessor, ViLaMPVideoProcessor
from .runner import VideoQuestion, ViLaMPRunner

__version__ = "0.3.0.dev0"

AutoConfig.register("vilamp", ViLaMPConfig)
# `AutoModel.from_pretrained(...).generate(...)` is how the long-video releases are used: resolve to the generating model
AutoModel.register(ViLaMPConfig, ViLaMPForConditionalGeneration)
AutoModelForImageTextToText.register(ViLaMPConfig, ViLaMPForConditionalGeneration)
AutoProcessor.register(ViLaMPConfig, ViLaMPProcessor)
AutoVideoProcessor.register(ViLaMPConfig, ViLaMPVideoProcessor)

__all__ = [
    "KeyframeSelector",
    "ViLaMPConfig",
    "ViLaMPDifferentialFeatureMerger",
    "ViLaMPForConditionalGeneration",
    "ViLaMPModel",
    "ViLaMPMultiModalProjector",
    "ViLaMPPreTrainedModel",
    "ViLaMPProcessor",
    "ViLaMPRunner",
    "ViLaMPVideoProcessor",
    "VideoCache",
    "VideoQuestion",
    "__version__",
]
