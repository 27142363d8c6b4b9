"""``korlm serve`` on a fine-tuned tagger: ``POST /v1/tag`` on a real uvicorn server.

A tiny model trained a few steps may tag nothing, so the offsets are checked twice: the
real model's answers (every entity's ``text`` is ``text[start:end]`` of the text as
sent), and the same real model directory whose forward pass is replaced by an oracle
(the one-hot token labels that the hand-tagged texts align to): the real tokenizer,
alignment, decoding, batching and HTTP layers then have to give back exactly the
hand-tagged entities, at offsets into texts with leading, doubled and trailing spaces
and punctuation."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from korlm.evaluation import finetune, tagging, tasks
from korlm.serve.server import ServeSettings, create_app
from tests.test_serve import _live_server
from tests.test_tagging_evaluate import DATA, FT

# (text, [(entity, type)]) tagged by hand, entity texts unique in their text
TEXTS = [
    ("  이순신 장군은, 1592년  한산도에서 왜군을 물리쳤다! ",
     [("이순신", "PER"), ("1592년", "DAT"), ("한산도에서", "LOC"), ("왜군을", "ORG")]),
    ("서울시는 다음 달부터 (광화문 광장에서) 야시장을 연다.",
     [("서울시는", "ORG"), ("다음 달부터", "DAT"), ("(광화문 광장에서)", "LOC")]),
    ("오늘은 아무 일도 없었다...", []),
]


@pytest.fixture(scope="module")
def tagger_dir(tmp_path_factory):
    from tokenizers import Tokenizer

    from korlm.modeling.build import build_masked_lm
    from korlm.modeling.checkpoints import save_checkpoint
    from tests.test_pretrain import build_tokenizer

    root = tmp_path_factory.mktemp("serve-tag")
    tokenizer_dir = build_tokenizer(root / "tokenizer", num_sentences=300, vocab_size=600)
    vocab_size = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).get_vocab_size()
    save_checkpoint(build_masked_lm("bert", "tiny", vocab_size, 32), str(root / "checkpoint"),
                    {"model": "bert", "size": "tiny", "vocab_size": vocab_size,
                     "max_seq_length": 32, "step": 0})
    finetune.finetune(str(root / "checkpoint"), str(tokenizer_dir),
                      str(DATA / "naver_style.yaml"), None, str(root / "model"), **FT)
    return root / "model"


def _gold(text: str, found: list[tuple[str, str]]) -> dict:
    units = tagging.units_of(text, "word")
    tags = ["O"] * len(units)
    for entity, kind in found:
        start = text.index(entity)
        inside = [u for u, (s, _) in enumerate(units) if start <= s < start + len(entity)]
        for k, u in enumerate(inside):
            tags[u] = ("B-" if k == 0 else "I-") + kind
    return {"units": units, "tags": tags}


class OracleTagger:
    """The real fine-tuned model, its forward pass replaced by the one-hot labels that
    the hand-tagged ``TEXTS`` align to (looked up by token ids, so any batch works)."""

    def __init__(self, model: finetune.FineTunedModel):
        self.model = model
        data = tasks.TaskData([t for t, _ in TEXTS], [_gold(t, f) for t, f in TEXTS])
        x, y = model.head.inputs(model.tokenizer, data)
        model.head.features.pop(id(data))
        outside = model.label_names.index("O")
        self.logits = {}
        for ids, labels in zip(x["token_ids"], y, strict=True):
            logits = np.full((len(labels), len(model.label_names)), -10.0)
            logits[np.arange(len(labels)), np.where(labels >= 0, labels, outside)] = 10.0
            self.logits[tuple(ids)] = logits
        model._forward = lambda x: np.stack([self.logits[tuple(r)] for r in x["token_ids"]])

    def __getattr__(self, name):
        return getattr(self.model, name)


def test_tag_endpoint_offsets_index_the_original_text(tagger_dir):
    meta = finetune.load_finetuned(str(tagger_dir))
    assert meta.task_type == "token-classification" and meta.spec.tagging.level == "word"
    oracle = OracleTagger(finetune.load_finetuned(str(tagger_dir)))
    app = create_app(str(tagger_dir), settings=ServeSettings(max_items=8, max_wait_ms=1),
                     loader=lambda path: oracle)
    with _live_server(app) as base:
        ready = httpx.get(f"{base}/readyz").json()
        assert ready["task_type"] == "token-classification" and ready["endpoint"] == "/v1/tag"
        r = httpx.post(f"{base}/v1/tag", json={"items": [{"text": t} for t, _ in TEXTS]},
                       timeout=60)
        assert r.status_code == 200, r.text
        for (text, found), result in zip(TEXTS, r.json()["results"], strict=True):
            got = [(e["text"], e["label"]) for e in result["entities"]]
            assert got == found
            for e in result["entities"]:
                assert text[e["start"]:e["end"]] == e["text"] and e["score"] > 0.99
        # a bad item is a 422 naming it; the next request is answered
        r = httpx.post(f"{base}/v1/tag", json={"items": [{"text": TEXTS[0][0]},
                                                         {"text": " \u200b "}]}, timeout=60)
        assert r.status_code == 422 and r.json()["message"].startswith("items.1.text:")
        r = httpx.post(f"{base}/v1/tag", json={"items": [{"text": TEXTS[1][0]}]}, timeout=60)
        assert r.status_code == 200
        assert r.json()["results"][0]["entities"][0]["start"] == 0
        r = httpx.post(f"{base}/v1/classify", json={"items": [{"text": "x"}]}, timeout=60)
        assert r.status_code == 409 and "POST /v1/tag" in r.json()["message"]


def test_the_real_tagger_answers_with_spans_of_the_text(tagger_dir):
    app = create_app(str(tagger_dir), settings=ServeSettings(max_items=8))
    texts = [t for t, _ in TEXTS] + ["김연아 선수가 밴쿠버 올림픽에서 금메달을 땄다." * 6]
    with _live_server(app) as base:
        r = httpx.post(f"{base}/v1/tag", json={"items": [{"text": t} for t in texts]},
                       timeout=60)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == len(texts)
    for text, result in zip(texts, results, strict=True):
        for e in result["entities"]:
            assert text[e["start"]:e["end"]] == e["text"] and 0 <= e["score"] <= 1
    # the same answers as the model directory called directly
    direct = finetune.load_finetuned(str(tagger_dir)).tag(texts)
    assert [[(e["start"], e["end"], e["label"]) for e in x["entities"]] for x in results] == \
        [[(e["start"], e["end"], e["label"]) for e in d] for d in direct]
    assert (Path(tagger_dir) / finetune.LABEL_MAP_JSON).exists()
