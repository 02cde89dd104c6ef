import json

import pytest

from lus_common.app.cli import _parse_value, main


def test_values_are_parsed_as_yaml():
    assert _parse_value("3") == 3 and _parse_value("1e-4") == 1e-4
    assert (
        _parse_value("[0, 1]") == [0, 1]
        and _parse_value("hc18") == "hc18"
        and _parse_value("null") is None
    )


def test_unknown_study_and_parameter_exit_2(capsys):
    assert main(["run", "nope"]) == 2
    assert "Unknown study 'nope'" in capsys.readouterr().err
    assert main(["run", "hc18_strategies", "-p", "epoch", "3"]) == 2
    assert "Unknown parameter(s) ['epoch']" in capsys.readouterr().err


def test_executor_is_for_studies_with_sweeps(capsys):
    assert main(["run", "phantoms", "--executor", "ray"]) == 2
    assert "--executor is for the studies" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse refuses other executors
        main(["run", "data_reduction", "--executor", "slurm"])


def test_bench_prints_one_json_line(capsys, tmp_path):
    args = ["bench", "--model", "unet_mobilenet_v2", "--size", "32", "--batch", "2", "--steps", "2"]
    profile = tmp_path / "profile.txt"
    assert main([*args, "--profile", str(profile)]) == 0
    line = capsys.readouterr().out.strip()
    result = json.loads(line)
    assert result["images_per_s"] > 0 and result["baseline_images_per_s"] > 0
    assert (result["compile"], result["compile_mode"]) == (False, None)
    # the profiler's table of the measured variant: its convolutions, by CPU time here
    text = profile.read_text()
    assert text.startswith("## unet_mobilenet_v2 32px batch 2") and "by cpu_time_total" in text
    assert "aten::convolution_backward" in text
    assert main([*args, "--compile", "fastest"]) == 2
    assert "Unknown torch.compile mode 'fastest'" in capsys.readouterr().err
    assert result["speedup"] == pytest.approx(
        result["images_per_s"] / result["baseline_images_per_s"], rel=0.01
    )
    assert result["gflop_per_step"] > 0


def test_data_commands(capsys, empty_data_dir):
    assert main(["data", "list"]) == 0
    assert "hc18" in capsys.readouterr().out
    assert main(["data", "fetch", "shenzhen_cxr"]) == 2  # manual download: says how
    assert "cannot be downloaded automatically" in capsys.readouterr().err
    assert main(["data", "fetch", "mnist"]) == 2
    assert "Known datasets" in capsys.readouterr().err
