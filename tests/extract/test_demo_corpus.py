"""The built-in demo corpus: deterministic, valid, and built so that only fusion solves it.

The separability checks use features anyone can compute: for the voice, a handful of signal
statistics read from the WAV files (level, syllable length, pitch, spectral tilt, voicing), for
the words, the word identities (bag of words, and the exact sentence). They are scored with
leave-one-session-out cross-validation, the protocol of the real task.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ksr.extract.corpora.demo import (
    CLASSES,
    CUE_CYCLE,
    CUES,
    DESIGN,
    SENTENCE_LENGTHS,
    VOICE_STYLES,
    WORD_POOLS,
    make_demo_corpus,
    plan_demo,
    render_item,
)
from ksr.extract.corpora.demo_voice import MAX_SECONDS, MIN_SECONDS, SAMPLE_RATE
from ksr.extract.corpora.manifest import read_manifest

SESSIONS = (1, 2, 3, 4, 5)


# ---------------------------------------------------------------------------------------------
# The plan: who says what, with which cue (no audio needed)


def _bayes_accuracy(keys, labels) -> float:
    """Accuracy of the best classifier that sees only ``keys``: the majority label of each key."""
    by_key: dict = {}
    for key, label in zip(keys, labels, strict=True):
        by_key.setdefault(key, Counter())[label] += 1
    return sum(c.most_common(1)[0][1] for c in by_key.values()) / len(labels)


def test_plan_has_five_sessions_of_two_speakers_and_balanced_classes():
    items = plan_demo(seed=0, per_speaker=32)
    assert len(items) == 320
    assert len({i.id for i in items}) == 320
    speakers = {(i.speaker.name, i.speaker.session, i.speaker.gender) for i in items}
    assert speakers == {(f"Ses{s:02d}{g}", s, g) for s in SESSIONS for g in "FM"}
    for name in {s[0] for s in speakers}:
        mine = [i for i in items if i.speaker.name == name]
        assert Counter(i.label for i in mine) == {c: 8 for c in CLASSES}
        # one full cue cycle per class and speaker: 3 joint, 2 voice, 2 words, 1 both
        for c in CLASSES:
            assert Counter(i.cue for i in mine if i.label == c) == Counter(CUE_CYCLE)
    for s in SESSIONS:  # every test fold sees every class under every cue
        in_session = {(i.label, i.cue) for i in items if i.speaker.session == s}
        assert in_session == {(c, q) for c in CLASSES for q in CUES}
    women = [i.speaker.f0 for i in items if i.speaker.gender == "F"]
    men = [i.speaker.f0 for i in items if i.speaker.gender == "M"]
    assert min(women) > max(men)


def test_plan_follows_the_design_table():
    items = plan_demo(seed=5, per_speaker=32)
    for i in items:
        assert (i.voice_style, i.word_pool) == DESIGN[i.cue, i.label]
        assert i.text in WORD_POOLS[i.word_pool]
        assert i.voice_style in VOICE_STYLES
    # No (voice style, word pool) pair ever meets two labels: the fused task is solvable.
    pairs: dict = {}
    for (_cue, label), pair in DESIGN.items():
        assert pairs.setdefault(pair, label) == label, f"{pair} is both {pairs[pair]} and {label}"


def test_joint_utterances_need_both_modalities_by_design():
    items = plan_demo(seed=0, per_speaker=32)
    joint = [i for i in items if i.cue == "joint"]
    labels = [i.label for i in joint]
    assert len(joint) == 120
    # knowing the exact voice style, or the exact word pool, leaves two classes equally likely
    assert _bayes_accuracy([i.voice_style for i in joint], labels) == 0.5
    assert _bayes_accuracy([i.word_pool for i in joint], labels) == 0.5
    assert _bayes_accuracy([(i.voice_style, i.word_pool) for i in joint], labels) == 1.0
    for subset, alone in (("voice", "word_pool"), ("words", "voice_style")):
        chosen = [i for i in items if i.cue == subset]
        assert _bayes_accuracy([getattr(i, alone) for i in chosen], [i.label for i in chosen]) == 0.25
    # over the whole corpus one modality tops out well below the pair
    every = [i.label for i in items]
    voice_alone = _bayes_accuracy([i.voice_style for i in items], every)
    words_alone = _bayes_accuracy([i.word_pool for i in items], every)
    assert voice_alone <= 0.65 and words_alone <= 0.65
    assert _bayes_accuracy([(i.voice_style, i.word_pool) for i in items], every) == 1.0


def test_word_pools_do_not_leak_into_the_voice():
    # Every pool has the same number of sentences of each length, so the audio's length (which
    # follows the word count) says nothing of the pool; pools share no sentence.
    for pool, sentences in WORD_POOLS.items():
        lengths = Counter(len(s.split()) for s in sentences)
        assert lengths == {n: 3 for n in SENTENCE_LENGTHS}, pool
    every = [s for sentences in WORD_POOLS.values() for s in sentences]
    assert len(every) == len(set(every))


@pytest.mark.parametrize("per_speaker", [0, 6, -4])
def test_rejects_unbalanced_sizes(per_speaker):
    with pytest.raises(ValueError, match="multiple of 4"):
        plan_demo(0, per_speaker)


def test_rejects_bad_seeds():
    for seed in (-1, 1.5, "0"):
        with pytest.raises(ValueError, match="seed"):
            plan_demo(seed, 8)


# ---------------------------------------------------------------------------------------------
# Determinism


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_corpus(tmp_path):
    a = make_demo_corpus(tmp_path / "a", seed=3, per_speaker=4)
    b = make_demo_corpus(tmp_path / "b", seed=3, per_speaker=4)
    c = make_demo_corpus(tmp_path / "c", seed=4, per_speaker=4)
    assert a.name == "manifest.csv"
    first, second, other = (_snapshot(p.parent) for p in (a, b, c))
    assert len(first) == 41  # 40 wavs and the manifest
    assert first == second
    assert first.keys() == other.keys()  # same ids...
    changed = [k for k in first if first[k] != other[k]]
    assert "manifest.csv" in changed  # ...other sentences and classes
    assert sum(k.endswith(".wav") for k in changed) >= 38  # ...and other voices
    # generating over an existing corpus replaces it
    make_demo_corpus(tmp_path / "c", seed=3, per_speaker=4)
    assert _snapshot(tmp_path / "c") == first


def test_audio_is_a_function_of_seed_and_item():
    items = plan_demo(seed=9, per_speaker=8)
    x = render_item(items[5], seed=9)
    assert np.array_equal(x, render_item(items[5], seed=9))
    assert not np.array_equal(x[:1000], render_item(items[5], seed=10)[:1000])
    assert x.dtype == np.float32 and x.ndim == 1


# ---------------------------------------------------------------------------------------------
# The default corpus, generated once


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return read_manifest(make_demo_corpus(tmp_path_factory.mktemp("demo"), seed=0))


@pytest.fixture(scope="module")
def signals(corpus):
    return [sf.read(r.audio, dtype="float32") for r in corpus]


def test_manifest_and_audio_are_valid(corpus, signals):
    assert len(corpus) == 320
    assert corpus.extra_columns == ("cue", "voice_style", "word_pool", "activation", "valence", "dominance")
    assert corpus.labels == list(CLASSES)
    assert Counter(r.label for r in corpus) == {c: 80 for c in CLASSES}
    assert {r.session for r in corpus} == set(SESSIONS)
    assert {r.speaker for r in corpus} == {f"Ses{s:02d}{g}" for s in SESSIONS for g in "FM"}
    for r, (x, rate) in zip(corpus, signals, strict=True):
        assert r.audio.parent.name == "wav" and r.audio.is_file()
        assert r.gender == r.speaker[-1] and r.id.startswith(r.speaker)
        info = sf.info(r.audio)
        assert (info.samplerate, info.channels, info.format, info.subtype) == (SAMPLE_RATE, 1, "WAV", "PCM_16"), r.id
        assert rate == SAMPLE_RATE and x.ndim == 1
        assert MIN_SECONDS - 1e-3 <= len(x) / rate <= MAX_SECONDS + 1e-3 <= 4.5, r.id
        peak = np.abs(x).max()
        assert 0.01 < peak < 0.99, r.id  # audible, never clipped
        assert np.isfinite(x).all()


def _voice_features(x: np.ndarray) -> np.ndarray:
    """Level (dB), syllable length (s), median pitch and its spread (semitones), spectral tilt
    (dB, above 2 kHz against below 1 kHz) and voicing strength of one utterance."""
    hop, win = 160, 400
    count = 1 + (len(x) - win) // hop
    frames = x[np.arange(win)[None, :] + hop * np.arange(count)[:, None]] * np.hanning(win)
    rms = np.sqrt((frames**2).mean(1)) + 1e-9
    active = rms > 0.1 * rms.max()
    level = 20 * np.log10(np.sqrt((rms[active] ** 2).mean()))
    edges = np.diff(np.r_[0, active.astype(int), 0])
    runs = (np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)) * hop / SAMPLE_RATE
    syllable = runs[runs > 0.04].mean() if (runs > 0.04).any() else runs.mean()
    power = np.abs(np.fft.rfft(frames[active][::2], 2 * win)) ** 2  # every other frame will do
    autocorr = np.fft.irfft(power)[:, :win]
    lo, hi = SAMPLE_RATE // 500, SAMPLE_RATE // 70
    lag = lo + autocorr[:, lo:hi].argmax(1)
    semitones = 12 * np.log2(SAMPLE_RATE / lag)
    freqs = np.fft.rfftfreq(2 * win, 1 / SAMPLE_RATE)
    tilt = 10 * np.log10(power[:, freqs > 2000].sum() / power[:, (freqs > 50) & (freqs < 1000)].sum())
    voicing = np.median(autocorr[:, lo:hi].max(1) / autocorr[:, 0])
    return np.array(
        [
            level,
            syllable,
            np.median(semitones),
            np.percentile(semitones, 90) - np.percentile(semitones, 10),
            tilt,
            voicing,
        ]
    )


@pytest.fixture(scope="module")
def features(corpus, signals):
    from sklearn.feature_extraction.text import CountVectorizer

    voice = np.array([_voice_features(x) for x, _ in signals])
    speakers = np.array([r.speaker for r in corpus])
    for s in set(speakers):  # speaker normalisation, as usual in emotion recognition
        mine = speakers == s
        voice[mine] = (voice[mine] - voice[mine].mean(0)) / voice[mine].std(0)
    words = (
        CountVectorizer(token_pattern=r"[a-z']+")
        .fit_transform([r.text.lower() for r in corpus])
        .toarray()
        .astype(float)
    )
    return {
        "voice": voice,
        "words": words,
        "fused": np.hstack([voice, words]),
        "sentence": np.array([r.text for r in corpus]),
        "label": np.array([r.label for r in corpus]),
        "session": np.array([r.session for r in corpus]),
        "cue": np.array([r.extra["cue"] for r in corpus]),
    }


def _predict(features, inputs, model, train_on: str) -> np.ndarray:
    """Leave-one-session-out predictions for every utterance, from a model trained on the other
    sessions' utterances of cue ``train_on`` (``all``: of every cue)."""
    label, session = features["label"], features["session"]
    pool = np.ones(len(label), bool) if train_on == "all" else features["cue"] == train_on
    pred = np.empty(len(label), dtype=object)
    for s in SESSIONS:
        test, train = session == s, pool & (session != s)
        if model == "sentence":  # the exact transcript: its majority label in training
            seen: dict = {}
            for text, y in zip(inputs[train], label[train], strict=True):
                seen.setdefault(text, Counter())[y] += 1
            fallback = Counter(label[train]).most_common(1)[0][0]
            pred[test] = [seen[t].most_common(1)[0][0] if t in seen else fallback for t in inputs[test]]
        else:
            pred[test] = model().fit(inputs[train], label[train]).predict(inputs[test])
    return pred


def _models():
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return (
        lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)),
        lambda: RandomForestClassifier(n_estimators=40, random_state=0),
    )


@pytest.fixture(scope="module")
def scores(features):
    """train_on -> evaluated cue (or ``all``) -> inputs -> best accuracy over the models."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # small fits: threads only add overhead, a lot on a busy machine
        return _score_table(features)


def _score_table(features) -> dict:
    table: dict = {}
    for train_on in ("all", "joint"):
        runs = {
            name: [_predict(features, features[name], m, train_on) for m in _models()]
            for name in ("voice", "words", "fused")
        }
        runs["sentence"] = [_predict(features, features["sentence"], "sentence", train_on)]
        table[train_on] = {}
        for cue in ("all", *CUES):
            if train_on != "all" and cue != train_on:
                continue
            keep = np.ones(len(features["label"]), bool) if cue == "all" else features["cue"] == cue
            table[train_on][cue] = {
                name: max(float((p[keep] == features["label"][keep]).mean()) for p in preds)
                for name, preds in runs.items()
            }
    return table


def test_joint_utterances_need_both_modalities_in_the_signal(scores):
    for joint in (scores["joint"]["joint"], scores["all"]["joint"]):
        # Each modality alone leaves two classes: about half, whatever the classifier.
        assert max(joint["voice"], joint["words"], joint["sentence"]) <= 0.65, scores
        # Together they decide.
        assert joint["fused"] >= 0.88, scores


def test_single_cue_utterances_need_their_own_modality(scores):
    voice, words, both = (scores["all"][c] for c in ("voice", "words", "both"))
    assert voice["voice"] >= 0.85 and max(voice["words"], voice["sentence"]) <= 0.42, voice
    assert max(words["words"], words["sentence"]) >= 0.9 and words["voice"] <= 0.42, words
    assert both["voice"] >= 0.85 and max(both["words"], both["sentence"]) >= 0.85, both


def test_fusion_beats_each_modality_on_the_whole_corpus(scores):
    every = scores["all"]["all"]
    assert max(every["voice"], every["words"], every["sentence"]) <= 0.7, every
    assert every["fused"] >= 0.88, every


def test_attributes_follow_the_design(corpus):
    """Activation from the voice style, valence from the word pool, dominance from both; a
    rater's noise (sd 0.25) around the design's value, quarter points on 1-5."""
    from ksr.extract.corpora.demo import POOL_DOMINANCE, POOL_VALENCE, RATER_NOISE, STYLE_ACTIVATION, STYLE_DOMINANCE

    got = {a: np.array([float(r.extra[a]) for r in corpus]) for a in ("activation", "valence", "dominance")}
    style = [r.extra["voice_style"] for r in corpus]
    pool = [r.extra["word_pool"] for r in corpus]
    design = {
        "activation": np.array([STYLE_ACTIVATION[s] for s in style]),
        "valence": np.array([POOL_VALENCE[p] for p in pool]),
        "dominance": np.array([(STYLE_DOMINANCE[s] + POOL_DOMINANCE[p]) / 2 for s, p in zip(style, pool, strict=True)]),
    }
    for name, values in got.items():
        assert values.min() >= 1 and values.max() <= 5 and np.all(values * 4 == np.round(values * 4)), name
        error = values - design[name]
        assert abs(error.mean()) < 0.05 and 0.6 * RATER_NOISE < error.std() < 1.4 * RATER_NOISE, name
    # The valence of a joint utterance is not in its voice: same style, both pools' valences.
    joint = [r for r in corpus if r.extra["cue"] == "joint" and r.extra["voice_style"] == "aroused"]
    assert {r.extra["word_pool"] for r in joint} == {"negative", "positive"}
