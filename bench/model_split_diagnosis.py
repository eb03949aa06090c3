"""
The diagnosis of bench/model_split.py: exact checksums of the bits of each stage's output during the prefill step of a
`generate`, recorded call by call by forward hooks, the first stage whose bits differ from one device's, the same
check on every weight and buffer, and where each part of a loaded model sits.
"""

import functools
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from vilamp.modeling_vilamp import ViLaMPForConditionalGeneration

# a checksum sums the bits of pieces of this many 16-bit words, each weighted by its position in the piece
CHECKSUM_PIECE = 1 << 22
CHECKSUM_MODULUS = 65521
# the stages called once per vision chunk
CHUNKED_STAGES = {"SigLIP embeddings", "SigLIP encoder", "projector", "DFM"}
# values of each output kept to measure how far a differing output is from one device's
SAMPLE_SIZE = 4096


@functools.cache
def position_weights(device: torch.device) -> torch.Tensor:
    """The weight of each position of a checksum piece: 1 to `CHECKSUM_MODULUS`, repeating."""
    return torch.arange(CHECKSUM_PIECE, device=device) % CHECKSUM_MODULUS + 1


def checksum(tensor: torch.Tensor) -> torch.Tensor:
    """
    An exact checksum of the bits of `tensor`, computed on its device: the position-weighted sum of its bytes read as
    16-bit integers, one int64 per piece of `CHECKSUM_PIECE` words. Integer sums do not depend on the order of the
    reduction, so equal bits give equal checksums on any device, and a changed bit changes a checksum.
    """
    flat = tensor.detach().contiguous().reshape(-1)
    words = flat.view(torch.uint8) if flat.element_size() == 1 else flat.view(torch.int16)
    weights = position_weights(words.device)
    pieces = [
        (words[start : start + CHECKSUM_PIECE].long() * weights[: min(CHECKSUM_PIECE, words.numel() - start)]).sum()
        for start in range(0, words.numel(), CHECKSUM_PIECE)
    ]
    return torch.stack(pieces) if pieces else words.new_zeros(0, dtype=torch.long)


def sample(tensor: torch.Tensor) -> torch.Tensor:
    """`SAMPLE_SIZE` evenly spread values of `tensor` (all of a smaller one), as float32 on its device."""
    flat = tensor.detach().reshape(-1)
    size = min(flat.numel(), SAMPLE_SIZE)
    return flat[torch.arange(size, device=flat.device) * (flat.numel() // max(size, 1))].float()


def output_tensors(output) -> list[torch.Tensor]:
    """The tensors of a module's output: the tensor, those of a tuple, or the fields of a model output."""
    if isinstance(output, torch.Tensor):
        return [output]
    values = output.values() if isinstance(output, dict) else output
    return [value for value in values if isinstance(value, torch.Tensor)]


class PrefillCapture:
    """
    Records, during the prefill step of one `generate` (the model's first forward), the checksum and a sample of the
    output of each named stage at each call, in the order the calls run; and the time at which the prefill step's
    logits are ready, which is when `generate` picks the first token.
    """

    def __init__(self, model: ViLaMPForConditionalGeneration, synchronize_all: Callable[[], None]):
        self.synchronize_all = synchronize_all
        self.records = {}  # (stage, call) -> (checksum, sample), in the order of the calls
        self.calls = {}
        self.chunk_size = None
        self.first_token_time = None
        self.first_logits = None
        inner, language_model = model.model, model.model.language_model
        stages = [
            ("query projection", inner.feature_merger.linear_q, output_tensors),
            ("SigLIP embeddings", inner.vision_tower.embeddings, output_tensors),
            ("SigLIP encoder", inner.vision_tower.encoder, lambda output: [output.last_hidden_state]),
            ("projector", inner.multi_modal_projector, output_tensors),
            ("DFM", inner.feature_merger, output_tensors),
            ("rotary cos/sin", language_model.rotary_emb, output_tensors),
            *[(f"decoder layer {index}", layer, output_tensors) for index, layer in enumerate(language_model.layers)],
            ("final norm", language_model.norm, output_tensors),
        ]
        self.handles = [
            module.register_forward_hook(functools.partial(self.record_output, stage, tensors_of))
            for stage, module, tensors_of in stages
        ]
        self.handles.append(language_model.register_forward_pre_hook(self.record_inputs_embeds, with_kwargs=True))
        self.handles.append(model.register_forward_hook(self.record_logits))

    def record(self, stage: str, tensors: list[torch.Tensor]):
        if self.first_token_time is not None:
            return
        call = self.calls.get(stage, 0)
        self.calls[stage] = call + 1
        for index, tensor in enumerate(tensors):
            name = stage if len(tensors) == 1 else f"{stage} [{index}]"
            self.records[(name, call)] = (checksum(tensor), sample(tensor))

    def record_output(self, stage, tensors_of, module, module_args, output):
        if stage == "SigLIP embeddings" and self.chunk_size is None:
            self.chunk_size = output.shape[0]
        self.record(stage, tensors_of(output))

    def record_inputs_embeds(self, module, module_args, module_kwargs):
        self.record("inputs_embeds", [module_kwargs["inputs_embeds"]])

    def record_logits(self, module, module_args, output):
        if self.first_token_time is None:
            logits = output.logits[:, -1]
            self.record("logits", [logits])
            self.first_logits = logits.float().clone()
            self.synchronize_all()
            self.first_token_time = time.perf_counter()

    def remove(self):
        for handle in self.handles:
            handle.remove()

    def to_cpu(self) -> dict:
        return {key: (digest.cpu(), values.cpu()) for key, (digest, values) in self.records.items()}


@dataclass
class Run:
    new_ids: list[int]
    chunk_size: int | None
    first_token_seconds: float
    generate_seconds: float
    peak_gib: list[float]  # per GPU
    records: dict  # (stage, call) -> (checksum, sample) on the CPU
    first_logits: torch.Tensor  # (vocab_size,) float32 on the CPU


def first_difference(reference: Run, run: Run) -> str:
    """
    The first recorded output, in the order of the calls, whose bits differ from the reference's. Runs with different
    vision chunks cut the frames differently, so their per-chunk outputs are not compared: then the first comparable
    output is `inputs_embeds`, which holds the video tokens.
    """
    skipped = CHUNKED_STAGES if run.chunk_size != reference.chunk_size else set()
    note = ""
    if skipped:
        note = f" (vision chunks of {run.chunk_size} against {reference.chunk_size}: per-chunk outputs skipped)"
    calls = {}
    for stage, call in reference.records:
        calls[stage] = max(calls.get(stage, 0), call + 1)
    for (stage, call), (reference_checksum, reference_sample) in reference.records.items():
        if stage in skipped:
            continue
        if (stage, call) not in run.records:
            return f"`{stage}` call {call + 1} of {calls[stage]} did not run{note}"
        run_checksum, run_sample = run.records[(stage, call)]
        if not torch.equal(reference_checksum, run_checksum):
            if reference_sample.shape != run_sample.shape:
                return f"`{stage}` call {call + 1} of {calls[stage]} (another shape){note}"
            difference = (reference_sample - run_sample).abs().max().item()
            return f"`{stage}` call {call + 1} of {calls[stage]} (sampled max abs diff {difference:.2g}){note}"
    extra = [key for key in run.records if key not in reference.records and key[0] not in skipped]
    if extra:
        return f"`{extra[0][0]}` call {extra[0][1] + 1} ran only here{note}"
    return "none" + note


def compare(reference: Run, run: Run) -> dict:
    """The cells and the diagnosis of `run` against the reference run."""
    same_ids = run.new_ids == reference.new_ids
    differing_step = next((step for step, (a, b) in enumerate(zip(reference.new_ids, run.new_ids)) if a != b), None)
    logits_difference = (reference.first_logits - run.first_logits).abs().max().item()
    difference = first_difference(reference, run)
    if not same_ids and difference.startswith("none"):
        difference += "; the prefill step is bitwise equal, the ids part in the decoding steps"
    return {
        "same ids": "yes" if same_ids else f"NO (from token {differing_step + 1})",
        "logits": f"{logits_difference:.2g}",
        "first difference": difference,
    }


def tensor_checksums(model: ViLaMPForConditionalGeneration) -> dict[str, tuple[str, torch.Tensor]]:
    """The dtype and the checksum of every parameter and buffer, by name."""
    tensors = itertools.chain(model.named_parameters(), model.named_buffers())
    return {name: (str(tensor.dtype), checksum(tensor).cpu()) for name, tensor in tensors}


def compare_weights(reference: dict, loaded: dict) -> str:
    """Whether the loaded parameters and buffers are bitwise the reference's, naming the first that is not."""
    differing = [
        name
        for name in reference.keys() | loaded.keys()
        if name not in reference
        or name not in loaded
        or reference[name][0] != loaded[name][0]
        or not torch.equal(reference[name][1], loaded[name][1])
    ]
    if not differing:
        return f"all {len(reference)} parameters and buffers bitwise equal to one device's"
    first = sorted(differing)[0]
    seen = f"{loaded[first][0]} against {reference[first][0]}" if first in loaded and first in reference else "missing"
    return f"NO: {len(differing)} of {len(reference)} differ, first `{first}` ({seen})"


def devices_of(module: torch.nn.Module) -> str:
    """The devices of a module's parameters and buffers, joined by `+`."""
    tensors = itertools.chain(module.parameters(), module.buffers())
    return "+".join(sorted({str(tensor.device) for tensor in tensors}))


def placement(model: ViLaMPForConditionalGeneration) -> str:
    """Where the main parts of a loaded model are, decoder layers as runs of consecutive layers."""
    inner, language_model = model.model, model.model.language_model
    layer_runs = []
    for device, layers in itertools.groupby(enumerate(language_model.layers), key=lambda item: devices_of(item[1])):
        indices = [index for index, _ in layers]
        span = str(indices[0]) if len(indices) == 1 else f"{indices[0]}-{indices[-1]}"
        layer_runs.append(f"{span} {device}")
    parts = [
        f"vision tower {devices_of(inner.vision_tower)}",
        f"projector {devices_of(inner.multi_modal_projector)}",
        f"DFM {devices_of(inner.feature_merger)}",
        f"image_newline {inner.image_newline.device}",
        f"embed_tokens {devices_of(language_model.embed_tokens)}",
        f"layers {', '.join(layer_runs)}",
        f"norm {devices_of(language_model.norm)}",
        f"rotary {devices_of(language_model.rotary_emb)}",
        f"lm_head {devices_of(model.lm_head)}",
    ]
    # the model assembles each vision chunk's tokens on its projector's device
    vision_device = inner.multi_modal_projector.linear_2.weight.device
    return f"{'; '.join(parts)}; vision chunks assembled on {vision_device}"


__all__ = ["PrefillCapture", "Run", "compare", "compare_weights", "placement", "tensor_checksums"]
