import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vilamp.conversion.convert_original_to_hf import convert_clip_to_open_clip
from vilamp.processing import (
    KeyframeSelector,
    ViLaMPProcessor,
    ViLaMPVideoProcessor,
    frame_relevance_scores,
    num_video_tokens,
    resolve_device,
)
from vilamp.testing import write_video

VIDEO_TOKEN_ID = 508
QWEN_1_5_PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<video>\n{question}<|im_end|>\n"
    "<|im_start|>assistant\n"
)


@pytest.fixture
def processor(tiny_tokenizer, tiny_keyframe_selector_dir) -> ViLaMPProcessor:
    return ViLaMPProcessor(
        tokenizer=tiny_tokenizer,
        num_keyframes=2,
        keyframe_pooled_size=3,
        keyframe_selector=KeyframeSelector.from_pretrained(tiny_keyframe_selector_dir),
    )


def video_message(video, question="What is moving?"):
    return [{"role": "user", "content": [{"type": "video", "path": video}, {"type": "text", "text": question}]}]


def test_siglip_frames_match_golden_pixel_values_bit_for_bit(reference_dir):
    frames = np.load(reference_dir / "inputs" / "frames.npy")
    golden = load_file(reference_dir / "golden" / "golden.safetensors")
    meta = json.loads((reference_dir / "golden" / "meta.json").read_text())
    pixel_values_videos = ViLaMPVideoProcessor()([Image.fromarray(frame) for frame in frames])["pixel_values_videos"]
    assert pixel_values_videos.dtype == torch.uint8
    # the normalisation the model applies on its device
    pixel_values = (pixel_values_videos.float() / 255 - 0.5) / 0.5
    assert list(pixel_values.shape) == meta["siglip_pixel_values_shape"]
    assert hashlib.sha256(pixel_values.numpy().tobytes()).hexdigest() == meta["siglip_pixel_values_sha256"]
    torch.testing.assert_close(pixel_values[:, :, ::8, ::8], golden["siglip_pixel_values_sub8"], rtol=0, atol=0)


def test_reference_case_end_to_end_matches_original(reference_dir, tiny_tokenizer):
    """The reference frames and question through the processor: keyframes, query, pixels and prompt ids."""
    state_dict = load_file(reference_dir / "original_tiny" / "model.safetensors")
    clip_config = json.loads((reference_dir / "clip-tiny-patch32" / "config.json").read_text())
    selector = KeyframeSelector.from_state_dict(*convert_clip_to_open_clip(state_dict, clip_config))
    processor = ViLaMPProcessor(tokenizer=tiny_tokenizer, num_keyframes=4, keyframe_selector=selector)
    golden = load_file(reference_dir / "golden" / "golden.safetensors")
    reference_ids = json.loads((reference_dir / "inputs" / "input_ids.json").read_text())
    clip_text = json.loads((reference_dir / "inputs" / "clip_text.json").read_text())
    frames = np.load(reference_dir / "inputs" / "frames.npy")

    messages = video_message(frames, reference_ids["query"])
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, query=clip_text["question"]
    )

    assert torch.equal(inputs["keyframe_mask"].long(), golden["keyframe_mask"])
    torch.testing.assert_close(inputs["query_embeds"], golden["clip_text_embeds"], rtol=0, atol=1e-5)
    expected_ids = []
    for token_id in reference_ids["input_ids"]:
        expected_ids.extend([VIDEO_TOKEN_ID] * 797 if token_id == reference_ids["image_token_index"] else [token_id])
    assert inputs["input_ids"][0].tolist() == expected_ids


def test_chat_template_matches_qwen_1_5_format(processor):
    prompt = processor.apply_chat_template(
        video_message("clip.mp4", "What color is the ball?"), add_generation_prompt=True
    )
    assert prompt == QWEN_1_5_PROMPT.format(question="What color is the ball?")


def test_chat_template_renders_assistant_turn_and_further_messages(processor):
    messages = [
        {"role": "system", "content": "Be brief."},
        *video_message("clip.mp4", "What happens?"),
        {"role": "assistant", "content": [{"type": "text", "text": "A ball rolls."}]},
        {"role": "user", "content": "Which colour?"},
    ]
    assert processor.apply_chat_template(messages, add_generation_prompt=True) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n<video>\nWhat happens?<|im_end|>\n"
        "<|im_start|>assistant\nA ball rolls.<|im_end|>\n<|im_start|>user\nWhich colour?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_video_file_gives_contract_outputs(processor, make_video_file):
    inputs = processor.apply_chat_template(
        video_message(str(make_video_file(num_frames=40, fps=8))),
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )
    assert inputs["pixel_values_videos"].shape == (5, 3, 384, 384)
    assert inputs["pixel_values_videos"].dtype == torch.uint8
    assert inputs["video_frame_counts"].tolist() == [5]
    assert inputs["video_frame_counts"].dtype == torch.int64
    assert inputs["keyframe_mask"].dtype == torch.bool
    assert int(inputs["keyframe_mask"].sum()) == 2
    assert inputs["query_embeds"].shape == (1, 16) and inputs["query_embeds"].dtype == torch.float32
    assert int((inputs["input_ids"] == VIDEO_TOKEN_ID).sum()) == num_video_tokens(5, 2, 3) == 3 * 3 * 2 + 3 + 1
    assert set(processor.model_input_names) == set(inputs.keys())


def test_query_defaults_to_the_user_text(processor, make_video_file):
    question = "Where does the bar go?"
    inputs = processor.apply_chat_template(
        video_message(str(make_video_file(num_frames=16)), question), tokenize=True, return_dict=True
    )
    expected = processor.keyframe_selector.encode_query(question)
    torch.testing.assert_close(inputs["query_embeds"][0], expected, rtol=0, atol=0)


def test_bare_question_is_put_into_the_chat_template(processor, make_video_file):
    video = str(make_video_file(num_frames=16))
    question = "Where does the bar go?"
    from_question = processor(text=question, videos=video)
    from_messages = processor.apply_chat_template(
        video_message(video, question), add_generation_prompt=True, tokenize=True, return_dict=True
    )
    assert processor.question_prompt(question) == QWEN_1_5_PROMPT.format(question=question)
    for name in processor.model_input_names:
        torch.testing.assert_close(from_question[name], from_messages[name], rtol=0, atol=0)


def test_batch_with_text_only_prompt_is_left_padded(processor, make_video_file):
    video = str(make_video_file(num_frames=24))
    inputs = processor(text=["Just text, no video.", "<video>\nWhat moves?", "<video>\nAgain?"], videos=[video, video])
    assert inputs["video_frame_counts"].tolist() == [3, 3]
    assert inputs["keyframe_mask"].view(2, 3).sum(dim=1).tolist() == [2, 2]
    assert (
        (inputs["input_ids"] == VIDEO_TOKEN_ID).sum(dim=1).tolist()
        == [0, num_video_tokens(3, 2, 3), num_video_tokens(3, 2, 3)]
        == [0, 20, 20]
    )
    assert inputs["attention_mask"][0, 0] == 0 and inputs["attention_mask"][:, -1].all()


def test_batch_of_two_videos_equals_each_alone(processor, make_video_file):
    short_video, long_video = str(make_video_file(num_frames=16)), str(make_video_file(num_frames=48))
    batch = processor(text=["<video>\nWhat moves?", "<video>\nHow bright?"], videos=[short_video, long_video])
    alone = [
        processor(text="<video>\nWhat moves?", videos=short_video),
        processor(text="<video>\nHow bright?", videos=long_video),
    ]
    assert torch.equal(batch["pixel_values_videos"], torch.cat([item["pixel_values_videos"] for item in alone]))
    assert torch.equal(batch["keyframe_mask"], torch.cat([item["keyframe_mask"] for item in alone]))
    torch.testing.assert_close(
        batch["query_embeds"], torch.cat([item["query_embeds"] for item in alone]), rtol=0, atol=0
    )
    for row, item in enumerate(alone):
        assert batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist() == item["input_ids"][0].tolist()


def test_a_video_loaded_once_answers_a_batch_of_questions_as_the_file_does(processor, make_video_file):
    video = str(make_video_file(num_frames=48))
    questions = ["<video>\nWhat moves?", "<video>\nHow bright?", "<video>\nWhere is the bar?"]
    from_file = processor(text=questions, videos=[video] * 3)
    loaded = processor.load_video(video)
    embedded = processor.embed_frames(loaded)
    assert embedded.clip_frames is None and embedded.frame_embeds.shape == (len(loaded.siglip_frames), 16)
    # a video loaded with the same settings decodes to the same frames, whether its CLIP frames are embedded yet or not
    for video_input in (loaded, embedded):
        inputs = processor(text=questions, videos=[video_input] * 3)
        for name in processor.model_input_names:
            torch.testing.assert_close(inputs[name], from_file[name], rtol=0, atol=0)
    assert processor.embed_frames(embedded) is embedded


def test_frame_settings_with_a_loaded_video_are_an_error_and_keyframe_settings_apply(processor, make_video_file):
    loaded = processor.load_video(str(make_video_file(num_frames=48)))
    with pytest.raises(
        ValueError, match=r"`videos\[0\]`: it is a `LoadedVideo`.*\['fps', 'max_frames'\].*`load_video`"
    ):
        processor(text="<video>\nWhat moves?", videos=loaded, fps=2, max_frames=3)
    inputs = processor(text="<video>\nWhat moves?", videos=loaded, num_keyframes=1)
    assert int(inputs["keyframe_mask"].sum()) == 1


def test_a_loaded_video_without_clip_frames_or_embeddings_is_an_error(processor, make_video_file):
    frames_only = processor.video_processor.load_video(str(make_video_file(num_frames=16)))
    with pytest.raises(ValueError, match="neither CLIP frames nor `frame_embeds`.*`ViLaMPProcessor.load_video`"):
        processor(text="<video>\nWhat moves?", videos=frames_only)
    with pytest.raises(ValueError, match="no CLIP frames to embed"):
        processor.embed_frames(frames_only)


def test_a_webm_file_whose_header_counts_no_frames_gets_its_duration_from_the_frames(processor, tmp_path):
    rng = np.random.default_rng(0)
    frames = (rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(24))
    path = write_video(tmp_path / "clip.webm", frames, fps=8, codec="libvpx-vp9")
    metadata = processor.load_video(str(path)).metadata
    assert (metadata.total_num_frames, metadata.fps, metadata.duration) == (24, 8.0, 3.0)
    assert metadata.frames_indices == [0, 8, 16]


def test_save_and_load_round_trip_gives_same_outputs(processor, make_video_file, tmp_path):
    messages = video_message(str(make_video_file(num_frames=32)))
    processor.save_pretrained(tmp_path / "processor")
    reloaded = ViLaMPProcessor.from_pretrained(tmp_path / "processor")
    video_processor = reloaded.video_processor
    assert (video_processor.num_keyframes, reloaded.keyframe_pooled_size, video_processor.max_frames) == (2, 3, 600)
    before = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    after = reloaded.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key


def test_get_num_multimodal_tokens_matches_placeholders(processor):
    num_tokens = processor._get_num_multimodal_tokens(video_sizes=[(5, 48, 64), (1, 48, 64)])["num_video_tokens"]
    assert num_tokens == [num_video_tokens(5, 2, 3), num_video_tokens(1, 1, 3)] == [22, 10]


def test_fewer_frames_than_keyframes_makes_every_frame_a_keyframe(tiny_tokenizer, tiny_keyframe_selector_dir):
    processor = ViLaMPProcessor(
        tokenizer=tiny_tokenizer, keyframe_selector=KeyframeSelector.from_pretrained(tiny_keyframe_selector_dir)
    )
    video = np.random.default_rng(0).integers(0, 256, (3, 20, 30, 3), dtype=np.uint8)
    inputs = processor(text="<video>\nWhat is this?", videos=video)
    assert inputs["keyframe_mask"].tolist() == [True, True, True]
    assert int((inputs["input_ids"] == VIDEO_TOKEN_ID).sum()) == 196 * 3 + 1


def test_one_frame_video_is_one_keyframe(processor, make_video_file):
    inputs = processor(text="<video>\nWhat is this?", videos=str(make_video_file(num_frames=1)))
    assert inputs["keyframe_mask"].tolist() == [True]
    assert int((inputs["input_ids"] == VIDEO_TOKEN_ID).sum()) == 3 * 3 + 1


def test_list_of_images_and_max_frames(processor):
    images = [Image.new("RGB", (40, 30), (10 * index, 0, 0)) for index in range(10)]
    processor.video_processor.max_frames = 4
    inputs = processor(text="<video>\nWhat is red?", videos=images)
    assert inputs["video_frame_counts"].tolist() == [4]


def test_long_question_is_truncated_not_rejected(processor, make_video_file):
    inputs = processor(
        text="<video>\nQuestion?", videos=str(make_video_file(num_frames=8)), query="why is the bar moving " * 50
    )
    assert inputs["query_embeds"].shape == (1, 16)


def test_missing_video_file_error_names_the_video(processor, tmp_path):
    with pytest.raises(ValueError, match=r"`videos\[0\]`: No video file at .*nowhere.mp4"):
        processor(text="<video>\nWhat?", videos=str(tmp_path / "nowhere.mp4"))


def test_corrupt_video_file_error(processor, tmp_path):
    path = tmp_path / "corrupt.mp4"
    path.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ValueError, match="corrupt.mp4` could not be decoded"):
        processor(text="<video>\nWhat?", videos=str(path))


def test_placeholder_mismatch_error_names_counts(processor, make_video_file):
    video = str(make_video_file(num_frames=8))
    with pytest.raises(ValueError, match="Found total 1 <video> tokens in `text` and 2 videos"):
        processor(text=["<video>\nWhat?", "No video."], videos=[video, video])
    with pytest.raises(ValueError, match="Found total 2 <video> tokens in `text` and 0 videos"):
        processor(text="<video><video>\nWhat?")


def test_empty_question_error(processor, make_video_file):
    with pytest.raises(ValueError, match="The question for video 0 is empty"):
        processor(text="<video>\n", videos=str(make_video_file(num_frames=8)))


def test_query_count_mismatch_error(processor, make_video_file):
    video = str(make_video_file(num_frames=8))
    with pytest.raises(ValueError, match="one string per video; got .* for 2 videos"):
        processor(text="<video><video>\nCompare.", videos=[video, video], query=["only one"])


def test_video_array_must_be_uint8_frames(processor):
    with pytest.raises(ValueError, match="must be uint8 of shape \\(num_frames, height, width, 3\\)"):
        processor(text="<video>\nWhat?", videos=np.zeros((4, 8, 8, 3), dtype=np.float32))


def test_tokenizer_without_video_token_is_rejected(tiny_tokenizer):
    with pytest.raises(ValueError, match="The tokenizer has no `<image>` token"):
        ViLaMPProcessor(tokenizer=tiny_tokenizer, video_token="<image>")


def test_invalid_setting_is_rejected(tiny_tokenizer):
    with pytest.raises(ValueError, match="`num_keyframes` must be an integer of at least 1, got 0"):
        ViLaMPProcessor(tokenizer=tiny_tokenizer, num_keyframes=0)


def test_per_call_video_kwargs_flat_nested_and_in_chat_template_leave_settings_unchanged(processor, make_video_file):
    video = str(make_video_file(num_frames=48, fps=8))
    default = processor(text="<video>\nWhat moves?", videos=video)
    flat = processor(text="<video>\nWhat moves?", videos=video, max_frames=3, num_keyframes=1)
    nested = processor(text="<video>\nWhat moves?", videos=video, videos_kwargs={"max_frames": 3, "num_keyframes": 1})
    chat = processor.apply_chat_template(
        video_message(video),
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        max_frames=3,
        num_keyframes=1,
    )
    assert default["video_frame_counts"].tolist() == [6]
    for inputs in (flat, nested, chat):
        assert inputs["video_frame_counts"].tolist() == [3]
        assert int(inputs["keyframe_mask"].sum()) == 1
        assert int((inputs["input_ids"] == VIDEO_TOKEN_ID).sum()) == num_video_tokens(3, 1, 3)
    doubled = processor(text="<video>\nWhat moves?", videos=video, fps=2.0)
    assert doubled["video_frame_counts"].tolist() == [12]
    video_processor = processor.video_processor
    assert (video_processor.max_frames, video_processor.num_keyframes, video_processor.fps) == (600, 2, 1.0)


def test_unknown_kwarg_is_an_error_naming_the_accepted_ones(processor, make_video_file):
    video = str(make_video_file(num_frames=8))
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['max_frame'\].*'max_frames'"):
        processor(text="<video>\nWhat?", videos=video, max_frame=3)
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['keyframes'\]"):
        processor(text="<video>\nWhat?", videos=video, videos_kwargs={"keyframes": 3})
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['max_frame'\]"):
        processor.apply_chat_template(video_message(video), tokenize=True, max_frame=3)


def test_per_call_settings_are_checked_like_init_settings(processor, tiny_tokenizer, make_video_file):
    video = str(make_video_file(num_frames=8))
    with pytest.raises(ValueError, match="`num_keyframes` must be an integer of at least 1, got 0"):
        processor(text="<video>\nWhat?", videos=video, num_keyframes=0)
    with pytest.raises(ValueError, match="`num_keyframes` must be an integer of at least 1, got 0"):
        ViLaMPProcessor(tokenizer=tiny_tokenizer, num_keyframes=0)
    with pytest.raises(
        ValueError, match=r"`keyframe_similarity_threshold` is a cosine similarity and must lie in \[-1, 1\], got 2"
    ):
        processor(text="<video>\nWhat?", videos=video, keyframe_similarity_threshold=2)
    with pytest.raises(ValueError, match="`fps` must be positive, got -1"):
        processor(text="<video>\nWhat?", videos=video, fps=-1)
    with pytest.raises(ValueError, match="`num_frames` and `fps` are mutually exclusive"):
        processor(text="<video>\nWhat?", videos=video, num_frames=2, fps=2)
    with pytest.raises(ValueError, match="`do_center_crop` is not supported by ViLaMP"):
        processor(text="<video>\nWhat?", videos=video, do_center_crop=True)
    with pytest.raises(ValueError, match="`return_tensors` must be 'pt'"):
        processor(text="<video>\nWhat?", videos=video, return_tensors="np")


def test_channels_first_frames_equal_channels_last(processor):
    frames = np.random.default_rng(0).integers(0, 256, (5, 20, 30, 3), dtype=np.uint8)
    channels_last = processor(text="<video>\nWhat?", videos=frames)
    channels_first = processor(text="<video>\nWhat?", videos=torch.from_numpy(frames).permute(0, 3, 1, 2))
    for name in processor.model_input_names:
        assert torch.equal(channels_last[name], channels_first[name]), name


def test_ambiguous_or_wrong_video_shape_is_rejected(processor):
    with pytest.raises(ValueError, match=r"shape \(4, 3, 8, 3\) is ambiguous"):
        processor(text="<video>\nWhat?", videos=np.zeros((4, 3, 8, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"got dtype uint8 and shape \(4, 8, 8, 4\)"):
        processor(text="<video>\nWhat?", videos=np.zeros((4, 8, 8, 4), dtype=np.uint8))


def test_batch_is_left_padded_even_when_the_tokenizer_pads_right(processor, make_video_file):
    processor.tokenizer.padding_side = "right"
    short_video, long_video = str(make_video_file(num_frames=8)), str(make_video_file(num_frames=40))
    prompts = ["<video>\nWhat?", "<video>\nWhat moves in this long clip?"]
    left = processor(text=prompts, videos=[short_video, long_video])
    assert left["attention_mask"][0, 0] == 0 and left["attention_mask"][:, -1].all()
    right = processor(text=prompts, videos=[short_video, long_video], padding_side="right")
    assert right["attention_mask"][0, -1] == 0 and right["attention_mask"][:, 0].all()


def test_video_kwargs_reach_the_video_processor(processor):
    frames = np.random.default_rng(0).integers(0, 256, (4, 20, 30, 3), dtype=np.uint8)
    inputs = processor(text="<video>\nWhat?", videos=frames, size={"height": 32, "width": 32}, do_rescale=True)
    assert inputs["pixel_values_videos"].shape == (4, 3, 32, 32)
    assert inputs["pixel_values_videos"].dtype == torch.float32 and inputs["pixel_values_videos"].max() <= 1


def test_get_num_vision_tokens_matches_the_call(processor, make_video_file):
    videos = [str(make_video_file(num_frames=8)), str(make_video_file(num_frames=40))]
    inputs = processor(text=["<video>\nWhat?", "<video>\nWhy?"], videos=videos, num_keyframes=3)
    counts = inputs["video_frame_counts"].tolist()
    helper = processor._get_num_multimodal_tokens(video_sizes=[(count, 48, 64) for count in counts], num_keyframes=3)
    assert helper["num_video_tokens"] == (inputs["input_ids"] == VIDEO_TOKEN_ID).sum(dim=1).tolist()


def test_chat_template_variables_reach_the_template(processor):
    template = "{{ greeting }}: {% for message in messages %}{{ message['content'] }}{% endfor %}"
    messages = [{"role": "user", "content": "Hi"}]
    assert processor.apply_chat_template(messages, chat_template=template, greeting="Hello") == "Hello: Hi"
    assert (
        processor.apply_chat_template(messages, chat_template=template, chat_template_kwargs={"greeting": "Hey"})
        == "Hey: Hi"
    )


def test_assistant_masks_cover_the_answers_of_a_batch_with_uneven_videos(processor, make_video_file):
    conversations = [
        [*video_message(str(make_video_file(num_frames=8)), "What?"), {"role": "assistant", "content": "A bar."}],
        [
            *video_message(str(make_video_file(num_frames=40)), "And here?"),
            {"role": "assistant", "content": [{"type": "text", "text": "It moves right."}]},
        ],
    ]
    inputs = processor.apply_chat_template(
        conversations, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, return_labels=True
    )
    masks = inputs["assistant_masks"].bool()
    decoded = [processor.tokenizer.decode(ids[mask]) for ids, mask in zip(inputs["input_ids"], masks)]
    assert decoded == ["A bar.<|im_end|>", "It moves right.<|im_end|>"]
    assert torch.equal(inputs["labels"] != -100, masks)


def test_processor_saved_with_flat_settings_still_loads(processor, tmp_path, make_video_file):
    processor.save_pretrained(tmp_path)
    config_path = tmp_path / "processor_config.json"
    config = json.loads(config_path.read_text())
    video_processor = config.pop("video_processor")
    config.update(
        num_keyframes=video_processor["num_keyframes"],
        fps=1.0,
        max_frames=5,
        frame_size=56,
        keyframe_relevance_threshold=0.2,
        keyframe_similarity_threshold=0.85,
    )
    config_path.write_text(json.dumps(config))
    reloaded = ViLaMPProcessor.from_pretrained(tmp_path)
    video_processor = reloaded.video_processor
    assert (video_processor.num_keyframes, video_processor.max_frames, video_processor.size["height"]) == (2, 5, 56)
    assert reloaded.keyframe_pooled_size == 3
    overridden = ViLaMPProcessor.from_pretrained(tmp_path, max_frames=7)
    assert overridden.video_processor.max_frames == 7


def assert_same_inputs(actual, expected):
    assert set(actual) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(actual[name], tensor), name


def test_call_equals_its_stages_one_by_one_on_a_batch_of_two_uneven_videos(processor, make_video_file):
    videos = [make_video_file(num_frames=24), make_video_file(num_frames=80, width=96, height=48)]
    prompts = ["<video>\nWhat moves?", "Compare <video> with the first one."]
    queries = ["What moves?", "How bright is it?"]
    expected = processor(text=prompts, videos=[str(video) for video in videos], query=queries)

    loaded_videos = [processor.load_video(video) for video in videos]
    selections = [
        processor.select_keyframes(loaded_video.clip_frames, query)
        for loaded_video, query in zip(loaded_videos, queries)
    ]
    frames = [loaded_video.siglip_frames for loaded_video in loaded_videos]
    inputs = processor.build_inputs(prompts, frames, selections, padding=True, padding_side="left")

    assert [len(loaded_video.siglip_frames) for loaded_video in loaded_videos] == [3, 10]
    assert_same_inputs(inputs, expected)


def test_bare_question_equals_its_stages_one_by_one(processor, make_video_file):
    video = make_video_file(num_frames=40)
    question = "Where does the bar go?"
    loaded_video = processor.load_video(video)
    selection = processor.select_keyframes(loaded_video.clip_frames, question)
    inputs = processor.build_inputs(processor.question_prompt(question), [loaded_video.siglip_frames], [selection])
    assert_same_inputs(inputs, processor(text=question, videos=str(video)))


def test_load_video_gives_both_frame_sizes_times_and_metadata(processor, make_video_file):
    loaded_video = processor.load_video(make_video_file(num_frames=40, fps=8, width=64, height=48))
    assert loaded_video.siglip_frames.shape == (5, 3, 384, 384) and loaded_video.siglip_frames.dtype == torch.uint8
    assert loaded_video.clip_frames.shape == (5, 3, 224, 224) and loaded_video.clip_frames.dtype == torch.uint8
    assert loaded_video.timestamps_seconds == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert loaded_video.metadata.frames_indices == [0, 8, 16, 24, 32]
    assert (loaded_video.metadata.width, loaded_video.metadata.height) == (64, 48)


def test_load_video_progress_reports_every_frame_of_a_file_and_of_given_frames(processor, make_video_file):
    reported = []
    loaded_video = processor.load_video(make_video_file(num_frames=72, fps=8), progress=reported.append)
    assert len(loaded_video.siglip_frames) == 9 and reported == [1] * 9
    reported.clear()
    frames = np.random.default_rng(0).integers(0, 256, (7, 20, 30, 3), dtype=np.uint8)
    processor.load_video(frames, max_frames=4, progress=reported.append)
    assert reported == [1] * 4


def test_select_keyframes_progress_reports_every_frame_one_clip_batch_at_a_time(processor, make_video_file):
    processor.keyframe_selector.frame_batch_size = 4
    loaded_video = processor.load_video(make_video_file(num_frames=80))
    reported = []
    processor.select_keyframes(loaded_video.clip_frames, "What moves?", progress=reported.append)
    assert reported == [4, 4, 2]


def test_keyframe_selection_holds_the_ranked_keyframes_relevance_and_query(processor, make_video_file):
    loaded_video = processor.load_video(make_video_file(num_frames=80))
    question = "What moves?"
    selection = processor.select_keyframes(loaded_video.clip_frames, question, num_keyframes=4)
    selector = processor.keyframe_selector
    frame_embeds, query_embeds = selector.encode_frames(loaded_video.clip_frames), selector.encode_query(question)
    assert int(selection.keyframe_mask.sum()) == 4 and selection.keyframe_mask.shape == (10,)
    assert not (selection.ranked_keyframe_mask & ~selection.keyframe_mask).any()
    relevance_scores = frame_relevance_scores(frame_embeds, query_embeds)
    torch.testing.assert_close(selection.relevance_scores, relevance_scores, rtol=0, atol=0)
    torch.testing.assert_close(selection.query_embeds, query_embeds, rtol=0, atol=0)
    from_embeds = processor.select_keyframes(query=question, frame_embeds=frame_embeds, num_keyframes=4)
    for name in ("keyframe_mask", "ranked_keyframe_mask", "relevance_scores", "query_embeds"):
        assert torch.equal(getattr(from_embeds, name), getattr(selection, name)), name


def test_stage_inputs_are_checked(processor, make_video_file):
    loaded_video = processor.load_video(make_video_file(num_frames=40))
    with pytest.raises(ValueError, match="exactly one of `clip_frames` or `frame_embeds`"):
        processor.select_keyframes(query="What moves?")
    with pytest.raises(ValueError, match="`query` must be the question to rank the frames against, got ' '"):
        processor.select_keyframes(loaded_video.clip_frames, " ")
    selection = processor.select_keyframes(loaded_video.clip_frames, "What moves?")
    with pytest.raises(ValueError, match=r"`video_frames\[0\]` has 4 frames but its keyframe selection 5"):
        processor.build_inputs("<video>\nWhat moves?", [loaded_video.siglip_frames[:4]], [selection])
    with pytest.raises(ValueError, match="`video_frames` holds 1 videos but `keyframe_selections` 0"):
        processor.build_inputs("<video>\nWhat moves?", [loaded_video.siglip_frames], [])


def test_keyframe_selector_runs_on_the_gpu_when_there_is_one_unless_told(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    expected = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("auto") == expected
    assert ViLaMPProcessor.from_pretrained(tmp_path).keyframe_selector.device.type == expected.type
    assert ViLaMPProcessor.from_pretrained(tmp_path, device="meta").keyframe_selector.device == torch.device("meta")
    assert ViLaMPProcessor.from_pretrained(tmp_path, device="cpu").keyframe_selector.device == torch.device("cpu")
    with pytest.raises(ValueError, match="`device` 'gpu0' is not a torch device"):
        ViLaMPProcessor.from_pretrained(tmp_path, device="gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given when torch sees no GPU")
def test_asking_for_a_gpu_that_torch_does_not_see_is_an_error(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="`device` 'cuda' asks for a GPU, but torch sees none"):
        ViLaMPProcessor.from_pretrained(tmp_path, device="cuda")


def test_video_processor_makes_both_frame_sizes_in_one_pass_and_clip_frames_only_when_asked(
    processor, make_video_file
):
    video = make_video_file(num_frames=40, fps=8, width=64, height=48)
    both = processor.video_processor.load_video(video, keyframe_image_size=224)
    siglip_only = processor.video_processor.load_video(video)
    assert both.clip_frames.shape == (5, 3, 224, 224) and siglip_only.clip_frames is None
    assert torch.equal(both.siglip_frames, siglip_only.siglip_frames)
    assert torch.equal(both.siglip_frames, processor.video_processor(str(video))["pixel_values_videos"])
    assert torch.equal(both.clip_frames, processor.load_video(video).clip_frames)


def test_processor_without_keyframe_selector_fails_before_decoding(tiny_tokenizer, tmp_path):
    processor = ViLaMPProcessor(tokenizer=tiny_tokenizer)
    with pytest.raises(ValueError, match="^This processor has no `keyframe_selector`"):
        processor(text="<video>\nWhat?", videos=str(tmp_path / "never_opened.mp4"))
