"""Qwen2-VL, Qwen2.5-VL and LLaVA-OneVision processors without their video processor, for machines without torchvision.

Why they are needed (transformers 5.24): these three processors name `video_processor` in `__init__`, so
`ProcessorMixin.get_attributes()` lists it and `from_pretrained` always loads one through
`AutoVideoProcessor.from_pretrained`; every video processor is `@requires(backends=("vision", "torchvision"))` and
there is no PIL backend for video (`_load_backend_class` maps only "torchvision"). So `AutoProcessor.from_pretrained`
raises "Qwen2VLVideoProcessor requires the Torchvision library" whether or not the directory holds a
video_preprocessor_config.json, and a `video_processor=None` keyword does not stop it (it is passed on to the
sub-processors, not used in their place). A saved config without the video part does not help either.

The subclasses here drop that one argument from `__init__` and change nothing else: text and image processing is
the library's own code (the outputs are identical, tests/model/test_policy_qwen2_vl.py checks it). They save themselves
under the library's class name, so a directory written here is an ordinary Hugging Face one that AutoProcessor loads
wherever torchvision is installed (the video processor then starts from its defaults). Where torchvision is missing,
`gflowvlm.model.loading.load_processor` falls back to them when AutoProcessor fails for that reason.
"""
from __future__ import annotations

from transformers import LlavaOnevisionProcessor, Qwen2_5_VLProcessor, Qwen2VLProcessor


class _SavedAsLibraryClass:
    """Saved as the library class it extends: its `processor_class` (processor_config.json, tokenizer_config.json)
    and a `video_processor` entry, so that AutoProcessor with torchvision builds the full processor."""

    library_class: type
    video_processor_type: str
    video_fields: tuple[str, ...] = ("image_mean", "image_std", "do_convert_rgb")  # shared with the image processor

    def to_dict(self):
        output = super().to_dict()
        output["processor_class"] = self.library_class.__name__
        video = {"video_processor_type": self.video_processor_type}
        for field in self.video_fields:
            if getattr(self.image_processor, field, None) is not None:
                video[field] = getattr(self.image_processor, field)
        output["video_processor"] = video
        return output

    @classmethod
    def from_args_and_dict(cls, args, processor_dict, **kwargs):
        processor_dict = {key: value for key, value in processor_dict.items() if key != "video_processor"}
        return super().from_args_and_dict(args, processor_dict, **kwargs)

    def save_pretrained(self, save_directory, **kwargs):
        saved = super().save_pretrained(save_directory, **kwargs)
        self.tokenizer._set_processor_class(self.library_class.__name__)
        self.tokenizer.save_pretrained(save_directory)  # rewrites tokenizer_config.json with the library's name
        return saved


_QWEN_VIDEO_FIELDS = _SavedAsLibraryClass.video_fields + ("patch_size", "temporal_patch_size", "merge_size")


class Qwen2VLImageOnlyProcessor(_SavedAsLibraryClass, Qwen2VLProcessor):
    library_class, video_processor_type, video_fields = Qwen2VLProcessor, "Qwen2VLVideoProcessor", _QWEN_VIDEO_FIELDS

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class Qwen2_5_VLImageOnlyProcessor(_SavedAsLibraryClass, Qwen2_5_VLProcessor):
    library_class, video_processor_type, video_fields = (Qwen2_5_VLProcessor, "Qwen2VLVideoProcessor",
                                                         _QWEN_VIDEO_FIELDS)

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class LlavaOnevisionImageOnlyProcessor(_SavedAsLibraryClass, LlavaOnevisionProcessor):
    library_class, video_processor_type = LlavaOnevisionProcessor, "LlavaOnevisionVideoProcessor"

    # Every keyword of the library's __init__ but video_processor, by name: from_pretrained passes the saved values
    # (num_image_tokens, ...) only to parameters it finds in the signature.
    def __init__(self, image_processor=None, tokenizer=None, num_image_tokens=None,
                 vision_feature_select_strategy=None, chat_template=None, image_token="<image>",
                 video_token="<video>", vision_aspect_ratio="anyres_max_9", **kwargs):
        super().__init__(image_processor, tokenizer, None, num_image_tokens=num_image_tokens,
                         vision_feature_select_strategy=vision_feature_select_strategy, chat_template=chat_template,
                         image_token=image_token, video_token=video_token, vision_aspect_ratio=vision_aspect_ratio,
                         **kwargs)


# By the library class name a saved directory records.
IMAGE_ONLY_PROCESSORS = {cls.library_class.__name__: cls for cls in (
    Qwen2VLImageOnlyProcessor, Qwen2_5_VLImageOnlyProcessor, LlavaOnevisionImageOnlyProcessor)}


def saved_processor_class(name_or_path: str) -> str | None:
    """The `processor_class` a saved processor names (processor_config.json, else tokenizer_config.json)."""
    import json

    from transformers.utils import cached_file

    for filename in ("processor_config.json", "tokenizer_config.json"):
        try:
            path = cached_file(name_or_path, filename, _raise_exceptions_for_missing_entries=False)
        except OSError:
            path = None
        if path:
            with open(path, encoding="utf-8") as handle:
                name = json.load(handle).get("processor_class")
            if name:
                return name
    return None
