"""Where the demo's tiny CLIP comes from: the package's file, the cache, or pretraining (`pretrained_tiny_clip`).

The pretrained tiny CLIP of the default recipe is shipped inside the package, so that the demo does not spend most
of its time pretraining it.

`tiny_clip.safetensors` beside this module holds every weight of that CLIP in fp32, except that the text tower's
token-embedding table keeps only the rows of the tokens the world ever produces (its captions, the class prompts,
start, end and padding): the full table has 49,408 rows (12.6 MB), of which the world uses a few dozen. Its metadata
holds the `TinyClipConfig` it was pretrained with, the world version, and the pretraining facts (losses, zero-shot
accuracies). `pretrained_tiny_clip` uses it only when the configuration asked for equals the stored one, in the same
world version; any other configuration is pretrained and cached as before.

Regenerate it (after a change of the world or of the default configuration) with

    python -m cascadeclip.world.shipped --out src/cascadeclip/world/tiny_clip.safetensors
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..config.class_names import WORLD_CLASSES
from ..factory import read_openai_clip, save_openai_archive
from ..inference.text_embeddings import SINGLE_TEMPLATE
from ..open_clip_parts import CLIP, tokenize
from ..utils import atomic_write
from .cache import cached_folder
from .pretrain import TinyClipConfig, build_clip, pretraining_facts
from .scenes import CAPTION_TEMPLATES, WORLD_VERSION

SHIPPED_FILE = Path(__file__).with_name("tiny_clip.safetensors")
ARCHIVE_NAME = "tiny-clip.pt"
LONGEST_TEXT = 77  # tokens: more than any text of `world_texts` holds
TOKEN_ROWS_KEY = "token_embedding.weight"  # open_clip's name of the text tower's token-embedding table


def save_clip_token_subset(
    state: dict[str, torch.Tensor], path: str | Path, kept_tokens: list[int], metadata: dict[str, str]
) -> None:
    """Write an open_clip `CLIP` state dict as safetensors, atomically, keeping of the token-embedding table only the
    rows `kept_tokens` (for a CLIP whose texts use few tokens: the table is most of a small CLIP's size). Read back
    with `read_clip_token_subset`."""
    table = state[TOKEN_ROWS_KEY]
    kept = torch.tensor(sorted(set(kept_tokens)), dtype=torch.long)
    tensors = {k: v.detach().contiguous() for k, v in state.items() if k != TOKEN_ROWS_KEY}
    tensors.update({TOKEN_ROWS_KEY: table[kept].contiguous(), "kept_token_ids": kept})
    info = {**metadata, "vocab_size": str(table.shape[0])}
    atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=info))


def read_clip_token_subset(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state dict, metadata) of a `save_clip_token_subset` file; the token-embedding table has its full size again,
    zero in the rows that were not kept."""
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    tensors = load_file(str(path))
    kept, rows = tensors.pop("kept_token_ids"), tensors.pop(TOKEN_ROWS_KEY)
    table = rows.new_zeros(int(metadata["vocab_size"]), rows.shape[1])
    table[kept] = rows
    return {**tensors, TOKEN_ROWS_KEY: table}, metadata


def world_texts() -> list[str]:
    """Texts that hold every word and punctuation mark the world's captions and class prompts can hold: each caption
    template with each class name and with a list of several objects (commas, 'and'), and each class prompt."""
    names = [f"a {name}" for name in WORLD_CLASSES]
    listing = f"{names[0]}, {names[1]} and {names[2]}"
    captions = [template.format(phrase) for template in CAPTION_TEMPLATES for phrase in [*names, listing]]
    return captions + [template.format(name) for template in SINGLE_TEMPLATE for name in WORLD_CLASSES]


def world_token_ids() -> list[int]:
    """Every token id the world's texts produce, padding (0) included. The tokenizer splits a text into words and
    punctuation marks and encodes each on its own, so the ids of any caption are among those of `world_texts` (read
    whole here: a caption cut at the context length only loses ids)."""
    ids = set(tokenize(world_texts(), context_length=LONGEST_TEXT).flatten().tolist())
    return sorted(ids | {0})


def ship(clip: CLIP, cfg: TinyClipConfig, facts: dict, path: Path) -> None:
    """Write `clip`, pretrained with `cfg`, to `path` in the shipped format."""
    metadata = {
        "config": json.dumps(dataclasses.asdict(cfg), sort_keys=True),
        "world_version": str(WORLD_VERSION),
        "facts": json.dumps(facts),
    }
    save_clip_token_subset(clip.state_dict(), path, world_token_ids(), metadata)


def shipped_clip(cfg: TinyClipConfig, path: Path | None = None) -> tuple[CLIP, dict] | None:
    """The shipped CLIP (eval mode) and its facts when `path` (default: the package's file) exists and was made with
    exactly `cfg` in this world version; None otherwise."""
    path = path or SHIPPED_FILE
    if not path.is_file():
        return None
    state, metadata = read_clip_token_subset(path)
    stored = json.loads(metadata.get("config", "null"))
    if stored != dataclasses.asdict(cfg) or metadata.get("world_version") != str(WORLD_VERSION):
        return None
    clip = build_clip(cfg)
    clip.load_state_dict(state)
    return clip.eval(), json.loads(metadata["facts"])


def load_archive(path: Path, cfg: TinyClipConfig) -> CLIP:
    """The open_clip `CLIP` (eval mode) of an archive `pretrained_tiny_clip` wrote for `cfg`."""
    clip = build_clip(cfg)
    own = clip.state_dict()
    clip.load_state_dict({k: v for k, v in read_openai_clip(path).items() if k in own})  # strict: all must be there
    return clip.eval()


def pretrained_tiny_clip(
    cfg: TinyClipConfig, cache: Path | None = None, progress: bool = True, shipped: Path | None = None
) -> tuple[Path, dict]:
    """The TorchScript archive of the tiny CLIP for `cfg` and its facts (losses, zero-shot accuracies, "source"),
    cached under the world's cache folder, keyed by the whole configuration (seed included). Made on first use from
    the shipped file (`shipped`, default the package's) when it holds exactly `cfg`, else by pretraining."""

    def build(folder: Path) -> None:
        found = shipped_clip(cfg, shipped)
        if found is not None:
            clip, facts = found
            facts["source"] = "shipped with the package"
        else:
            clip, facts = pretraining_facts(cfg, progress)
            facts["source"] = "pretrained on this machine"
        save_openai_archive(clip, folder / ARCHIVE_NAME, cfg.image_size, cfg.context_length)
        (folder / "facts.json").write_text(json.dumps(facts))

    folder = cached_folder("tiny-clip", {"version": WORLD_VERSION, **dataclasses.asdict(cfg)}, build, cache)
    return folder / ARCHIVE_NAME, json.loads((folder / "facts.json").read_text())


def main(argv: list[str] | None = None) -> int:
    defaults = TinyClipConfig()
    parser = argparse.ArgumentParser(
        prog="python -m cascadeclip.world.shipped",
        description="pretrain the tiny CLIP of the miniature world and write it in the package's shipped format",
    )
    parser.add_argument("--out", type=Path, required=True, help="file to write (.safetensors)")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="default: %(default)s")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="default: %(default)s")
    parser.add_argument("--zero-shot-images", type=int, default=defaults.zero_shot_images, help="default: %(default)s")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="default: %(default)s")
    args = parser.parse_args(argv)
    cfg = dataclasses.replace(
        defaults, steps=args.steps, batch_size=args.batch_size, zero_shot_images=args.zero_shot_images, seed=args.seed
    )
    clip, facts = pretraining_facts(cfg)
    ship(clip, cfg, facts, args.out)
    print(
        f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB); zero-shot accuracy unseen "
        f"{facts['zero_shot_accuracy_unseen']:.3f}, seen {facts['zero_shot_accuracy_seen']:.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
