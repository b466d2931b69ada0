"""Tests of lightft.robust (chapter 10): words and gaps, the character edits and word swaps, the constraints, the goal
function, the two searches, `attack` and its summary. A keyword classifier (positive when "good"/"great" outnumber
"bad") makes every attack's outcome predictable; the course's tiny BERT checks the constraints on real texts. Offline,
seconds."""
import random

import numpy as np
import pytest
import torch
from torch import nn

from lightft.data import load_task
from lightft.models import load_plm
from lightft.robust import (CHARACTER_EDITS, RECIPES, AttackResult, KeepWords, LevenshteinPerWord, MaxWordsChanged, QueryBudgetExhausted,
                            Recipe, SentenceEncoder, SentenceSimilarity, UntargetedClassification, WordEmbedding, adversarial_copies,
                            antonyms, attack, attack_row, attack_subset, attack_summary, changed_indices, character_edits,
                            check_constraints, delete_word, format_summary, get_recipe, join_words, keyboard_neighbours,
                            levenshtein, make_constraints, match_case, results_html, split_words, stop_words, success_rate_by_budget,
                            with_copies, word_swaps)


class KeywordModel(nn.Module):
    "A classifier that counts words: logits (#negative + 0.5, #positive), so a text is positive while it has more positive words."
    def __init__(self, tokenizer, positive=("good", "great"), negative=("bad",)):
        super().__init__()
        vocab = tokenizer.get_vocab()
        self.positive = torch.tensor([vocab[w] for w in positive if w in vocab])
        self.negative = torch.tensor([vocab[w] for w in negative if w in vocab])
        self.unused = nn.Parameter(torch.zeros(()))          # gives the model a device
    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        pos = torch.isin(input_ids, self.positive).sum(-1).float()
        neg = torch.isin(input_ids, self.negative).sum(-1).float()
        return torch.stack([neg + 0.5, pos], -1) + self.unused


class StubTokenizer:
    "The two things `WordEmbedding` asks of a tokenizer."
    def __init__(self, words): self.words = words
    def get_vocab(self): return {w: i for i, w in enumerate(self.words)}
    all_special_tokens = ["[PAD]"]


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = load_plm("tiny-bert", num_labels=2, seed=0)
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def keyword(tiny):
    return KeywordModel(tiny[1]), tiny[1]


POSITIVE = ("good", "great", "best", "love", "loved", "perfect", "excellent", "friendly", "easy", "fresh", "worth", "fun", "beautiful", "well")
NEGATIVE = ("bad", "worst", "never", "broken", "rude", "waste", "cold", "slow", "poor", "nothing", "dirty", "disappointing", "boring")

@pytest.fixture(scope="module")
def sentiment_words(tiny):
    "A keyword classifier with a few dozen sentiment words: right on many reviews, and fooled one misspelling at a time."
    return KeywordModel(tiny[1], POSITIVE, NEGATIVE), tiny[1]


@pytest.fixture(scope="module")
def kit(tiny):
    "The embedding table and sentence encoder of the tiny BERT (what `attack` would otherwise build from MiniLM)."
    model, tokenizer = tiny
    return dict(embedding=WordEmbedding.from_model(model, tokenizer), encoder=SentenceEncoder(model.bert, tokenizer))


@pytest.fixture(scope="module")
def reviews():
    return attack_subset(load_task("sentiment", split="test"), 8, seed=0)


# ------------------------------------------------------------------ words
def test_split_and_join_give_back_every_text():
    for text in list(load_task("sentiment", split="challenge")["text"]) + ["", "!!", "  a  b ", "don't-stop 10/10 NOW"]:
        words, gaps = split_words(text)
        assert len(gaps) == len(words) + 1 and join_words(words, gaps) == text


def test_delete_word_removes_one_word_and_one_gap():
    words, gaps = split_words("good, not great.")
    assert [delete_word(words, gaps, i) for i in range(3)] == ["not great.", "good, great.", "good, not."]


def test_word_lists_are_lower_case_and_antonyms_go_both_ways():
    assert all(w == w.lower() for w in stop_words()) and {"not", "the"} <= stop_words()
    table = antonyms()
    assert all(w in table[o] for w, opposites in table.items() for o in opposites)


# ------------------------------------------------------------------ transformations
def test_keyboard_neighbours_are_symmetric():
    for a in "abcdefghijklmnopqrstuvwxyz":
        assert a not in keyboard_neighbours(a) and keyboard_neighbours(a)
        assert all(a in keyboard_neighbours(b) for b in keyboard_neighbours(a))


@pytest.mark.parametrize("kind", list(CHARACTER_EDITS))
def test_each_character_edit_is_one_small_change(kind):
    rng = random.Random(0)
    for word in ("terrible", "Good", "don't", "okay"):
        for _ in range(30):
            new = CHARACTER_EDITS[kind](word, rng)
            assert new is not None and new != word or kind == "swap" and new is None
            if new is None: continue
            assert levenshtein(word, new) <= (2 if kind == "swap" else 1)
            if kind == "swap": assert sorted(new) == sorted(word)


def test_character_edits_give_single_words_and_follow_the_seed():
    for word in ("terrible", "don't", "ok"):
        edits = character_edits(word, random.Random(3))
        assert edits and len(set(edits)) == len(edits) and word not in edits
        assert all(split_words(e)[0] == [e] for e in edits)               # still exactly one word
        assert edits == character_edits(word, random.Random(3))
    assert len(character_edits("terrible", random.Random(0), kinds=("delete",), per_kind=5)) > 1


def test_word_swaps_leave_out_antonyms_and_keep_the_case():
    weight = torch.tensor([[1.0, 0.0], [1.0, 0.01], [1.0, 0.1], [0.0, 1.0], [1.0, 0.05]])
    table = WordEmbedding(weight, StubTokenizer(["good", "bad", "fine", "[PAD]", "x"]))
    assert table.words == ["good", "bad", "fine"]                            # special tokens and 1-letter entries are not words
    assert [w for w, _ in table.neighbours("good", k=5)] == ["bad", "fine"]
    assert word_swaps("good", table, k=5, min_cos=0.0) == ["fine"]
    assert word_swaps("Good", table, k=5, min_cos=0.0, antonym_filter=False) == ["Bad", "Fine"]
    assert word_swaps("good", table, k=5, min_cos=0.999) == []              # nothing similar enough
    assert match_case("great", "GOOD") == "GREAT" and match_case("great", "I") == "Great"


# ------------------------------------------------------------------ constraints
def test_each_constraint_accepts_and_rejects():
    o, gaps = split_words("the pasta was cold and the waiter was rude")
    one, two = o[:3] + ["cild"] + o[4:], o[:3] + ["colt"] + o[4:8] + ["rdue"]
    stop = ["teh"] + o[1:]
    assert MaxWordsChanged(0.25)(o, [one, two], gaps) == [True, True]          # 2 of 9 words <= 2.25
    assert MaxWordsChanged(0.15)(o, [one, two], gaps) == [True, False]
    assert LevenshteinPerWord(1)(o, [one, two], gaps) == [True, False]
    assert KeepWords()(o, [one, stop], gaps) == [True, False]
    assert KeepWords(frozenset({"rude"}))(o, [one, two], gaps) == [True, False]
    assert KeepWords(stop_words=False)(o, [stop], gaps) == [True]
    with pytest.raises(ValueError, match="keeps the number of words"): changed_indices(o, o[:-1])


def test_sentence_similarity_passes_the_same_text_and_rejects_above_one(kit):
    o, gaps = split_words("the pasta was cold")
    assert SentenceSimilarity(kit["encoder"], 0.999)(o, [o], gaps) == [True]
    assert SentenceSimilarity(kit["encoder"], 1.01)(o, [o], gaps) == [False]   # a constraint that rejects everything
    e = kit["encoder"](["a b", "c d", "a b"])
    assert torch.allclose(e.norm(dim=-1), torch.ones(3)) and torch.equal(e[0], e[2])


def test_check_constraints_refuses_a_text_with_other_words():
    with pytest.raises(ValueError, match="words and gaps"): check_constraints([MaxWordsChanged()], "a good day", "a good, day")


# ------------------------------------------------------------------ goal function
def test_goal_function_scores_counts_and_stops_at_the_budget(keyword):
    model, tokenizer = keyword
    goal = UntargetedClassification(model, tokenizer, max_queries=3)
    won, scores, preds = goal(["the food was good", "the food was bad"], 1)
    assert won.tolist() == [False, True] and preds.tolist() == [1, 0]
    p = goal.probabilities(["the food was good"])[0]
    assert np.isclose(scores[0], 1 - p[1]) and goal.queries == 2
    won, _, _ = goal(["a", "b", "c"], 1)                          # only one query left: one answer
    assert len(won) == 1 and goal.queries == 3
    with pytest.raises(QueryBudgetExhausted): goal(["a"], 1)


# ------------------------------------------------------------------ attacks
@pytest.mark.parametrize("search", ["wir", "greedy"])
def test_deepwordbug_misspells_the_one_word_that_matters(keyword, search):
    model, tokenizer = keyword
    [r] = attack(model, tokenizer, ["The food was good"], [1], "deepwordbug", search=search)
    assert r.status == "succeeded" and r.words_changed == 1 and r.perturbed_label == 0
    words, new = split_words(r.original_text)[0], split_words(r.perturbed_text)[0]
    assert changed_indices(words, new) == [3] and levenshtein("good", new[3]) <= 2


def test_skipped_failed_and_kept_words(keyword):
    model, tokenizer = keyword
    skipped, kept, lonely = attack(model, tokenizer, ["the food was bad", "good food", "the good"], [1, 1, 1], "deepwordbug",
                                   keep=("good",), max_fraction=1.0)
    assert skipped.status == "skipped" and skipped.queries == 1
    assert kept.status == "failed" and kept.perturbed_text == "good food"    # the only useful word may not change
    assert lonely.status == "failed"


def test_the_query_budget_is_kept(keyword, reviews):
    model, tokenizer = keyword
    for r in attack(model, tokenizer, reviews["text"], reviews["label"], "deepwordbug", max_queries=4):
        assert r.queries <= 4


@pytest.mark.parametrize("victim", ["tiny", "sentiment_words"])
@pytest.mark.parametrize("recipe", list(RECIPES))
def test_every_perturbed_text_keeps_every_constraint(request, kit, recipe, victim):
    model, tokenizer = request.getfixturevalue(victim)
    texts = attack_subset(load_task("sentiment", split="test"), 16, seed=2)
    results = attack(model, tokenizer, texts["text"], texts["label"], recipe, max_queries=300, keep=("staff",), **kit)
    constraints = make_constraints(get_recipe(recipe), keep=("staff",), encoder=kit["encoder"])
    for r in results:
        assert all(check_constraints(constraints, r.original_text, r.perturbed_text).values())
        old, new = split_words(r.original_text)[0], split_words(r.perturbed_text)[0]
        assert not [a for a, b in zip(old, new) if a != b and a.lower() in stop_words()]
        assert r.words_changed == len(changed_indices(old, new)) <= RECIPES[recipe].max_fraction * r.num_words
    assert {r.status for r in results} <= {"succeeded", "failed", "skipped"}
    if victim == "sentiment_words": assert any(r.status == "succeeded" for r in results)


def test_a_kept_word_never_changes(tiny, reviews):
    model, tokenizer = tiny
    keep = {w.lower() for t in reviews["text"] for w in split_words(t)[0][::2]}      # every other word of every review
    for r in attack(model, tokenizer, reviews["text"], reviews["label"], "deepwordbug", keep=keep, max_fraction=1.0):
        old, new = split_words(r.original_text)[0], split_words(r.perturbed_text)[0]
        assert all(a == b for a, b in zip(old, new) if a.lower() in keep)


def test_same_seed_same_results_and_another_seed_other_edits(tiny, reviews):
    model, tokenizer = tiny
    run = lambda seed: attack(model, tokenizer, reviews["text"], reviews["label"], "deepwordbug", seed=seed, max_fraction=0.5)
    first = run(0)
    assert first == run(0)
    assert [r.perturbed_text for r in first] != [r.perturbed_text for r in run(1)]


@pytest.mark.parametrize("search", ["wir", "greedy"])
def test_success_under_a_smaller_budget_reads_off_one_attack(sentiment_words, search):
    model, tokenizer = sentiment_words
    texts = attack_subset(load_task("sentiment", split="test"), 40, seed=1)
    wide = attack(model, tokenizer, texts["text"], texts["label"], "deepwordbug", max_fraction=0.5, search=search)
    rates = success_rate_by_budget(wide, [0.05, 0.1, 0.5])
    assert 0 < rates[0] < rates[-1]                                   # some texts fall at once, more with a larger budget
    for budget, rate in zip((0.05, 0.1), rates):
        narrow = attack(model, tokenizer, texts["text"], texts["label"], "deepwordbug", max_fraction=budget, search=search)
        assert rate == attack_summary(narrow)["attack success rate"]


def test_textfooler_swaps_whole_words_from_the_table(tiny, kit, reviews):
    model, tokenizer = tiny
    for r in attack(model, tokenizer, reviews["text"], reviews["label"], "textfooler", **kit):
        old, new = split_words(r.original_text)[0], split_words(r.perturbed_text)[0]
        for i in changed_indices(old, new): assert new[i].lower() in kit["embedding"].index and new[i].lower() not in antonyms().get(old[i].lower(), ())


# ------------------------------------------------------------------ summary, html, row, defence
def _result(status, changed=0, words=10, queries=5):
    return AttackResult("a", "a", 1, 1 if status != "skipped" else 0, 0, 0.9, 0.4, status, changed, words, queries)


def test_attack_summary_is_textattacks_arithmetic():
    results = [_result("succeeded", 2, queries=10), _result("succeeded", 1, queries=20), _result("failed", queries=30), _result("skipped", queries=1)]
    s = attack_summary(results)
    assert (s["successful attacks"], s["failed attacks"], s["skipped attacks"]) == (2, 1, 1)
    assert s["original accuracy"] == 75.0 and s["accuracy under attack"] == 25.0
    assert np.isclose(s["attack success rate"], 200 / 3) and np.isclose(s["average perturbed word %"], 15.0)
    assert s["avg num queries"] == 20.0                                   # skipped texts are not counted
    assert "Attack success rate:" in format_summary(s) and "66.67%" in format_summary(s)
    assert attack_summary([])["attack success rate"] == 0.0
    assert success_rate_by_budget(results, [0.1, 0.2]) == [100 / 3, 200 / 3]


def test_results_html_marks_the_changed_words_and_escapes_text():
    r = AttackResult("<b>good</b> food", "<b>goood</b> food", 1, 1, 0, 0.9, 0.4, "succeeded", 1, 3, 7)
    page = results_html([r])
    assert "<b>good" not in page and "&lt;" in page
    assert page.count("font-weight:bold") == 2 and ">goood</span>" in page and ">good</span>" in page


def test_attack_row_has_flat_columns(keyword, reviews):
    model, tokenizer = keyword
    row = attack_row(model, tokenizer, reviews, recipes="deepwordbug", n=6)
    assert set(row) == {f"attack_deepwordbug_{k}" for k in ("accuracy", "success_rate", "words_perturbed", "queries", "n")}
    assert row["attack_deepwordbug_n"] == 6 and 0 <= row["attack_deepwordbug_accuracy"] <= 1


def test_adversarial_copies_keep_the_true_labels(keyword):
    model, tokenizer = keyword
    data = load_task("sentiment")
    copies = adversarial_copies(model, tokenizer, data["train"], "deepwordbug", n=40)
    assert len(copies) > 0 and set(copies.column_names) == {"text", "label"}
    originals = {t: l for t, l in zip(data["train"]["text"], data["train"]["label"])}
    assert all(t not in originals for t in copies["text"])
    assert len(with_copies(data, copies)["train"]) == len(data["train"]) + len(copies)


def test_recipes_check_their_settings():
    with pytest.raises(ValueError, match="transformation"): Recipe("x", "letters")
    with pytest.raises(ValueError, match="search"): Recipe("x", "characters", search="beam")
    with pytest.raises(TypeError, match="unknown recipe setting"): get_recipe("deepwordbug", budget=3)
    with pytest.raises(TypeError, match="list of texts"): attack(None, None, "one text", [1])
