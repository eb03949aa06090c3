"""A loaded video answers any number of questions: `video_frame_features` from `get_video_frame_features` stand in for
`pixel_values_videos` and give the same logits and ids, bit for bit (float32 on the CPU)."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from vilamp.training import enable_gradient_checkpointing

KEYFRAMES_TWO_OF_FIVE = [False, True, False, False, True]
KEYFRAMES_TWO_OF_THREE = [True, False, True]
# three questions about one six-frame video, each selecting its own keyframes
KEYFRAMES_OF_THREE_QUESTIONS = [
    [True, False, False, False, True, False],
    [False, False, True, False, False, True],
    [True, True, False, False, False, False],
]
VIDEO_INPUT_NAMES = ("keyframe_mask", "query_embeds", "video_frame_counts")


def video_pixels(inputs) -> list[torch.Tensor]:
    """The uint8 frames of each video of a batch built by `video_inputs`."""
    return list(inputs["pixel_values_videos"].split(inputs["video_frame_counts"].tolist()))


def with_features(inputs, video_frame_features) -> dict:
    """The same inputs with `video_frame_features` in place of `pixel_values_videos`."""
    inputs = {name: value for name, value in inputs.items() if name != "pixel_values_videos"}
    return {**inputs, "video_frame_features": video_frame_features}


def questions_about_one_video(model, video_inputs) -> tuple[dict, torch.Tensor]:
    """A batch of three questions about one video, with its pixels repeated as the processor would pass them, and the
    video's frame features."""
    inputs = video_inputs(model.config, KEYFRAMES_OF_THREE_QUESTIONS, prompt_lengths=[(3, 4), (2, 2), (4, 1)])
    pixels = video_pixels(inputs)[0]
    inputs["pixel_values_videos"] = pixels.repeat(3, 1, 1, 1)
    return inputs, model.get_video_frame_features(pixels)


def assert_answers_equal(model, pixel_inputs, feature_inputs):
    with torch.no_grad():
        expected_logits = model(**pixel_inputs).logits
        logits = model(**feature_inputs).logits
    assert torch.equal(logits, expected_logits)
    expected_ids = model.generate(**pixel_inputs, max_new_tokens=5, do_sample=False)
    assert model.generate(**feature_inputs, max_new_tokens=5, do_sample=False).tolist() == expected_ids.tolist()


@pytest.mark.parametrize("rule", ["original", "paper"])
def test_one_video_from_features_equals_from_pixels(tiny_model, video_inputs, rule):
    model = tiny_model(dfm_reference_rule=rule)
    inputs = video_inputs(model.config, [KEYFRAMES_TWO_OF_FIVE])
    features = model.get_video_frame_features(inputs["pixel_values_videos"])
    assert_answers_equal(model, inputs, with_features(inputs, features))


@pytest.mark.parametrize("form", ["list", "one-tensor"])
def test_two_videos_of_different_lengths_from_features_equal_from_pixels(tiny_model, video_inputs, form):
    # chunks of one frame: a batch from pixels then encodes each frame as each video alone does
    model = tiny_model(vision_chunk_size=1)
    inputs = video_inputs(model.config, [KEYFRAMES_TWO_OF_FIVE, KEYFRAMES_TWO_OF_THREE], [(3, 4), (2, 2)])
    features = [model.get_video_frame_features(pixels) for pixels in video_pixels(inputs)]
    assert_answers_equal(model, inputs, with_features(inputs, features if form == "list" else torch.cat(features)))


def test_each_question_from_features_equals_that_question_asked_afresh(tiny_model, video_inputs):
    model = tiny_model()
    inputs, features = questions_about_one_video(model, video_inputs)
    together = model.generate(**with_features(inputs, [features] * 3), max_new_tokens=5, do_sample=False)
    for question, mask in enumerate(KEYFRAMES_OF_THREE_QUESTIONS):
        frames = slice(question * len(mask), (question + 1) * len(mask))
        keep = inputs["attention_mask"][question].bool()
        alone = {
            "input_ids": inputs["input_ids"][question][keep][None],
            "attention_mask": inputs["attention_mask"][question][keep][None],
            "pixel_values_videos": inputs["pixel_values_videos"][frames],
            "keyframe_mask": inputs["keyframe_mask"][frames],
            "query_embeds": inputs["query_embeds"][question : question + 1],
        }
        with torch.no_grad():
            expected_logits = model(**alone).logits
            logits = model(**with_features(alone, features)).logits
        assert torch.equal(logits, expected_logits)
        alone_ids = model.generate(**alone, max_new_tokens=5, do_sample=False)[0, alone["input_ids"].shape[1] :]
        assert together[question, inputs["input_ids"].shape[1] :].tolist() == alone_ids.tolist()


def test_three_questions_about_one_tensor_equal_from_pixels(tiny_model, video_inputs):
    # chunks of one frame: the batch from pixels encodes the video three times, each frame as the video alone does
    model = tiny_model(vision_chunk_size=1)
    inputs, features = questions_about_one_video(model, video_inputs)
    assert_answers_equal(model, inputs, with_features(inputs, [features, features, features]))


def test_features_kept_in_host_memory_equal_features_kept_on_the_device(tiny_model, video_inputs):
    model = tiny_model(vision_chunk_size=2)
    inputs = video_inputs(model.config, [KEYFRAMES_TWO_OF_FIVE])
    on_device = model.get_video_frame_features(inputs["pixel_values_videos"])
    on_host = model.get_video_frame_features(inputs["pixel_values_videos"], storage_device="cpu")
    assert on_host.device == torch.device("cpu")
    assert on_device.device == model.model.multi_modal_projector.linear_2.weight.device
    assert on_host.dtype == on_device.dtype == model.dtype
    assert on_host.shape == (5, 16, model.config.text_config.hidden_size)
    assert torch.equal(on_host, on_device)
    with torch.no_grad():
        assert torch.equal(on_device, model.model.get_frame_features(inputs["pixel_values_videos"]))


@pytest.mark.gpu
def test_features_in_host_memory_answer_as_pixels_on_the_gpu(tiny_model, video_inputs):
    model = tiny_model().to("cuda")
    inputs = {name: value.to("cuda") for name, value in video_inputs(model.config, [KEYFRAMES_TWO_OF_FIVE]).items()}
    on_host = model.get_video_frame_features(inputs["pixel_values_videos"], storage_device="cpu")
    on_device = model.get_video_frame_features(inputs["pixel_values_videos"])
    assert on_host.device.type == "cpu" and on_device.device.type == "cuda"
    assert torch.equal(on_host, on_device.cpu())
    assert_answers_equal(model, inputs, with_features(inputs, on_host))


def test_returned_sequences_and_beams_from_features_equal_from_pixels(tiny_model, video_inputs):
    model = tiny_model()
    inputs = video_inputs(model.config, [KEYFRAMES_TWO_OF_FIVE, KEYFRAMES_TWO_OF_THREE], [(3, 4), (2, 2)])
    features = [model.get_video_frame_features(pixels) for pixels in video_pixels(inputs)]
    feature_inputs = with_features(inputs, features)
    options = {"num_beams": 2, "num_return_sequences": 2, "max_new_tokens": 4, "do_sample": False}
    expected = model.generate(**inputs, **options)
    generated = model.generate(**feature_inputs, **options)
    assert generated.shape[0] == 4
    assert generated.tolist() == expected.tolist()
    sampling = {"do_sample": True, "num_return_sequences": 2, "max_new_tokens": 4}
    torch.manual_seed(0)
    expected = model.generate(**inputs, **sampling)
    torch.manual_seed(0)
    sampled = model.generate(**feature_inputs, **sampling)
    assert sampled.shape == (4, inputs["input_ids"].shape[1] + 4)
    assert sampled.tolist() == expected.tolist()


def test_repeated_rows_hold_each_videos_features_without_copying(tiny_model, video_inputs):
    model = tiny_model()
    inputs, features = questions_about_one_video(model, video_inputs)
    placeholder_mask = inputs["input_ids"] == model.config.video_token_id
    repeated = model.model.repeat_videos_with_rows(
        placeholder_mask,
        2,
        video_frame_features=[features] * 3,
        **{name: inputs[name] for name in VIDEO_INPUT_NAMES},
    )
    assert "pixel_values_videos" not in repeated
    assert len(repeated["video_frame_features"]) == 6
    assert all(entry is features for entry in repeated["video_frame_features"])
    assert repeated["video_frame_counts"].tolist() == [6] * 6
    one_tensor = model.model.repeat_videos_with_rows(
        placeholder_mask,
        2,
        video_frame_features=torch.cat([features] * 3),
        **{name: inputs[name] for name in VIDEO_INPUT_NAMES},
    )
    storage = one_tensor["video_frame_features"][0].untyped_storage().data_ptr()
    assert all(entry.untyped_storage().data_ptr() == storage for entry in one_tensor["video_frame_features"])


class FrameFeatureOps(TorchDispatchMode):
    """Records, for every operation that makes or reads frame features `(num_frames, num_patches, hidden_size)`, the
    frames of its outputs and the storages of its inputs."""

    def __init__(self, num_patches, hidden_size):
        super().__init__()
        self.feature_shape = (num_patches, hidden_size)
        self.output_frames, self.input_storages = [], set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        for tensor in tree_flatten((args, kwargs))[0]:
            if isinstance(tensor, torch.Tensor) and tuple(tensor.shape[-2:]) == self.feature_shape:
                self.input_storages.add(tensor.untyped_storage().data_ptr())
        for tensor in tree_flatten(output)[0]:
            if isinstance(tensor, torch.Tensor) and tuple(tensor.shape[-2:]) == self.feature_shape:
                self.output_frames.append(tensor.shape[0] if tensor.ndim == 3 else 1)
        return output


def test_questions_about_one_video_read_its_features_one_chunk_at_a_time(tiny_model, video_inputs):
    model = tiny_model(vision_chunk_size=2)
    inputs, features = questions_about_one_video(model, video_inputs)
    ops = FrameFeatureOps(*features.shape[1:])
    with torch.no_grad(), ops:
        model(**with_features(inputs, [features] * 3))
    assert features.untyped_storage().data_ptr() in ops.input_storages
    # never a copy of the video, let alone of its three repetitions: at most one chunk of frames at once
    assert ops.output_frames and max(ops.output_frames) <= 2


def test_gradient_checkpointing_trains_the_merger_on_constant_features(tiny_model, video_inputs):
    model = tiny_model().train()
    inputs = video_inputs(model.config, [KEYFRAMES_TWO_OF_FIVE])
    labels = inputs["input_ids"].masked_fill(inputs["input_ids"] == model.config.video_token_id, -100)
    features = model.get_video_frame_features(inputs["pixel_values_videos"])
    assert not features.requires_grad
    losses, merger_grads = [], []
    for checkpointed in (False, True):
        if checkpointed:
            enable_gradient_checkpointing(model)
        model.zero_grad()
        loss = model(**with_features(inputs, features), labels=labels).loss
        loss.backward()
        losses.append(loss)
        merger_grads.append(model.model.feature_merger.linear_iq.weight.grad.clone())
        # the features stand for the vision tower and the projector, which take no part
        assert model.model.multi_modal_projector.linear_1.weight.grad is None
    torch.testing.assert_close(losses[1], losses[0], rtol=0, atol=0)
    torch.testing.assert_close(merger_grads[1], merger_grads[0], rtol=0, atol=1e-7)
    with torch.no_grad():
        torch.testing.assert_close(losses[0], model(**inputs, labels=labels).loss, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (
            lambda inputs, features, pixels: {**inputs, "pixel_values_videos": pixels},
            ValueError,
            r"Pass exactly one of `pixel_values_videos` .* and `video_frame_features` .*; got both",
        ),
        (
            lambda inputs, features, pixels: {**inputs, "video_frame_features": features[:, :, :16]},
            ValueError,
            r"`video_frame_features` has hidden size 16 but the model's is 32 \(`config.text_config.hidden_size`\)",
        ),
        (
            lambda inputs, features, pixels: {**inputs, "video_frame_features": [features[:, :9]]},
            ValueError,
            r"`video_frame_features\[0\]` has 9 patches per frame but the vision tower makes 16",
        ),
        (
            lambda inputs, features, pixels: {**inputs, "video_frame_features": features[0]},
            ValueError,
            r"`video_frame_features` must have shape \(num_frames, num_patches, hidden_size\), got \(16, 32\)",
        ),
        (
            lambda inputs, features, pixels: {**inputs, "video_frame_features": features.double()},
            TypeError,
            r"`video_frame_features` is torch.float64 but the model computes in torch.float32",
        ),
        (
            lambda inputs, features, pixels: {**inputs, "video_frame_features": features.numpy()},
            TypeError,
            r"`video_frame_features` must be a tensor .* or a list of one such tensor per video",
        ),
        (
            lambda inputs, features, pixels: {**inputs, "video_frame_features": [features[:2], features[2:]]},
            ValueError,
            r"`video_frame_features` holds 2 videos but `query_embeds` has 1; pass one entry per video",
        ),
        (
            lambda inputs, features, pixels: {**inputs, "video_frame_counts": torch.tensor([4])},
            ValueError,
            r"`video_frame_counts` \[4\] differs from the frames of the entries of `video_frame_features` \[5\]",
        ),
        (
            lambda inputs, features, pixels: {
                **inputs,
                "video_frame_features": torch.cat([features, features]),
                "query_embeds": inputs["query_embeds"].repeat(2, 1),
                "keyframe_mask": inputs["keyframe_mask"].repeat(2),
                "video_frame_counts": torch.tensor([5, 4]),
            },
            ValueError,
            r"`video_frame_counts` \[5, 4\] must give at least one frame to each of the 2 videos of `query_embeds` "
            r"and sum to the 10 frames of `video_frame_features`",
        ),
        (
            lambda inputs, features, pixels: {**inputs, "keyframe_mask": inputs["keyframe_mask"][:4]},
            ValueError,
            r"`keyframe_mask` has shape \(4,\) but `video_frame_features` has 5 frames",
        ),
    ],
    ids=[
        "both",
        "hidden-size",
        "num-patches",
        "not-per-frame",
        "dtype",
        "not-a-tensor",
        "videos-and-queries",
        "counts-and-entries",
        "counts-do-not-sum",
        "keyframe-mask",
    ],
)
def test_invalid_frame_features_fail_with_a_clear_message(tiny_model, video_inputs, change, error, message):
    model = tiny_model()
    inputs = video_inputs(model.config, [KEYFRAMES_TWO_OF_FIVE])
    features = model.get_video_frame_features(inputs["pixel_values_videos"])
    inputs = change(with_features(inputs, [features]), features, inputs["pixel_values_videos"])
    with pytest.raises(error, match=message):
        model(**inputs)


def test_placeholders_without_frames_or_features_name_both(tiny_model, video_inputs):
    model = tiny_model()
    inputs = video_inputs(model.config, [KEYFRAMES_TWO_OF_FIVE])
    del inputs["pixel_values_videos"]
    with pytest.raises(
        ValueError, match=r"no video was passed; pass .*`pixel_values_videos`, or `video_frame_features`"
    ):
        model(**inputs)
    with pytest.raises(ValueError, match=r"Pass exactly one of `pixel_values_videos` .*; got neither"):
        model.get_video_features(**{name: inputs[name] for name in VIDEO_INPUT_NAMES})
