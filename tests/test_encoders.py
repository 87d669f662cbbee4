"""Modern encoders: pooling (mean | cls | last_token), instruction prefixes, max length and
dtype are part of the space definition (dsonode/embed/options.py).

Tiny randomly initialised BERT-style and Qwen3-style models are built from a `transformers`
config into a temporary folder (with a word-level tokenizer), loaded by the real `Embedder`,
and each pooling path is checked against the model's own token states computed here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from dsonode.embed import encoder as enc  # noqa: E402
from dsonode.embed.errors import ModelLoadError  # noqa: E402
from dsonode.embed.options import EncoderOptions, read_options  # noqa: E402
from dsonode.embed.space import space_id_of  # noqa: E402

TEXTS = [
    "the median keeps the consensus",
    "a short one",
    "codes of one space are never mixed with codes of another space at all",
    "x",
]
QUERY_PREFIX = "Instruct: find the lesson\nQuery: "
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "<eos>"]
HIDDEN = 32


def _tokenizer(folder: Path, style: str) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for t in [*TEXTS, QUERY_PREFIX] for w in t.replace(":", " : ").split()})
    vocab = {tok: i for i, tok in enumerate(SPECIALS + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if style == "bert":  # [CLS] text [SEP], as BERT's tokenizer does
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
        )
    else:  # text <eos>: the last token a causal model sees has read the whole text
        tok.post_processor = processors.TemplateProcessing(
            single="$A <eos>", special_tokens=[("<eos>", 4)]
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", model_max_length=64
    )
    fast.save_pretrained(str(folder))


def _build(folder: Path, style: str) -> Path:
    """A randomly initialised model of the given style, saved as a Hugging Face folder."""
    from transformers import AutoModel, BertConfig, Qwen3Config

    folder.mkdir()
    _tokenizer(folder, style)
    n_vocab = len(json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"])
    if style == "bert":
        config = BertConfig(
            vocab_size=n_vocab,
            hidden_size=HIDDEN,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
        )
    else:
        config = Qwen3Config(
            vocab_size=n_vocab,
            hidden_size=HIDDEN,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=64,
        )
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from dsonode.embed.head import build_seeded_head, save_head

    root = tmp_path_factory.mktemp("encoders")
    # A narrow seeded head (hidden 64): the pooling is what is under test, and building the
    # default 6144-wide head for every embedder would cost seconds each.
    save_head(build_seeded_head(HIDDEN, hidden=64), root / "head.safetensors", {"seed": "test"})
    return {
        "bert": _build(root / "tiny-bert", "bert"),
        "qwen3": _build(root / "tiny-qwen3", "qwen3"),
        "head": root / "head.safetensors",
    }


def _reference_pool(folder: Path, text: str, pooling: str) -> np.ndarray:
    """What the pooling must give: the model run on one text alone (no padding at all)."""
    model, tokenizer = enc.load_encoder(folder, "cpu")
    ids = tokenizer(text, truncation=True, max_length=64)["input_ids"]
    with torch.inference_mode():
        hidden = model(input_ids=torch.tensor([ids])).last_hidden_state[0].float()
    vec = {"mean": hidden.mean(0), "cls": hidden[0], "last_token": hidden[-1]}[pooling]
    vec = vec.numpy()
    return vec / np.linalg.norm(vec)


def _embedder(folder: Path, head: Path, **options):
    from dsonode.embed.embedder import Embedder

    return Embedder(folder, head, device="cpu", **options)


def test_each_pooling_path_matches_the_models_own_states(models):
    """Batched, right-padded, length-sorted embedding gives, per text, exactly the pooling of
    that text run alone: mean and cls on a BERT-style model, last token on a Qwen3-style one."""
    cases = [("bert", "mean"), ("bert", "cls"), ("qwen3", "last_token")]
    for style, pooling in cases:
        emb = _embedder(models[style], models["head"], pooling=pooling)
        assert emb.options.pooling == pooling and emb.info()["pooling"] == pooling
        got = emb.encode_base(TEXTS, batch_size=4)  # one batch: every shorter row is padded
        for text, row in zip(TEXTS, got, strict=True):
            want = _reference_pool(models[style], text, pooling)
            np.testing.assert_allclose(row, want, atol=2e-5)
            if pooling != "mean":  # the path is not mean pooling in disguise
                assert float(row @ _reference_pool(models[style], text, "mean")) < 0.999
        native = emb.embed(TEXTS[:2])
        assert native.shape == (2, 7680)
        np.testing.assert_allclose(np.linalg.norm(native, axis=1), 1.0, atol=1e-5)
        # The search path pools the same way.
        np.testing.assert_allclose(
            emb.embed_query(TEXTS[0], for_search=True, kind="document"), native[0], atol=2e-3
        )


def test_qwen3_space_from_its_folder_declaration_and_the_space_id(models):
    folder = models["qwen3"]
    (folder / "dsonode_space.json").write_text(
        json.dumps({"pooling": "last_token", "query_prefix": QUERY_PREFIX, "max_length": 32})
    )
    try:
        emb = _embedder(folder, models["head"])
    finally:
        (folder / "dsonode_space.json").unlink()
    opts = emb.options
    assert opts == EncoderOptions(pooling="last_token", query_prefix=QUERY_PREFIX, max_length=32)
    assert emb.max_length == 32
    # Queries carry the instruction, documents do not; a search embeds a query.
    q = emb.embed([TEXTS[0]], kind="query")[0]
    d = emb.embed([TEXTS[0]], kind="document")[0]
    assert float(q @ d) < 0.999
    np.testing.assert_allclose(emb.embed([QUERY_PREFIX + TEXTS[0]])[0], q, atol=1e-5)
    np.testing.assert_allclose(emb.embed_query(TEXTS[0], for_search=True), q, atol=2e-3)
    assert emb.count_tokens([TEXTS[0]], kind="query")[0] > emb.count_tokens([TEXTS[0]])[0]

    args = (emb.encoder_name, emb.encoder_sha256, emb.max_length, emb.head_sha256, 7680, None)
    assert emb.space_id == space_id_of(*args, opts)
    variants = [
        EncoderOptions(pooling="mean", query_prefix=QUERY_PREFIX),
        EncoderOptions(pooling="last_token"),
        EncoderOptions(pooling="last_token", query_prefix=QUERY_PREFIX, document_prefix="D: "),
        EncoderOptions(pooling="last_token", query_prefix=QUERY_PREFIX, dtype="bfloat16"),
    ]
    ids = {space_id_of(*args, v) for v in variants} | {space_id_of(*args[:2], 16, *args[3:], opts)}
    assert emb.space_id not in ids and len(ids) == len(variants) + 1


def test_the_default_space_id_is_unchanged_by_the_options():
    """The packaged MiniLM folder declares mean pooling and no prompts: the resolved options
    are the defaults, and default options add nothing to the hashed document (the default
    space id, in protocol vectors and existing stores, stays what it was)."""
    folder, _ = enc.resolve_encoder(None)
    assert read_options(folder) == EncoderOptions()
    args = ("sentence-transformers/all-MiniLM-L6-v2", "a" * 64, 256, "b" * 64, 7680, None)
    assert space_id_of(*args, EncoderOptions()) == space_id_of(*args)
    # The construction itself is pinned: this value was computed before options existed.
    assert space_id_of(*args) == "366c61118b7ada0e63f6c22215a469ba3a0b05a12548ee8821d7139ffc7e58b5"


def test_bad_declarations_are_refused(models, tmp_path):
    folder = models["bert"]
    bad = [
        {"pooling": "max"},
        {"dtype": "int4"},
        {"max_length": 0},
        {"query_prefix": 3},
        {"query_prefix": "x" * 2000},
        {"temperature": 1},
        ["mean"],
    ]
    for doc in bad:
        (folder / "dsonode_space.json").write_text(json.dumps(doc))
        try:
            with pytest.raises(ModelLoadError):
                read_options(folder)
        finally:
            (folder / "dsonode_space.json").unlink()
    (folder / "dsonode_space.json").write_text("{not json")
    try:
        with pytest.raises(ModelLoadError):
            read_options(folder)
    finally:
        (folder / "dsonode_space.json").unlink()
    # Two pooling modes at once in a sentence-transformers folder: refused, not guessed.
    pool = tmp_path / "st"
    (pool / "1_Pooling").mkdir(parents=True)
    (pool / "1_Pooling" / "config.json").write_text(
        json.dumps({"pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True})
    )
    with pytest.raises(ModelLoadError):
        read_options(pool)
    # sentence-transformers declarations are read: last token and the prompts.
    (pool / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_lasttoken": True}))
    (pool / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": {"query": "Q: ", "document": ""}})
    )
    assert read_options(pool) == EncoderOptions(pooling="last_token", query_prefix="Q: ")
    # Explicit arguments win over the folder.
    assert read_options(pool, pooling="cls").pooling == "cls"
    # A max length beyond the model's positions is refused at load.
    with pytest.raises(ModelLoadError, match="max_length"):
        _embedder(folder, models["head"], max_length=10_000)
