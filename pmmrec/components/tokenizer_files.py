"""A text encoder's `tokenizer/` folder: which files it may hold, what they must say, and loading it.

The tokenizer decides which token ids reach the backbone, so a wrong one changes every ranking silently or crashes
an embedding lookup later. Before transformers sees the folder, every file is checked here: only the files a
tokenizer is saved as; each JSON file read within size and depth limits, duplicate keys refused; a non-empty
vocabulary whose ids (and the added tokens') lie inside the backbone's vocabulary; a tokenizer class written for the
kind of vocabulary tokenizer.json holds (WordPiece: BERT's; Unigram: XLM-R's and CamemBERT's; BPE: RoBERTa's), whose
special tokens are in that vocabulary. After loading, a probe text is tokenised and every id checked again. Each
refusal is one line naming the file and the key. Which tokenizer family a backbone is paired with is its author's
choice (multilingual MiniLM is a BERT with XLM-R's tokenizer), so it is not tied to the backbone's model type.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pmmrec.components.backbone_schema import TextBackbone
from pmmrec.errors import ArtefactError
from pmmrec.jsonfile import read_json_file

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
OPTIONAL_JSON_FILES = ("special_tokens_map.json", "added_tokens.json", "vocab.json")
OPTIONAL_TEXT_FILES = ("vocab.txt", "merges.txt")
MAX_TOKENIZER_BYTES = 64 << 20  # XLM-R's tokenizer.json (250k pieces) is 17 MB
MAX_TOKENIZER_DEPTH = 32
# The tokenizer classes pmmrec loads, and the tokenizer.json model each one is written for: a class swapped for
# another (BertTokenizer over a SentencePiece vocabulary, ...) would tokenise differently, silently.
TOKENIZER_MODELS: dict[str, str] = {
    "BertTokenizer": "WordPiece",
    "BertTokenizerFast": "WordPiece",
    "XLMRobertaTokenizer": "Unigram",
    "XLMRobertaTokenizerFast": "Unigram",
    "CamembertTokenizer": "Unigram",
    "CamembertTokenizerFast": "Unigram",
    "RobertaTokenizer": "BPE",
    "RobertaTokenizerFast": "BPE",
}
SPECIAL_TOKENS = ("unk_token", "cls_token", "sep_token", "pad_token", "mask_token", "bos_token", "eos_token")
_PROBE = ["The quick brown fox (1999). Genres: Comedy, Drama.", "", "ünïcödé 東京 😀 " * 40]


def _vocabulary(model: dict[str, Any], label: str) -> dict[str, int]:
    """token -> id of a tokenizer.json model's vocabulary (a dict, or Unigram's list of [piece, score])."""
    vocab = model.get("vocab")
    if isinstance(vocab, dict) and vocab:
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in vocab.values()):
            raise ArtefactError(f"{label}: model.vocab must map tokens to integer ids")
        return vocab
    if isinstance(vocab, list) and vocab:
        if not all(isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str) for entry in vocab):
            raise ArtefactError(f"{label}: model.vocab must be a list of [piece, score] pairs")
        return {entry[0]: index for index, entry in enumerate(vocab)}
    raise ArtefactError(f"{label}: model.vocab is empty or missing (a tokenizer needs a vocabulary)")


def read_tokenizer_json(path: Path, vocab_size: int) -> tuple[str, dict[str, int]]:
    """tokenizer.json's model type and vocabulary (added tokens included), every id inside the backbone's vocabulary."""
    label = str(path)
    document = read_json_file(path, error=ArtefactError, max_bytes=MAX_TOKENIZER_BYTES, max_depth=MAX_TOKENIZER_DEPTH)
    if not isinstance(document, dict):
        raise ArtefactError(f"{label}: expected a JSON object at the top level")
    model = document.get("model")
    kinds = sorted(set(TOKENIZER_MODELS.values()))
    if not isinstance(model, dict) or model.get("type") not in kinds:
        raise ArtefactError(f"{label}: model.type must be one of {', '.join(kinds)}")
    vocabulary = dict(_vocabulary(model, label))
    added = document.get("added_tokens", [])
    if not isinstance(added, list) or not all(isinstance(token, dict) for token in added):
        raise ArtefactError(f"{label}: added_tokens must be a list of objects")
    for token in added:
        token_id, content = token.get("id"), token.get("content")
        if not isinstance(token_id, int) or isinstance(token_id, bool) or not isinstance(content, str):
            raise ArtefactError(f"{label}: every added token needs an integer id and a content string")
        vocabulary[content] = token_id
    ids = vocabulary.values()
    low, high = min(ids), max(ids)
    if low < 0 or high >= vocab_size:
        raise ArtefactError(
            f"{label}: token id {high if high >= vocab_size else low} is outside the backbone's vocabulary "
            f"(vocab_size {vocab_size})"
        )
    return str(model["type"]), vocabulary


def check_tokenizer_config(path: Path, model_type: str, vocabulary: dict[str, int]) -> None:
    """tokenizer_config.json: an object naming the tokenizer class written for tokenizer.json's model (`model_type`),
    special tokens that are in the vocabulary, never remote code."""
    label = str(path)
    document = read_json_file(path, error=ArtefactError, max_bytes=1 << 20, max_depth=8)
    if not isinstance(document, dict):
        raise ArtefactError(f"{label}: expected a JSON object at the top level")
    if "auto_map" in document:
        raise ArtefactError(f"{label}: auto_map is refused (pmmrec never runs remote code)")
    name = document.get("tokenizer_class")
    if TOKENIZER_MODELS.get(name) != model_type:  # type: ignore[arg-type]
        fitting = sorted(cls for cls, kind in TOKENIZER_MODELS.items() if kind == model_type)
        raise ArtefactError(
            f"{label}: tokenizer_class {name!r} does not read tokenizer.json's {model_type} vocabulary "
            f"(expected one of {', '.join(fitting)})"
        )
    for key in SPECIAL_TOKENS:
        token = document.get(key)
        content = token.get("content") if isinstance(token, dict) else token
        if token is not None and (not isinstance(content, str) or content not in vocabulary):
            raise ArtefactError(f"{label}: {key} {content!r} is not in tokenizer.json's vocabulary")
    length = document.get("model_max_length", 512)
    if not isinstance(length, int | float) or isinstance(length, bool) or length < 1:
        raise ArtefactError(f"{label}: model_max_length must be a positive number")


def check_tokenizer_folder(folder: Path, backbone: TextBackbone) -> None:
    """Every file of `folder` (a text encoder's tokenizer/) is one a tokenizer is saved as, and says what it must."""
    if not folder.is_dir():
        raise ArtefactError(f"{folder}: not a folder")
    allowed = {TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, *OPTIONAL_JSON_FILES, *OPTIONAL_TEXT_FILES}
    names = sorted(path.name for path in folder.iterdir())
    for name in names:
        if name not in allowed or not (folder / name).is_file():
            raise ArtefactError(f"{folder / name}: not a file a tokenizer is saved as (expected {', '.join(sorted(allowed))})")
    for name in (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE):
        if name not in names:
            raise ArtefactError(f"{folder / name}: missing")
    model_type, vocabulary = read_tokenizer_json(folder / TOKENIZER_FILE, backbone.vocab_size)
    check_tokenizer_config(folder / TOKENIZER_CONFIG_FILE, model_type, vocabulary)
    for name in OPTIONAL_JSON_FILES:
        if name in names:
            read_json_file(folder / name, error=ArtefactError, max_bytes=MAX_TOKENIZER_BYTES, max_depth=8)


def check_loaded_tokenizer(tokenizer: Any, backbone: TextBackbone, max_tokens: int, label: str) -> None:
    """The ids a loaded tokenizer gives (a probe text, its special tokens) lie inside the backbone's vocabulary."""
    size = backbone.vocab_size
    for name in ("pad_token_id", "cls_token_id", "bos_token_id", "sep_token_id", "unk_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None and not (isinstance(value, int) and 0 <= value < size):
            raise ArtefactError(f"{label}: {name} {value!r} is outside the backbone's vocabulary (vocab_size {size})")
    try:
        encoded = tokenizer(_PROBE, max_length=max_tokens, padding="max_length", truncation=True)["input_ids"]
    except Exception as exc:  # a library boundary: any failure means the tokenizer is unusable
        raise ArtefactError(f"{label}: cannot tokenise a text ({type(exc).__name__}: {exc})") from None
    for row in encoded:
        if len(row) != max_tokens or any(not isinstance(i, int) or not 0 <= i < size for i in row):
            raise ArtefactError(f"{label}: gives token ids outside the backbone's vocabulary (vocab_size {size})")


def load_tokenizer(folder: Path, backbone: TextBackbone, max_tokens: int) -> Any:
    """The checked tokenizer of `folder`; every problem is one ArtefactError naming the file."""
    from transformers import AutoTokenizer

    check_tokenizer_folder(folder, backbone)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # a library boundary: transformers raises many types on a broken folder
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ArtefactError(f"{folder}: the tokenizer cannot be loaded ({type(exc).__name__}: {first})") from None
    check_loaded_tokenizer(tokenizer, backbone, max_tokens, str(folder))
    return tokenizer
