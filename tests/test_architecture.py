"""The package's structure: imports go one way through the layers, the CLI is a table over `pmmrec.api`,
component kinds are the contracts callers use, and fresh components come from the registry."""

from __future__ import annotations

import ast
import inspect
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import pytest
import typer

from pmmrec import api
from pmmrec.cli import app
from pmmrec.commands import Arg, Opt, command

PACKAGE = Path(__file__).resolve().parents[1] / "pmmrec"

# From the bottom up; a module may import only from its own layer or below (and never in a circle).
LAYERS: list[tuple[str, ...]] = [
    ("pmmrec._version", "pmmrec.commands", "pmmrec.slots", "pmmrec.modes", "pmmrec.errors", "pmmrec.fileio", "pmmrec.paths", "pmmrec.distributed", "pmmrec.imaging",
     "pmmrec.budget", "pmmrec.arguments",
     "pmmrec.recovery", "pmmrec.jsonfile", "pmmrec.progress", "pmmrec.schemas", "pmmrec.integrity", "pmmrec.evaluation", "pmmrec.ranking"),
    ("pmmrec.references", "pmmrec.cards", "pmmrec.hub", "pmmrec.assets", "pmmrec.environment"),
    ("pmmrec.components",),
    ("pmmrec.data",),
    ("pmmrec.model",),
    ("pmmrec.objectives", "pmmrec.inference", "pmmrec.prefix_cache", "pmmrec.eval_store",
     "pmmrec.inspection", "pmmrec.baselines", "pmmrec.stats", "pmmrec.tasks", "pmmrec.comparison"),
    ("pmmrec.training",),
    ("pmmrec.serving", "pmmrec.demo"),
    ("pmmrec.api_data", "pmmrec.api_use"),
    ("pmmrec.api",),
    ("pmmrec.cli", "pmmrec.cli_options", "pmmrec.__main__", "pmmrec"),
]  # fmt: skip


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer_of(name: str) -> int:
    """The layer of a module: the longest matching prefix in LAYERS."""
    best, best_length = None, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best_length:
                best, best_length = index, len(prefix)
    assert best is not None, f"{name} is in no layer of LAYERS: add it"
    return best


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the import nodes under `if TYPE_CHECKING:` (annotations only: no import at run time)."""
    nodes: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            nodes.update(id(child) for child in ast.walk(node))
    return nodes


def imported_modules(name: str, path: Path, runtime_only: bool = False) -> set[str]:
    """Every pmmrec module `name` imports, at the top or inside functions (TYPE_CHECKING imports unless
    `runtime_only`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    skipped = _type_checking_nodes(tree) if runtime_only else set()
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:  # `from pmmrec.x import y` imports module pmmrec.x.y when y is a module
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in MODULES else base)
    return {module for module in found if module == "pmmrec" or module.startswith("pmmrec.")}


GRAPH = {name: imported_modules(name, path) - {name} for name, path in MODULES.items()}
RUNTIME_GRAPH = {name: imported_modules(name, path, runtime_only=True) - {name} for name, path in MODULES.items()}


def test_every_module_belongs_to_a_layer() -> None:
    for name in MODULES:
        layer_of(name)


def test_imports_never_go_up_a_layer() -> None:
    upward = [
        f"{MODULES[name].relative_to(PACKAGE.parent)} (layer {layer_of(name)}) imports "
        f"{MODULES.get(target, target)} (layer {layer_of(target)})"
        for name, targets in GRAPH.items()
        for target in targets
        if layer_of(target) > layer_of(name)
    ]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_import_cycles() -> None:
    """Tarjan's strongly connected components over the run-time module graph; any component of two or more is a
    cycle (imports under `if TYPE_CHECKING:` exist for annotations only; they still count for the layers)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in RUNTIME_GRAPH.get(node, ()):
            if target not in MODULES:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for name in MODULES:
        if name not in index:
            visit(name)
    described = [" <-> ".join(str(MODULES[m].relative_to(PACKAGE.parent)) for m in cycle) for cycle in cycles]
    assert not cycles, "import cycles:\n" + "\n".join(described)


def test_the_layer_test_catches_an_upward_import(tmp_path: Path) -> None:
    """The checker itself: a components module importing training is reported (guards against a vacuous test)."""
    bad = tmp_path / "bad.py"
    bad.write_text("from pmmrec.training.trainer import Trainer\n")
    targets = imported_modules("pmmrec.components.bad", bad)
    assert "pmmrec.training.trainer" in targets and layer_of("pmmrec.training.trainer") > layer_of("pmmrec.components")


# ---- slots are declared once ----------------------------------------------------------------------------------


def slot_name_literals(path: Path) -> list[str]:
    """'file:line: literal' for every tuple, list or set literal in `path` made of two or more distinct slot or kind
    names and nothing else, `Literal[...]` arguments included (a dict keyed by slot names pairs values by name)."""
    from pmmrec.slots import KIND_NAMES, SLOTS

    names = set(SLOTS) | set(KIND_NAMES)
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Tuple | ast.List | ast.Set):
            continue
        elements = node.elts
        strings = [e.value for e in elements if isinstance(e, ast.Constant) and isinstance(e.value, str)]
        if len(strings) == len(elements) and len(set(strings)) >= 2 and set(strings) <= names:
            shown = path.relative_to(PACKAGE.parent) if path.is_relative_to(PACKAGE.parent) else path
            found.append((node.lineno, f"{shown}:{node.lineno}: {ast.unparse(node)[:80]}"))
    return [line for _, line in sorted(found)]


def test_slot_lists_are_derived_from_the_one_table() -> None:
    """Every list of slots (all of them, a subset, CLI choices, kinds) is a view of pmmrec/slots.py's table."""
    offenders = [found for name, path in MODULES.items() if name != "pmmrec.slots" for found in slot_name_literals(path)]
    assert not offenders, "slot names spelled out instead of derived from pmmrec.slots:\n" + "\n".join(offenders)


def test_the_slot_literal_check_catches_one(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text('A = ("text", "vision")\nB: Literal["user", "fusion"]\nC = {"item_tower", "id"}\nD = ("text", "x")\n')
    found = slot_name_literals(bad)
    assert [line.removeprefix(f"{bad}:").split(":")[0] for line in found] == ["1", "2", "3"], found


def test_everything_keyed_by_slot_follows_the_table() -> None:
    """The kind classes, the model, the manifest schema, the training config and `pmmrec init` cover exactly the
    table's slots, each found by name (a slot added to the table and missing in one of them fails here)."""
    from typing import get_args

    from pmmrec.components import KINDS, SLOT_KINDS
    from pmmrec.model import PMMRec
    from pmmrec.schemas import ManifestFile
    from pmmrec.slots import INIT_KINDS, MODALITY_SLOTS, REFERENCE_SLOTS, SLOT_TABLE, SLOTS
    from pmmrec.training.config import ModelConfig

    for slot in SLOT_TABLE:
        assert SLOT_KINDS[slot.name] is KINDS[slot.kind] and KINDS[slot.kind].kind == slot.type_prefix
    for method in (PMMRec.__init__, PMMRec.assemble):  # every slot is accepted: by name, or by keyword (**components)
        parameters = inspect.signature(method).parameters.values()
        assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
        assert {"text", "vision", "fusion", "user", "item_tower"} <= {p.name for p in parameters}
    (slot_literal, _entry) = get_args(ManifestFile.model_fields["components"].annotation)
    assert get_args(slot_literal) == SLOTS
    fields = set(ModelConfig.model_fields)
    assert set(REFERENCE_SLOTS) <= fields
    assert {f"{slot}_{option}" for slot in MODALITY_SLOTS for option in ("backbone", "trainable_layers")} <= fields
    kind = next(param for param in cli_commands()["init"].params if param.name == "kind")
    assert list(get_args(kind.type_descriptor.annotation)) == list(INIT_KINDS) and "id" in KINDS  # `init id`: Python only


def test_every_modality_has_its_encoder_contract_and_its_reader() -> None:
    """Each encoder slot of the table has a kind that speaks the generic modality contract (how `encode_items`
    takes its content, how batches become token states) and a dataset reader; nothing else names a modality."""
    from pmmrec.components import KINDS, ItemEncoder, registered_types
    from pmmrec.data import registered_readers
    from pmmrec.slots import MODALITY_SLOTS, PAPER_MODALITIES, SLOT

    readers = registered_readers()
    assert list(readers) == list(MODALITY_SLOTS)
    for modality in MODALITY_SLOTS:
        kind = KINDS[SLOT[modality].kind]
        assert issubclass(kind, ItemEncoder) and kind.modality == modality and kind.raw_name and kind.missing_raw
        types = [cls for cls in registered_types().values() if issubclass(cls, kind)]
        assert types and all(not cls.__abstractmethods__ for cls in types), modality  # prepare, tokens, ...
        assert readers[modality].modality == modality and readers[modality].cache_label
    assert set(PAPER_MODALITIES) <= set(MODALITY_SLOTS) and len(PAPER_MODALITIES) == 2


def test_the_id_kind_creates_the_item_tower() -> None:
    from pmmrec.components import CreateOptions, ItemTower, create_component

    tower = create_component("id", CreateOptions(dim=8, item_ids=("a", "b")))
    assert isinstance(tower, ItemTower) and tower.type_name == "item_tower/id"


def test_one_eval_mode_helper() -> None:
    """Nothing outside pmmrec/modes.py saves and restores a module's training flag by hand."""
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{number}"
        for name, path in MODULES.items()
        if name != "pmmrec.modes"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if "was_training" in line
    ]
    assert not offenders, offenders


def test_eval_mode_restores_the_mode_after_the_block_and_after_an_error() -> None:
    from torch import nn

    from pmmrec.modes import eval_mode

    module = nn.Dropout()
    with eval_mode(module) as inside:
        assert inside is module and not module.training
    assert module.training
    module.eval()
    with eval_mode(module):
        pass
    assert not module.training
    module.train()
    with pytest.raises(RuntimeError), eval_mode(module):
        raise RuntimeError("inside")
    assert module.training


# ---- objectives are registered once ------------------------------------------------------------------------------


def test_every_registered_objective_is_wired_through_the_registry() -> None:
    """Weights, options, flags, fine-tuning defaults and the training module all list the registered objectives."""
    from pmmrec.objectives import ObjectiveWeights, registered_objectives
    from pmmrec.training.config import ObjectivesConfig, finetune_defaults
    from pmmrec.training.flat_options import TRAIN_OPTIONS, config_field

    objectives = registered_objectives()
    # Registration order is the order of weights, flags and logs (and of saved config.yaml files, which resuming
    # compares): the first four stay first.
    assert list(objectives)[:4] == ["rec", "nicl", "nid", "rcl"]
    assert list(ObjectiveWeights.model_fields) == list(objectives)
    assert list(ObjectivesConfig.model_fields) == ["weights", *(cls.options_key for cls in objectives.values())]
    for name, cls in objectives.items():
        assert ObjectiveWeights.model_fields[name].default == cls.pretrain_weight
        assert config_field(TRAIN_OPTIONS[f"{name}_weight"]).description == cls.weight_description
        assert ObjectivesConfig.model_fields[cls.options_key].annotation is cls.config_class
        assert finetune_defaults()["objectives"]["weights"][name] == cls.finetune_weight


def test_a_registered_objective_gets_its_weight() -> None:
    """A new objective class, once registered, is a field of the weights the registry builds (its default and its
    description), combined like the others."""
    from typing import ClassVar

    import torch
    from pydantic import BaseModel

    from pmmrec.objectives import Objective, register_objective, weights_model
    from pmmrec.objectives.base import _REGISTRY

    class ToyOptions(BaseModel):
        scale: float = 1.0

    @register_objective
    class ToyObjective(Objective):
        name: ClassVar[str] = "toy"
        options_key: ClassVar[str] = "toy"
        config_class: ClassVar[type[BaseModel]] = ToyOptions
        pretrain_weight: ClassVar[float] = 0.5
        weight_description: ClassVar[str] = "Weight of the toy loss."
        options_description: ClassVar[str] = "Toy options."

    try:
        with pytest.raises(ValueError, match="registered twice"):
            register_objective(type("Other", (ToyObjective,), {}))
        weights = weights_model("test weights")()
        assert weights.active() == ("rec", "nicl", "nid", "rcl", "toy")
        assert type(weights).model_fields["toy"].description == "Weight of the toy loss."
        one = torch.tensor(1.0)
        total = weights.combine({"rec": one, "nicl": one, "nid": one, "rcl": one, "toy": one})
        assert float(total) == pytest.approx(1.0 + 0.4 + 0.1 + 0.1 + 0.5)
    finally:
        _REGISTRY.pop("toy")


# ---- the CLI is built from pmmrec.api ---------------------------------------------------------------------------


def leaf_commands(group: Any, prefix: str = "") -> dict[str, Any]:
    """Every leaf command of a (lazy) group by its api name: `data movielens` -> data_movielens."""
    ctx = typer.Context(group)
    found: dict[str, Any] = {}
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if hasattr(command, "list_commands"):  # a group of sub-commands
            found.update(leaf_commands(command, f"{prefix}{name}_"))
        else:
            found[f"{prefix}{name}".replace("-", "_")] = command
    return found


def cli_commands() -> dict[str, Any]:
    return leaf_commands(typer.main.get_command(app))


def test_every_command_has_its_api_function_and_every_api_function_its_command() -> None:
    from pmmrec.commands import COMMANDS

    commands = set(cli_commands())
    functions = {name for name, value in vars(api).items() if inspect.isfunction(value) and not name.startswith("_")}
    modules = ("pmmrec.api", "pmmrec.api_data", "pmmrec.api_use")
    functions = {name for name in functions if getattr(api, name).__module__ in modules}
    assert commands == functions == set(COMMANDS) == set(api.__all__)
    assert all(spec.function is getattr(api, name) for name, spec in COMMANDS.items())


def test_a_new_command_is_one_function_in_the_api(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 23: an api function declared with @command is a command, its options built from its parameters (help,
    defaults, --quiet for `progress`, --json), with no edit anywhere else."""
    from typer.testing import CliRunner

    from pmmrec import commands

    monkeypatch.setattr(commands, "COMMANDS", dict(commands.COMMANDS))
    monkeypatch.setattr("pmmrec.cli.COMMANDS", commands.COMMANDS)

    @command(show="{greeting}, {name}: {result}", json=True)
    def data_greet(
        name: Annotated[str, Arg("Who to greet.", metavar="NAME")],
        *,
        greeting: Annotated[str, Opt("How to greet.")] = "hello",
        times: Annotated[int, Opt("How often.")] = 2,
        progress: bool = True,
    ) -> dict[str, int]:
        """Greet someone (a test command)."""
        return {"times": times, "progress": progress}

    runner = CliRunner()
    listed = runner.invoke(app, ["data", "--help"])
    assert "greet" in listed.output and "Greet someone (a test command)." in listed.output
    shown = runner.invoke(app, ["data", "greet", "--help"])
    assert "Usage: pmmrec data greet [OPTIONS] NAME" in shown.output and "[default: hello]" in shown.output
    assert "--quiet" in shown.output and "--json" in shown.output
    result = runner.invoke(app, ["data", "greet", "Ada", "--greeting", "hi", "--times", "3", "--quiet"])
    assert result.exit_code == 0 and result.output == "hi, Ada: {'times': 3, 'progress': False}\n", result.output
    as_json = runner.invoke(app, ["data", "greet", "Ada", "--json"])
    assert json.loads(as_json.output) == {"times": 2, "progress": True}


def test_pretrain_and_finetune_share_one_option_group_described_by_the_config() -> None:
    """Their options are TRAIN_OPTIONS, each helped by its config field's description and ending with the value the
    command uses when it is not given (pretrain's batch size is not finetune's)."""
    from pmmrec.training.flat_options import TRAIN_OPTIONS, config_field, mode_default_values

    commands = cli_commands()
    for mode in ("pretrain", "finetune"):
        options = {param.name: param for param in commands[mode].params}
        defaults = mode_default_values(mode)
        for name, path in TRAIN_OPTIONS.items():
            assert name in options, f"{mode} lacks --{name.replace('_', '-')}"
            assert options[name].help.startswith(config_field(path).description)
            assert options[name].default is None  # not given: a --config file's value stays
        assert options["rec_weight"].help.endswith(f"[default: {defaults['rec_weight']}]")
        assert "[default:" not in options["batch_size"].help  # stated per item tower by the description
    assert mode_default_values("pretrain")["batch_size"] != mode_default_values("finetune")["batch_size"]


def test_serve_flags_are_generated_from_serve_options() -> None:
    """Every `pmmrec serve` option but --model/--data is a ServeOptions field, with the field's default and help."""
    from pmmrec.serving.options import SERVE_FLAGS, ServeOptions

    options = {param.name: param for param in cli_commands()["serve"].params}
    assert set(options) == {"model", "data", *SERVE_FLAGS}
    for name, field in SERVE_FLAGS.items():
        described = ServeOptions.model_fields[field]
        assert options[name].help == described.description, name
        assert options[name].default == described.default, name


def test_serve_options_and_their_flags_load_neither_torch_nor_fastapi() -> None:
    """`pmmrec serve --help` reads ServeOptions; that must not import the server (FastAPI) or torch."""
    code = (
        "import sys; from pmmrec import cli_options; cli_options.serve_parameters(); "
        "print(sorted(m for m in ('torch', 'fastapi', 'uvicorn', 'pmmrec.serving.app') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PACKAGE.parent)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_cli_module_only_calls_the_api() -> None:
    """cli.py and its option helpers import no layer below the api for work (option tables excepted); what a
    command prints is declared with its api function."""
    allowed = {
        "pmmrec",
        "pmmrec.api",
        "pmmrec.commands",  # the api functions' command declarations
        "pmmrec.cli_options",
        "pmmrec.errors",
        "pmmrec.budget",  # parses --max-memory
        "pmmrec.paths",  # where the safety net saves a traceback
        "pmmrec.components.options",  # help texts of `init`
        "pmmrec.training.config",  # the tower-dependent defaults named in the help
        "pmmrec.training.flat_options",  # the training option table and its help texts
        "pmmrec.serving.options",  # the serve option model and its help texts
    }
    used = GRAPH["pmmrec.cli"] | GRAPH["pmmrec.cli_options"]
    assert used <= allowed, sorted(used - allowed)


# ---- component kinds are contracts -----------------------------------------------------------------------------


ENCODER_REACH = re.compile(r"(getattr|hasattr)\((model\.)?(text|vision|encoder|component)\b")


def test_no_caller_reaches_encoders_around_their_contract() -> None:
    """Outside components/, nothing uses getattr/hasattr on an encoder or silences attribute errors."""
    offenders = []
    for name, path in MODULES.items():
        if name.startswith("pmmrec.components"):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if ENCODER_REACH.search(line) or "type: ignore[attr-defined]" in line:
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("kind", ["TextEncoder", "VisionEncoder"])
def test_encoder_kinds_declare_what_callers_use(kind: str) -> None:
    from pmmrec import components

    cls = getattr(components, kind)
    declared = {"preprocessor", "frozen_prefix", "forward_from_prefix", "set_trainable_layers", "trainable_layers"}
    declared |= {"max_tokens", "tokenize"} if kind == "TextEncoder" else {"image_size"}
    assert declared <= set(dir(cls))
    abstract = cls.__abstractmethods__
    assert {"frozen_prefix", "forward_from_prefix"} <= abstract


def test_a_new_type_file_is_registered_by_importing_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A component type is one file: the package imports every public module beside it, registering its types."""
    import sys

    import pmmrec.components
    from pmmrec.components._registry import _REGISTRY

    (tmp_path / "user_toy.py").write_text(
        "from typing import ClassVar\n"
        "from pmmrec.components import SASRecUserEncoder, register_component\n\n\n"
        "@register_component\n"
        "class ToyUser(SASRecUserEncoder):\n"
        "    type_name: ClassVar[str] = 'user_encoder/toy-file'\n"
    )
    monkeypatch.setattr(pmmrec.components, "__path__", [*pmmrec.components.__path__, str(tmp_path)])
    try:
        pmmrec.components._import_type_files()
        assert _REGISTRY["user_encoder/toy-file"].__module__ == "pmmrec.components.user_toy"
    finally:
        _REGISTRY.pop("user_encoder/toy-file", None)
        sys.modules.pop("pmmrec.components.user_toy", None)


def test_fresh_components_come_from_the_registry() -> None:
    """A newly registered type is created by `create_component` with no other code changed."""
    from typing import ClassVar

    from pmmrec.components import CreateOptions, SASRecConfig, SASRecUserEncoder, create_component, register_component
    from pmmrec.components._registry import _REGISTRY

    class TinyUser(SASRecUserEncoder):
        type_name: ClassVar[str] = "user_encoder/tiny-test"

        @classmethod
        def create(cls, options: CreateOptions) -> TinyUser:
            return cls(SASRecConfig(dim=options.width, heads=1, layers=1))

    register_component(TinyUser)
    try:
        created = create_component("user", CreateOptions(dim=8), "tiny-test")
        assert type(created) is TinyUser and created.config.layers == 1
    finally:
        _REGISTRY.pop("user_encoder/tiny-test")


def test_one_rule_for_default_heads(tmp_path: Path) -> None:
    """`init fusion --dim 64` and assembly at d = 64 pick the same heads (the largest divisor of d up to 12)."""
    from pmmrec.components import CreateOptions, create_component, default_heads

    assert default_heads(64, 12) == 8 and default_heads(30, 12) == 10 and default_heads(7, 2) == 1
    fusion = create_component("fusion", CreateOptions(dim=64))
    assert fusion.config.heads == 8  # type: ignore[attr-defined]
    path = api.init("fusion", tmp_path / "fusion", dim=64)
    assert (path / "config.json").is_file()


def test_efficientnet_configs_saved_with_the_old_field_name_still_load() -> None:
    from pmmrec.components import EfficientNetEncoderConfig

    legacy = {"dim": 8, "image_size": 32, "trainable_blocks": 3, "backbone": "x"}
    assert EfficientNetEncoderConfig.model_validate(legacy).trainable_layers == 3
    with pytest.raises(ValueError, match="trainable_blocks"):  # both names at once: refused, naming the extra one
        EfficientNetEncoderConfig.model_validate({**legacy, "trainable_layers": 1})


# ---- the tests themselves ----------------------------------------------------------------------------------------

TESTS = Path(__file__).resolve().parent


def imports_between_test_modules(tests: Path = TESTS) -> list[str]:
    """'importer -> imported' for every test module that imports another test module or conftest."""
    found = []
    for path in sorted(tests.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            found += [f"{path.name} -> {name}" for name in names if name.startswith("test_") or name == "conftest"]
    return found


def test_no_test_module_imports_another() -> None:
    """Guards against shared helpers living in test modules (tiny.py and conftest.py hold them)."""
    assert imports_between_test_modules() == []
    assert (TESTS / "tiny.py").is_file()


def test_the_test_import_check_catches_one(tmp_path: Path) -> None:
    (tmp_path / "test_a.py").write_text("from test_b import helper\nimport conftest\n")
    assert imports_between_test_modules(tmp_path) == ["test_a.py -> test_b", "test_a.py -> conftest"]


def test_pytest_finds_the_helpers_through_pyproject_not_sys_path_edits() -> None:
    """Guards against sys.path edits in conftest.py: `pythonpath` in pyproject.toml makes tiny.py importable."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((TESTS.parent / "pyproject.toml").read_text(encoding="utf-8"))
    assert config["tool"]["pytest"]["ini_options"]["pythonpath"] == ["tests"]
    assert "sys.path" not in (TESTS / "conftest.py").read_text(encoding="utf-8")


def test_the_licence_is_an_spdx_string_so_installs_are_quiet() -> None:
    """Issue 26: `project.license` as a TOML table made setuptools print a deprecation warning four times per
    install; an SPDX string needs setuptools >= 77 (checked by hand: `pip install --no-deps -e .` in a fresh venv
    printed no license warning)."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["license"] == "Apache-2.0"
    (requirement,) = [r for r in project["build-system"]["requires"] if r.startswith("setuptools")]
    assert int(re.fullmatch(r"setuptools>=(\d+)(\.\d+)*", requirement).group(1)) >= 77  # type: ignore[union-attr]
