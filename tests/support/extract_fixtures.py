"""Helpers for the ksr.extract tests: an IEMOCAP replica tree and small audio files.

The replica follows the release's formats and quirks (reference/iemocap_format.md): EmoEvaluation
blocks with per-annotator lines, zero-padded transcript times, colons inside texts, irregular
dialog names, speakers whose letter differs from the dialog's, XX ids, lines that are no
utterance, per-annotator folders and AppleDouble ``._`` files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

# (utterance id, raw label, transcript). Start/end times are made up from the position.
REPLICA: dict[str, list[tuple[str, str, str]]] = {
    "Ses01F_impro01": [
        ("Ses01F_impro01_F000", "neu", "Excuse me."),
        ("Ses01F_impro01_M000", "exc", "Do you have your forms?"),  # male in an F dialog
        ("Ses01F_impro01_F001", "xxx", "Yeah."),
        ("Ses01F_impro01_M001", "fru", "This is the third time this week!"),
        ("Ses01F_impro01_F002", "ang", "Listen: I told you twice: no. [LAUGHTER]"),
    ],
    "Ses01M_script01_1": [
        ("Ses01M_script01_1_F000", "sad", "What time is it?"),
        ("Ses01M_script01_1_M000", "hap", "It's late, we should go."),
    ],
    "Ses02F_impro02": [
        ("Ses02F_impro02_F000", "sad", "I miss her so much."),
        ("Ses02F_impro02_M000", "sur", "Are you kidding me?"),
    ],
    "Ses03M_impro05a": [  # irregular name: a fixed index would read 'M' for both
        ("Ses03M_impro05a_M012", "ang", "Get out of my way!"),
        ("Ses03M_impro05a_F012", "sad", "I just want to go home."),
    ],
    "Ses03M_impro08b": [
        ("Ses03M_impro08b_F000", "exc", "Oh my god, that's wonderful news!"),
    ],
    "Ses04F_script02_2": [
        ("Ses04F_script02_2_M020", "neu", "Sure, sounds good."),
        ("Ses04F_script02_2_F020", "fea", "What was that?"),
    ],
    "Ses05M_script01_1b": [  # irregular name with a letter after the part number
        ("Ses05M_script01_1b_F003", "hap", "That is the funniest thing: really."),
        ("Ses05M_script01_1b_M003", "neu", "Okay."),
        ("Ses05M_script01_1b_F004", "oth", "Hmm."),
    ],
}
# Transcript lines that are not labelled utterances, per dialog.
EXTRA_TRANSCRIPT_LINES: dict[str, list[str]] = {
    "Ses01F_impro01": ["Ses01F_impro01_MXX0 [012.0000-013.5000]: [BREATHING]", "M: [GARBAGE]"],
    "Ses02F_impro02": [
        "Ses02F_impro02_FXX0 [020.1000-021.0000]: Mm-hmm.",
        "Ses02F_impro02_F001 [022.0000-023.0000]: Not in EmoEvaluation.",
    ],
    "Ses04F_script02_2": ["F: [LAUGHTER]"],
}
APPLEDOUBLE = (
    b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        \n"
    b"Ses01F_impro01_F098 [001.0000-002.0000]: junk\n"
    b"[1.0000 - 2.0000]\tSes01F_impro01_F098\tang\t[1.0, 1.0, 1.0]\n"
)


def write_wav(path: Path, samples: np.ndarray, rate: int = 16000, subtype: str = "PCM_16"):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, samples, rate, subtype=subtype)
    return path


def _times(index: int) -> tuple[float, float]:
    return 2.5 * index + 0.2901, 2.5 * index + 2.2357


def build_iemocap_replica(root: Path, *, drop_wav: str | None = None, drop_transcript: str | None = None) -> Path:
    """Write the replica under ``root/IEMOCAP_full_release`` and return that folder.

    ``drop_wav`` / ``drop_transcript``: an utterance id whose wav / transcript line to leave out.
    """
    release = root / "IEMOCAP_full_release"
    rng = np.random.default_rng(0)
    for dialog, utterances in REPLICA.items():
        session = release / f"Session{int(dialog[3:5])}"
        emo = session / "dialog" / "EmoEvaluation"
        trans = session / "dialog" / "transcriptions"
        for folder in ("Attribute", "Categorical", "Self-evaluation"):
            (emo / folder).mkdir(parents=True, exist_ok=True)
        # Per-annotator files; one holds a summary-like line a recursive reader would take.
        (emo / "Categorical" / f"{dialog}_e2_cat.txt").write_text(
            f"{utterances[0][0]} :Neutral state; ()\n[1.0000 - 2.0000]\t{dialog}_F099\tang\t[1.0000, 1.0000, 1.0000]\n"
        )
        (emo / "Attribute" / f"{dialog}_e3_atr.txt").write_text(f"{utterances[0][0]} :act 2; val 3; dom  2;  ()\n")
        blocks = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n"]
        lines = []
        for i, (uid, label, text) in enumerate(utterances):
            start, end = _times(i)
            blocks.append(
                f"[{start:.4f} - {end:.4f}]\t{uid}\t{label}\t[2.5000, 3.0000, 2.0000]\n"
                "C-E2:\tNeutral;\t()\nC-E3:\tNeutral;\t(curious)\n"
                "A-E3:\tval 3; act 2; dom  2;\t()\n"
            )
            if uid != drop_transcript:
                lines.append(f"{uid} [{start:08.4f}-{end:08.4f}]: {text}")
            if uid != drop_wav:
                write_wav(
                    session / "sentences" / "wav" / dialog / f"{uid}.wav",
                    (0.1 * rng.standard_normal(1600)).astype(np.float32),
                )
        lines[1:1] = EXTRA_TRANSCRIPT_LINES.get(dialog, [])
        emo.mkdir(parents=True, exist_ok=True)
        trans.mkdir(parents=True, exist_ok=True)
        (emo / f"{dialog}.txt").write_text("\n".join(blocks) + "\n")
        (trans / f"{dialog}.txt").write_text("\n".join(lines) + "\n")
    # AppleDouble junk from a macOS copy, next to real files (4 in all).
    s1 = release / "Session1"
    (s1 / "dialog" / "EmoEvaluation" / "._Ses01F_impro01.txt").write_bytes(APPLEDOUBLE)
    (s1 / "dialog" / "transcriptions" / "._Ses01F_impro01.txt").write_bytes(APPLEDOUBLE)
    (s1 / "sentences" / "wav" / "Ses01F_impro01" / "._Ses01F_impro01_F000.wav").write_bytes(APPLEDOUBLE)
    (s1 / "sentences" / "wav" / "._Ses01F_impro01").write_bytes(APPLEDOUBLE)
    return release
