"""Prompts in Chinese, Japanese and other scripts: counted, logged and read back as sensibly as English ones."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module

from longgen.backbones.hashed_text import tokenize
from longgen.build import build

#: 30 Chinese characters, no space: one "word" to str.split() and to a \w+ tokenizer
SENTENCE = "一只红色的狐狸在白雪覆盖的白桦林中慢慢地走着阳光透过树枝洒在雪地上啊"


def _backbone(name: str):
    with initialize_config_module("longgen.conf", version_base="1.3"):
        cfg = compose("generate", overrides=[f"backbone={name}"])
    return build(cfg.backbone, "backbone", name)  # no weights are touched


def test_the_stand_in_tokenizer_counts_chinese_and_japanese_by_character():
    # a run of Chinese or Japanese letters was one token: a 600-character prompt counted as 1 (+ punctuation)
    assert tokenize("一只猫，走") == ["一", "只", "猫", "，", "走"]
    assert tokenize("猫が歩くAI") == ["猫", "が", "歩", "く", "ai"]
    assert tokenize("café 고양이 a cat") == ["café", "고양이", "a", "cat"]  # words with spaces stay words


@pytest.mark.parametrize("name", ["wan2.1-t2v-1.3b", "hunyuanvideo-1.5"])
def test_a_long_chinese_prompt_is_estimated_over_the_limit_before_the_tokenizer_loads(name):
    backbone = _backbone(name)
    prompt = SENTENCE * (backbone.max_text_tokens // len(SENTENCE) + 2)
    count, exact = backbone.count_tokens(prompt)
    assert not exact and count > backbone.max_text_tokens
    short, _ = backbone.count_tokens(SENTENCE)
    assert len(SENTENCE) <= short <= 2 * len(SENTENCE)


def test_a_chinese_multi_shot_story_gets_no_latin_stop_after_its_own():
    # "。" got a "." after it in the composed global prompt and in every shot prompt the text encoder saw
    from longgen.run.shots import shot_prompts
    from longgen.story import Story

    story = Story.from_dict({"characters": {"1": "一只红狐狸"}, "environment": "雪林中。",
                             "shots": ["Character 1 醒来。", "[SHOT CUT] Character 1 跳进雪堆！"]})
    texts = [story.global_prompt, *shot_prompts(story)]
    assert not any(mark + "." in text for text in texts for mark in "。！？"), texts
    assert story.global_prompt == "Character 1: 一只红狐狸。 雪林中。"
    assert shot_prompts(story)[1] == "一只红狐狸 跳进雪堆！ 雪林中。"


def test_local_prompts_that_hold_a_chinese_global_prompt_are_not_warned_about():
    from longgen.story import Story

    story = Story.from_dict({"global": "一只红狐狸在雪林中。", "local": ["一只红狐狸在雪林中睡觉。", "一只红狐狸在雪林中，跳进雪堆。"]})
    assert story.missing_global_warning() is None


def test_an_llm_answer_in_chinese_whose_local_prompts_go_on_after_the_global_sentence_is_valid():
    # "一只狐狸在雪林中。" + "，醒来了" was refused as not holding the global prompt (only '.' was dropped), so a valid
    # Chinese answer cost a retry and then failed; the English "A fox in a forest." + ", waking" always passed
    import json

    from longgen.splitters.llm import parse_answer

    glob = "一只红狐狸在雪林中。"
    answer = json.dumps({"global": glob, "local": ["一只红狐狸在雪林中，醒来了。", "一只红狐狸在雪林中，跳进雪堆。"]},
                        ensure_ascii=False)
    story = parse_answer(answer, 2)
    assert story.global_prompt == glob and story.local_prompts[1] == "一只红狐狸在雪林中，跳进雪堆。"


@pytest.mark.parametrize("text, kept", [
    ("a" * 8 + "🇨🇳🇯🇵", "a" * 8 + "🇨🇳"),  # a flag is two code points: half a flag is another letter
    ("a" * 9 + "🇨🇳x", "a" * 9),
    ("a" * 9 + "🐱\u200d👤x", "a" * 9),  # an emoji sequence joined by ZWJ is one character on screen
    ("a" * 10 + "\u200d👤x", "a" * 9),
    ("a" * 9 + "e\u0301xyz", "a" * 9),  # a combining accent stays with its letter
    ("a" * 9 + "👍🏽xyz", "a" * 9),  # a skin tone stays with its emoji
])
def test_a_cut_line_ends_between_characters_as_they_are_seen(text, kept):
    from longgen.story import cut

    assert cut(text, 11) == kept + "…"


def test_the_event_plan_line_drops_the_chinese_punctuation_after_the_global_prompt(caplog):
    # "一只狐狸在雪林中。睡觉" was logged as "。睡觉" (only Latin marks were dropped)
    import logging
    from types import SimpleNamespace

    from longgen.run.job import log_event_plan
    from longgen.story import Story

    story = Story.from_dict({"global": "一只狐狸在雪林中", "local": ["一只狐狸在雪林中。睡觉", "一只狐狸在雪林中，跳"]})
    rows = [{"event": e, "windows": [e], "frames": [e * 10, e * 10 + 10], "seconds": [e, e + 1.0]} for e in range(2)]
    job = SimpleNamespace(story=story, event_table=lambda: rows, events=SimpleNamespace(origin=0),
                          plan=SimpleNamespace(count=2))
    with caplog.at_level(logging.INFO, logger="longgen"):
        log_event_plan(job)
    assert [r.getMessage().rsplit(": ", 1)[1] for r in caplog.records] == ["睡觉", "跳"]


def test_quoted_chinese_text_over_hunyuans_byt5_limit_is_one_line_before_loading(caplog):
    # ByT5 reads the quoted text as UTF-8 bytes (3 per Chinese character) and the pipeline silently cut it at
    # backbone.glyph_tokens=256: a sign of about 80 Chinese characters lost its end with no word
    import logging

    from longgen.errors import UsageError
    from longgen.run.job import check_prompt_lengths
    from longgen.story import Story

    backbone = _backbone("hunyuanvideo-1.5")
    sign = "欢迎光临" * 21  # 84 characters, 252 bytes: over 256 with 'Text "…". ' around it
    story = Story.from_dict({"global": "一家小店", "local": [f"一家小店，门口挂着写有“{sign}”的招牌"]})
    with pytest.raises(UsageError, match=r"local prompt 1's quoted text has 262 tokens: over the 256-token text limit of .*ByT5 glyph encoder"):
        check_prompt_lengths(story, backbone, "")
    check_prompt_lengths(Story.from_dict({"global": "一家小店", "local": [f"一家小店“{sign[:60]}”"]}), backbone, "")
    tiny = _backbone("tiny-hunyuan15")  # random weights: a warning, counted as its stand-in encoder counts
    with caplog.at_level(logging.WARNING, logger="longgen"):
        check_prompt_lengths(Story.from_dict({"global": "店", "local": ["店“一二三四五六七八九”"]}), tiny, "")
    assert any("quoted text has 13 tokens" in r.getMessage() for r in caplog.records), caplog.text


def test_plot_labels_in_a_script_the_plot_font_lacks_are_one_line_not_a_python_warning_per_glyph(tmp_path, caplog,
                                                                                             recwarn):
    # `longgen eval` of runs labelled in Chinese printed matplotlib's two-line UserWarning for every missing glyph of
    # every figure (pointing at longgen/eval/plots.py) and said nothing about what to do
    import logging

    import matplotlib.font_manager as fm

    from longgen.eval.report import write_report

    if fm.findfont("Noto Sans CJK SC", fallback_to_default=True) != fm.findfont("DejaVu Sans"):
        pytest.skip("this machine's plot font has Chinese glyphs")
    result = {"label": "猫、狗", "video": str(tmp_path / "v.mp4"), "frames": 3, "fps": 8.0, "curves": {}, "seams": [],
              "summary": {"flicker": 0.95}, "video_info": {"frames": 3, "width": 16, "height": 16, "fps": 8.0}}
    with caplog.at_level(logging.INFO, logger="longgen"):
        write_report([result], tmp_path / "report", embed_videos=False)
    assert not [w for w in recwarn if "missing from font" in str(w.message)]
    lines = [r.getMessage() for r in caplog.records if r.name == "longgen" and "font" in r.getMessage()]
    assert len(lines) == 1 and "、" in lines[0] and "猫" in lines[0], lines


@pytest.mark.parametrize("command, arg", [("generate", "prompt=un caf\udce9 au lait"),  # a Latin-1 terminal
                                          ("generate", "story=/data/\udcc3.json"),
                                          ("split-prompt", "scenario=\udcb0\udca1.txt")])  # a GBK terminal
def test_a_command_line_that_is_not_utf8_is_one_line_before_any_directory(command, arg, tmp_path, capsys):
    # a terminal in another encoding gives Python undecodable bytes as surrogates: generate wrote .hydra/ and the lock,
    # then failed with a UnicodeEncodeError traceback writing the config, leaving that directory behind
    from longgen.cli import main

    run_dir = tmp_path / "run"
    assert main([command, "backbone=tiny", arg, f"hydra.run.dir={run_dir}"] if command == "generate"
                else [command, arg, f"hydra.run.dir={run_dir}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not UTF-8" in err and "\\x" in err and "UTF-8" in err, err
    assert not run_dir.exists()


def test_a_chinese_prompt_file_wrapped_over_lines_is_one_text_without_spaces_inside_words(tmp_path):
    # lines were joined with a space: "一只红狐狸在白雪覆盖的 白桦林中" (a space mid-phrase, a token of its own)
    from longgen.splitters.base import check_scenario
    from longgen.story import Story

    path = tmp_path / "prompt.txt"
    path.write_text("一只红狐狸在白雪覆盖的\n白桦林中慢慢地走着。\n  A red fox\nwalks. 雪地上\n有脚印。\n", encoding="utf-8")
    expected = "一只红狐狸在白雪覆盖的白桦林中慢慢地走着。 A red fox walks. 雪地上有脚印。"
    assert Story.from_prompt_file(path).global_prompt == expected
    assert check_scenario(path.read_text(encoding="utf-8")) == expected
    assert check_scenario("猫 と 犬") == "猫 と 犬"  # spaces typed on one line are the writer's own
    assert check_scenario("一只猫\r在雪中") == "一只猫在雪中"  # a lone carriage return breaks a line too


def test_a_sweep_subdir_named_after_a_long_chinese_prompt_is_one_line_before_any_job():
    # hydra.sweep.subdir='${hydra.job.num}_${prompt}' with an 85-character Chinese prompt (255 bytes and more) made
    # Hydra's launcher fail with two OSError tracebacks ('File name too long'), no job run
    from longgen.errors import UsageError
    from longgen.run.sweep import check_job_dirs

    with pytest.raises(UsageError, match=r"job 0 a folder name of 272 bytes.*limit of 255.*3 bytes"):
        check_job_dirs(["0_" + "猫" * 90, "1_猫"], "${hydra.job.num}_${prompt}")
    check_job_dirs(["0_" + "猫" * 84, "1_猫/" + "狗" * 84], "${hydra.job.num}_${prompt}")  # 254 bytes: fits
    with pytest.raises(UsageError, match=r"job 1 a folder name of 260 bytes"):  # the longest in bytes, not letters
        check_job_dirs(["0_a", "x" * 100 + "/1_" + "猫" * 86], "${x}/${hydra.job.num}_${prompt}")


def test_a_machine_whose_locale_is_not_utf8_reads_and_writes_utf8_and_prints_what_it_can(tmp_path):
    # with a locale such as en_US (ISO-8859-1) or an unknown one (ASCII), every command failed before its first line
    # (the configs, which hold '—', read in the locale's encoding: a UnicodeDecodeError traceback); files were
    # written in that encoding, and printing a Chinese table was a UnicodeEncodeError traceback after the split
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    scenario = tmp_path / "zh.txt"
    scenario.write_text("一只红狐狸在雪林中醒来。它跳进雪堆🦊。", encoding="utf-8")
    env = {**os.environ, "PYTHONUTF8": "0", "LC_ALL": "xx_XX.ISO-8859-1", "LANG": "xx_XX.ISO-8859-1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("PYTHONIOENCODING", None)
    proc = subprocess.run([sys.executable, "-m", "longgen.cli", "split-prompt", "zh.txt", "num_prompts=2",
                           "splitter=offline", "hydra.run.dir=run"], cwd=tmp_path, env=env, capture_output=True,
                          timeout=120)
    assert proc.returncode == 0 and b"Traceback" not in proc.stderr, proc.stderr.decode("ascii", "replace")[-2000:]
    assert json.loads((tmp_path / "run" / "story.json").read_text(encoding="utf-8"))["local"][1].endswith("雪堆🦊。")
    assert b"\\u96ea\\u5806" in proc.stdout  # the table's Chinese, escaped for this terminal
    # Chinese on such a command line: Python cannot even name a file after it; one line saying what to set
    proc = subprocess.run([sys.executable, "-m", "longgen.cli", "generate", "backbone=tiny", "prompt=一只猫",
                           "hydra.run.dir=run2"], cwd=tmp_path, env=env, capture_output=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count(b"\n") == 1 and b"PYTHONUTF8=1" in proc.stderr, proc.stderr
    assert not (tmp_path / "run2").exists()


@pytest.mark.parametrize("scenario", ["。。。", "！", "...", "?!"])
def test_a_scenario_of_punctuation_only_is_one_line(scenario):
    # rule 7 (another language) took the first of no sentences: an IndexError traceback from split-prompt
    from longgen.errors import UsageError
    from longgen.splitters.offline import OfflineSplitter

    with pytest.raises(UsageError, match="no words"):
        OfflineSplitter().split(scenario, 2)


@pytest.mark.parametrize("scenario, first", [("「走吧。」他说。然后他走了。", "「走吧。」"),
                                             ("他喊道：“快跑！”狐狸跑了。", "他喊道：“快跑！”")])
def test_a_chinese_sentence_ending_inside_quotes_is_cut_after_the_closing_quote(scenario, first):
    # "「走吧。" and "」他说。" were two sentences, the first with its quote left open
    from longgen.splitters.offline import OfflineSplitter

    story = OfflineSplitter().split(scenario, 3)
    assert story.global_prompt == first, story.global_prompt
    assert all(p.startswith(first) and not p[len(first):].startswith(("」", "”")) for p in story.local_prompts)
    assert not any(p.endswith(("」。", "”。")) for p in story.local_prompts)


def test_a_chinese_character_id_is_told_that_ids_are_ascii():
    # '狐狸' was refused as not being "letters, digits, '-' or '_'", which it is; ids are ASCII so that Chinese text
    # may follow "Character 1" without a space ("Character 1醒来")
    from longgen.errors import UsageError
    from longgen.story import Story

    with pytest.raises(UsageError, match=r"character id '狐狸' must be ASCII letters.*Character 1醒来"):
        Story.from_dict({"characters": {"狐狸": "一只红狐狸"}, "shots": ["Character 狐狸 醒来"]})
    story = Story.from_dict({"characters": {"1": "一只红狐狸"}, "shots": ["Character 1醒来"]})
    assert story.shots[0].prompt == "Character 1醒来"


# ---------------------------------------------------------------------- mutation audit (session 10): edges pinned
def test_a_chinese_prompt_on_a_utf8_command_line_is_not_refused():
    from longgen.overrides import not_utf8

    assert not_utf8(["prompt=一只猫在雪中🦊", "story=/data/故事.json", "seed=1"]) is None


@pytest.mark.parametrize("text, kept", [
    ("a" * 8 + "🐱\u200d👤x", "a" * 8),  # the cut falls on the emoji after a ZWJ: the whole sequence goes
    ("a" * 8 + "e\u0301\u0302xyz", "a" * 8),  # two accents on one letter
    ("a" * 4 + "🏴\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007fx", "a" * 4),  # a tag flag's end
    ("a" * 9 + "कि" + "x", "a" * 9),  # a spacing vowel sign (Mc) stays with its consonant
])
def test_a_cut_line_keeps_longer_sequences_whole(text, kept):
    from longgen.story import cut

    assert cut(text, 11) == kept + "…"
    assert cut("🇨🇳🇯🇵x", 3) == "🇨🇳…"  # flags from the text's first character on are counted in pairs


def test_text_ending_in_chinese_is_told_apart_past_emoji_sequences_and_rare_ideographs():
    from longgen.story import ends_full_width, full_stop

    assert ends_full_width("雪地🐱\u200d👤") and ends_full_width("猫❤\ufe0f")  # ZWJ, variation selector passed over
    assert ends_full_width("𠮷") and full_stop("𠮷野家") == "𠮷野家。"  # CJK extension B (outside the BMP)
    assert ends_full_width("〒")  # a full-width symbol on its own is still full-width
    assert full_stop("他走了…") == "他走了…" and full_stop("Wait…") == "Wait…"  # an ellipsis ends a sentence


def test_the_stand_in_tokenizer_splits_latin_from_a_chinese_letter_after_it():
    from longgen.backbones.hashed_text import ideographs

    assert tokenize("AI猫") == ["ai", "猫"] and tokenize("猫AI") == ["猫", "ai"]
    assert ideographs(tokenize("AI猫，走")) == 3


def test_the_estimate_counts_a_chinese_character_once_and_a_word_1_3_times_plus_the_end_token():
    backbone = _backbone("wan2.1-t2v-1.3b")
    assert backbone.count_tokens("一只猫 walks") == (6, False)  # ceil(1 × 1.3) + 3 + </s>


def test_the_glyph_warnings_are_collected_whatever_the_warning_filters_and_others_still_shown():
    import warnings

    from longgen.eval.plots import missing_glyphs

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PYTHONWARNINGS=error (or ignore): the glyphs are still collected
        with missing_glyphs() as found:
            warnings.warn("Glyph 29483 (\\N{CJK UNIFIED IDEOGRAPH-732B}) missing from font(s) DejaVu Sans.")
    assert found == {"猫"}
    with pytest.warns(UserWarning, match="another warning"):
        with missing_glyphs():
            warnings.warn("another warning", UserWarning)


def test_a_scenario_of_emoji_only_is_a_scenario():
    from longgen.splitters.base import check_scenario

    assert check_scenario("🦊🌲❄️") == "🦊🌲❄️"


def test_a_character_after_a_chinese_full_stop_starts_a_sentence():
    from longgen.run.shots import _substitute

    assert _substitute("雪林中。Character 1在跑。", {"1": "a red fox"}) == "雪林中。A red fox在跑。"
