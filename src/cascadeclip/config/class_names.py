"""The classes of the miniature world, from which `cascadeclip.world` draws its scenes (its dataset file,
`datasets/world.yaml`, lists the same names). The benchmarks' class lists are data files beside their dataset files
in `datasets/`."""

# The miniature world (`cascadeclip.world`): each class is a colour and a surface pattern ("red striped"). Every word
# of an unseen class names seen classes too (each colour and each pattern occurs in at least three seen classes), so
# an unseen class is a new composition of known attributes, described in words the segmentation training has seen.
WORLD_COLOURS = ("red", "yellow", "green", "blue", "purple")
WORLD_PATTERNS = ("plain", "striped", "dotted", "checkered")
WORLD_CLASSES = tuple(f"{colour} {pattern}" for colour in WORLD_COLOURS for pattern in WORLD_PATTERNS)
WORLD_UNSEEN = (0, 5, 10, 15, 16)  # red plain, yellow striped, green dotted, blue checkered, purple plain
