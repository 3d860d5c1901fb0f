"""The demo corpus's voice: a small source-filter speech model in numpy (no TTS, no download).

An utterance is a row of syllable-like vowels. The source is a Rosenberg glottal pulse train
(its derivative, as the lips radiate it) with a pitch contour, jitter and shimmer, plus
aspiration noise pulsed with the glottal cycle; each syllable is shaped by an amplitude envelope
and given the spectral envelope of a vowel, a peak at each of its three formants (frequency
domain, overlap-add); consonant onsets are short noise bursts; a first-order spectral slope sets
the brightness of the whole. Everything an emotion changes is a field of :class:`VoiceStyle`:

- ``pitch_st``, ``range_st``: pitch level above the speaker's own (semitones) and the size of
  the pitch movements (accents, declination);
- ``rate``: syllables per second (tempo; pauses between words scale with it);
- ``gain_db``: loudness;
- ``open_quotient``, ``tilt_hz``: voice quality. A short open phase and a high corner of the
  spectral slope give a pressed, bright voice; a long open phase and a low corner a lax, dull one;
- ``breath``: aspiration noise (breathiness); ``jitter``: cycle-to-cycle irregularity of pitch
  (and, with it, of amplitude: shimmer). A breathy voice also has wider formant bandwidths.

The voice does not spell the words: each word of the transcript becomes one or two syllables
(drawn at random, independently of the word), so the audio carries the transcript's word count
but nothing of its identity. Every random draw comes from the generator passed in: same
generator state, same samples.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

from ...common import SAMPLE_RATE

#: Utterances are kept within these durations (seconds): the model reads at most 460 frames of
#: 10 ms, and short clips keep extraction fast.
MIN_SECONDS = 1.0
MAX_SECONDS = 4.4
#: RMS of the voiced part at 0 dB gain, and of the background noise (about -70 dBFS).
BASE_RMS = 0.035
NOISE_RMS = 3e-4
#: Formants (Hz) of a few vowels for an adult male vocal tract (scaled per speaker), their
#: bandwidths (Hz) and the relative heights of their peaks.
VOWELS = np.array(
    [
        [730, 1090, 2440],  # a
        [270, 2290, 3010],  # i
        [300, 870, 2240],  # u
        [530, 1840, 2480],  # e
        [570, 840, 2410],  # o
        [660, 1720, 2410],  # ae
        [520, 1190, 2390],  # uh
    ],
    dtype=np.float64,
)
BANDWIDTHS = np.array([80.0, 100.0, 150.0])
FORMANT_WEIGHTS = (1.0, 0.7, 0.4)
#: Peak amplitude of a consonant burst, relative to the glottal source's RMS.
BURST = 0.3


@dataclass(frozen=True)
class VoiceStyle:
    """How a voice is used in one utterance (see the module docstring for the fields)."""

    pitch_st: float
    range_st: float
    rate: float
    gain_db: float
    open_quotient: float
    tilt_hz: float
    breath: float
    jitter: float

    def mix(self, other: VoiceStyle, weight: float = 0.5) -> VoiceStyle:
        """The style between this one and ``other`` (``weight`` = share of ``other``)."""
        return VoiceStyle(
            **{f.name: (1 - weight) * getattr(self, f.name) + weight * getattr(other, f.name) for f in fields(self)}
        )

    def vary(self, rng: np.random.Generator) -> VoiceStyle:
        """One utterance's draw around this style: nobody says two sentences the same way."""

        def lognormal(sd: float) -> float:
            return float(np.exp(rng.normal(0.0, sd)))

        return replace(
            self,
            pitch_st=self.pitch_st + float(rng.normal(0.0, 0.8)),
            range_st=self.range_st * lognormal(0.15),
            rate=self.rate * lognormal(0.07),
            gain_db=self.gain_db + float(rng.normal(0.0, 1.2)),
            open_quotient=float(np.clip(self.open_quotient + rng.normal(0.0, 0.03), 0.3, 0.9)),
            tilt_hz=self.tilt_hz * lognormal(0.1),
            breath=self.breath * lognormal(0.2),
            jitter=self.jitter * lognormal(0.2),
        )


@dataclass(frozen=True)
class Speaker:
    """A speaker's own voice: pitch, vocal tract size, loudness."""

    name: str
    session: int
    gender: str  # F or M
    f0: float  # typical pitch, Hz
    formant_scale: float  # vocal tract: formants scale with 1 / length
    gain_db: float  # how loud this speaker talks

    @classmethod
    def draw(cls, name: str, session: int, gender: str, rng: np.random.Generator) -> Speaker:
        if gender == "F":
            f0, scale = rng.uniform(185.0, 230.0), rng.uniform(1.12, 1.2)
        else:
            f0, scale = rng.uniform(100.0, 135.0), rng.uniform(0.96, 1.03)
        return cls(name, session, gender, float(f0), float(scale), float(rng.normal(0.0, 1.0)))


def _smooth_noise(rng: np.random.Generator, n: int, rate_hz: float) -> np.ndarray:
    """Unit-variance noise that changes about ``rate_hz`` times a second, ``n`` samples long."""
    points = int(np.ceil(n * rate_hz / SAMPLE_RATE)) + 2
    knots = rng.normal(0.0, 1.0, points)
    return np.interp(np.arange(n) * (rate_hz / SAMPLE_RATE), np.arange(points), knots)


def _glottal_flow(frac: np.ndarray, open_quotient: float) -> np.ndarray:
    """Rosenberg pulse at cycle position ``frac`` in [0, 1): opening over 60% of the open phase,
    closing over the rest, closed afterwards."""
    rise = 0.6 * open_quotient
    flow = np.zeros_like(frac)
    opening = frac < rise
    flow[opening] = 0.5 * (1.0 - np.cos(np.pi * frac[opening] / rise))
    closing = (frac >= rise) & (frac < open_quotient)
    flow[closing] = np.cos(0.5 * np.pi * (frac[closing] - rise) / (open_quotient - rise))
    return flow


def _vowel_envelope(freqs: np.ndarray, formants: np.ndarray, bandwidths: np.ndarray) -> np.ndarray:
    """Spectral envelope of a vowel: a peak at each formant (weaker ones higher up) on a small
    floor. Unlike a cascade of resonators it has no slope of its own above the formants: the
    voice's brightness is set by the source and the style's tilt alone."""
    response = np.full_like(freqs, 0.05)
    for weight, centre, width in zip(FORMANT_WEIGHTS, formants, bandwidths, strict=True):
        response += weight / np.sqrt(1.0 + ((freqs - centre) / (0.5 * width)) ** 2)
    return response


def _timeline(n_words: int, style: VoiceStyle, rng: np.random.Generator):
    """Syllable start/end times (seconds) and the utterance's length, within the limits."""
    syllables = rng.integers(1, 3, n_words)  # 1 or 2 per word, not read from the word
    n_syl = int(syllables.sum())
    beat = 1.0 / style.rate
    durations = beat * rng.uniform(0.8, 1.2, n_syl)
    gaps = np.zeros(n_syl)  # silence before each syllable
    word_starts = np.cumsum(syllables)[:-1]  # index of the first syllable of words 2..n
    gaps[word_starts] = beat * rng.uniform(0.15, 0.45, n_words - 1)
    lead, trail = rng.uniform(0.10, 0.20), rng.uniform(0.15, 0.25)
    speech = durations.sum() + gaps.sum()
    if lead + speech + trail > MAX_SECONDS:  # squeeze a long, slow sentence to fit
        squeeze = (MAX_SECONDS - lead - trail) / speech
        durations, gaps = durations * squeeze, gaps * squeeze
        speech *= squeeze
    trail = max(trail, MIN_SECONDS - lead - speech)
    starts = lead + np.cumsum(gaps + np.r_[0.0, durations[:-1]])
    return starts, starts + durations, lead + speech + trail


def synthesize(n_words: int, speaker: Speaker, style: VoiceStyle, rng: np.random.Generator) -> np.ndarray:
    """An utterance of ``n_words`` words by ``speaker`` in ``style``: float32 mono 16 kHz,
    between :data:`MIN_SECONDS` and :data:`MAX_SECONDS` long, samples within [-1, 1]."""
    if n_words < 1:
        raise ValueError("an utterance needs at least one word")
    sr = SAMPLE_RATE
    starts, ends, total = _timeline(n_words, style, rng)
    n = int(round(total * sr))
    t = np.arange(n) / sr
    first, last = int(starts[0] * sr), int(ends[-1] * sr)

    # Pitch contour (semitones above the speaker's pitch): declination over the sentence, one
    # accent per syllable, jitter as fast random wobble.
    progress = np.clip((t - starts[0]) / max(ends[-1] - starts[0], 1e-3), 0.0, 1.0)
    semitones = style.pitch_st + style.range_st * (0.3 - 0.6 * progress)
    accents = rng.uniform(-0.4, 1.0, len(starts)) * style.range_st * 0.6
    for a, b, accent in zip(starts, ends, accents, strict=True):
        i, j = int(a * sr), int(b * sr)
        semitones[i:j] += accent * np.sin(np.pi * np.linspace(0.0, 1.0, j - i))
    f0 = speaker.f0 * 2.0 ** (semitones / 12.0)
    f0 *= 1.0 + style.jitter * _smooth_noise(rng, n, 150.0)
    cycles = np.cumsum(f0) / sr
    flow = _glottal_flow(cycles % 1.0, style.open_quotient)
    source = np.diff(flow, prepend=0.0) * (1.0 + 3.0 * style.jitter * _smooth_noise(rng, n, 80.0))
    source /= np.sqrt(np.mean(source[first:last] ** 2)) + 1e-12
    aspiration = rng.normal(0.0, 1.0, n) * (0.4 + flow)  # louder while the glottis is open
    source += style.breath * aspiration

    # Syllables: envelope, vowel formants (zero-phase filter in the frequency domain), overlap-add.
    out = np.zeros(n)
    pad = 512
    bandwidths = BANDWIDTHS * (1.0 + 2.0 * style.breath)  # a breathy voice damps the formants
    for a, b in zip(starts, ends, strict=True):
        i, j = int(a * sr), int(b * sr)
        length = j - i
        u = np.linspace(0.0, 1.0, length)
        envelope = np.minimum(1.0, np.minimum(u / 0.15, (1.0 - u) / 0.3)) ** 1.5
        stress = rng.uniform(0.7, 1.0)
        envelope *= stress
        nfft = 1 << int(np.ceil(np.log2(length + 2 * pad)))
        freqs = np.fft.rfftfreq(nfft, 1.0 / sr)
        vowel = VOWELS[rng.integers(len(VOWELS))] * speaker.formant_scale
        buffer = np.zeros(nfft)
        buffer[pad : pad + length] = source[i:j] * envelope
        spectrum = np.fft.rfft(buffer) * _vowel_envelope(freqs, vowel, bandwidths)
        # Consonant onset: a short burst of high-passed noise (no formants, same tilt).
        burst_len = min(int(rng.uniform(0.015, 0.035) * sr), length)
        buffer[:] = 0.0
        buffer[pad : pad + burst_len] = (
            BURST * stress * np.hanning(burst_len) * np.diff(rng.normal(0.0, 1.0, burst_len + 1))
        )
        spectrum += np.fft.rfft(buffer)
        spectrum /= np.sqrt(1.0 + (freqs / style.tilt_hz) ** 2)  # the voice's brightness
        segment = np.fft.irfft(spectrum, nfft)
        lo = i - pad
        keep = slice(max(lo, 0), min(lo + nfft, n))
        out[keep] += segment[keep.start - lo : keep.stop - lo]

    voiced = out[first:last]
    level = BASE_RMS * 10.0 ** ((style.gain_db + speaker.gain_db) / 20.0)
    out *= level / (np.sqrt(np.mean(voiced**2)) + 1e-12)
    out += NOISE_RMS * rng.normal(0.0, 1.0, n)
    return np.clip(out, -0.99, 0.99).astype(np.float32)
