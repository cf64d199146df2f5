"""Frame sampling and decoding: the frames decoded are exactly the ones the sampler names."""

import numpy as np
import pytest

from longvila_jax.data import synthetic, video


def test_sample_indices_hand_cases():
    # uniform: round(linspace(0, 299, 7))
    assert video.sample_indices(300, 10.0, 7).tolist() == [0, 50, 100, 150, 199, 249, 299]
    # fps cap: 300 frames at 10 fps = 30 s; 0.5 frame/s -> 15 frames (under the cap of 50)
    assert video.sample_indices(300, 10.0, 50, fps=0.5).tolist() == \
        np.round(np.linspace(0, 299, 15)).astype(int).tolist()
    # fps cap above N: N wins
    assert len(video.sample_indices(300, 10.0, 8, fps=2.0)) == 8
    # a short video under an fps cap gives fewer frames, never more than it has
    assert video.sample_indices(4, 10.0, 8, fps=100.0).tolist() == [0, 1, 2, 3]
    assert video.sample_indices(20, 10.0, 8, fps=1.0).tolist() == [0, 19]
    with pytest.raises(ValueError, match="has 4 frames, fewer than the 8"):
        video.sample_indices(4, 10.0, 8)


def test_index_code_roundtrip(rng):
    values = rng.integers(0, 2 ** 16, size=20)
    blank = np.zeros((64, 64, 3), np.uint8)
    assert [synthetic.read_index(synthetic.burn_index(blank, int(v))) for v in values] == values.tolist()


@pytest.mark.parametrize("fps_cap", [None, 1.5])
def test_decoded_frames_are_the_sampled_ones(tmp_path, rng, fps_cap):
    total = int(rng.integers(90, 200))
    gop = int(rng.integers(4, 20))
    num_frames = int(rng.integers(3, 12))
    path = synthetic.write_video(tmp_path / "indexed.mp4", synthetic.indexed_frames(total), fps=10, gop=gop)
    height, width = 32, int(rng.choice([32, 48]))
    spec = video.FrameSpec(num_frames=num_frames, fps=fps_cap, image_size=(height, width))
    stats = video.DecodeStats()
    frames = video.load_video(str(path), spec, stats)
    expected = video.sample_indices(total, 10.0, num_frames, fps_cap)
    assert frames.shape == (len(expected), height, width, 3) and frames.dtype == np.float32
    assert [synthetic.read_index(f) for f in frames] == expected.tolist()
    # SigLIP normalization: black blocks -> -1, white blocks -> +1 (up to coding noise)
    assert frames.min() == pytest.approx(-1.0, abs=0.08) and frames.max() == pytest.approx(1.0, abs=0.08)
    # seeking: each wanted frame costs at most one group of pictures plus the skipped-over frames
    # when targets are closer than a group; far fewer than the whole file when targets are sparse
    assert stats.decoded <= min(total, len(expected) * (gop + spec.seek_gap + 1))
    if (total // max(len(expected), 1)) > 2 * (gop + spec.seek_gap):
        assert stats.seeks > 0 and stats.decoded < total / 2


def test_sparse_keyframes_never_decode_twice(tmp_path):
    # one key frame for the whole file: seeking cannot help; the adaptive gap must stop re-decoding
    total = 120
    path = synthetic.write_video(tmp_path / "one_gop.mp4", synthetic.indexed_frames(total), gop=total)
    stats = video.DecodeStats()
    frames = video.decode_frames(str(path), video.FrameSpec(num_frames=6, image_size=32), stats)
    assert [synthetic.read_index(f) for f in frames] == video.sample_indices(total, 10, 6).tolist()
    assert stats.decoded <= total + 30  # at most one wasted seek's worth of frames


def test_normalize_matches_formula(rng):
    frames = rng.integers(0, 256, size=(3, 5, 7, 3), dtype=np.uint8)
    mean, std = rng.uniform(0.2, 0.8, 3), rng.uniform(0.2, 0.9, 3)
    out = video.normalize(frames, mean, std)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, (frames / 255.0 - mean) / std, rtol=1e-5, atol=1e-5)


def test_image_is_one_frame(tmp_path, rng):
    from PIL import Image

    index = int(rng.integers(0, 2 ** 16))
    Image.fromarray(synthetic.burn_index(np.zeros((64, 64, 3), np.uint8), index)).save(tmp_path / "a.png")
    frames = video.load_image(str(tmp_path / "a.png"), video.FrameSpec(image_size=32))
    assert frames.shape == (1, 32, 32, 3)
    assert synthetic.read_index(frames[0]) == index


def test_media_errors_name_path_and_reason(tmp_path, rng):
    lines = synthetic.bad_manifest_lines(tmp_path, rng, num_frames=8)
    assert lines  # files written
    spec = video.FrameSpec(num_frames=8, image_size=32)
    # random bytes: FFmpeg mostly cannot open them, but now and then takes them for a container without a video
    # stream (seed 1494676515); both are the corrupt file's messages
    cases = {"missing.mp4": ("missing", ("no such file",)),
             "corrupt.mp4": ("corrupt", ("cannot open", "the file has no video stream")),
             "truncated.mp4": ("truncated", ("of 32 announced",)),
             "short.mp4": ("too_few_frames", ("has 4 frames, fewer than the 8 asked for",))}
    for name, (reason, texts) in cases.items():
        with pytest.raises(video.MediaError) as info:
            video.load_video(str(tmp_path / name), spec)
        assert info.value.reason == reason and any(text in info.value.message for text in texts)
        assert str(tmp_path / name) in str(info.value)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(video.MediaError, match="corrupt: not an image"):
        video.load_image(str(tmp_path / "bad.png"), spec)
