"""Frame-parallel video encoding over gloo processes on the CPU gives the tokens, logits and ids of one process, from
pixels and from frame features (each rank gathers only its span of them)."""

import os

import pytest
import torch
from torch import distributed as dist
from torch import multiprocessing as mp

from vilamp.modeling_vilamp.frame_parallel import frame_span_bounds
from vilamp.modeling_vilamp.modeling_vilamp import plan_video_tokens
from vilamp.testing import build_tiny_model, free_port

RULES = ("original", "paper")
# float32 on the CPU: the ranks encode their frames in other batches and run on one thread each, so matrix products
# may round differently in the last bits (measured: tokens equal, logits within 1e-6)
TOLERANCE = 1e-5

# Batches of videos as keyframe masks, one list per video, with the world sizes each is meant for.
CASES = {
    # 6 frames on 2 ranks (spans 0-2, 3-5) and 9 frames on 3 ranks (spans of 3): frames of the later spans compare
    # with frames of earlier spans under both rules
    "cut_two_ranks": [[1, 0, 0, 0, 1, 0]],
    "cut_three_ranks": [[1, 0, 0, 0, 0, 1, 0, 0, 0]],
    # two videos of uneven length, the second starting with a non-keyframe
    "two_uneven_videos": [[1, 0, 0, 0, 1, 0, 0], [0, 1, 0, 0]],
    # fewer frames than ranks on 3 ranks: rank 0 gets no frame, rank 2's frame compares with rank 1's
    "shorter_than_ranks": [[1, 0]],
    "two_short_videos": [[1], [0, 1]],
}
GENERATE_CASE = "two_uneven_videos"


VIDEO_INPUT_NAMES = ("pixel_values_videos", "keyframe_mask", "query_embeds", "video_frame_counts")


def encoding_results(model, inputs_by_case, rule) -> dict:
    """The video tokens and logits of every case, from pixels and from each video's frame features, and the greedy ids
    of `GENERATE_CASE`, keyed by (rule, case, what)."""
    results = {}
    for name, inputs in inputs_by_case.items():
        video_inputs = {key: inputs[key] for key in VIDEO_INPUT_NAMES}
        frame_features = [
            model.get_video_frame_features(pixels)
            for pixels in inputs["pixel_values_videos"].split(inputs["video_frame_counts"].tolist())
        ]
        feature_inputs = {**video_inputs, "pixel_values_videos": None, "video_frame_features": frame_features}
        with torch.no_grad():
            results[rule, name, "video_tokens"] = torch.cat(model.get_video_features(**video_inputs).pooler_output)
            results[rule, name, "video_tokens_from_features"] = torch.cat(
                model.get_video_features(**feature_inputs).pooler_output
            )
            results[rule, name, "logits"] = model(**inputs).logits
        if name == GENERATE_CASE:
            results[rule, name, "generated_ids"] = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    return results


def encode_on_rank(rank, world_size, port, inputs_by_case, output_dir):
    """One rank: encodes every case with frame-parallel encoding and saves the tokens, logits and greedy ids."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        results = {}
        for rule in RULES:
            model = build_tiny_model(seed=0, dfm_reference_rule=rule).eval()
            model.enable_frame_parallel()
            results.update(encoding_results(model, inputs_by_case, rule))
            inputs = next(iter(inputs_by_case.values()))
            with pytest.raises(ValueError, match="without their gradient"):
                model.get_video_features(**{key: inputs[key] for key in VIDEO_INPUT_NAMES})
        torch.save(results, os.path.join(output_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def single_process_results(inputs_by_case):
    results = {}
    for rule in RULES:
        results.update(
            encoding_results(build_tiny_model(seed=0, dfm_reference_rule=rule).eval(), inputs_by_case, rule)
        )
    return results


def frames_compared_across_spans(keyframe_masks, rule, world_size) -> list[int]:
    """The non-keyframes whose reference frame lies in an earlier rank's span."""
    keyframe_mask = torch.tensor([flag for mask in keyframe_masks for flag in mask], dtype=torch.bool)
    # the tokens per keyframe (4) change token positions only, not reference frames
    layout = plan_video_tokens(keyframe_mask, [len(mask) for mask in keyframe_masks], 4, rule)
    bounds = frame_span_bounds(len(keyframe_mask), world_size)
    span_starts = [bounds[rank] for rank in range(world_size) for _ in range(bounds[rank], bounds[rank + 1])]
    return [
        frame
        for frame, (reference, start) in enumerate(zip(layout.reference_frames, span_starts))
        if not keyframe_mask[frame] and 0 <= reference < start
    ]


@pytest.mark.slow
@pytest.mark.parametrize("world_size", [2, 3])
def test_frame_parallel_encoding_equals_one_process(world_size, video_inputs, tmp_path):
    config = build_tiny_model(seed=0).config
    inputs_by_case = {
        name: video_inputs(config, masks, seed=index) for index, (name, masks) in enumerate(CASES.items())
    }
    for rule in RULES:
        assert frames_compared_across_spans(
            CASES[f"cut_{'two' if world_size == 2 else 'three'}_ranks"], rule, world_size
        )
    if world_size == 3:
        assert frames_compared_across_spans(CASES["shorter_than_ranks"], "paper", 3) == [1]

    mp.spawn(encode_on_rank, args=(world_size, free_port(), inputs_by_case, str(tmp_path)), nprocs=world_size)

    expected = single_process_results(inputs_by_case)
    for rank in range(world_size):
        results = torch.load(tmp_path / f"rank{rank}.pt")
        assert results.keys() == expected.keys()
        for key, value in expected.items():
            if key[-1] == "generated_ids":
                assert torch.equal(results[key], value), f"rank {rank}, {key}"
            else:
                torch.testing.assert_close(results[key], value, rtol=0, atol=TOLERANCE, msg=f"rank {rank}, {key}")


def test_enable_frame_parallel_without_process_group_names_the_fix():
    model = build_tiny_model(seed=0)
    with pytest.raises(ValueError, match="call `torch.distributed.init_process_group\\(\\)`"):
        model.enable_frame_parallel()
