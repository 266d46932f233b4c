from pathlib import Path

from webui.extra_networks.files import find_files


def test_finds_files_in_sub_folders_sorted_and_skips_other_suffixes_and_hidden(tmp_path: Path) -> None:
    (tmp_path / "styles" / "ink").mkdir(parents=True)
    (tmp_path / ".git").mkdir()
    for name in ["b.safetensors", "styles/a.PT", "styles/ink/c.ckpt", "notes.txt", ".git/x.safetensors"]:
        (tmp_path / name).write_bytes(b"x")

    found = find_files(tmp_path, [".safetensors", ".pt", ".ckpt"])

    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["b.safetensors", "styles/a.PT", "styles/ink/c.ckpt"]


def test_a_missing_folder_is_empty(tmp_path: Path) -> None:
    assert find_files(tmp_path / "models" / "Lora", [".safetensors"]) == []
