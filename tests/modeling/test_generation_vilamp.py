"""`generate` with every decoding option transformers offers a VLM, on real video files of uneven lengths.

`generate` repeats its inputs along dim 0 for beams and `num_return_sequences`, which for `pixel_values_videos` and
`keyframe_mask` is frames, not videos: each test checks that every copy of a prompt sees exactly its own video, with
multi-frame videos (keyframes and non-keyframes) of different lengths in one batch.
"""

import pytest
import torch

from vilamp.testing import build_tiny_model

# float32 on the CPU: the first step of each copy must equal a plain forward of its prompt up to rounding
FIRST_STEP_ATOL = 1e-5
# 6 and 10 frames at 1 fps (K = 2 keyframes each), so the rows differ in length and in frames


@pytest.fixture(scope="module")
def model():
    return build_tiny_model(seed=1).eval()


@pytest.fixture(scope="module")
def batch(processor, questions, videos):
    """Two questions about two videos of 6 and 10 sampled frames, left-padded into one batch."""
    inputs = processor(text=list(questions), videos=videos, return_tensors="pt")
    assert inputs["video_frame_counts"].tolist() == [6, 10]
    assert not inputs["keyframe_mask"].all() and inputs["keyframe_mask"].any()
    return inputs


@pytest.fixture(scope="module")
def last_logits(model, batch) -> torch.Tensor:
    """The next-token logits of each prompt from a plain forward, `(batch_size, vocab_size)`."""
    with torch.no_grad():
        return model(**batch).logits[:, -1]


def first_step_logits(model, batch, **generate_kwargs) -> torch.Tensor:
    """The raw logits of the first generated token of every sequence `generate` runs, `(num_sequences, vocab_size)`."""
    outputs = model.generate(
        **batch, max_new_tokens=1, return_dict_in_generate=True, output_logits=True, **generate_kwargs
    )
    return outputs.logits[0]


@pytest.mark.parametrize("num_beams", [2, 3])
def test_each_beam_sees_its_own_video(model, batch, last_logits, num_beams):
    logits = first_step_logits(model, batch, num_beams=num_beams, do_sample=False)
    expected = last_logits.repeat_interleave(num_beams, dim=0)
    torch.testing.assert_close(logits, expected, rtol=0, atol=FIRST_STEP_ATOL)


def test_each_returned_sample_sees_its_own_video(model, batch, last_logits):
    logits = first_step_logits(model, batch, do_sample=True, num_return_sequences=3)
    torch.testing.assert_close(logits, last_logits.repeat_interleave(3, dim=0), rtol=0, atol=FIRST_STEP_ATOL)


def test_beam_search_returns_each_rows_sequences_in_order(model, batch, processor, questions, videos):
    torch.manual_seed(0)
    together = model.generate(**batch, num_beams=2, num_return_sequences=2, max_new_tokens=4, do_sample=False)
    assert together.shape[0] == 4
    for row, (question, video) in enumerate(zip(questions, videos)):
        alone = processor(text=question, videos=video, return_tensors="pt")
        alone_ids = model.generate(**alone, num_beams=2, num_return_sequences=2, max_new_tokens=4, do_sample=False)
        new_tokens = together[2 * row : 2 * row + 2, batch["input_ids"].shape[1] :]
        assert new_tokens.tolist() == alone_ids[:, alone["input_ids"].shape[1] :].tolist()


@pytest.mark.parametrize(
    "decoding",
    [
        {"cache_implementation": "static"},
        {"use_cache": False},
        {"return_dict_in_generate": True, "output_scores": True},
    ],
    ids=["static-cache", "no-cache", "return-dict"],
)
def test_greedy_decoding_options_give_the_default_ids(model, batch, decoding):
    expected = model.generate(**batch, max_new_tokens=6, do_sample=False)
    generated = model.generate(**batch, max_new_tokens=6, do_sample=False, **decoding)
    sequences = generated.sequences if decoding.get("return_dict_in_generate") else generated
    assert sequences.tolist() == expected.tolist()


@pytest.mark.parametrize("assistance", ["assistant_model", "prompt_lookup_num_tokens"])
def test_assisted_decoding_gives_the_default_ids(model, processor, questions, videos, assistance):
    # transformers runs assisted decoding one prompt at a time; the assistant is another tiny ViLaMP on the same video
    inputs = processor(text=questions[1], videos=videos[1], return_tensors="pt")
    assisted = (
        {"assistant_model": build_tiny_model(seed=2).eval()} if assistance == "assistant_model" else {assistance: 2}
    )
    expected = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    generated = model.generate(**inputs, max_new_tokens=6, do_sample=False, **assisted)
    assert generated.tolist() == expected.tolist()


def test_sampling_is_reproducible_with_a_seed(model, batch):
    torch.manual_seed(0)
    first = model.generate(**batch, max_new_tokens=5, do_sample=True, top_k=20, temperature=1.5)
    torch.manual_seed(0)
    second = model.generate(**batch, max_new_tokens=5, do_sample=True, top_k=20, temperature=1.5)
    assert first.tolist() == second.tolist()


@pytest.mark.parametrize("num_beams", [1, 2])
def test_inputs_embeds_without_input_ids_generate_as_input_ids(model, batch, num_beams):
    # the placeholders are found in `inputs_embeds`, where the embedding of `<video>` stands
    inputs = dict(batch)
    inputs_embeds = model.get_input_embeddings()(inputs.pop("input_ids"))
    expected = model.generate(**batch, max_new_tokens=4, do_sample=False, num_beams=num_beams)
    generated = model.generate(
        inputs_embeds=inputs_embeds, **inputs, max_new_tokens=4, do_sample=False, num_beams=num_beams
    )
    assert generated.tolist() == expected[:, batch["input_ids"].shape[1] :].tolist()


def test_beams_over_prompts_without_placeholders_are_refused(model, batch):
    inputs = dict(batch)
    inputs_embeds = torch.zeros(*inputs.pop("input_ids").shape, model.config.text_config.hidden_size)
    with pytest.raises(
        ValueError, match=r"2 videos were passed but the prompts hold placeholders for 0; pass `input_ids`"
    ):
        model.generate(inputs_embeds=inputs_embeds, **inputs, max_new_tokens=1, num_beams=2)
