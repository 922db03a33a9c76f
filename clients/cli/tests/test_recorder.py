"""The call client's recording of the agent's audio (voxmesh_cli.call.Recorder)."""

from __future__ import annotations

import fractions

import numpy as np
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame

from voxmesh_cli.call import RATE, Recorder


class Frames:
    """Decoded frames as aiortc's receiver hands them over: 48 kHz stereo s16,
    pts from the RTP timestamps."""

    def __init__(self, items: list[tuple[int, int]]) -> None:
        self.items = items  # (pts, level)

    async def recv(self) -> AudioFrame:
        if not self.items:
            raise MediaStreamError
        pts, level = self.items.pop(0)
        frame = AudioFrame.from_ndarray(np.full((1, 960 * 2), level, np.int16), format="s16", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = 48000, pts, fractions.Fraction(1, 48000)
        return frame


async def test_a_dtx_gap_in_the_timestamps_is_recorded_as_silence():
    # three frames of speech, a DTX packet, 380 ms with no packets (RTP
    # timestamps run on), a DTX packet, then speech again
    items = [(0, 3000), (960, 3000), (1920, 3000), (2880, 0), (2880 + 960 * 20, 0), (2880 + 960 * 21, 3000)]
    rec = Recorder()
    await rec.run(Frames(items))
    audio = rec.audio()
    assert audio.size == 960 * 25  # 500 ms of call time, not 6 frames
    assert np.all(audio[960 * 3 : 960 * 24] == 0) and np.all(audio[-960:] == 3000)
    assert rec.offset_at(rec.chunks[-1][0] + 1) * RATE == 960 * 25


async def test_contiguous_frames_are_recorded_as_they_come():
    rec = Recorder()
    await rec.run(Frames([(960 * i, 100) for i in range(5)]))
    assert rec.audio().size == 960 * 5 and len(rec.chunks) == 5
