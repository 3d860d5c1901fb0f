"""Small emotional corpora spoken by espeak-ng, in ksr's manifest format (docs/manifest.md).

Not part of the package: a tool for studying ksr on corpora unlike the built-in demo, with real
audio and text (extract them with the offline ``fbank`` and ``minilm`` encoders). Needs the
``espeak-ng`` program (``apt-get install espeak-ng``).

Two designs (``--design``):

- ``voices``: one speaker per session (leave-one-session-out = leave-one-speaker-out), voices of
  both genders and several accents. Emotion is in the prosody (rate, pitch, loudness) of every utterance and, for half of them, also in the words.
- ``shifted``: two speakers per session; every speaker has its own pitch and rate, far apart,
  and the emotions move prosody *relative to the speaker's own* (a sad high voice can sound
  higher than an angry low one). Words carry the emotion for a quarter of the utterances. A
  corpus where speaker shift matters; keep it aside as a holdout you do not tune on.

    python tools/espeak_corpus.py --design voices --out /tmp/voices
    ksr prepare check /tmp/voices/manifest.csv
"""

from __future__ import annotations

import argparse
import csv
import random
import subprocess
import sys
from pathlib import Path

CLASSES = ("ang", "hap", "neu", "sad")
# Emotion as prosody, relative to a speaker's base: rate factor, pitch offset (espeak 0-99),
# amplitude factor.
PROSODY = {
    "ang": (1.25, +6, 1.5),
    "hap": (1.12, +16, 1.2),
    "neu": (1.0, 0, 1.0),
    "sad": (0.75, -10, 0.7),
}
WORDS = {
    "ang": [
        "Get out of my way right now.",
        "I am sick of your excuses.",
        "How dare you touch my things.",
        "Stop lying to me this instant.",
        "You ruined everything again.",
    ],
    "hap": [
        "This is the best day of my life.",
        "I love it, thank you so much.",
        "We won, we actually won.",
        "What a wonderful surprise this is.",
        "I am so glad you came.",
    ],
    "neu": [
        "The meeting starts at nine.",
        "Please put the box on the table.",
        "The train leaves from platform two.",
        "I will send the form tomorrow.",
        "The shop is next to the bank.",
    ],
    "sad": [
        "I miss her every single day.",
        "Nobody came to the funeral.",
        "I lost my job this morning.",
        "It will never be the same again.",
        "He is not coming back.",
    ],
}
NEUTRAL_WORDS = [
    "I saw the letter on the desk.",
    "We talked about it yesterday.",
    "The door was open when I arrived.",
    "She told me what happened.",
    "They moved to another city.",
    "It is almost time to go.",
    "I read the whole message.",
    "The results came in today.",
]
# (speaker, espeak voice, gender, base pitch, base rate words/min)
VOICES_DESIGN = [
    ("usF", "en-us+f2", "F", 55, 160),
    ("gbM", "en-gb+m3", "M", 40, 150),
    ("scM", "en-gb-scotland+m1", "M", 45, 165),
    ("caF", "en-029+f4", "F", 60, 150),
    ("rpF", "en-gb-x-rp+f1", "F", 50, 170),
    ("nyM", "en-us-nyc+m5", "M", 35, 155),
]
SHIFTED_DESIGN = [
    ("s1a", "en-us+m2", "M", 20, 130),
    ("s1b", "en-gb+f3", "F", 75, 185),
    ("s2a", "en-gb-x-gbclan+m4", "M", 30, 190),
    ("s2b", "en-us+f5", "F", 65, 125),
    ("s3a", "en-gb-x-gbcwmd+m6", "M", 15, 160),
    ("s3b", "en-029+f1", "F", 80, 150),
    ("s4a", "en-us-nyc+m7", "M", 38, 140),
    ("s4b", "en-gb-scotland+f2", "F", 70, 175),
]
DESIGNS = {
    # name: (speakers, speakers per session, utterances per speaker and class, share with emotional words)
    "voices": (VOICES_DESIGN, 1, 10, 0.5),
    "shifted": (SHIFTED_DESIGN, 2, 8, 0.25),
}


def speak(text: str, voice: str, pitch: int, rate: int, amplitude: int, wav: Path) -> None:
    cmd = ["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(rate), "-a", str(amplitude), "-w", str(wav)]
    subprocess.run([*cmd, text], check=True, capture_output=True)


def build(design: str, out: Path, seed: int) -> int:
    speakers, per_session, per_class, word_share = DESIGNS[design]
    rng = random.Random(seed)
    (out / "wav").mkdir(parents=True, exist_ok=True)
    rows = []
    for k, (speaker, voice, gender, base_pitch, base_rate) in enumerate(speakers):
        session = k // per_session + 1
        for label in CLASSES:
            rate_f, dpitch, amp_f = PROSODY[label]
            for i in range(per_class):
                emotional = i < round(word_share * per_class)
                text = rng.choice(WORDS[label] if emotional else NEUTRAL_WORDS)
                jitter = rng.uniform(-0.06, 0.06)  # no two utterances with the same prosody
                pitch = int(min(99, max(0, base_pitch + dpitch + rng.randint(-3, 3))))
                rate = int(base_rate * (rate_f + jitter))
                uid = f"{speaker}_{label}_{i:02d}"
                wav = out / "wav" / f"{uid}.wav"
                if not wav.exists():
                    speak(text, voice, pitch, rate, int(100 * amp_f), wav)
                rows.append([uid, f"wav/{uid}.wav", text, label, speaker, session, gender])
    with open(out / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "audio", "text", "label", "speaker", "session", "gender"])
        w.writerows(rows)
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--design", choices=sorted(DESIGNS), required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    n = build(a.design, a.out, a.seed)
    print(f"wrote {n} utterances and {a.out / 'manifest.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
