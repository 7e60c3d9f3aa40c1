"""The shipped tokenizer: loads offline through transformers, holds every GLM special token as
one id, splits digits consistently, round-trips text, and is reproduced by its script."""

import json

import pytest
from transformers import AutoTokenizer

from recipes import tokenizer as script
from recipes.tokenizer import SPECIAL_TOKENS, VOCAB_SIZE
from vlm.processor import ASSETS


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(ASSETS, local_files_only=True)


def test_vocab_and_special_tokens(tokenizer):
    assert len(tokenizer) == VOCAB_SIZE
    for token in SPECIAL_TOKENS:
        ids = tokenizer.encode(f"a{token}b", add_special_tokens=False)
        assert len(ids) == 3 and tokenizer.convert_ids_to_tokens(ids[1]) == token, token
    assert tokenizer.padding_side == "left" and tokenizer.pad_token == "<|endoftext|>"
    assert set(tokenizer.all_special_tokens) >= set(SPECIAL_TOKENS)


def test_coordinates_tokenize_consistently(tokenizer):
    for n in range(1000):
        alone = tokenizer.tokenize(str(n))
        assert alone == list(str(n)), n  # one token per digit, hundreds first
        # The same pieces in every context the model writes a coordinate in.
        assert tokenizer.tokenize(f"[{n},") [1:-1] == alone, n
        assert tokenizer.tokenize(f"({n})")[1:-1] == alone, n
    assert tokenizer.tokenize("1234567") == list("1234567")


def test_round_trip(tokenizer):
    text = ("left_click(start_box='[512,37]', element_info='Öffnen') 你好，世界！こんにちは 안녕하세요 "
            "¿Dónde está el botón?\n\t  emoji 🙂 <|begin_of_box|>[1,2,3,4]<|end_of_box|>")
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text
    assert tokenizer.encode("[gMASK]<sop>", add_special_tokens=True) == tokenizer.convert_tokens_to_ids(["[gMASK]", "<sop>"])


def test_training_is_deterministic_and_retrains_on_a_jsonl_corpus(tmp_path):
    small = dict(vocab_size=600)
    first = script.train(script.generated_corpus(num_documents=1500, seed=3), **small).to_str()
    second = script.train(script.generated_corpus(num_documents=1500, seed=3), **small).to_str()
    assert first == second
    corpus = tmp_path / "engine.jsonl"
    records = [
        {"messages": [{"role": "user", "content": [{"type": "image", "image": "x.png"},
                                                    {"type": "text", "text": f"Click item {i} of the Zyzzyva list"}]},
                      {"role": "assistant", "content": f"<|begin_of_box|>[{i},{i}]<|end_of_box|>"}]}
        for i in range(300)
    ] + [{"text": "Zyzzyva " * 5}]
    corpus.write_text("\n".join(json.dumps(r) for r in records))
    out = tmp_path / "tok"
    script.main(["--corpus", str(corpus), "--out", str(out), "--vocab-size", "400"])
    retrained = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert "Zyzzyva" in retrained.get_vocab() or "ĠZyzzyva" in retrained.get_vocab()
    assert retrained.chat_template == (ASSETS / "chat_template.jinja").read_text()


@pytest.mark.slow
def test_shipped_tokenizer_is_what_the_script_writes(tmp_path):
    """Bit-exact while assets/model holds the built-in tokenizer. Once the default model ships,
    its tokenizer was retrained on its training corpus (`recipes.default_model`, stage 2): the
    vocabulary then differs, everything else the script decides must not."""
    script.main(["--out", str(tmp_path)])
    shipped = json.loads((ASSETS / "tokenizer.json").read_text())
    rebuilt = json.loads((tmp_path / "tokenizer.json").read_text())
    if not (ASSETS / "config.json").is_file():
        assert rebuilt == shipped
        return
    for key in ("added_tokens", "normalizer", "pre_tokenizer", "post_processor", "decoder"):
        assert shipped[key] == rebuilt[key], key
    assert len(shipped["model"]["vocab"]) == len(rebuilt["model"]["vocab"])
