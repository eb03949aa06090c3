import hashlib
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from vilamp.conversion.convert_original_to_hf import convert_clip_to_open_clip
from vilamp.processing.keyframe_selection import (
    KeyframeSelector,
    fill_keyframe_slots,
    frame_relevance_scores,
    greedy_keyframe_selection,
    normalize_clip_pixels,
    select_keyframes,
)
from vilamp.processing.video_processing_vilamp import clip_resize_and_crop

# The reference measured 9.5e-07 between eager and SDPA attention for the CLIP embeddings; open_clip runs its own
# attention, so allow a little more than that.
CLIP_EMBEDS_ATOL = 1e-5
# Cosines of embeddings that agree to CLIP_EMBEDS_ATOL.
RELEVANCE_ATOL = 1e-5
REFERENCE_NUM_KEYFRAMES = 4
REFERENCE_RELEVANCE_THRESHOLD = 0.2
REFERENCE_SIMILARITY_THRESHOLD = 0.85


@pytest.fixture(scope="module")
def golden(reference_dir):
    return load_file(reference_dir / "golden" / "golden.safetensors")


@pytest.fixture(scope="module")
def golden_meta(reference_dir):
    return json.loads((reference_dir / "golden" / "meta.json").read_text())


@pytest.fixture(scope="module")
def reference_selector(reference_dir) -> KeyframeSelector:
    state_dict = load_file(reference_dir / "original_tiny" / "model.safetensors")
    clip_config = json.loads((reference_dir / "clip-tiny-patch32" / "config.json").read_text())
    open_clip_state_dict, model_config = convert_clip_to_open_clip(state_dict, clip_config)
    return KeyframeSelector.from_state_dict(open_clip_state_dict, model_config)


@pytest.fixture(scope="module")
def reference_clip_frames(reference_dir) -> torch.Tensor:
    frames = np.load(reference_dir / "inputs" / "frames.npy")
    return torch.stack([clip_resize_and_crop(Image.fromarray(frame)) for frame in frames])


@pytest.fixture(scope="module")
def reference_question(reference_dir) -> str:
    return json.loads((reference_dir / "inputs" / "clip_text.json").read_text())["question"]


def test_clip_pixel_values_match_golden_bit_for_bit(reference_clip_frames, golden, golden_meta):
    pixel_values = normalize_clip_pixels(reference_clip_frames)
    assert list(pixel_values.shape) == golden_meta["clip_pixel_values_shape"]
    assert hashlib.sha256(pixel_values.numpy().tobytes()).hexdigest() == golden_meta["clip_pixel_values_sha256"]
    torch.testing.assert_close(pixel_values[:, :, ::4, ::4], golden["clip_pixel_values_sub4"], rtol=0, atol=0)
    torch.testing.assert_close(
        pixel_values.double().sum(dim=(2, 3)), golden["clip_pixel_values_frame_channel_sum"], rtol=0, atol=1e-6
    )


def test_open_clip_tokenizer_gives_reference_query_ids(reference_dir, reference_selector):
    clip_text = json.loads((reference_dir / "inputs" / "clip_text.json").read_text())
    token_ids = reference_selector.tokenizer([clip_text["question"]])[0]
    assert token_ids.tolist() == clip_text["open_clip_ids_context77"]


def test_clip_image_embeds_match_golden(reference_selector, reference_clip_frames, golden):
    frame_embeds = reference_selector.encode_frames(reference_clip_frames)
    torch.testing.assert_close(frame_embeds, golden["clip_image_embeds"], rtol=0, atol=CLIP_EMBEDS_ATOL)


def test_clip_text_embeds_match_golden_unnormalised(reference_selector, reference_question, golden):
    query_embeds = reference_selector.encode_query(reference_question)
    torch.testing.assert_close(query_embeds, golden["clip_text_embeds"][0], rtol=0, atol=CLIP_EMBEDS_ATOL)


def test_relevance_scores_match_golden(reference_selector, reference_clip_frames, reference_question, golden):
    scores = frame_relevance_scores(
        reference_selector.encode_frames(reference_clip_frames), reference_selector.encode_query(reference_question)
    )
    torch.testing.assert_close(scores, golden["f2t_scores"], rtol=0, atol=RELEVANCE_ATOL)


def test_greedy_selection_and_keyframe_mask_match_golden(
    reference_selector, reference_clip_frames, reference_question, golden
):
    frame_embeds = reference_selector.encode_frames(reference_clip_frames)
    query_embeds = reference_selector.encode_query(reference_question)
    settings = dict(
        num_keyframes=REFERENCE_NUM_KEYFRAMES,
        relevance_threshold=REFERENCE_RELEVANCE_THRESHOLD,
        similarity_threshold=REFERENCE_SIMILARITY_THRESHOLD,
    )
    greedy_selection = greedy_keyframe_selection(frame_embeds, query_embeds, **settings)
    keyframe_mask = select_keyframes(frame_embeds, query_embeds, **settings)
    assert torch.equal(greedy_selection.long(), golden["dks_greedy_selection"])
    assert torch.equal(keyframe_mask.long(), golden["keyframe_mask"])


def test_keyframe_mask_from_golden_embeddings_is_exact(golden):
    keyframe_mask = select_keyframes(
        golden["clip_image_embeds"],
        golden["clip_text_embeds"][0],
        num_keyframes=REFERENCE_NUM_KEYFRAMES,
        relevance_threshold=REFERENCE_RELEVANCE_THRESHOLD,
        similarity_threshold=REFERENCE_SIMILARITY_THRESHOLD,
    )
    assert torch.equal(keyframe_mask.long(), golden["keyframe_mask"])


def original_seq_frame_selection(frame_embeds, query_embeds, num_keyframes, relevance_threshold, similarity_threshold):
    """The greedy loop of the original `SeqFrameSelector.forward`, with its full N x N similarity matrix."""
    frames = F.normalize(frame_embeds, p=2, dim=1)
    f2f_scores = frames @ frames.T
    f2t_scores = (frames @ F.normalize(query_embeds.reshape(1, -1), p=2, dim=1).T).reshape(-1)
    num_frames = f2t_scores.shape[0]
    is_visited = torch.zeros(num_frames, dtype=torch.bool)
    is_selected = [0] * num_frames
    sorted_scores, sorted_indices = torch.sort(f2t_scores, descending=True)
    idx = 0
    while idx < num_frames and sum(is_selected) < num_keyframes:
        if sorted_scores[idx] < relevance_threshold:
            break
        current = sorted_indices[idx].item()
        if is_visited[current]:
            idx += 1
            continue
        is_visited[current] = True
        is_selected[current] = 1
        is_visited |= f2f_scores[current] > similarity_threshold
        idx += 1
    return is_selected


def readme_distribute_frames(is_selected: list[int], num_keyframes: int) -> list[int]:
    """`distribute_frames` written from the reference README, section (iv) step 4."""
    num_frames = len(is_selected)
    budget = num_keyframes - sum(is_selected)
    gaps, start = [], None
    for frame, selected in enumerate(is_selected + [1]):
        if not selected and start is None:
            start = frame
        elif selected and start is not None:
            gaps.append((start, frame - start))
            start = None
    spacing = next(d for d in range(1, num_frames + 1) if sum(math.ceil(n / d) - 1 for _, n in gaps) <= budget)
    result = list(is_selected)
    placed = 0
    for start, length in gaps:
        k = math.ceil(length / spacing) - 1
        for i in range(k):
            result[min(start + math.ceil(length / (k + 1)) * (i + 1), start + length - 1)] = 1
        placed += k
    remaining = budget - placed
    for start, length in reversed(gaps):
        for position in range(start + length - 1, start - 1, -1):
            if remaining > 0 and result[position] == 0:
                result[position] = 1
                remaining -= 1
    return result


def clustered_embeddings(generator, num_frames, embed_dim=8):
    """Frames drawn around a few scene centres, so that the similarity threshold matters."""
    num_scenes = int(torch.randint(1, 6, (1,), generator=generator))
    centres = torch.randn(num_scenes, embed_dim, generator=generator)
    scenes = torch.randint(0, num_scenes, (num_frames,), generator=generator)
    noise_scale = float(torch.rand(1, generator=generator)) * 0.6
    return centres[scenes] + noise_scale * torch.randn(num_frames, embed_dim, generator=generator)


def test_select_keyframes_equals_original_loop_and_readme_fill_on_random_cases():
    generator = torch.Generator().manual_seed(0)
    for case in range(400):
        num_frames = int(torch.randint(1, 60, (1,), generator=generator))
        num_keyframes = [1, 2, 4, 8, 32, num_frames, num_frames + 3][case % 7]
        frame_embeds = clustered_embeddings(generator, num_frames)
        query_embeds = frame_embeds[int(torch.randint(0, num_frames, (1,), generator=generator))] + torch.randn(
            8, generator=generator
        )
        # every fourth case puts all frames below the relevance floor
        relevance_threshold = 1.01 if case % 4 == 0 else float(torch.rand(1, generator=generator)) * 0.8 - 0.2
        similarity_threshold = float(torch.rand(1, generator=generator)) * 0.5 + 0.5
        expected_selection = original_seq_frame_selection(
            frame_embeds, query_embeds, num_keyframes, relevance_threshold, similarity_threshold
        )
        settings = dict(
            num_keyframes=num_keyframes,
            relevance_threshold=relevance_threshold,
            similarity_threshold=similarity_threshold,
        )
        selection = greedy_keyframe_selection(frame_embeds, query_embeds, **settings)
        keyframe_mask = select_keyframes(frame_embeds, query_embeds, **settings)
        assert selection.long().tolist() == expected_selection, f"case {case}"
        assert keyframe_mask.long().tolist() == readme_distribute_frames(expected_selection, num_keyframes), (
            f"case {case}"
        )
        assert int(keyframe_mask.sum()) == min(num_keyframes, num_frames)


def test_fill_reproduces_reference_example():
    selection = torch.zeros(16, dtype=torch.bool)
    selection[[9, 15]] = True
    keyframe_mask = fill_keyframe_slots(selection, 4)
    assert torch.nonzero(keyframe_mask).flatten().tolist() == [5, 9, 14, 15]


def test_fill_with_nothing_selected_spreads_keyframes():
    keyframe_mask = fill_keyframe_slots(torch.zeros(10, dtype=torch.bool), 3)
    assert torch.nonzero(keyframe_mask).flatten().tolist() == [3, 6, 9]


def test_more_keyframes_than_frames_selects_every_frame():
    frame_embeds = torch.randn(3, 8, generator=torch.Generator().manual_seed(1))
    keyframe_mask = select_keyframes(
        frame_embeds, torch.randn(8), num_keyframes=32, relevance_threshold=0.2, similarity_threshold=0.85
    )
    assert keyframe_mask.all()


def test_relevance_threshold_is_strict():
    frame_embeds = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    query_embeds = torch.tensor([1.0, 0.0])
    score = float(frame_relevance_scores(frame_embeds, query_embeds)[1])
    settings = dict(num_keyframes=3, similarity_threshold=1.0)
    at_score = greedy_keyframe_selection(frame_embeds, query_embeds, relevance_threshold=score, **settings)
    above_score = greedy_keyframe_selection(
        frame_embeds,
        query_embeds,
        relevance_threshold=float(np.nextafter(np.float32(score), np.float32(2))),
        **settings,
    )
    assert at_score.tolist() == [True, True, False]
    assert above_score.tolist() == [True, False, False]


def test_similarity_threshold_is_strict():
    frame_embeds = torch.tensor([[1.0, 0.0], [0.8, 0.6]])
    query_embeds = torch.tensor([1.0, 0.0])
    normalized = F.normalize(frame_embeds, dim=-1)
    similarity = float(normalized[1] @ normalized[0])
    settings = dict(num_keyframes=2, relevance_threshold=-1.0)
    at_similarity = greedy_keyframe_selection(frame_embeds, query_embeds, similarity_threshold=similarity, **settings)
    below_similarity = greedy_keyframe_selection(
        frame_embeds,
        query_embeds,
        similarity_threshold=float(np.nextafter(np.float32(similarity), np.float32(-2))),
        **settings,
    )
    assert at_similarity.tolist() == [True, True]
    assert below_similarity.tolist() == [True, False]


def test_long_question_is_truncated_to_77_tokens_with_end_token_last(tiny_keyframe_selector_dir):
    selector = KeyframeSelector.from_pretrained(tiny_keyframe_selector_dir)
    question = "what happens to the red ball " * 40
    token_ids = selector.tokenizer([question])[0]
    assert token_ids.shape == (77,)
    assert int(token_ids[-1]) == 49407
    assert selector.encode_query(question).shape == (16,)


def test_encode_frames_rejects_normalised_pixels(tiny_keyframe_selector_dir):
    selector = KeyframeSelector.from_pretrained(tiny_keyframe_selector_dir)
    with pytest.raises(TypeError, match="`clip_frames` must be uint8"):
        selector.encode_frames(torch.zeros(2, 3, 224, 224))


def test_encode_frames_batches_give_the_same_embeddings(tiny_keyframe_selector_dir):
    selector = KeyframeSelector.from_pretrained(tiny_keyframe_selector_dir)
    clip_frames = torch.randint(
        0, 256, (5, 3, 224, 224), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    all_at_once = selector.encode_frames(clip_frames)
    selector.frame_batch_size = 2
    torch.testing.assert_close(selector.encode_frames(clip_frames), all_at_once, rtol=0, atol=1e-6)


def test_keyframe_selector_save_and_load_round_trip(tiny_keyframe_selector_dir, tmp_path):
    selector = KeyframeSelector.from_pretrained(tiny_keyframe_selector_dir)
    selector.save_pretrained(tmp_path / "saved")
    reloaded = KeyframeSelector.from_pretrained(tmp_path / "saved")
    assert reloaded.model_config == selector.model_config
    torch.testing.assert_close(reloaded.encode_query("a dog"), selector.encode_query("a dog"), rtol=0, atol=0)
    assert sorted(path.name for path in (tmp_path / "saved").iterdir()) == [
        "keyframe_selector.safetensors",
        "keyframe_selector_config.json",
    ]


def test_convert_clip_rejects_checkpoint_without_keyframe_selector(reference_dir):
    clip_config = json.loads((reference_dir / "clip-tiny-patch32" / "config.json").read_text())
    with pytest.raises(ValueError, match="No key of the state dict starts with `model.frame_selector.model.`"):
        convert_clip_to_open_clip({"model.embed_tokens.weight": torch.zeros(2, 2)}, clip_config)


def test_converted_config_takes_head_counts_from_clip_config(reference_dir):
    state_dict = load_file(reference_dir / "original_tiny" / "model.safetensors")
    clip_config = json.loads((reference_dir / "clip-tiny-patch32" / "config.json").read_text())
    clip_config["vision_config"]["num_attention_heads"] = 4
    clip_config["text_config"]["num_attention_heads"] = 1
    _, model_config = convert_clip_to_open_clip(state_dict, clip_config)
    assert model_config["vision_cfg"]["head_width"] == 8
    assert model_config["text_cfg"]["heads"] == 1
