"""Numbers of the embedding area that must be importable without torch (the CLI reads them)."""

from dsonode.core.constants import DIM, PREFIX_DIMS

#: Where the model runs unless told otherwise (`node.device`, `--device`): cuda if present.
DEFAULT_DEVICE = "auto"
#: Seed of the default space's head. Changing it changes the default space_id (a network fork).
DEFAULT_HEAD_SEED = 7680
#: Width of the head's hidden layer (Algorithm 1).
HEAD_HIDDEN = 6144
#: Dimensions `embed` can return: a Matryoshka prefix or the native vector.
VALID_DIMS = (*PREFIX_DIMS, DIM)

# Head training (dsonode head train).
#: Default temperature of the pairwise logistic loss (tau = 1 is the paper's eq. 4 verbatim).
DEFAULT_TAU = 0.05
#: Default margin of the hinge variant.
DEFAULT_MARGIN = 0.1
#: Bounds on the command-line numbers (guards against typos that would run for days).
MAX_STEPS = 10_000_000
MAX_EPOCHS = 100_000
MAX_BATCH = 4_096
MAX_MINE_K = 256
MAX_COPIES = 64
