"The console script as a user runs it."
import json, os, subprocess, sys
from pathlib import Path
import pytest

LIGHTFT = [sys.executable, "-m", "lightft"]   # works from a source tree too, where no console script is on PATH


def run(*args):
    return subprocess.run([*LIGHTFT, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_env_prints_the_report():
    r = run("env")
    assert r.returncode == 0 and "transformers" in r.stdout and "hf_hub_offline" in r.stdout


def test_env_json():
    r = run("env", "--json")
    assert json.loads(r.stdout)["hf_hub_offline"] is True


@pytest.mark.parametrize("args", [["--help"], ["env", "--help"]])
def test_help(args):
    r = run(*args)
    assert r.returncode == 0 and "usage: lightft" in r.stdout


@pytest.mark.parametrize("args", [["env", "--nope"], ["no-such-command"], []])
def test_bad_arguments_fail_with_one_line(args):
    r = run(*args)
    assert r.returncode == 2
    if args: assert len(r.stderr.strip().splitlines()) == 1 and "error" in r.stderr


def test_the_console_script_when_installed():
    script = Path(sys.executable).parent / "lightft"
    if not script.exists(): pytest.skip("no lightft console script next to this Python (a source tree without pip install -e)")
    r = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("lightft ")


def test_compare_with_settings_options_and_seeds(tmp_path):
    r = run("compare", "--model", "tiny-bert", "--methods", "head,lora", "--option", "lora.r=2", "--seeds", "0,1", "--epochs", "1",
            "--train-subset", "32", "--max-length", "32", "--batch-size", "16", "--grad-accum", "2", "--lr", "1e-3",
            "--no-baseline", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    saved = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [(row["method"], row["seed"]) for row in saved] == [("head", 0), ("head", 1), ("lora", 0), ("lora", 1)]   # every run is kept
    assert all(row["lr"] == 1e-3 for row in saved) and json.loads(saved[2]["options"]) == {"r": 2}
    assert r.stdout.count("±") >= 2                                        # the table: mean ± std over the two seeds


def test_compare_on_named_entities(tmp_path):
    r = run("compare", "--model", "tiny-bert", "--task", "ner", "--methods", "head", "--epochs", "1", "--train-subset", "32",
            "--max-length", "32", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "test F1 %" in r.stdout and "challenge F1 %" in r.stdout and "tfidf" not in r.stdout


def test_compare_on_extractive_qa(tmp_path):
    r = run("compare", "--model", "tiny-bert", "--task", "qa", "--methods", "head", "--epochs", "1", "--train-subset", "24",
            "--max-length", "96", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "test EM %" in r.stdout and "test F1 %" in r.stdout
    assert json.loads((tmp_path / "results.json").read_text())["rows"][0]["test_f1"] >= 0


def test_direction_is_for_translation_only(tmp_path):
    r = run("compare", "--model", "tiny-bert", "--methods", "head", "--direction", "zh-en", "--out", str(tmp_path))
    assert r.returncode == 1 and "direction applies to translation tasks" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_compare_with_attacks_adds_columns(tmp_path):
    r = run("compare", "--model", "tiny-bert", "--methods", "head", "--epochs", "1", "--train-subset", "32", "--max-length", "32",
            "--no-baseline", "--attack", "deepwordbug", "--attack-n", "3", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "deepwordbug acc %" in r.stdout
    row = json.loads((tmp_path / "results.json").read_text())["rows"][0]
    assert row["attack_deepwordbug_n"] == 3 and 0 <= row["attack_deepwordbug_accuracy"] <= 1 and 0 <= row["attack_deepwordbug_success_rate"] <= 1


def test_attacks_are_refused_before_training_when_wrong(tmp_path):
    r = run("compare", "--model", "tiny-bert", "--methods", "head", "--attack", "hotflip", "--out", str(tmp_path))
    assert r.returncode == 1 and "unknown attack 'hotflip'" in r.stderr
    r = run("compare", "--model", "tiny-bert", "--task", "ner", "--methods", "head", "--attack", "deepwordbug", "--out", str(tmp_path))
    assert r.returncode == 1 and "classification tasks only" in r.stderr


def test_pretrain_lists_the_minilm_head_preset_and_refuses_steps_for_it():
    r = run("pretrain", "--help")
    assert r.returncode == 0 and "minilm-mlm-head" in r.stdout
    r = run("pretrain", "--preset", "minilm-mlm-head", "--steps", "5")
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1
    assert "lightft: error:" in r.stderr and "epochs over cached features" in r.stderr
