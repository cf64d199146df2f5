"""Sources (manifests, documents) and the synthetic generators."""

import json

import numpy as np
import pytest

from longvila_jax.data import synthetic, video
from longvila_jax.data.sources import ManifestSource, TextSource


def test_manifest_resolves_paths_and_flags_bad_lines(tmp_path):
    lines = [json.dumps({"video": "a/b.mp4", "conversations": []}), "", "{oops",
             json.dumps({"image": "/abs/c.png"}), json.dumps([1, 2]), json.dumps({"conversations": [1]})]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    source = ManifestSource(tmp_path / "m.jsonl", data_root=tmp_path / "root")
    assert len(source) == 5  # the blank line is not a sample
    assert source[0]["video"] == str(tmp_path / "root" / "a/b.mp4") and source[0]["_index"] == 0
    assert source[1]["_bad_record"].startswith("not valid JSON") and source[1]["_where"].endswith("m.jsonl:2")
    assert source[2]["image"] == "/abs/c.png"
    assert "must be a JSON object" in source[3]["_bad_record"]
    assert ManifestSource(tmp_path / "m.jsonl")[0]["video"] == str(tmp_path / "a/b.mp4")  # default root
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ManifestSource(tmp_path / "none.jsonl")


def test_parquet_manifest(tmp_path):
    pa = pytest.importorskip("pyarrow", reason="pyarrow is optional; Parquet manifests need it")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"video": ["x.mp4"], "conversations": [[{"from": "human", "value": "hi"}]]}),
                   tmp_path / "m.parquet")
    source = ManifestSource(tmp_path / "m.parquet")
    assert source[0]["video"] == str(tmp_path / "x.mp4")
    assert source[0]["conversations"] == [{"from": "human", "value": "hi"}]


def test_text_sources(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "b.txt").write_text("second")
    (tmp_path / "docs" / "a.txt").write_text("first")
    folder = TextSource(tmp_path / "docs")
    assert [folder[i]["text"] for i in range(len(folder))] == ["first", "second"]
    synthetic.write_jsonl(tmp_path / "d.jsonl", [{"text": "x"}, {"input_ids": [1, 2, 3]}])
    lines = TextSource(tmp_path / "d.jsonl")
    assert lines[0]["text"] == "x" and lines[1]["input_ids"] == [1, 2, 3]
    memory = TextSource(["raw", [4, 5]])
    assert memory[0] == {"text": "raw", "_where": "document 0", "_index": 0}
    assert memory[1]["input_ids"] == [4, 5]
    gone = TextSource([str(tmp_path / "gone.txt")])
    assert gone[0]["_missing"].endswith("gone.txt")


@pytest.mark.parametrize("kind", ["digit", "colour", "shape"])
def test_needle_video_has_its_needle(tmp_path, rng, kind):
    record = synthetic.make_needle_video(tmp_path / "n.mp4", rng, num_frames=20, size=64, kind=kind)
    assert record["conversations"][1]["value"] == record["answer"]
    assert record["conversations"][0]["value"].startswith("<video>\n")
    frames = video.decode_frames(str(tmp_path / "n.mp4"), video.FrameSpec(num_frames=20, image_size=64))
    needle = frames[record["needle_frame"]].astype(np.float32)
    if kind == "digit":
        reference = synthetic.draw_digit(record["answer"], 64)
    elif kind == "shape":
        reference = synthetic.draw_shape(record["answer"], 64)
    else:
        reference = np.full((64, 64, 3), synthetic.COLOURS[record["answer"]], np.uint8)
    # the needle frame matches its symbol; every distractor is far from it
    errors = np.array([np.abs(f.astype(np.float32) - reference).mean() for f in frames])
    assert errors.argmin() == record["needle_frame"] and errors.min() < 12
    assert np.sort(errors)[1] > 40


def test_text_documents_carry_the_passkey(rng):
    docs = synthetic.make_text_documents(5, rng, min_words=50, max_words=80)
    for doc in docs:
        assert f"The pass key is {doc['passkey']}." in doc["text"]
        assert doc["text"].endswith(f"What is the pass key? The pass key is {doc['passkey']}.")
