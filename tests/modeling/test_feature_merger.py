import pytest
import torch

from vilamp.modeling_vilamp import ViLaMPDifferentialFeatureMerger, reference_frame_indices

# keyframes [5, 9, 14, 15] of 16 frames, the reference README's case
REFERENCE_CASE_MASK = torch.tensor([frame in (5, 9, 14, 15) for frame in range(16)])


def test_original_rule_uses_the_keyframe_ordinal_as_frame_number():
    expected = [0, 1, 2, 3, 4, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 3]
    assert reference_frame_indices(REFERENCE_CASE_MASK, "original").tolist() == expected


def test_paper_rule_uses_the_nearest_preceding_keyframe():
    expected = [-1, -1, -1, -1, -1, 5, 5, 5, 5, 9, 9, 9, 9, 9, 14, 15]
    assert reference_frame_indices(REFERENCE_CASE_MASK, "paper").tolist() == expected


def test_reference_rules_agree_when_the_video_starts_with_all_its_keyframes():
    mask = torch.tensor([True, True, True, False, False])
    assert reference_frame_indices(mask, "original").tolist() == [0, 1, 2, 2, 2]
    assert reference_frame_indices(mask, "paper").tolist() == [0, 1, 2, 2, 2]


def test_unknown_reference_rule_is_rejected():
    with pytest.raises(ValueError, match="`rule` must be 'original' or 'paper'"):
        reference_frame_indices(REFERENCE_CASE_MASK, "nearest")


def identity_merger(tau: float) -> ViLaMPDifferentialFeatureMerger:
    """A DFM whose projections are the identity, so its weights follow the raw cosine similarities."""

    class Config:
        query_embed_dim = 2

        class text_config:
            hidden_size = 2

    merger = ViLaMPDifferentialFeatureMerger(Config)
    with torch.no_grad():
        for linear in (merger.linear_q, merger.linear_iq, merger.linear_k, merger.linear_ik):
            linear.weight.copy_(torch.eye(2))
            linear.bias.zero_()
        merger.tau.fill_(tau)
    return merger


def test_paper_rule_on_a_hand_made_video():
    # frames: non-keyframe 0, keyframe 1, non-keyframe 2; two patches each; the query points along patch "a"
    patch_a, patch_b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    keyframe = torch.stack([patch_a, -patch_a])
    non_keyframe = torch.stack([patch_a, patch_b])
    frames = torch.stack([non_keyframe, keyframe, non_keyframe])
    references = reference_frame_indices(torch.tensor([False, True, False]), "paper")
    assert references.tolist() == [-1, 1, 1]
    merger = identity_merger(tau=0.01)
    query = patch_a.expand(1, 2)

    # frame 0 has no preceding keyframe: no redundancy term, so the query-aligned patch "a" takes all the weight
    before_first_keyframe = merger(frames[:1], None, query)
    torch.testing.assert_close(before_first_keyframe, patch_a[None], rtol=0, atol=1e-6)

    # frame 2 repeats patch "a" of keyframe 1 (relevance 1 - redundancy 1 = 0) and patch "b" is new but off-query
    # (0 - cos(-a, b) = 0): equal scores, so the token is the mean of the two patches
    after_keyframe = merger(frames[2:], frames[references[2:]], query)
    torch.testing.assert_close(after_keyframe, ((patch_a + patch_b) / 2)[None], rtol=0, atol=1e-6)


def test_scores_stay_finite_in_bfloat16_with_a_small_temperature():
    merger = identity_merger(tau=1e-4).to(torch.bfloat16)
    frames = torch.randn(3, 5, 2, dtype=torch.bfloat16)
    tokens = merger(frames, frames.flip(0), torch.randn(3, 2, dtype=torch.bfloat16))
    assert torch.isfinite(tokens.float()).all()
