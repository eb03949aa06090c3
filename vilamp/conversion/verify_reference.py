"""Runs the golden reference's inputs through a converted model and processor and compares every stage.

The reference directory (its README) holds the original code's outputs at every stage for a tiny checkpoint; each
stage computed here carries the name of its golden tensor, so a comparison is one subtraction. Run it on a converted
directory with `python -m vilamp.conversion.verify_reference CONVERTED_DIR REFERENCE_DIR`.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from vilamp.modeling_vilamp.modeling_vilamp import plan_video_tokens

# The original code marks the video's position in `input_ids` with this id (IMAGE_TOKEN_INDEX).
ORIGINAL_IMAGE_TOKEN_INDEX = -200
NUM_GENERATED_TOKENS = 5
# float32 on the CPU: the reference's own eager-vs-SDPA spread is 2.4e-6 (golden/meta.json), so 1e-4 is generous
# for values and still catches any wrong weight, layout or rule
FLOAT_TOLERANCE = 1e-4
EXACT_STAGES = ("dks_greedy_selection", "keyframe_mask", "generated_ids")
REFERENCE_FILES = ("golden/golden.safetensors", "inputs/frames.npy", "inputs/clip_text.json", "inputs/input_ids.json")


def check_reference_dir(reference_dir: Path):
    """Raises when `reference_dir` lacks a file the verification reads, so a conversion can refuse it before it starts."""
    missing = [name for name in REFERENCE_FILES if not (Path(reference_dir) / name).is_file()]
    if missing:
        raise ValueError(
            f"{reference_dir} is not a golden reference directory (no {', '.join(missing)}); pass the shared reference "
            "directory, which holds golden/ and inputs/."
        )


def load_golden(reference_dir: Path) -> dict[str, torch.Tensor]:
    """The golden tensors of the reference directory."""
    return load_file(Path(reference_dir) / "golden" / "golden.safetensors")


def load_reference_frames(reference_dir: Path) -> list[Image.Image]:
    """The reference video's frames, as the original evaluation hands them over (PIL images)."""
    return [Image.fromarray(frame) for frame in np.load(Path(reference_dir) / "inputs" / "frames.npy")]


def load_reference_question(reference_dir: Path) -> str:
    """The bare question that the keyframe selector ranks the frames against."""
    return json.loads((Path(reference_dir) / "inputs" / "clip_text.json").read_text(encoding="utf-8"))["question"]


def expand_reference_input_ids(reference_dir: Path, video_token_id: int, num_video_tokens: int) -> torch.Tensor:
    """The reference prompt ids `(1, sequence_length)` with the original video marker expanded to video tokens."""
    input_ids = json.loads((Path(reference_dir) / "inputs" / "input_ids.json").read_text(encoding="utf-8"))[
        "input_ids"
    ]
    position = input_ids.index(ORIGINAL_IMAGE_TOKEN_INDEX)
    return torch.tensor([input_ids[:position] + [video_token_id] * num_video_tokens + input_ids[position + 1 :]])


@torch.no_grad()
def model_stage_outputs(
    model,
    pixel_values_videos: torch.Tensor,
    keyframe_mask: torch.Tensor,
    query_embeds: torch.Tensor,
    reference_dir: Path,
) -> dict[str, torch.Tensor]:
    """
    Every model stage for the reference video, named like the golden tensors.

    Args:
        model (`ViLaMPForConditionalGeneration`): the model, in float32 for a comparison at `FLOAT_TOLERANCE`.
        pixel_values_videos (`torch.ByteTensor` of shape `(num_frames, 3, 384, 384)`): the SigLIP frames.
        keyframe_mask (`torch.BoolTensor` of shape `(num_frames,)`): the keyframes.
        query_embeds (`torch.Tensor` of shape `(1, query_embed_dim)`): the CLIP text embedding of the question.
        reference_dir (`Path`): the reference directory, for the prompt ids.
    """
    vision_model = model.model
    projected_features = vision_model.get_frame_features(pixel_values_videos)
    video_tokens = torch.cat(model.get_video_features(pixel_values_videos, keyframe_mask, query_embeds).pooler_output)
    # where the model put each frame's tokens
    layout = plan_video_tokens(
        keyframe_mask, [keyframe_mask.shape[0]], model.config.keyframe_pooled_size**2, model.config.dfm_reference_rule
    )
    input_ids = expand_reference_input_ids(reference_dir, model.config.video_token_id, video_tokens.shape[0])
    inputs_embeds = model.get_input_embeddings()(input_ids)
    placeholder_mask = vision_model.get_placeholder_mask(
        input_ids, inputs_embeds, video_tokens, keyframe_mask, num_videos=1
    )
    inputs = {
        "input_ids": input_ids,
        "pixel_values_videos": pixel_values_videos,
        "keyframe_mask": keyframe_mask,
        "query_embeds": query_embeds,
    }
    generated = model.generate(
        **inputs,
        do_sample=False,
        max_new_tokens=NUM_GENERATED_TOKENS,
        output_logits=True,
        return_dict_in_generate=True,
    )
    return {
        "siglip_features": vision_model.get_vision_features(pixel_values_videos),
        "projected_features": projected_features,
        "pooled_keyframe_tokens": vision_model.pool_keyframes(projected_features[keyframe_mask]),
        "non_keyframe_tokens": video_tokens[layout.token_starts[~keyframe_mask]],
        "video_tokens": video_tokens,
        "inputs_embeds": inputs_embeds.masked_scatter(placeholder_mask, video_tokens),
        "logits": model(**inputs).logits,
        "generated_ids": generated.sequences[:, input_ids.shape[1] :],
        "generate_step_logits": torch.cat(generated.logits),
    }


@torch.no_grad()
def processor_stage_outputs(processor, reference_dir: Path) -> dict[str, torch.Tensor]:
    """The processor's stages for the reference frames and question, named like the golden tensors."""
    from vilamp.processing import (
        clip_resize_and_crop,
        frame_relevance_scores,
        greedy_keyframe_selection,
        normalize_clip_pixels,
    )

    frames = load_reference_frames(reference_dir)
    question = load_reference_question(reference_dir)
    selector = processor.keyframe_selector
    pixel_values_videos = processor.video_processor(frames)["pixel_values_videos"]
    clip_frames = torch.stack([clip_resize_and_crop(frame, selector.image_size) for frame in frames])
    clip_image_embeds = selector.encode_frames(clip_frames).cpu()
    clip_text_embeds = selector.encode_query(question).cpu()
    keyframe_mask = processor.select_keyframes(clip_frames, question).keyframe_mask
    dks_settings = {
        "num_keyframes": processor.video_processor.num_keyframes,
        "relevance_threshold": processor.video_processor.keyframe_relevance_threshold,
        "similarity_threshold": processor.video_processor.keyframe_similarity_threshold,
    }
    return {
        "pixel_values_videos": pixel_values_videos,
        # the model normalises on its device the same way; the golden tensor is sub-sampled every 8 pixels
        "siglip_pixel_values_sub8": ((pixel_values_videos.float() / 255 - 0.5) / 0.5)[:, :, ::8, ::8],
        "clip_pixel_values_sub4": normalize_clip_pixels(clip_frames)[:, :, ::4, ::4],
        "clip_image_embeds": clip_image_embeds,
        "clip_text_embeds": clip_text_embeds[None],
        "f2t_scores": frame_relevance_scores(clip_image_embeds, clip_text_embeds),
        "dks_greedy_selection": greedy_keyframe_selection(clip_image_embeds, clip_text_embeds, **dks_settings).long(),
        "keyframe_mask": keyframe_mask.long(),
    }


def max_differences(outputs: dict[str, torch.Tensor], golden: dict[str, torch.Tensor]) -> dict[str, float]:
    """The largest absolute difference of each stage from its golden tensor (over the golden tensor's columns)."""
    differences = {}
    for name, output in outputs.items():
        if name not in golden:
            continue
        expected = golden[name]
        if output.shape != expected.shape:
            # a converted vocabulary may hold the `<video>` row beyond the reference's columns
            output = output[..., : expected.shape[-1]]
        differences[name] = (output.double() - expected.double()).abs().max().item()
    return differences


def verify_converted(converted_dir: Path, reference_dir: Path) -> dict[str, float]:
    """Loads a converted directory with the Auto classes and returns each stage's max difference from the golden one."""
    from transformers import AutoModel, AutoProcessor

    import vilamp  # noqa: F401  (registers the Auto classes)

    model = AutoModel.from_pretrained(converted_dir, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(converted_dir)
    processor_outputs = processor_stage_outputs(processor, reference_dir)
    keyframe_mask = processor_outputs["keyframe_mask"].bool()
    model_outputs = model_stage_outputs(
        model,
        processor_outputs["pixel_values_videos"],
        keyframe_mask,
        processor_outputs["clip_text_embeds"],
        reference_dir,
    )
    return max_differences({**processor_outputs, **model_outputs}, load_golden(reference_dir))


def format_report(differences: dict[str, float]) -> str:
    """A markdown table of the stages, their max differences and whether each is within its tolerance."""
    lines = ["| stage | max abs difference | tolerance | ok |", "| --- | --- | --- | --- |"]
    for name, difference in differences.items():
        tolerance = 0.0 if name in EXACT_STAGES else FLOAT_TOLERANCE
        lines.append(f"| {name} | {difference:.3g} | {tolerance:g} | {'yes' if difference <= tolerance else 'NO'} |")
    return "\n".join(lines)


def stages_beyond_tolerance(differences: dict[str, float]) -> list[str]:
    """The stages whose max difference exceeds their tolerance."""
    return [
        name
        for name, difference in differences.items()
        if difference > (0.0 if name in EXACT_STAGES else FLOAT_TOLERANCE)
    ]


def report_verification(converted_dir: Path, reference_dir: Path) -> int:
    """Prints the stage report of a converted directory, and on stderr the stages beyond their tolerance; returns the
    exit status (0 when every stage is within tolerance, else 1)."""
    check_reference_dir(reference_dir)
    differences = verify_converted(converted_dir, reference_dir)
    print(format_report(differences))
    failed = stages_beyond_tolerance(differences)
    if failed:
        print(
            f"error: {converted_dir} differs from the reference beyond the tolerance at {', '.join(failed)} (see the "
            "table); do not use this conversion: check the original checkpoint and the converter's version.",
            file=sys.stderr,
        )
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "converted_dir", type=Path, help="a directory written by vilamp.conversion.convert_original_to_hf"
    )
    parser.add_argument("reference_dir", type=Path, help="the golden reference directory (inputs/, golden/)")
    args = parser.parse_args(argv)
    try:
        return report_verification(args.converted_dir, args.reference_dir)
    except (ValueError, OSError) as error:
        print(f"{parser.prog}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1


__all__ = [
    "check_reference_dir",
    "format_report",
    "max_differences",
    "model_stage_outputs",
    "processor_stage_outputs",
    "report_verification",
    "stages_beyond_tolerance",
    "verify_converted",
]

if __name__ == "__main__":
    raise SystemExit(main())
