"""Word error rate: the normalisation and the word-level Levenshtein distance, on cases counted by
hand."""

from __future__ import annotations

import pytest

from ksr.extract.asr.wer import normalise_words, word_edits, word_error_rate


@pytest.mark.parametrize(
    "text, words",
    [
        ("Hello, World!", ["hello", "world"]),
        ("I told you twice: no. [LAUGHTER]", ["i", "told", "you", "twice", "no"]),
        ("Don't  GO\tthere...", ["don't", "go", "there"]),
        ("Don\u2019t go", ["don't", "go"]),  # a typographic apostrophe is the same word
        ("'cause it's 'fine'", ["cause", "it's", "fine"]),
        ("well-known <noise> fact", ["well", "known", "fact"]),
        ("Straße ÉTÉ", ["strasse", "été"]),  # casefold, not lower: ß -> ss
        ("[BREATHING] -- ?!", []),
        ("", []),
        ("room 101", ["room", "101"]),
    ],
)
def test_normalise_words(text, words):
    assert normalise_words(text) == words


@pytest.mark.parametrize(
    "reference, hypothesis, edits",
    [
        ("a b c", "a b c", 0),
        ("a b c", "a x c", 1),  # one substitution
        ("a b c", "a c", 1),  # one deletion
        ("a b c", "a b b c", 1),  # one insertion
        ("a b c", "", 3),  # everything deleted
        ("", "a b", 2),  # everything inserted
        ("a b c d", "b c d e", 2),  # delete a, insert e (not 4 substitutions)
        ("the cat sat on the mat", "the cat sat on mat", 1),
        ("kitten sitting", "sitting kitten", 2),  # a swap is two substitutions
        ("a a a", "a", 2),
    ],
)
def test_word_edits_counted_by_hand(reference, hypothesis, edits):
    assert word_edits(reference.split(), hypothesis.split()) == edits
    assert word_edits(hypothesis.split(), reference.split()) == edits  # the distance is symmetric


def test_corpus_wer_sums_edits_before_dividing():
    # 1 edit over 2 words, then 0 over 8: the corpus WER is 1/10, not the mean of 50% and 0%.
    errors = word_error_rate(
        [
            ("Hello there.", "hello their"),
            ("one two three four five six seven eight", "ONE two three four five six seven eight"),
        ]
    )
    assert (errors.edits, errors.reference_words, errors.utterances) == (1, 10, 2)
    assert errors.rate == pytest.approx(0.1)
    assert errors.to_dict() == {"wer": pytest.approx(0.1), "edits": 1, "reference_words": 10, "utterances": 2}


def test_wer_may_exceed_one_and_is_none_without_reference_words():
    assert word_error_rate([("yes", "no no no")]).rate == pytest.approx(3.0)  # 1 substitution + 2 insertions
    assert word_error_rate([("[LAUGHTER]", "ha")]).rate is None
    assert word_error_rate([]).rate is None
