"""tools/plot_runs.py: one line per run of a test metric, against iterations and against clips seen."""

import json

import pytest
from PIL import Image

from tools.plot_runs import plot_runs


def test_plot_runs_draws_every_run_that_has_the_metric(tmp_path, monkeypatch):
    for name, batch, rows in (("a", 32, "200,0.1\n400,0.2\n"), ("b", 100, "500,\n")):
        run = tmp_path / name
        run.mkdir()
        (run / "config.json").write_text(json.dumps({"batch_size": batch}))
        (run / "test_metrics.csv").write_text("iteration,test_content_transfer\n" + rows)
    drawn = []
    import matplotlib.axes

    real_plot = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot",
                        lambda ax, x, y, **kw: drawn.append((list(x), list(y))) or real_plot(ax, x, y, **kw))
    out = tmp_path / "runs.png"
    plot_runs([tmp_path / "a", tmp_path / "b"], "test_content_transfer", out)
    assert drawn == [([200, 400], [0.1, 0.2]), ([6400, 12800], [0.1, 0.2])]  # run b has no value: no line
    assert Image.open(out).size[0] > 0


def test_plot_runs_converts_clips_to_cpu_hours(tmp_path, monkeypatch):
    run = tmp_path / "a"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"batch_size": 36}))
    (run / "test_metrics.csv").write_text("iteration,test_content_transfer\n100,0.1\n")
    drawn = []
    import matplotlib.axes

    real_plot = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot",
                        lambda ax, x, y, **kw: drawn.append(list(x)) or real_plot(ax, x, y, **kw))
    plot_runs([run], "test_content_transfer", tmp_path / "runs.png", cpu_s_per_clip=2.0)
    assert drawn == [[100], [pytest.approx(2.0)]]  # 3600 clips x 2 CPU-s = 2 hours
