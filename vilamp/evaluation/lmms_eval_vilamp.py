"""
ViLaMP as an lmms-eval model (`lmms-eval --model vilamp --model_args pretrained=DIR ...`), with the original
evaluation's settings as its defaults: at most 600 frames at 1 fps (the processor's sampling), the keyframe selector
ranking frames against the question alone, greedy decoding with the original's `max_new_tokens` per benchmark, and the
`qwen_1_5` chat template (the processor's). Data-parallel under `accelerate launch --num_processes N -m lmms_eval`: each
process runs its own model on its own GPU, and lmms-eval splits the documents and gathers the results.
"""

import re
import time
from collections.abc import Callable

import torch
from accelerate import Accelerator
from lmms_eval.api.instance import GenerationResult, Instance
from lmms_eval.api.model import lmms
from loguru import logger
from tqdm import tqdm

from ..processing import VideoCache
from ..runner import VideoQuestion
from .video_qa import VideoQuestionAnswerer

# `max_new_tokens` of the original evaluation scripts (`scripts/eval/exp_*.py`), by lmms-eval task name:
# exp_vMME.py and exp_vMME_sub.py 1, exp_longvideobench.py 128, exp_MLVU.py, exp_egoschema.py and exp_ActivityNetQA.py 256
ORIGINAL_MAX_NEW_TOKENS = {
    "videomme": 1,
    "videomme_w_subtitle": 1,
    "videomme_long": 1,
    "videomme_long_w_subtitle": 1,
    "longvideobench_val_v": 128,
    "longvideobench_val_i": 128,
    "longvideobench_test_v": 128,
    "longvideobench_test_i": 128,
    "mlvu_dev": 256,
    "mlvu_test": 256,
    "egoschema": 256,
    "egoschema_subset": 256,
    "activitynetqa": 256,
}
# for a task that gives no `max_new_tokens` and that the original did not evaluate
DEFAULT_MAX_NEW_TOKENS = 256

# A line that starts an answer option: "A. ...", "(A) ...", "A) ...", "A: ..."
OPTION_LINE = re.compile(r"^\s*(\([A-Z]\)|[A-Z][.):])\s")


def question_alone(text: str) -> str:
    """`text` up to its first answer option line: the question the keyframe selector ranks the frames against."""
    lines = text.splitlines()
    first_option = next((index for index, line in enumerate(lines) if OPTION_LINE.match(line)), len(lines))
    return "\n".join(lines[:first_option]).strip()


class ViLaMP(lmms):
    """
    The `vilamp` model of lmms-eval.

    Args:
        pretrained (`str`): a converted ViLaMP checkpoint (directory or repository) with its processor.
        device (`str`, *optional*): `cpu`, `cuda` or `cuda:N`; by default the GPU accelerate gives this process, else
            the CPU.
        dtype (`str`, *optional*, defaults to `"float16"`): the weights' dtype on a GPU, as the original evaluation
            loads them (`"bfloat16"` and `"float32"` too); always float32 on the CPU.
        batch_size (`int`, *optional*, defaults to 1): questions per `generate` call.
        max_frames (`int`, *optional*): frames sampled per video; defaults to the processor's (600, as the original).
        max_new_tokens (`int` or `str`, *optional*, defaults to `"original"`): `"original"` takes the original
            evaluation's value for the benchmarks it evaluated (`ORIGINAL_MAX_NEW_TOKENS`) and the task's otherwise;
            `"task"` always takes the task's; an integer applies to every task.
        keyframe_query (`str`, *optional*, defaults to `"question"`): what the keyframe selector ranks frames against:
            `"question"`, the document's `question` field (or else the prompt) cut before its answer options, as the
            original; `"prompt"`, lmms-eval's whole prompt.
        decode_workers (`int`, *optional*, defaults to 2): processes per GPU that decode the next videos while the
            model runs; 0 decodes between the model's calls.
        keep_features (`str`, *optional*, defaults to `"auto"`): where each video's projected patches are kept for all
            of its questions: `"device"`, `"cpu"`, `"none"` (each question encodes the frames again) or `"auto"` (see
            [`~vilamp.ViLaMPRunner.load_video`]).
        video_cache (`str`, *optional*): a directory of loaded videos ([`~vilamp.VideoCache`]) that the decoding
            workers read video files through, so that a re-run, or another process, does not decode them again.
        video_cache_max_gib (`float`, *optional*, defaults to 20): the cache's size cap in GiB (579 KiB per frame).
        attn_implementation (`str`, *optional*, defaults to `"sdpa"`): the language model's attention.
        cache_implementation (`str`, *optional*, defaults to `"dynamic"`): `generate`'s key/value cache; `"static"`
            compiles the decoding step on a GPU.
        max_batch_size: set by lmms-eval for automatic batch sizes, which this model does not do; must be left unset.
    """

    def __init__(
        self,
        pretrained: str,
        device: str | None = None,
        dtype: str = "float16",
        batch_size: int | str = 1,
        max_frames: int | None = None,
        max_new_tokens: int | str = "original",
        keyframe_query: str = "question",
        decode_workers: int = 2,
        keep_features: str = "auto",
        video_cache: str | None = None,
        video_cache_max_gib: float = 20,
        attn_implementation: str = "sdpa",
        cache_implementation: str = "dynamic",
        max_batch_size: int | None = None,
    ) -> None:
        super().__init__()
        batch_size = int(batch_size) if isinstance(batch_size, str) and batch_size.isdigit() else batch_size
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(
                f"`batch_size` must be a positive integer, got {batch_size!r}; automatic sizes are not supported."
            )
        if max_batch_size is not None:
            raise ValueError(
                f"`max_batch_size` is for automatic batch sizes, which ViLaMP does not do; got {max_batch_size!r}."
            )
        if max_new_tokens not in ("original", "task") and not (
            isinstance(max_new_tokens, int) and not isinstance(max_new_tokens, bool) and max_new_tokens > 0
        ):
            raise ValueError(
                f"`max_new_tokens` must be 'original', 'task' or a positive integer, got {max_new_tokens!r}."
            )
        if keyframe_query not in ("question", "prompt"):
            raise ValueError(f"`keyframe_query` must be 'question' or 'prompt', got {keyframe_query!r}.")
        if not isinstance(video_cache_max_gib, (int, float)) or video_cache_max_gib <= 0:
            raise ValueError(f"`video_cache_max_gib` must be a positive number of GiB, got {video_cache_max_gib!r}.")

        self.accelerator = Accelerator()
        self._rank = self.accelerator.process_index
        self._world_size = self.accelerator.num_processes
        # several processes: each its own GPU, whatever `--device` says (lmms-eval passes one device to all)
        model_device = self.accelerator.device if device is None or self._world_size > 1 else torch.device(device)
        self.answerer = VideoQuestionAnswerer.from_pretrained(
            pretrained,
            device=model_device,
            dtype=dtype if model_device.type == "cuda" else "float32",
            attn_implementation=attn_implementation,
            max_frames=max_frames,
            decode_workers=decode_workers,
            cache_implementation=cache_implementation,
            keep_features=keep_features,
            video_cache=None
            if video_cache is None
            else VideoCache(video_cache, max_bytes=int(video_cache_max_gib * 2**30)),
        )
        self.startup_logged = False
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.keyframe_query = keyframe_query

    @property
    def device(self) -> torch.device:
        return self.answerer.device

    def _question(self, context: str, doc_to_visual: Callable, doc_id: int, task: str, split: str) -> VideoQuestion:
        """The question of one request: its document's one video, lmms-eval's prompt, and the keyframe query."""
        doc = self.task_dict[task][split][doc_id]
        visuals = doc_to_visual(doc)
        if not isinstance(visuals, (list, tuple)) or len(visuals) != 1 or not isinstance(visuals[0], str):
            raise ValueError(
                f"ViLaMP answers questions about one video file; document {doc_id} of task `{task}` gives {visuals!r} "
                "as its visuals. Evaluate it on video tasks whose `doc_to_visual` returns one video path."
            )
        question = doc.get("question") if isinstance(doc.get("question"), str) else context
        query = question_alone(question) if self.keyframe_query == "question" else context
        return VideoQuestion(video=visuals[0], prompt=context, query=query)

    def _max_new_tokens(self, task: str, generation_kwargs: dict) -> int:
        if isinstance(self.max_new_tokens, int):
            return self.max_new_tokens
        if self.max_new_tokens == "original" and task in ORIGINAL_MAX_NEW_TOKENS:
            return ORIGINAL_MAX_NEW_TOKENS[task]
        return generation_kwargs.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """
        Greedy answers, in request order. The requests are grouped by video: each video is loaded once for all of its
        questions, and `batch_size` questions of one video and of equal `max_new_tokens` go into one `generate` call.
        As in the original evaluation, answers run to the end-of-turn token or `max_new_tokens`: the task's `until`
        strings and sampling settings are not applied.
        """
        questions, token_limits = [], []
        for request in requests:
            context, generation_kwargs, doc_to_visual, doc_id, task, split = request.args
            questions.append(self._question(context, doc_to_visual, doc_id, task, split))
            token_limits.append(self._max_new_tokens(task, generation_kwargs))
        answers = [None] * len(requests)
        start_time = time.perf_counter()
        progress = tqdm(total=len(requests), disable=self.rank != 0, desc="ViLaMP answering")
        first_batch_seconds = None
        for batch, inputs in self.answerer.prepare_by_video(questions, self.batch_size, batch_keys=token_limits):
            first_batch_seconds = first_batch_seconds or time.perf_counter() - start_time
            for index, answer in zip(batch, self.answerer.generate(inputs, token_limits[batch[0]])):
                answers[index] = answer
            self._log_startup(first_batch_seconds, time.perf_counter() - start_time)
            progress.update(len(batch))
        progress.close()
        self._log_time("generate_until", len(requests), start_time, first_batch_seconds)
        return answers

    def _log_time(self, request_type: str, num_requests: int, start_time: float, first_batch_seconds: float | None):
        """Logs how long this process took for its requests and until its first batch was ready (the decoding
        workers' start and one video); bench/evaluation_throughput.py reads the line."""
        seconds = time.perf_counter() - start_time
        logger.info(
            f"ViLaMP process {self.rank}: {request_type} of {num_requests} requests in {seconds:.3f} s, the first batch "
            f"ready after {first_batch_seconds or 0:.3f} s"
        )

    def _log_startup(self, first_batch_seconds: float, first_answer_seconds: float):
        """Logs, once, what this process's start-up was made of: loading the processor and the model, the decoding
        workers' start (spawn, imports, their copy of the processor), the first video's decoding, CLIP and SigLIP,
        and the first batch's model call (which pays the GPU's first kernels)."""
        if self.startup_logged:
            return
        self.startup_logged = True
        answerer = self.answerer
        parts = [f"{name} {seconds:.3f} s" for name, seconds in answerer.startup_seconds.items()]
        if answerer.decoding_workers is not None:
            parts.append(
                f"first decoding worker ready {answerer.decoding_workers.ready_seconds():.3f} s after its start"
            )
        parts += [f"first video's {name} {seconds:.3f} s" for name, seconds in answerer.first_video_seconds.items()]
        parts.append(f"first batch ready after {first_batch_seconds:.3f} s")
        parts.append(f"first batch answered after {first_answer_seconds:.3f} s")
        logger.info(f"ViLaMP process {self.rank} start-up: " + ", ".join(parts))

    def loglikelihood(self, requests: list[Instance]) -> list[GenerationResult]:
        """
        Per request, the mean negative log-likelihood of its continuation's tokens after the prompt (a loss, which
        lmms-eval's multiple-choice scoring minimises) and whether greedy decoding gives them, as a
        `GenerationResult` whose `text` is that `(loss, is_greedy)` pair: lmms-eval 0.7.3 turns any other result that
        is not a string into its `str()` before scoring it. The requests of one document and prompt (its answer
        options) share one prefill, and the questions of one video share one loading of the video.
        """
        groups: dict[tuple, list[int]] = {}
        for index, request in enumerate(requests):
            if len(request.args) != 6:
                raise ValueError(
                    f"ViLaMP scores continuations of a question about a video; a request without a video was given "
                    f"({request.args[:2]!r}), as `acc_mutual_info` asks. Leave that metric out."
                )
            context, _, _, doc_id, task, split = request.args
            groups.setdefault((context, doc_id, task, split), []).append(index)
        questions = []
        for (context, doc_id, task, split), indices in groups.items():
            questions.append(self._question(context, requests[indices[0]].args[2], doc_id, task, split))
        request_indices = list(groups.values())
        results = [None] * len(requests)
        start_time = time.perf_counter()
        progress = tqdm(total=len(requests), disable=self.rank != 0, desc="ViLaMP scoring")
        first_batch_seconds = None
        for (question_index,), inputs in self.answerer.prepare_by_video(questions):
            first_batch_seconds = first_batch_seconds or time.perf_counter() - start_time
            indices = request_indices[question_index]
            continuations = [self._continuation(requests[index]) for index in indices]
            for index, result in zip(indices, self.answerer.continuation_losses(inputs, continuations)):
                results[index] = GenerationResult(text=result)
            self._log_startup(first_batch_seconds, time.perf_counter() - start_time)
            progress.update(len(indices))
        progress.close()
        self._log_time("loglikelihood", len(requests), start_time, first_batch_seconds)
        return results

    def _continuation(self, request: Instance) -> str:
        """The continuation of a loglikelihood request: a string, or a function of its document."""
        _, continuation, _, doc_id, task, split = request.args
        return continuation if isinstance(continuation, str) else continuation(self.task_dict[task][split][doc_id])

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("ViLaMP answers one question per video; multi-round tasks are not supported.")


__all__ = ["DEFAULT_MAX_NEW_TOKENS", "ORIGINAL_MAX_NEW_TOKENS", "ViLaMP", "question_alone"]
