"""``neuronbench run`` as a plain Hydra app.

:data:`main` is ``@hydra.main`` around :func:`bench.jobs.task`: Hydra composes ``conf/``, its callback
(``bench.sweep.SweepCallback``) validates every job first, and the configured launcher runs the jobs --
in this process (``basic``), in parallel processes (``hydra/launcher=joblib``), on a Ray cluster
(``hydra/launcher=ray``) or as SLURM jobs (``hydra/launcher=submitit_slurm``).  ``python -m bench.launch
-m explainer=a,b hydra/launcher=joblib`` is the same app without the CLI.

:func:`launch` is what ``neuronbench run`` calls: it expands ``card=``, answers ``--dry-run``, turns
the CLI's options into ``hydra.job.env_set`` overrides and maps Hydra's end into an exit code.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra

from bench.config import conf_dir
from bench.errors import UserError
from bench.jobs import RunOptions, task

main = hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")(task)


def launch(
    overrides: list[str],
    multirun: bool,
    options: RunOptions,
    dry_run: bool = False,
    hydra_flags: list[str] | None = None,
) -> int:
    """Run ``neuronbench run [-m] overrides`` through :data:`main`; its exit code.

    ``hydra_flags`` are Hydra's own options (``--cfg job``, ``--resolve``): Hydra prints the config
    and runs nothing, so no job is validated and no MLflow parent opened."""
    from bench.config import compose, expand_sweep, validate
    from bench.sweep import close_abandoned_parents
    from bench.tracking.redact import register_config

    passthrough = [o for o in overrides if o.startswith("--")]
    plain = [o for o in overrides if not o.startswith("--")]
    if any(o.startswith("card=") for o in plain):
        from bench.cards import apply

        plain = apply(plain)  # the card's overrides + the user's, refused if they change its definition
    combos = expand_sweep(plain)
    if not multirun and len(combos) > 1:
        raise UserError("the overrides contain a sweep (a,b or range(...)); add -m to run a sweep")
    if dry_run:
        from bench.dryrun import format_estimate

        for combo in combos:
            cfg = compose(combo)
            register_config(cfg)
            settings, parts = validate(cfg)
            print(format_estimate(settings, parts, " ".join(combo)))
        return 0
    check_launcher(plain)
    # Hydra's composition mistakes (an option that does not exist) in one line, before Hydra reports them
    # its own way; every job is validated by the callback before any job starts.
    register_config(compose(combos[0]))
    argv = ["neuronbench", *(["-m"] if multirun else []), *(hydra_flags or []), *passthrough, *plain]
    saved = sys.argv
    sys.argv = [*argv, *options.env_set()]
    try:
        main()
    except SystemExit as stop:  # a job's or the callback's exit code, or Hydra's own error (1)
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    finally:
        sys.argv = saved
        close_abandoned_parents()
    return 0


def launchers() -> list[str]:
    """The launchers Hydra knows here: its plugins' (installed packages) and ``conf/hydra/launcher/``."""
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins

    Plugins.instance()  # discovers the installed plugins, which register their launcher configs
    names = {Path(n).stem for n in ConfigStore.instance().list("hydra/launcher")}
    return sorted(names | {p.stem for p in (conf_dir() / "hydra" / "launcher").glob("*.yaml")})


def check_launcher(overrides: list[str]) -> None:
    """``hydra/launcher=NAME`` names a launcher that is installed -- one line listing them, if not."""
    chosen = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+~") == "hydra/launcher"]
    known = launchers()
    for name in chosen:
        if name not in known:
            raise UserError(
                f"hydra/launcher={name}: no such launcher here; available: {', '.join(known)} "
                "(pip install -e '.[cluster]' adds joblib, ray, ray_cluster and submitit_local / submitit_slurm)"
            )


if __name__ == "__main__":
    main()
