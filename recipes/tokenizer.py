"""Train the small models' tokenizer: a byte-level BPE with every GLM special token.

    python -m recipes.tokenizer                          # built-in corpus -> assets/model/
    python -m recipes.tokenizer --corpus data.jsonl      # retrain on the data engine's output

What is unusual here:

- Every digit is its own token (GLM's own tokenizer keeps runs of up to three), so a 0-999
  coordinate is written coarse to fine, hundreds digit first, and tokenizes the same way
  wherever it appears. A small model trained from scratch learns a 10-way choice per digit;
  with one token per number it has to learn 1,000 unrelated classes from a few thousand
  boxes, and our first default-model run never did (see recipes/default_model.py).
- The special tokens are GLM-4.5V's, by name, so prompts rendered for the released model
  render unchanged for ours; only their ids differ (they come first, ids 0..N-1).
- The built-in corpus is generated, not downloaded: UI strings, prompts in the released
  model's GUI formats, questions and answers, numbers and coordinates, in seven languages
  including Chinese, Japanese and Korean. It is a pure function of the seed.
- The output is a transformers tokenizer directory: `AutoTokenizer.from_pretrained` loads it
  offline. The chat template (`chat_template.jinja`, hand-written) is copied along.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

VOCAB_SIZE = 8192  # including the special tokens; small on purpose, for the tiny default model
MIN_FREQUENCY = 2
ASSETS = Path(__file__).resolve().parent.parent / "assets" / "model"

# Order fixes the ids. `<|endoftext|>` doubles as the padding token, as in GLM's tokenizer.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "<sop>",
    "<eop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
    "<|begin_of_image|>",
    "<|end_of_image|>",
    "<|begin_of_video|>",
    "<|end_of_video|>",
    "<|image|>",
    "<|video|>",
    "<think>",
    "</think>",
    "<|begin_of_box|>",
    "<|end_of_box|>",
    "<tool_call>",
    "</tool_call>",
    "<arg_key>",
    "</arg_key>",
    "<arg_value>",
    "</arg_value>",
    "<tool_response>",
    "</tool_response>",
]

# GLM-4's split pattern with single digits: letters with one leading non-letter, one digit,
# punctuation runs, newlines, then spaces.
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def build_tokenizer() -> Tokenizer:
    """An untrained byte-level BPE with GLM's pre-tokenisation."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def train(texts: Iterator[str], *, vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    tokenizer = build_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=MIN_FREQUENCY,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


# ---------------------------------------------------------------------------------------------
# The built-in corpus

# One concept per row, in en, de, fr, es, zh, ja, ko.
UI_WORDS = [
    ("Search", "Suchen", "Rechercher", "Buscar", "搜索", "検索", "검색"),
    ("Settings", "Einstellungen", "Paramètres", "Configuración", "设置", "設定", "설정"),
    ("Sign in", "Anmelden", "Se connecter", "Iniciar sesión", "登录", "ログイン", "로그인"),
    ("Cancel", "Abbrechen", "Annuler", "Cancelar", "取消", "キャンセル", "취소"),
    ("Save", "Speichern", "Enregistrer", "Guardar", "保存", "保存", "저장"),
    ("Delete", "Löschen", "Supprimer", "Eliminar", "删除", "削除", "삭제"),
    ("Add to cart", "In den Warenkorb", "Ajouter au panier", "Añadir al carrito", "加入购物车", "カートに入れる", "장바구니에 담기"),
    ("Next", "Weiter", "Suivant", "Siguiente", "下一步", "次へ", "다음"),
    ("Back", "Zurück", "Retour", "Atrás", "返回", "戻る", "뒤로"),
    ("Open file", "Datei öffnen", "Ouvrir le fichier", "Abrir archivo", "打开文件", "ファイルを開く", "파일 열기"),
    ("Send message", "Nachricht senden", "Envoyer le message", "Enviar mensaje", "发送消息", "メッセージを送信", "메시지 보내기"),
    ("Downloads", "Downloads", "Téléchargements", "Descargas", "下载", "ダウンロード", "다운로드"),
    ("Price", "Preis", "Prix", "Precio", "价格", "価格", "가격"),
    ("Calendar", "Kalender", "Calendrier", "Calendario", "日历", "カレンダー", "캘린더"),
    ("Password", "Passwort", "Mot de passe", "Contraseña", "密码", "パスワード", "비밀번호"),
    ("Help", "Hilfe", "Aide", "Ayuda", "帮助", "ヘルプ", "도움말"),
]
QUESTIONS = [
    ("What is in this image?", "Was ist auf diesem Bild?", "Qu'y a-t-il sur cette image ?", "¿Qué hay en esta imagen?",
     "这张图片里有什么？", "この画像には何がありますか？", "이 이미지에는 무엇이 있나요?"),
    ("Where is the {w} button?", "Wo ist die Schaltfläche {w}?", "Où est le bouton {w} ?", "¿Dónde está el botón {w}?",
     "{w}按钮在哪里？", "{w}ボタンはどこですか？", "{w} 버튼은 어디에 있나요?"),
    ("How many people are in the video?", "Wie viele Personen sind im Video?", "Combien de personnes dans la vidéo ?",
     "¿Cuántas personas hay en el video?", "视频里有几个人？", "動画には何人いますか？", "영상에 몇 명이 있나요?"),
    ("Read the text in the picture.", "Lies den Text im Bild.", "Lis le texte de l'image.", "Lee el texto de la imagen.",
     "读出图片中的文字。", "画像の文字を読んでください。", "그림 속 글자를 읽어 주세요."),
]
OBJECTS = ["cat", "dog", "car", "tree", "cup", "laptop", "person", "bicycle", "window", "chart", "table", "phone"]
COLORS = ["red", "green", "blue", "white", "black", "yellow", "grey", "orange"]
APPS = ["Chrome", "Firefox", "Terminal", "Files", "Settings", "Calculator", "Gmail", "Maps", "Clock", "Camera"]
KEYS = ["ctrl+c", "ctrl+v", "ctrl+s", "alt+tab", "enter", "ctrl+shift+t", "super", "esc"]
# Word stock for free prose, so the merges cover ordinary words and not only UI labels.
WORDS = {
    "en": """the a an of to in on at for with from by about into over under after before between
        image video screen page window button menu icon text field link tab list item card table
        chart graph photo picture frame scene person people man woman child animal street road
        building house room kitchen office desk chair door wall floor sky water tree flower car
        bus train plane boat shop store market price total order account user email address
        name title date time year month week day hour minute second morning evening today
        first last next previous left right top bottom middle center corner side edge
        open close click tap press type scroll drag drop select choose find show hide move
        see look read write count answer ask think know want need try start stop wait finish
        is are was were be been has have had do does did can could will would should may
        red green blue white black yellow orange purple brown grey large small big little
        new old high low long short full empty visible hidden active disabled selected
        because therefore however so then also only just still already again never always
        this that these those it its they them their there here what which who where when how
        number amount percent value result step task goal plan note reason memory action
        document report file folder image settings profile message notification search filter""".split(),
    "de": """der die das und ist nicht ein eine mit auf für von zu im den dem des sich auch
        Fenster Seite Schaltfläche Bild Video Suche Datei Ordner Nachricht Konto Preis Benutzer
        klicken öffnen schließen speichern suchen wählen zeigen links rechts oben unten heute
        Straße Haus Auto Baum Mensch Kinder Zimmer Tisch groß klein neu alt schnell langsam""".split(),
    "fr": """le la les un une des et est pas avec pour dans sur par au aux du ce cette qui que
        fenêtre page bouton image vidéo recherche fichier dossier message compte prix utilisateur
        cliquer ouvrir fermer enregistrer chercher choisir afficher gauche droite haut bas
        rue maison voiture arbre personne enfants chambre table grand petit nouveau vieux""".split(),
    "es": """el la los las un una y es no con para en sobre por del al que este esta esto
        ventana página botón imagen vídeo búsqueda archivo carpeta mensaje cuenta precio usuario
        hacer clic abrir cerrar guardar buscar elegir mostrar izquierda derecha arriba abajo
        calle casa coche árbol persona niños habitación mesa grande pequeño nuevo viejo""".split(),
    "zh": """的 是 在 了 和 有 我 你 他 这 那 一个 没有 可以 需要 点击 打开 关闭 保存 搜索 选择
        显示 左边 右边 上面 下面 中间 图片 视频 屏幕 页面 窗口 按钮 菜单 图标 文字 输入 链接 表格
        图表 照片 人物 街道 房子 房间 桌子 椅子 天空 汽车 商店 价格 订单 账户 用户 邮箱 地址 名字
        时间 今天 明天 昨天 分钟 秒钟 第一 最后 下一个 上一个 思考 回答 问题 因为 所以 但是 然后
        已经 还是 数量 结果 步骤 任务 目标 计划 原因 记忆 动作 文件 文件夹 设置 消息 通知 筛选
        红色 绿色 蓝色 白色 黑色 黄色 大 小 新 旧 高 低 长 短 完成 开始 停止 等待 找到""".split(),
    "ja": """の は が を に で と も から まで です ます した する ない ある いる これ それ
        画面 ページ ウィンドウ ボタン メニュー アイコン 文字 入力 リンク 表 グラフ 写真 画像 動画
        人 道 家 部屋 机 椅子 空 車 店 価格 注文 アカウント ユーザー メール 住所 名前 時間
        今日 明日 左 右 上 下 真ん中 開く 閉じる 保存 検索 選択 表示 クリック タップ 待つ
        考える 答える 質問 理由 結果 手順 タスク 目標 計画 記憶 操作 ファイル 設定 通知""".split(),
    "ko": """은 는 이 가 을 를 에 에서 와 과 도 으로 입니다 합니다 했습니다 있다 없다 그리고
        화면 페이지 창 버튼 메뉴 아이콘 글자 입력 링크 표 그래프 사진 이미지 동영상 사람 길 집
        방 책상 의자 하늘 자동차 가게 가격 주문 계정 사용자 이메일 주소 이름 시간 오늘 내일
        왼쪽 오른쪽 위 아래 가운데 열기 닫기 저장 검색 선택 표시 클릭 누르기 기다리기
        생각 대답 질문 이유 결과 단계 작업 목표 계획 기억 동작 파일 설정 알림""".split(),
}
LANGUAGE_CODES = ("en", "de", "fr", "es", "zh", "ja", "ko")


def _xy(rng: random.Random) -> str:
    return f"[{rng.randint(0, 999)},{rng.randint(0, 999)}]"


def _box(rng: random.Random) -> str:
    x1, y1 = rng.randint(0, 900), rng.randint(0, 900)
    return f"[{x1},{y1},{rng.randint(x1, 999)},{rng.randint(y1, 999)}]"


def _desktop_action(rng: random.Random) -> str:
    word = rng.choice(UI_WORDS)[0]
    kind = rng.randrange(6)
    if kind == 0:
        return f"left_click(start_box='{_xy(rng)}', element_info='{word}')"
    if kind == 1:
        return f"left_drag(start_box='{_xy(rng)}', end_box='{_xy(rng)}')"
    if kind == 2:
        return f"key(keys='{rng.choice(KEYS)}')"
    if kind == 3:
        return f"type(content='{rng.choice(OBJECTS)} {rng.randint(1, 2025)}')"
    if kind == 4:
        return f"scroll(start_box='{_xy(rng)}', direction='{rng.choice(['up', 'down'])}', step={rng.randint(1, 10)})"
    return rng.choice(["WAIT()", "DONE()", "FAIL()", f"right_click(start_box='{_xy(rng)}')"])


def _mobile_action(rng: random.Random) -> str:
    kind = rng.randrange(5)
    if kind == 0:
        return json.dumps({"action_type": "click", "box_2d": [json.loads(_box(rng))]})
    if kind == 1:
        return json.dumps({"action_type": "input_text", "text": rng.choice(rng.choice(UI_WORDS)),
                           "box_2d": [json.loads(_box(rng))], "override": True}, ensure_ascii=False)
    if kind == 2:
        return json.dumps({"action_type": "swipe", "direction": rng.choice(["up", "down", "left", "right"])})
    if kind == 3:
        return json.dumps({"action_type": "open_app", "app_name": rng.choice(APPS)})
    return json.dumps({"action_type": rng.choice(["navigate_back", "navigate_home", "wait", "keyboard_enter"])})


def _web_action(rng: random.Random) -> str:
    n = rng.randint(0, 120)
    return rng.choice([f"Click [{n}]", f"Type [{n}]; [{rng.choice(OBJECTS)}]", "Scroll [WINDOW]; [down]",
                       "GoBack", "Wait", f"ANSWER; <content>{rng.randint(0, 9999)}</content>"])


def _document(rng: random.Random) -> str:
    """One synthetic text in one of the formats the model reads or writes."""
    lang = rng.randrange(7)
    word = rng.choice(UI_WORDS)[lang]
    kind = rng.randrange(10)
    if kind == 0:
        question = rng.choice(QUESTIONS)[lang].format(w=word)
        return f"{question}\nThe {word} button is at <|begin_of_box|>{_box(rng)}<|end_of_box|>."
    if kind == 1:
        obj, color = rng.choice(OBJECTS), rng.choice(COLORS)
        return (f"<think>The user asks for the {color} {obj}. I look for it in the image and estimate its box "
                f"in 0-999 coordinates.</think>\nThe {color} {obj} is here: <|begin_of_box|>{_box(rng)}<|end_of_box|>")
    if kind == 2:
        return (f"Task: open {rng.choice(APPS)} and press {word}.\nAction: <|begin_of_box|>{_desktop_action(rng)}"
                f"<|end_of_box|>\nMemory: step {rng.randint(1, 30)} done.")
    if kind == 3:
        return f"Memory: None\nReason: I need to tap {word}.\nAction: {_mobile_action(rng)}"
    if kind == 4:
        return f"Observation: [{rng.randint(0, 80)}] <button> {word}\n{_web_action(rng)}"
    if kind == 5:
        numbers = " ".join(str(rng.choice([rng.randint(0, 999), rng.randint(0, 99999), rng.random() * 100]))[:8]
                           for _ in range(rng.randint(3, 12)))
        return f"{word}: {numbers}"
    if kind == 6:
        seconds = rng.randint(0, 299)
        return (f"At {seconds} seconds a {rng.choice(COLORS)} {rng.choice(OBJECTS)} appears; "
                f"at {seconds + rng.randint(1, 20)} it leaves the frame.")
    if kind == 7:
        names = [row[lang] for row in rng.sample(UI_WORDS, k=rng.randint(3, 8))]
        return " | ".join(names) + "\n" + rng.choice(QUESTIONS)[lang].format(w=names[0])
    return _prose(rng, LANGUAGE_CODES[lang])


def _prose(rng: random.Random, lang: str) -> str:
    """A few sentences of random words: not grammar, but the right words, cases and spacing."""
    joiner = "" if lang in ("zh", "ja") else " "
    stop = {"zh": "。", "ja": "。"}.get(lang, ".")
    sentences = []
    for _ in range(rng.randint(1, 4)):
        words = rng.choices(WORDS[lang], k=rng.randint(4, 14))
        sentence = joiner.join(words)
        sentences.append(sentence[:1].upper() + sentence[1:] + stop)
    return joiner.join(sentences)


def generated_corpus(*, num_documents: int = 60_000, seed: int = 0) -> Iterator[str]:
    rng = random.Random(seed)
    for _ in range(num_documents):
        yield _document(rng)


def jsonl_corpus(path: Path) -> Iterator[str]:
    """Texts of a JSONL file: a `text` field, or the text parts of `messages` / `conversations`."""
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: not JSON ({e})") from None
            if isinstance(record.get("text"), str):
                yield record["text"]
            for message in record.get("messages") or record.get("conversations") or []:
                content = message.get("content", message.get("value", ""))
                if isinstance(content, str):
                    yield content
                else:
                    yield from (part["text"] for part in content if part.get("type") == "text")


# ---------------------------------------------------------------------------------------------
# Saving


def save(tokenizer: Tokenizer, out_dir: Path) -> None:
    """Write a transformers tokenizer directory, atomically (built aside, then swapped in)."""
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
        padding_side="left",
        clean_up_tokenization_spaces=False,
        model_max_length=65536,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    names = ["tokenizer.json", "tokenizer_config.json"]
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        wrapped.save_pretrained(tmp)
        if out_dir.resolve() != ASSETS.resolve():  # the template is hand-written in assets/model
            shutil.copyfile(ASSETS / "chat_template.jinja", Path(tmp) / "chat_template.jinja")
            names.append("chat_template.jinja")
        for name in names:  # same filesystem: each replace is atomic
            (Path(tmp) / name).replace(out_dir / name)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, help="JSONL to train on instead of the built-in corpus")
    parser.add_argument("--out", type=Path, default=ASSETS, help="output directory (default: assets/model)")
    parser.add_argument("--vocab-size", type=int, default=VOCAB_SIZE)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-documents", type=int, default=60_000, help="size of the built-in corpus")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.corpus is not None:
        texts = jsonl_corpus(args.corpus)
    else:
        texts = generated_corpus(num_documents=args.num_documents, seed=args.seed)
    tokenizer = train(texts, vocab_size=args.vocab_size)
    save(tokenizer, args.out)
    logger.info("wrote a %d-token tokenizer to %s", tokenizer.get_vocab_size(), args.out)


if __name__ == "__main__":
    main()
