"""The model card (README.md) of a folder of weights published on the Hugging Face Hub (`cascade-clip convert
--hub-dir`): what the weights are, how to load them by name, the classes they were trained on, their configuration,
and the authors' licence."""

from __future__ import annotations

import json

from .config import ClassesConfig, ModelConfig, to_dict

AUTHORS_REPOSITORY = "https://github.com/HVision-NKU/Cascade-CLIP"
WEIGHTS_LICENSE = "cc-by-nc-4.0"  # the authors' licence for their released weights
DATASET_TITLES = {
    "voc": "PASCAL VOC 2012",
    "context": "PASCAL Context (59 classes)",
    "coco": "COCO-Stuff (171 classes)",
}


def model_card(
    cfg: ModelConfig, classes: ClassesConfig | None, source: str, preset: str | None, repo_id: str | None
) -> str:
    """Markdown with the Hub's YAML header. `source` is the file the weights were converted from; `repo_id` the
    Hub name the folder will have (the usage examples show a placeholder without it)."""
    name = repo_id or "ORG/NAME"
    header = [
        "---",
        f"license: {WEIGHTS_LICENSE}",
        "library_name: cascadeclip",
        "pipeline_tag: image-segmentation",
        "tags:",
        *(f"- {tag}" for tag in ("cascade-clip", "zero-shot-segmentation", "open-vocabulary-segmentation", "clip")),
        "---",
    ]
    trained = f" ({preset})" if preset else ""
    lines = [
        f"# Cascade-CLIP{trained}",
        "",
        "Weights of Cascade-CLIP (Li et al., *Cascade-CLIP: Cascaded Vision-Language Embeddings Alignment for",
        "Zero-Shot Semantic Segmentation*, ICML 2024): a frozen CLIP ViT-B/16 with deep visual prompts whose",
        "features from several depths are decoded against CLIP text embeddings of class names, so the model segments",
        f"images into any names. Released by the authors at <{AUTHORS_REPOSITORY}>; converted from `{source}` to a",
        "single safetensors file with its configuration embedded, loadable without unpickling anything.",
        "",
        "## Use",
        "",
        "```python",
        "from cascadeclip import Segmenter",
        "",
        f'segmenter = Segmenter.from_pretrained("{name}")',
        'segments = segmenter("photo.jpg", candidate_labels=["cat", "sofa", "floor"])',
        "```",
        "",
        "```bash",
        f'cascade-clip segment photos/ --classes "cat, sofa, floor" --checkpoint {name}',
        "```",
        "",
        *_class_section(classes, cfg),
        "## Configuration",
        "",
        "Stored in `model.safetensors` (metadata `model_config`) and in `config.json`:",
        "",
        "```json",
        json.dumps(to_dict(cfg), indent=2),
        "```",
        "",
        "## Licence",
        "",
        "The weights are the work of the Cascade-CLIP authors and are released under the Creative Commons",
        "Attribution-NonCommercial 4.0 International licence (CC BY-NC 4.0): non-commercial use only, with",
        "attribution; the authors ask that any commercial use get their formal permission first. This conversion",
        f"keeps that licence. Their code and the original checkpoints: <{AUTHORS_REPOSITORY}>. The frozen",
        "image and text towers are OpenAI's CLIP ViT-B/16, whose weights are released under the MIT licence.",
        "",
        "## Citation",
        "",
        "```bibtex",
        "@inproceedings{li2024cascadeclip,",
        "  title = {Cascade-CLIP: Cascaded Vision-Language Embeddings Alignment for Zero-Shot Semantic Segmentation},",
        "  author = {Li, Yunheng and Li, Zhong-Yu and Zeng, Quansheng and Hou, Qibin and Cheng, Ming-Ming},",
        "  booktitle = {International Conference on Machine Learning (ICML)},",
        "  year = {2024}",
        "}",
        "```",
    ]
    return "\n".join(header + lines) + "\n"


def _class_section(classes: ClassesConfig | None, cfg: ModelConfig) -> list[str]:
    text_tower = "carries" if cfg.text_encoder is not None else "does not carry"
    lines = ["## Training classes", ""]
    if classes is None:
        lines += ["The class set these weights were trained on was not recorded at conversion.", ""]
    else:
        unseen = set(classes.unseen)
        setting = {"inductive": "inductive (only the seen classes labelled)", "transductive": "transductive"}
        lines += [
            f"Trained on {DATASET_TITLES.get(classes.dataset, classes.dataset)}, {len(classes.names)} classes, "
            f"{setting.get(classes.setting, classes.setting)}. Classes marked *unseen* had no labelled pixels in "
            "training; the model segments them from their names alone.",
            "",
            ", ".join(f"{n} *(unseen)*" if i in unseen else n for i, n in enumerate(classes.names)),
            "",
        ]
    return lines + [f"The file {text_tower} the CLIP text tower that embeds new class names.", ""]
