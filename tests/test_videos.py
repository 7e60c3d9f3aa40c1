"""Synthetic videos: the decoded mp4 shows each event at the second the questions state."""

import random

import decord
import numpy as np
import pytest

from synth.videos import COLOURS, make_script, video_samples, write_video


def _nearest_colour(pixel: np.ndarray) -> str:
    return min(COLOURS, key=lambda name: float(np.sum((np.asarray(COLOURS[name]) - pixel) ** 2)))


def _colour_at(frame: np.ndarray, centre: tuple[int, int]) -> str:
    x, y = centre
    return _nearest_colour(frame[y - 3:y + 4, x - 3:x + 4].reshape(-1, 3).mean(axis=0))


def test_colour_changes_and_appearances_happen_at_the_stated_second(tmp_path):
    checked = 0
    for seed in range(6):
        script = make_script(seed)
        write_video(script, tmp_path / f"{seed}.mp4")
        video = decord.VideoReader(str(tmp_path / f"{seed}.mp4"))
        assert len(video) == script.duration_s * script.fps
        assert video.get_avg_fps() == pytest.approx(script.fps)
        for track in script.tracks:
            if track.colour_s is None:
                continue
            before, after = track.colour_s * script.fps - 1, track.colour_s * script.fps
            centre = track.state(after / script.fps)[0]
            if track.state(before / script.fps)[0] != centre:
                continue  # moving across the change: the centre pixel is not the same spot
            assert _colour_at(video[before].asnumpy(), centre) == track.colour
            assert _colour_at(video[after].asnumpy(), centre) == track.new_colour
            checked += 1
    assert checked >= 3


def test_events_are_on_distinct_whole_seconds_and_answers_state_them():
    for seed in range(30):
        script = make_script(seed)
        seconds = [e.second for e in script.events]
        assert len(seconds) == len(set(seconds)) and max(seconds) < script.duration_s
        for sample in video_samples(script, "videos/x.mp4", random.Random(seed), n=3):
            assert sample.messages[0]["content"][0] == {"type": "video", "video": "videos/x.mp4"}
            if sample.meta["question_type"] == "when":
                assert sample.messages[1]["content"] == f"At {sample.meta['second']} seconds."
                assert sample.meta["second"] in seconds


def test_odd_sizes_are_rejected():
    with pytest.raises(ValueError, match="321x240"):
        make_script(0, width=321)


def test_every_seed_gives_a_script_with_each_event_on_its_own_second():
    # short clips with three shapes used to run out of free seconds (IndexError)
    for seed in range(600):
        script = make_script(seed)
        seconds = [event.second for event in script.events]
        assert 2 <= len(script.tracks) <= 3
        assert len(seconds) == len(set(seconds))
        assert all(0 <= s < script.duration_s for s in seconds)
