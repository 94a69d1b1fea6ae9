"""The three ways to add an extension (of every kind, in one step), and broken or clashing files."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import autokd.methods.builtin as plugins
import pytest
import torch

import autokd.registry
from autokd.methods import METHODS, DistillInputs, ModelInfo
from autokd.registry import ExtensionLoadError, import_package_modules, load_extension_files


def load_builtin_plugins() -> None:
    import_package_modules("autokd.methods.builtin")


def load_entry_point_plugins(monkeypatch) -> None:
    monkeypatch.setattr(autokd.registry, "_entry_points_loaded", False)
    autokd.registry.load_entry_points()


load_plugin_paths = load_extension_files

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "my_method.py"


# Prefixes of the modules these tests create; the fixture removes them from sys.modules afterwards.
def plugin_source(name: str, extra: str = "") -> str:
    """A minimal plugin module registering ``name``; ``extra`` is appended at module level."""
    return textwrap.dedent(
        f'''
        from autokd.methods import Method, register_method


        @register_method("{name}")
        class Demo(Method):
            """A throwaway plugin (response kind)."""

            kind = "response"

            def forward(self, inputs):
                return inputs.student_logits.sum() * 0
        '''
    ) + textwrap.dedent(extra)


pytestmark = pytest.mark.usefixtures("clean_registry")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ---------------------------------------------------------------- (a) the built-in plugins folder


def test_module_in_the_builtin_plugins_folder_is_registered(tmp_path, monkeypatch):
    write(tmp_path / "autokd_test_builtin.py", plugin_source("test_builtin_demo"))
    monkeypatch.setattr(plugins, "__path__", [*plugins.__path__, str(tmp_path)])
    load_builtin_plugins()
    assert METHODS.get("test_builtin_demo").kind == "response"
    assert Path(METHODS.origin("test_builtin_demo")) == tmp_path / "autokd_test_builtin.py"


def test_broken_module_in_the_builtin_plugins_folder_names_the_module(tmp_path, monkeypatch):
    write(tmp_path / "autokd_test_broken.py", "raise RuntimeError('boom')\n")
    monkeypatch.setattr(plugins, "__path__", [*plugins.__path__, str(tmp_path)])
    with pytest.raises(
        ExtensionLoadError, match=r"autokd\.methods\.builtin\.autokd_test_broken.*RuntimeError: boom"
    ):
        load_builtin_plugins()


def test_broken_module_in_an_added_plugins_folder_names_its_own_file(tmp_path, monkeypatch):
    write(tmp_path / "autokd_test_broken_path.py", "raise RuntimeError('boom')\n")
    monkeypatch.setattr(plugins, "__path__", [*plugins.__path__, str(tmp_path)])
    with pytest.raises(ExtensionLoadError) as error:
        load_builtin_plugins()
    assert str(tmp_path / "autokd_test_broken_path.py") in str(error.value)


# ---------------------------------------------------------------- (b) files and folders named by a study


def test_plugin_file_path_is_registered(tmp_path):
    file = write(tmp_path / "one.py", plugin_source("test_file_demo"))
    load_plugin_paths([file])
    assert "test_file_demo" in METHODS
    assert Path(METHODS.origin("test_file_demo")) == file.resolve()


def test_plugin_folder_path_registers_every_public_file(tmp_path):
    write(tmp_path / "folder" / "a.py", plugin_source("test_folder_a"))
    write(tmp_path / "folder" / "b.py", plugin_source("test_folder_b"))
    write(
        tmp_path / "folder" / "_private.py", "raise RuntimeError('files starting with _ are not imported')\n"
    )
    load_plugin_paths([str(tmp_path / "folder")])
    assert {"test_folder_a", "test_folder_b"} <= set(METHODS.names())


def test_loading_the_same_file_twice_is_harmless(tmp_path):
    file = write(tmp_path / "twice.py", plugin_source("test_twice_demo"))
    load_plugin_paths([file])
    load_plugin_paths([file])
    assert "test_twice_demo" in METHODS


def test_missing_plugin_path_is_an_error(tmp_path):
    with pytest.raises(ExtensionLoadError, match="does not exist"):
        load_plugin_paths([tmp_path / "nowhere.py"])


# ---------------------------------------------------------------- (c) installed entry points


def make_distribution(
    root: Path, module: str, entry_name: str, body: str, group: str = "autokd.extensions"
) -> None:
    """A throwaway installed distribution: a module and a dist-info folder declaring the entry point."""
    write(root / f"{module}.py", body)
    info = root / f"{module}-0.1.dist-info"
    write(info / "METADATA", f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: 0.1\n")
    write(info / "entry_points.txt", f"[{group}]\n{entry_name} = {module}\n")


def test_entry_point_plugin_is_registered(tmp_path, monkeypatch):
    make_distribution(tmp_path, "autokd_test_entry", "entry_demo", plugin_source("test_entry_demo"))
    monkeypatch.syspath_prepend(str(tmp_path))
    load_entry_point_plugins(monkeypatch)
    assert "test_entry_demo" in METHODS
    assert Path(METHODS.origin("test_entry_demo")) == tmp_path / "autokd_test_entry.py"


def test_the_01_entry_point_group_still_registers(tmp_path, monkeypatch):
    body = plugin_source("test_old_group_demo")
    make_distribution(tmp_path, "autokd_test_old_group", "old_demo", body, group="autokd.plugins")
    monkeypatch.syspath_prepend(str(tmp_path))
    load_entry_point_plugins(monkeypatch)
    assert "test_old_group_demo" in METHODS


def test_broken_entry_point_names_the_entry_point(tmp_path, monkeypatch):
    make_distribution(tmp_path, "autokd_test_entry_broken", "broken_demo", "raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(
        ExtensionLoadError,
        match=r"entry point 'broken_demo' \(autokd_test_entry_broken, group autokd.extensions\)",
    ):
        load_entry_point_plugins(monkeypatch)


# ---------------------------------------------------------------- clashes and broken files


def test_name_clash_between_two_files_names_both_files(tmp_path):
    first = write(tmp_path / "clash" / "first.py", plugin_source("test_clash_demo"))
    second = write(tmp_path / "clash" / "second.py", plugin_source("test_clash_demo"))
    with pytest.raises(ExtensionLoadError) as error:
        load_plugin_paths([tmp_path / "clash"])
    message = str(error.value)
    assert f"extension file {second.resolve()}" in message
    assert str(first.resolve()) in message
    assert "registered twice" in message


def test_name_clash_with_a_builtin_plugin_names_the_file(tmp_path):
    file = write(tmp_path / "mine.py", plugin_source("hinton_kd"))
    with pytest.raises(
        ExtensionLoadError,
        match=rf"extension file {re.escape(str(file.resolve()))}: .*'hinton_kd' is registered twice",
    ):
        load_plugin_paths([file])


def test_plugin_file_that_raises_on_import_names_the_file(tmp_path):
    file = write(tmp_path / "broken.py", "import not_a_module_anywhere_autokd\n")
    with pytest.raises(
        ExtensionLoadError,
        match=rf"extension file {re.escape(str(file.resolve()))} failed to import: ModuleNotFoundError",
    ):
        load_plugin_paths([file])


def test_registry_still_works_after_a_failed_file(tmp_path):
    broken = write(tmp_path / "broken.py", "raise RuntimeError('boom')\n")
    with pytest.raises(ExtensionLoadError):
        load_plugin_paths([broken])
    good = write(tmp_path / "good.py", plugin_source("test_after_error"))
    load_plugin_paths([good])
    assert {"hinton_kd", "test_after_error"} <= set(METHODS.names())


def test_fixed_plugin_file_loads_after_a_failure(tmp_path):
    file = write(tmp_path / "fixme.py", "raise RuntimeError('boom')\n")
    with pytest.raises(ExtensionLoadError):
        load_plugin_paths([file])
    write(file, plugin_source("test_fixed_demo"))
    load_plugin_paths([file])
    assert "test_fixed_demo" in METHODS


def test_file_that_registers_then_raises_can_be_fixed_and_reloaded(tmp_path):
    file = write(tmp_path / "half.py", plugin_source("test_half_demo", "raise RuntimeError('boom')\n"))
    with pytest.raises(ExtensionLoadError):
        load_plugin_paths([file])
    write(file, plugin_source("test_half_demo"))
    load_plugin_paths([file])
    assert "test_half_demo" in METHODS


# ---------------------------------------------------------------- every kind of extension, in one step


def test_a_users_own_plugins_package_does_not_replace_the_builtins(tmp_path, monkeypatch):
    write(tmp_path / "plugins" / "__init__.py", "")
    write(tmp_path / "plugins" / "mine.py", plugin_source("test_users_plugins_pkg"))
    monkeypatch.syspath_prepend(str(tmp_path))
    load_builtin_plugins()
    assert {"hinton_kd", "dkd", "fitnets"} <= set(METHODS.names())
    assert "test_users_plugins_pkg" not in METHODS


def test_a_non_python_extension_file_is_refused(tmp_path):
    file = write(tmp_path / "notes.txt", "hello")
    with pytest.raises(ExtensionLoadError, match=r"notes.txt is neither a .py file nor a folder"):
        load_extension_files([file])


def test_one_file_registers_a_family_a_dataset_and_a_backend(tmp_path):
    from autokd.data import DATASETS
    from autokd.quantize import BACKENDS
    from autokd.students import FAMILIES

    file = write(
        tmp_path / "everything.py",
        textwrap.dedent(
            """
            from dataclasses import dataclass

            from torch import nn

            from autokd.data import register_dataset
            from autokd.quantize import QuantizationBackend, register_backend
            from autokd.students import register_family


            @register_family("test_linear_family", stems=("imagenet",))
            def linear(width, depth, *, num_classes, in_chans):
                return nn.Linear(in_chans, num_classes)


            @register_dataset("test_empty_dataset")
            def empty(data_dir, download):
                raise RuntimeError("never called")


            @register_backend("test_backend", runtime="none", supported_families=("test_linear_family",))
            @dataclass(frozen=True)
            class NoBackend(QuantizationBackend):
                def quantize(self, model, calibration):
                    raise NotImplementedError

                def float_model(self, model, example):
                    raise NotImplementedError
            """
        ),
    )
    load_extension_files([file])
    assert FAMILIES.get("test_linear_family").stems == ("imagenet",)
    assert "test_empty_dataset" in DATASETS
    assert BACKENDS.get("test_backend").refusal("test_linear_family") is None


# ---------------------------------------------------------------- the documented example plugin


def test_documented_example_plugin_loads_and_runs():
    load_plugin_paths([EXAMPLE])
    cls = METHODS.get("logit_mse")
    assert Path(METHODS.origin("logit_mse")) == EXAMPLE
    plugin = cls(ModelInfo((), 3), ModelInfo((), 3))
    student = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 2.0]], requires_grad=True)
    teacher = torch.tensor([[2.0, 2.0, 1.0], [0.5, 1.0, 2.0]])
    inputs = DistillInputs(student_logits=student, targets=torch.tensor([1, 2]), teacher_logits=teacher)
    loss = plugin(inputs)
    # Mean over the 6 entries of the squared differences (1, 0, 1, 0, 4, 0).
    assert loss.item() == pytest.approx(6 / 6)
    loss.backward()
    assert student.grad is not None


def test_guide_shows_the_example_file_verbatim():
    guide = (EXAMPLE.parents[1] / "methods.md").read_text()
    first_python_block = re.search(r"```python\n(.*?)```", guide, re.S).group(1)
    assert first_python_block == EXAMPLE.read_text()
