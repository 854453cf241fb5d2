"""Compose, validate and instantiate a run configuration -- before any model is loaded.

Hydra composes ``conf/``; this module checks the result and turns every problem into a
:class:`~bench.errors.ConfigError` whose one-line message names the key and what is allowed:

* unknown group option / unknown key (Hydra composition errors, reworded);
* wrong types and out-of-range values of the run-level nodes (``units``, ``mining``, ``tracking``)
  through the structured schemas below;
* wrong types, unknown fields and ``__post_init__`` checks of every component (``_target_`` nodes),
  by building each component: constructors are cheap by contract (see ``bench.protocols``).

Sweeps are expanded and every combination is validated before the first job starts.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import ConfigError, UserError
from bench.run.shards import Shard, parse_shard

if TYPE_CHECKING:
    from bench.protocols import Explainer, LLMClient, RunParts, Scorer, Simulator

COMPONENT_GROUPS = ("subject", "dataset", "explainer", "simulator")
SCORING_SETS = ("top_and_random", "top_only", "random_only")
SPLITS = ("calibration", "valid", "test")


def plain_dict(node: Any) -> dict[str, Any]:
    """A composed config node (``DictConfig``) as plain, resolved ``dict`` (typed for callers)."""
    from omegaconf import OmegaConf

    out = OmegaConf.to_container(node, resolve=True)
    if not isinstance(out, dict):
        raise TypeError(f"expected a mapping node, got {type(out).__name__}")
    return {str(k): v for k, v in out.items()}


def conf_dir() -> Path:
    """The config folder: ``$NEURONBENCH_CONF``, else the one shipped inside the package (``bench/conf``:
    a link to the repository's top-level ``conf/`` in a checkout, a copy in an installed wheel), else the
    repository's ``conf/`` (a checkout whose file system kept the link as a plain file)."""
    env = os.environ.get("NEURONBENCH_CONF")
    if env:
        return Path(env)
    packaged = Path(__file__).resolve().parent / "conf"
    return packaged if (packaged / "config.yaml").is_file() else Path(__file__).resolve().parents[1] / "conf"


# ---------------------------------------------------------------------------------------------------
# Structured schemas of the run-level nodes (component nodes are checked by building them).
# ---------------------------------------------------------------------------------------------------
# Unit kinds whose records are mined from the subject (bench/subject/units/).
MINED_KINDS = ("mlp_neuron", "sae_latent", "attention_head")


@dataclass
class SaeConfig:
    """The SAE (or transcoder) of ``units.kind=sae_latent``: a local SAELens folder or a hub release."""

    path: str | None = None
    release: str | None = None
    sae_id: str | None = None


@dataclass
class UnitsConfig:
    version: int = 1
    kind: str = "mlp_neuron"
    layers: list[int] | None = field(default_factory=lambda: [15])
    count: int = 5
    indices: list[int] | None = None
    seed: int = 0
    examples_per_split: int = 5
    site: str | None = None  # mlp_neuron only: read the coordinates of another site (resid.post, ...)
    sae: SaeConfig = field(default_factory=SaeConfig)
    rules: list[dict[str, Any]] | None = None  # kind: synthetic only (bench.subject.synthetic)

    def __post_init__(self) -> None:
        kinds = (*MINED_KINDS, "synthetic")
        if self.kind not in kinds:
            raise ValueError(f"kind: must be one of {', '.join(kinds)}, got {self.kind!r}")
        if self.site is not None and self.kind != "mlp_neuron":
            raise ValueError(f"site: only for kind mlp_neuron ({self.kind} defines its own site); use null")
        if self.rules is not None and self.kind != "synthetic":
            raise ValueError(f"rules: only for kind: synthetic (units=synthetic), not {self.kind!r}")
        if self.kind == "synthetic":
            from bench.subject.synthetic import check_units

            check_units(self)
        if self.kind == "sae_latent":  # the SAE itself is read (and a missing path refused) before the run starts
            if self.layers is not None and len(self.layers) != 1:
                raise ValueError("layers: an SAE reads one layer (its hook_name); use null or that one layer")
            return self._check_common()
        if not self.layers:
            raise ValueError("layers: give at least one layer, e.g. [15]")
        self._check_common()

    def _check_common(self) -> None:
        if any(layer < 0 for layer in self.layers or []):
            raise ValueError(f"layers: must be >= 0, got {list(self.layers or [])}")
        if self.count < 1:
            raise ValueError(f"count: must be >= 1, got {self.count}")
        if self.indices is not None and (not self.indices or any(i < 0 for i in self.indices)):
            raise ValueError(f"indices: must be a non-empty list of indices >= 0, got {list(self.indices)}")
        if self.examples_per_split < 1:
            raise ValueError(f"examples_per_split: must be >= 1, got {self.examples_per_split}")


@dataclass
class MiningConfig:
    top_k: int = 50
    random_k: int = 50
    shard_excerpts: int = 0  # > 0: mine in shards of this many excerpts, each stored (resumable), merged exactly

    def __post_init__(self) -> None:
        if self.shard_excerpts < 0:
            raise ValueError(f"shard_excerpts: must be >= 0, got {self.shard_excerpts}")
        for name in ("top_k", "random_k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")


@dataclass
class TrackingConfig:
    version: int = 1
    enabled: bool = True
    uri: str | None = None
    artifact_location: str | None = None
    experiment: str = "neuronbench"

    def __post_init__(self) -> None:
        if self.enabled and not self.uri:
            raise ValueError("uri: set an MLflow tracking URI (e.g. sqlite:///mlruns/mlflow.db) or tracking=none")


@dataclass
class ControlConfig:
    """Shuffled-explanation control: score each unit again with another unit's explanation."""

    enabled: bool = True
    repeats: int = 1

    def __post_init__(self) -> None:
        if self.repeats < 1:
            raise ValueError(f"repeats: must be >= 1, got {self.repeats}")


@dataclass
class ScoringConfig:
    split: str = "valid"
    calibration: str = "linear"
    bootstrap_resamples: int = 2000
    confidence: float = 0.95

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split: must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if self.calibration not in ("linear", "percentile", "none"):
            raise ValueError(f"calibration: must be linear, percentile or none, got {self.calibration!r}")
        if self.bootstrap_resamples < 100:
            raise ValueError(f"bootstrap_resamples: must be >= 100, got {self.bootstrap_resamples}")
        if not 0.5 < self.confidence < 1:
            raise ValueError(f"confidence: must be between 0.5 and 1, got {self.confidence}")


@dataclass
class FailOnConfig:
    """When a finished run exits non-zero: every unit failed, or the failure rate exceeds this."""

    failure_rate: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.failure_rate <= 1.0:
            raise ValueError(
                f"failure_rate: must be in [0, 1] (1.0: only when every unit failed), got {self.failure_rate}"
            )


@dataclass
class WarnOnConfig:
    """When a finished run ends with a warning: more simulated tokens unreadable than this."""

    unparsed_rate: float = 0.05

    def __post_init__(self) -> None:
        if not 0.0 <= self.unparsed_rate <= 1.0:
            raise ValueError(f"unparsed_rate: must be in [0, 1], got {self.unparsed_rate}")


@dataclass
class BudgetConfig:
    """The run's dollar cap (:mod:`bench.llm.budget`): a request that could take this invocation's LLM spend
    past ``max_usd`` stops the run first (finished units kept); null: no cap."""

    max_usd: float | None = None

    def __post_init__(self) -> None:
        if self.max_usd is not None and not self.max_usd >= 0:
            raise ValueError(f"max_usd: must be >= 0 dollars or null (no cap), got {self.max_usd}")


@dataclass(frozen=True)
class EngineConfig:
    """How many units the request engine keeps in flight (:mod:`bench.engine`).

    Every unit in flight is a worker thread; their requests to a batch-mode or in-process backend are
    coalesced into one call per flush, and API backends see that many units' requests at once (keep it
    at least ``concurrency`` / requests per unit so the concurrency limit stays full).  Left out of the
    run's config hash: answers do not depend on it (an in-process model's padding: float noise only).
    Batch mode wants every unit in flight -- one provider job per stage holds the requests of the units
    in flight -- so ``None`` (auto) takes all of them there."""

    units_in_flight: int | None = None  # None (auto): 64; with a batch-mode backend all units (up to 4,096)

    def __post_init__(self) -> None:
        if self.units_in_flight is not None and (isinstance(self.units_in_flight, bool) or self.units_in_flight < 1):
            raise ValueError(f"units_in_flight: must be an integer >= 1, got {self.units_in_flight!r}")


@dataclass(frozen=True)
class RunnerConfig:
    """Where a run's units execute: this process's request engine (``local``), or the workers of a Ray
    cluster (``ray``: each worker builds the run's components from the same config and runs its share of
    the units on its own engine; results stream back to this process, the single writer)."""

    kind: str = "local"
    address: str | None = None  # ray: None starts a local cluster; "auto" or "ray://host:10001" joins one
    workers: int = 2  # ray: worker actors
    cpus_per_worker: float = 1.0  # ray: CPUs reserved per worker actor
    gpus_per_worker: float = 0.0  # ray: GPUs reserved per worker actor (in-process models, subjects)
    units_per_task: int = 8  # ray: units handed to a worker at a time (they stream back one by one)
    max_task_retries: int = 3  # ray: a unit whose worker died is retried elsewhere at most this often
    parallel_mining: bool | None = None  # ray: mine each layer in its own task; None (auto): with GPUs

    def __post_init__(self) -> None:
        if self.kind not in ("local", "ray"):
            raise ValueError(f"kind: {self.kind!r} is not one of local, ray")
        if self.workers < 1 or self.units_per_task < 1 or self.max_task_retries < 0:
            raise ValueError("workers and units_per_task must be >= 1, max_task_retries >= 0")


RUN_NODES: dict[str, type] = {
    "units": UnitsConfig,
    "mining": MiningConfig,
    "tracking": TrackingConfig,
    "control": ControlConfig,
    "scoring": ScoringConfig,
    "fail_on": FailOnConfig,
    "warn_on": WarnOnConfig,
    "budget": BudgetConfig,
    "engine": EngineConfig,
    "runner": RunnerConfig,
}


# ---------------------------------------------------------------------------------------------------
# Composition
# ---------------------------------------------------------------------------------------------------
def compose(overrides: list[str]) -> Any:
    """Compose ``conf/config.yaml`` with overrides (no sweep syntax); Hydra errors become one line."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=overrides)
    except Exception as err:  # noqa: BLE001 - every composition problem is a user mistake here
        raise hydra_error_to_config_error(err, overrides) from None
    finally:
        GlobalHydra.instance().clear()


def _unparsable_override(overrides: list[str] | None) -> str | None:
    """The first override Hydra's grammar rejects on its own (its parse errors do not say which one)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for override in overrides or []:
        try:
            parser.parse_overrides([override])
        except Exception:  # noqa: BLE001 - any parse failure: this is the one to name
            return override
    return None


def hydra_error_to_config_error(err: Exception, overrides: list[str] | None = None) -> UserError:
    """Reword Hydra's multi-line composition errors into one line that names the key (or the override)."""
    text = str(err)
    # "Could not find" (scorer=nope) and "Could not load" (scorer=[nope], a multi-select list) alike
    missing = re.search(r"Could not (?:find|load) '([^/']+)/([^']+)'", text)
    options = sorted(p.stem for p in (conf_dir() / missing.group(1)).glob("*.yaml")) if missing else []
    if missing and missing.group(2) not in options:
        group, option = missing.groups()
        return ConfigError(group, f"no option {option!r}; available: {', '.join(options)}")
    not_struct = re.search(r"Could not override '([^']+)'", text)
    if not_struct:
        key = not_struct.group(1)
        return ConfigError(key, "no such key; to add a new key use '+key=value', or check the spelling")
    primary = re.search(r"Cannot find primary config", text)
    if primary:
        return UserError(f"cannot find conf/config.yaml under {conf_dir()} (set NEURONBENCH_CONF)")
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(err).__name__)
    bad = _unparsable_override(overrides)
    if bad is not None:
        return UserError(
            f"invalid override {bad!r}: {first} (check brackets and quotes; quote a value holding "
            "special characters, e.g. key='a,b')"
        )
    return UserError(f"invalid overrides: {first}")


def expand_sweep(overrides: list[str]) -> list[list[str]]:
    """All override combinations a ``-m`` sweep will run, with Hydra's own parser and sweeper rules."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as err:  # noqa: BLE001
        raise hydra_error_to_config_error(err, overrides) from None
    batches = BasicSweeper.split_arguments(parsed, None)
    return [combo for batch in batches for combo in batch]


# ---------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunSettings:
    """The validated run-level settings (components are built separately by :func:`build_parts`)."""

    units: UnitsConfig
    mining: MiningConfig
    tracking: TrackingConfig
    control: ControlConfig
    scoring: ScoringConfig
    seed: int
    run_name: str | None
    cache_dir: str
    output_dir: str
    engine: EngineConfig = field(default_factory=EngineConfig)
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    # the composed config, resolved (without hydra's node): what a runner=ray worker rebuilds the run from
    config: dict[str, Any] | None = field(default=None, compare=False, repr=False)
    shard: Shard | None = None  # this process runs one slice of the run's units (bench/run/shards.py)
    fail_on: FailOnConfig = field(default_factory=FailOnConfig)
    warn_on: WarnOnConfig = field(default_factory=WarnOnConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)


def validate(cfg: Any) -> tuple[RunSettings, RunParts]:
    """Check everything; return the run settings and the built (not yet loaded) components."""
    from omegaconf import OmegaConf

    settings: dict[str, Any] = {}
    for key, schema in RUN_NODES.items():
        node = cfg.get(key) if key in cfg else OmegaConf.create({})
        settings[key] = _structured(key, schema, node)
    if not isinstance(cfg.get("seed"), int):
        raise ConfigError("seed", f"must be an integer, got {cfg.get('seed')!r}")
    if "parallel_units" in cfg:  # replaced by the request engine's setting
        raise ConfigError(
            "parallel_units", "was replaced by engine.units_in_flight; write engine.units_in_flight=N instead"
        )
    run = RunSettings(
        config=_plain_config(cfg),
        seed=cfg.seed,
        run_name=cfg.get("run_name"),
        cache_dir=str(cfg.cache_dir),
        output_dir=str(cfg.output_dir),
        shard=parse_shard(cfg.get("shard")),
        **settings,
    )
    need_top, need_random = 4 * run.units.examples_per_split, 3 * run.units.examples_per_split
    if run.mining.top_k < need_top:
        raise ConfigError(
            "mining.top_k",
            f"{run.mining.top_k} top excerpts are too few for units.examples_per_split="
            f"{run.units.examples_per_split}; need >= {need_top} (4 per example)",
        )
    if run.mining.random_k < need_random:
        raise ConfigError(
            "mining.random_k",
            f"{run.mining.random_k} random excerpts are too few for units.examples_per_split="
            f"{run.units.examples_per_split}; need >= {need_random} (3 per example)",
        )
    from bench.subject.synthetic import drop_default_subject_scorers

    drop_default_subject_scorers(cfg)  # units=synthetic + the default scorers: the ones it can have
    parts = build_parts(cfg)
    _check_compatibility(run, parts)
    from bench.unit_nouns import for_unit_kind

    kind = run.units.kind  # prompts say what the unit is (unchanged for mlp_neuron)
    parts = dataclasses.replace(
        parts,
        explainer=for_unit_kind(parts.explainer, kind),
        simulator=for_unit_kind(parts.simulator, kind),
        scorers={name: for_unit_kind(s, kind) for name, s in parts.scorers.items()},
    )
    return run, parts


def _plain_config(cfg: Any) -> dict[str, Any] | None:
    """The config as plain data (interpolations resolved, Hydra's own node dropped), or None when it
    cannot be resolved outside Hydra (then ``runner=ray`` refuses to start)."""
    from omegaconf import OmegaConf

    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # noqa: BLE001 - e.g. ${hydra:...} outside a Hydra app
        return None
    if not isinstance(plain, dict):
        return None
    plain.pop("hydra", None)
    return {str(k): v for k, v in plain.items()}


def _structured(key: str, schema: type, node: Any) -> Any:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), node)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        sub = getattr(err, "full_key", None) or ""
        raise ConfigError(f"{key}.{sub}".rstrip("."), _omegaconf_problem(err)) from None
    except (ValueError, TypeError) as err:
        raise _field_error(key, err) from None


def _omegaconf_problem(err: Exception) -> str:
    msg = getattr(err, "msg", None) or str(err)
    return msg.splitlines()[0].strip()


def _field_error(key: str, err: BaseException) -> ConfigError:
    """``"count: must be >= 1"`` raised in ``__post_init__`` -> key ``units.count``."""
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*): (.*)$", text)
    if m:
        return ConfigError(f"{key}.{m.group(1)}", m.group(2))
    unexpected = re.search(r"unexpected keyword argument '([^']+)'", text)
    if unexpected:
        return ConfigError(f"{key}.{unexpected.group(1)}", "unknown field; check the spelling in conf/")
    return ConfigError(key, text)


def build_component(key: str, node: Any) -> Any:
    """Instantiate one ``_target_`` node (cheap by contract), type-checking dataclass fields first."""
    from hydra.errors import InstantiationException
    from hydra.utils import get_class, instantiate
    from omegaconf import DictConfig

    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise ConfigError(key, "must be a component node with a '_target_' (see conf/ for examples)")
    try:
        cls = get_class(node._target_)
    except Exception:  # noqa: BLE001
        raise ConfigError(f"{key}._target_", f"cannot import {node._target_!r}") from None
    if dataclasses.is_dataclass(cls):
        _type_check_fields(key, cls, node)
    for name, child in node.items():
        if isinstance(child, DictConfig) and "_target_" in child:
            build_component(f"{key}.{str(name)}", child)  # nested parts first, so errors name their own key
    try:
        return instantiate(node, _convert_="all")
    except InstantiationException as err:
        cause = err.__cause__ or err
        raise _field_error(key, cause) from None
    except (ValueError, TypeError) as err:
        raise _field_error(key, err) from None


def _type_check_fields(key: str, cls: type, node: Any) -> None:
    """Unknown fields and wrong scalar types, via an OmegaConf schema of the dataclass when it has one."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    names = {f.name for f in dataclasses.fields(cls)}
    for name in node:
        if name.startswith("_"):
            continue
        if name not in names:
            raise ConfigError(f"{key}.{name}", f"unknown field; {cls.__name__} accepts {', '.join(sorted(names))}")
    plain = {
        k: v
        for k, v in plain_dict(node).items()
        if not k.startswith("_") and not (isinstance(v, dict) and "_target_" in v)
    }
    try:
        schema = OmegaConf.structured(cls)
    except Exception:  # noqa: BLE001 - annotations OmegaConf cannot express: construction still checks
        return
    try:
        OmegaConf.merge(schema, plain)
    except OmegaConfBaseException as err:
        sub = getattr(err, "full_key", None) or ""
        raise ConfigError(f"{key}.{sub}".rstrip("."), _omegaconf_problem(err)) from None


def build_parts(cfg: Any) -> RunParts:
    """Build every component of a run; scorers are a name -> component mapping (multi-select group).
    Each must implement its contract in :mod:`bench.protocols` (one line naming what it lacks)."""
    from bench.protocols import CONTRACTS, RunParts

    built: dict[str, Any] = {}
    for key in COMPONENT_GROUPS:
        if key not in cfg or cfg[key] is None:
            raise ConfigError(key, f"missing; pick one with {key}=<option> (see conf/{key}/)")
        built[key] = _implementing(key, CONTRACTS[key], build_component(key, cfg[key]))
    scorers = cfg.get("scorer") or {}
    if not scorers:
        raise ConfigError("scorer", "pick at least one scorer, e.g. scorer=[correlation]")
    built["scorers"] = {
        name: _implementing(f"scorer.{name}", CONTRACTS["scorer"], build_component(f"scorer.{name}", node))
        for name, node in scorers.items()
    }
    return RunParts(**built)


def _implementing(key: str, contract: type, component: Any) -> Any:
    """``component`` if it has every member of ``contract``; else one line naming the missing ones."""
    from bench.protocols import missing_members

    missing = missing_members(component, contract)
    if missing:
        raise ConfigError(
            f"{key}._target_",
            f"{type(component).__module__}.{type(component).__qualname__} does not implement "
            f"bench.protocols.{contract.__name__}: it lacks {', '.join(missing)} "
            "(declare them; see bench/protocols.py)",
        )
    return component


def _check_compatibility(run: RunSettings, parts: RunParts) -> None:
    """Capabilities are checked before any call: a simulator refuses a backend that cannot serve its
    estimator (the message names the estimators that backend can serve), an explainer one that
    cannot generate text; a scorer a unit kind does not define is refused."""
    from bench.subject.units import UNDEFINED_SCORERS

    for name, scorer in parts.scorers.items():
        why = UNDEFINED_SCORERS.get(run.units.kind, {}).get(scorer.name)
        if why:
            raise ConfigError(f"scorer.{name}", f"{why}; drop it from scorer=[...] for units={run.units.kind}")
    simulator = parts.simulator
    needed = set(simulator.required_capabilities)
    llm = simulator.llm
    if needed and llm is not None:
        offered = set(llm.capabilities)
        missing = needed - offered
        if missing:
            from bench.simulators.estimators import ESTIMATORS, estimators_for, refusal

            recorded = simulator.recorded_estimator
            if recorded in ESTIMATORS:
                problem = refusal(recorded, llm)
            else:
                can = ", ".join(estimators_for(offered)) or "none"
                problem = (
                    f"{simulator.estimator} needs {', '.join(sorted(map(str, missing)))}, which "
                    f"backend {llm.name!r} does not offer; estimators it can serve: {can}"
                )
            raise ConfigError("simulator.estimator", str(problem))
    _check_record_source(run, parts)
    for key, explainer in _explainers(parts.explainer):
        needed = set(explainer.required_capabilities)
        llm = explainer.llm
        if needed and llm is not None:
            missing = needed - set(llm.capabilities)
            if missing:
                raise ConfigError(
                    f"{key}.llm",
                    f"the explainer needs {', '.join(sorted(map(str, missing)))}, which backend "
                    f"{llm.name!r} does not offer",
                )

    _check_temperatures(parts)


def _check_temperatures(parts: RunParts) -> None:
    """A component's sampling temperature must lie in its backend's ``temperature_range`` (Anthropic:
    0..1), so the API's 400 does not fail every unit at run time."""
    from bench.protocols import SamplingTemperature, TemperatureLimited

    users: list[tuple[str, Explainer | Simulator | Scorer]] = [*_explainers(parts.explainer)]
    users.append(("simulator", parts.simulator))
    users += [(f"scorer.{name}", scorer) for name, scorer in parts.scorers.items()]
    for key, component in users:
        llm = component.llm
        if not isinstance(llm, TemperatureLimited) or not isinstance(component, SamplingTemperature):
            continue
        allowed = llm.temperature_range
        value = component.resolved_temperature  # what is actually sent (a simulator's default when null)
        if isinstance(value, int | float) and not isinstance(value, bool) and not allowed[0] <= value <= allowed[1]:
            raise ConfigError(
                f"{key}.temperature",
                f"{value} is outside {allowed[0]:g}..{allowed[1]:g}, the range backend {llm.name!r} accepts",
            )


def _check_record_source(run: RunSettings, parts: RunParts) -> None:
    """Units the subject model does not compute -- synthetic rules, published records read from files --
    have no ablation or output-centric score: refused here with one line, before any work."""
    from bench.protocols import RecordSource
    from bench.subject.synthetic import check_scorers

    reads_records = isinstance(parts.dataset, RecordSource)
    if run.units.kind == "synthetic":
        if reads_records:
            raise ConfigError("dataset", "units=synthetic needs a text corpus (e.g. dataset=offline_default)")
        check_scorers("units=synthetic", parts.scorers, "the unit is a rule over tokens, not part of the subject")
    elif reads_records:
        check_scorers("dataset=reference_records", parts.scorers, "published records carry no subject token ids")


def _explainers(explainer: Explainer, key: str = "explainer") -> list[tuple[str, Explainer]]:
    """The explainer and any explainer it wraps (best-of-k), with their config keys."""
    from bench.protocols import WrapsExplainer

    inner = _explainers(explainer.explainer, f"{key}.explainer") if isinstance(explainer, WrapsExplainer) else []
    return [(key, explainer), *inner]


def llm_backends(parts: RunParts) -> list[tuple[str, LLMClient]]:
    """Every LLM backend of a run's components, with its config key (``explainer.llm`` ...)."""
    out = [(f"{key}.llm", e.llm) for key, e in _explainers(parts.explainer) if e.llm is not None]
    if parts.simulator.llm is not None:
        out.append(("simulator.llm", parts.simulator.llm))
    for name, scorer in parts.scorers.items():
        if scorer.llm is not None:
            out.append((f"scorer.{name}.llm", scorer.llm))
    return out


def check_ready(parts: RunParts) -> None:
    """Fail fast before any work: every HTTP backend's API key variable is set and its cache is
    writable (``check_ready()``), then its server answers (:func:`check_servers`; no model load).
    One line naming the config key."""
    from bench.protocols import ReadyCheck

    for key, llm in llm_backends(parts):
        if isinstance(llm, ReadyCheck):
            try:
                llm.check_ready()
            except UserError as err:
                raise UserError(f"{key}: {err}") from None
    check_servers(parts)


def check_servers(parts: RunParts) -> None:
    """Each HTTP backend's server is asked once for its model list before any model loads: a server
    that is down or a model it does not serve stops the run in one line naming the served models."""
    from bench.protocols import ReadyCheck

    for key, llm in llm_backends(parts):
        if isinstance(llm, ReadyCheck):
            try:
                llm.check_server()
            except UserError as err:
                raise UserError(f"{key}: {err}") from None
