from jobs.cli import main


def test_bad_config_exits_2_naming_field_and_file(tmp_path, capsys):
    code = main(["synth", "--config", "demo", "--out", str(tmp_path / "x"), "--set", "dataset.unit_size=-1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "configs/demo.yaml" in err and "dataset.unit_size" in err and "greater than or equal to 1" in err
    assert not (tmp_path / "x").exists()


def test_missing_dataset_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["card", str(tmp_path / "nothing")]) == 2
    assert "manifest.json not found" in capsys.readouterr().err


def test_synth_without_ray_prints_where_dataset_and_card_are(tmp_path, capsys):
    out = tmp_path / "tiny"
    code = main(["synth", "--config", "demo", "--out", str(out), "--no-ray", "--set", "ray.progress=false",
                 "--set", "categories={SynthColor: {train: 3, test: 2}}"])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"dataset: {out} (5 samples kept, 0 rejected; 2 units run, 0 already complete)" in printed
    assert f"card:    {out / 'README.md'}" in printed
