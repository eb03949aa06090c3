"""
Evaluation of ViLaMP on video question-answer benchmarks: `video_qa` answers questions about videos (decoding ahead of
the model in worker processes) and scores answer continuations; `lmms_eval_vilamp` is the `vilamp` model of lmms-eval
built on it, registered through `lmms_eval_manifest`.

Nothing is imported here: lmms-eval imports `vilamp.evaluation.lmms_eval_manifest` through its entry point whenever it lists its
models, whichever model is asked for, and that import must stay light.
"""

__all__ = []
