"""Numbers fixed by the protocol (see protocol/PROTOCOL.md). Changing any of them forks the network."""

#: Native embedding dimension.
DIM = 7680
#: Matryoshka prefixes that are usable on their own (renormalised).
PREFIX_DIMS = (1024, 2048, 4096)
#: One BitDelta code: float32 LE scale + DIM sign bits.
SCALE_BYTES = 4
BITS_BYTES = DIM // 8  # 960
CODE_BYTES = SCALE_BYTES + BITS_BYTES  # 964
#: float32 size of one native vector, for the compression ratio.
FLOAT32_BYTES = DIM * 4  # 30,720

# Wire limits (everything a peer sends is bounded).
MAX_TEXT_BYTES = 1024
MAX_ITEM_BYTES = 4 * 1024
MAX_BATCH_BYTES = 64 * 1024
MAX_CLOCK_SKEW_S = 5 * 60
