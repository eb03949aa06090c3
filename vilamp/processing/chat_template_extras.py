"""What ViLaMP's `apply_chat_template` needs and transformers' `ProcessorMixin.apply_chat_template` lacks: the
question of each video of a conversation, and assistant-token masks that follow the expanded video placeholders alike
under transformers 5.17 (which does not shift them) and the newest 5.x."""

import torch
from transformers.feature_extraction_utils import BatchFeature


def check_assistant_mask_arguments(
    *,
    tokenize: bool,
    return_dict: bool,
    return_assistant_tokens_mask: bool,
    return_labels: bool,
    add_generation_prompt: bool,
    continue_final_message: bool,
):
    """Checks that assistant masks or labels, when asked, come with tokenized complete conversations."""
    if not (return_assistant_tokens_mask or return_labels):
        return
    if not (tokenize and return_dict):
        name = "return_labels" if return_labels else "return_assistant_tokens_mask"
        raise ValueError(
            f"`{name}=True` needs `tokenize=True` and `return_dict=True`: the result is returned next to the "
            f"`input_ids` in the `BatchFeature`; got tokenize={tokenize}, return_dict={return_dict}."
        )
    if add_generation_prompt or continue_final_message:
        raise ValueError(
            "`return_labels` and `return_assistant_tokens_mask` mark complete answers: leave `add_generation_prompt` "
            "and `continue_final_message` False and end the conversation with the assistant's answer."
        )


def named_chat_template(chat_templates: str | dict[str, str], chat_template: str | None) -> str:
    """The template `chat_template` names among the processor's `chat_templates` (itself when it is a template), or
    the processor's `"default"` one when it is `None`."""
    templates = chat_templates if isinstance(chat_templates, dict) else {"default": chat_templates}
    if chat_template is None and "default" not in templates:
        raise ValueError(
            'The processor has no chat template named "default"; pass `chat_template=` with one of '
            f"{sorted(templates)} or a template."
        )
    return templates.get(chat_template or "default", chat_template)


def conversation_videos(conversations: list[list[dict]]) -> tuple[list, list[str]]:
    """
    Every video block of the conversations, in order, with the question it is about: the text of its message.

    Args:
        conversations (`list[list[dict]]`): the conversations, each a list of messages whose `content` is a list of
            blocks (`{"type": "video", "video" | "path" | "url": ...}`, `{"type": "text", "text": ...}`).

    Returns:
        `tuple[list, list[str]]`: the videos and, for each, the text blocks of its message joined by spaces.
    """
    videos, questions = [], []
    for message in (message for messages in conversations for message in messages):
        content = message.get("content")
        blocks = content if isinstance(content, (list, tuple)) else []
        message_videos = [
            next(block[key] for key in ("video", "path", "url") if key in block)
            for block in blocks
            if block.get("type") == "video"
        ]
        text = " ".join(block["text"] for block in blocks if block.get("type") == "text").strip()
        videos += message_videos
        questions += [text] * len(message_videos)
    return videos, questions


def check_every_conversation_answers(generation_spans: list[list[tuple[int, int]]]):
    """Checks that each conversation has an assistant message to learn from (labels of nothing train nothing)."""
    if not all(generation_spans):
        row = [bool(spans) for spans in generation_spans].index(False)
        raise ValueError(
            f"Conversation {row} has no assistant message, so nothing to learn; end it with "
            '`{"role": "assistant", "content": [{"type": "text", "text": answer}]}`.'
        )


def assistant_token_masks(
    inputs: BatchFeature, generation_spans: list[list[tuple[int, int]]], video_token_id: int
) -> torch.Tensor:
    """
    Which tokens start inside the `[start, end)` character spans the template marks with `{% generation %}`, each span
    moved by the placeholder expansions before it; video placeholders and padding are never assistant tokens.

    Args:
        inputs ([`BatchFeature`]): the processor's output with `offset_mapping` and `text_replacement_offsets`, both
            popped here.
        generation_spans (`list[list[tuple[int, int]]]`): per row, the spans `render_jinja_template` returned.
        video_token_id (`int`): the id of the video placeholder token.

    Returns:
        `torch.BoolTensor` of shape `(batch_size, sequence_length)`.
    """
    token_starts = inputs.pop("offset_mapping")[..., 0]  # (batch_size, sequence_length)
    replacement_offsets = inputs.pop("text_replacement_offsets") or [[] for _ in generation_spans]
    masks = torch.zeros_like(inputs["input_ids"], dtype=torch.bool)
    for row, (spans, replacements) in enumerate(zip(generation_spans, replacement_offsets)):
        # (end of the placeholder, characters it grew by) for each expansion in the row
        growths = [(item["span"][1], item["new_span"][1] - item["span"][1]) for item in replacements]
        for span in spans:
            start, end = (char + sum(growth for stop, growth in growths if stop <= char) for char in span)
            masks[row] |= (token_starts[row] >= start) & (token_starts[row] < end)
    return masks & inputs["attention_mask"].bool() & (inputs["input_ids"] != video_token_id)


__all__ = [
    "assistant_token_masks",
    "check_assistant_mask_arguments",
    "check_every_conversation_answers",
    "conversation_videos",
    "named_chat_template",
]
