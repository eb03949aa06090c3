"""The lmms-eval model manifest of ViLaMP, read through the `lmms_eval.models` entry point (see pyproject.toml)."""

from lmms_eval.models.registry_v2 import ModelManifest

# only the class path: lmms-eval imports the model module when `--model vilamp` is asked for
VILAMP_MANIFEST = ModelManifest(model_id="vilamp", simple_class_path="vilamp.evaluation.lmms_eval_vilamp.ViLaMP")

__all__ = ["VILAMP_MANIFEST"]
